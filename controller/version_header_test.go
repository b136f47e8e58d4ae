package controller

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/dtmux/dtmux/controller/pool"
	"github.com/dtmux/dtmux/controller/provider"
	"github.com/dtmux/dtmux/internal/auth"
	"github.com/dtmux/dtmux/internal/rpcserver"
	"github.com/dtmux/dtmux/internal/transport"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// TestVersionHeader checks that every kind of call on services registered
// through WithVersionHeader (unary and streaming, served or routed to an
// agent, successful or failed) answers with the dtmux-version header, and
// that a call refused by authentication does not.
func TestVersionHeader(t *testing.T) {
	const version = "v1.2.3-test"
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	// One fake agent on a real unix socket, behind a started workspace.
	sock := filepath.Join(dir, "a.sock")
	al, err := transport.Listen(transport.Address{Network: "unix", Addr: sock})
	if err != nil {
		t.Fatal(err)
	}
	as := grpc.NewServer()
	healthpb.RegisterHealthServer(as, health.NewServer())
	agentv1.RegisterAgentServiceServer(as, &fakeAgent{name: "a", canceled: make(chan struct{})})
	go as.Serve(al)
	t.Cleanup(as.Stop)
	prov := &fakeProvider{
		wss: map[string]provider.Workspace{"a": {Name: "a", State: provider.StateStarted}},
		eps: map[string]string{"a": sock},
	}

	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte("secret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tok, err := auth.LoadTokenFile(tokFile)
	if err != nil {
		t.Fatal(err)
	}

	log := hclog.NewNullLogger()
	pl := pool.New(pool.Config{Resolve: prov.Endpoint, Logger: log})
	srv := rpcserver.New(rpcserver.Config{Logger: log, Token: tok, Codec: Codec()})
	reg := WithVersionHeader(srv.Server, version)
	controllerv1.RegisterWorkspaceServiceServer(reg, NewWorkspaceService(prov, pl, log))
	NewRouter(pl, log).Register(reg)
	srv.MarkServing()
	lis := bufconn.Listen(1 << 20)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///controller",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		<-done
		pl.Close()
	})

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	authed := metadata.AppendToOutgoingContext(ctx, auth.MetadataKey, "Bearer secret-token")
	routed := metadata.AppendToOutgoingContext(authed, WorkspaceMetadataKey, "a")
	ws := controllerv1.NewWorkspaceServiceClient(conn)
	ag := agentv1.NewAgentServiceClient(conn)

	want := []string{version}
	check := func(name string, h metadata.MD, wantVals []string) {
		t.Helper()
		if got := h.Get(VersionHeader); !slices.Equal(got, wantVals) {
			t.Errorf("%s: %s = %q, want %q (headers %v)", name, VersionHeader, got, wantVals, h)
		}
	}

	t.Run("unary", func(t *testing.T) {
		var h metadata.MD
		if _, err := ws.ListWorkspaces(authed, &controllerv1.ListWorkspacesRequest{}, grpc.Header(&h)); err != nil {
			t.Fatal(err)
		}
		check("ListWorkspaces", h, want)
	})
	t.Run("unary error", func(t *testing.T) {
		var h metadata.MD
		_, err := ws.GetWorkspace(authed, &controllerv1.GetWorkspaceRequest{Name: "nope"}, grpc.Header(&h))
		if status.Code(err) != codes.NotFound {
			t.Fatalf("err = %v, want NotFound", err)
		}
		check("GetWorkspace(nope)", h, want)
	})
	t.Run("routed unary", func(t *testing.T) {
		var h metadata.MD
		if _, err := ag.GetAgentInfo(routed, &agentv1.GetAgentInfoRequest{}, grpc.Header(&h)); err != nil {
			t.Fatal(err)
		}
		check("GetAgentInfo", h, want)
	})
	t.Run("routed stream keeps the agent's headers", func(t *testing.T) {
		st, err := ag.Exec(routed)
		if err != nil {
			t.Fatal(err)
		}
		h, err := st.Header()
		if err != nil {
			t.Fatal(err)
		}
		check("Exec", h, want)
		if got := h.Get("x-agent"); !slices.Equal(got, []string{"a"}) {
			t.Errorf("Exec: x-agent = %q, want the agent's header passed on", got)
		}
		st.CloseSend()
		for {
			if _, err := st.Recv(); err != nil {
				break
			}
		}
	})
	t.Run("refused call", func(t *testing.T) {
		var h metadata.MD
		_, err := ws.ListWorkspaces(ctx, &controllerv1.ListWorkspacesRequest{}, grpc.Header(&h))
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("err = %v, want Unauthenticated", err)
		}
		check("unauthenticated ListWorkspaces", h, nil)
	})
}
