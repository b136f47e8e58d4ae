package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/dtmux/dtmux/controller/pool"
	"github.com/dtmux/dtmux/controller/provider"
	"github.com/dtmux/dtmux/internal/rpcserver"
	"github.com/dtmux/dtmux/internal/transport"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeAgent stands in for a real agent: GetAgentInfo names it, Exec echoes
// each stdin message back as one output event, with headers and trailers,
// and fails with a status when told "fail".
type fakeAgent struct {
	agentv1.UnimplementedAgentServiceServer
	name string

	mu       sync.Mutex
	lastMD   metadata.MD // guarded by mu
	canceled chan struct{}
}

func (f *fakeAgent) GetAgentInfo(ctx context.Context, _ *agentv1.GetAgentInfoRequest) (*agentv1.GetAgentInfoResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.lastMD = md
	f.mu.Unlock()
	return &agentv1.GetAgentInfoResponse{Version: "v-" + f.name, Workspace: f.name}, nil
}

func (f *fakeAgent) Exec(st agentv1.AgentService_ExecServer) error {
	if err := st.SendHeader(metadata.Pairs("x-agent", f.name)); err != nil {
		return err
	}
	st.SetTrailer(metadata.Pairs("x-done", "yes"))
	for {
		req, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if st.Context().Err() != nil {
				close(f.canceled)
			}
			return err
		}
		switch m := req.Msg.(type) {
		case *agentv1.ExecRequest_Stdin:
			if string(m.Stdin) == "fail" {
				return status.Error(codes.ResourceExhausted, "too many runs")
			}
			if err := st.Send(&agentv1.ExecResponse{Event: &agentv1.ExecResponse_Output{Output: &agentv1.RunOutput{Data: m.Stdin}}}); err != nil {
				return err
			}
		}
	}
}

// fakeProvider is an in-memory provider whose started workspaces point at
// unix sockets.
type fakeProvider struct {
	mu  sync.Mutex
	wss map[string]provider.Workspace
	eps map[string]string
}

func (p *fakeProvider) Name() string { return "fake" }
func (p *fakeProvider) List(context.Context) ([]provider.Workspace, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []provider.Workspace
	for _, w := range p.wss {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
func (p *fakeProvider) Get(_ context.Context, name string) (provider.Workspace, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	w, ok := p.wss[name]
	if !ok {
		return w, fmt.Errorf("get %q: %w", name, provider.ErrNotFound)
	}
	return w, nil
}
func (p *fakeProvider) Create(_ context.Context, o provider.CreateOptions) (provider.Workspace, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if strings.Contains(o.Name, "/") {
		return provider.Workspace{}, fmt.Errorf("name %q: %w", o.Name, provider.ErrInvalid)
	}
	if _, ok := p.wss[o.Name]; ok {
		return provider.Workspace{}, provider.ErrAlreadyExists
	}
	w := provider.Workspace{Name: o.Name, Labels: o.Labels, State: provider.StateStarted}
	p.wss[o.Name] = w
	return w, nil
}
func (p *fakeProvider) Delete(context.Context, string, bool) error {
	return fmt.Errorf("delete: %w", provider.ErrUnsupported)
}
func (p *fakeProvider) Start(ctx context.Context, name string, _ time.Duration) (provider.Workspace, error) {
	return p.Get(ctx, name)
}
func (p *fakeProvider) Stop(ctx context.Context, name string) (provider.Workspace, error) {
	return p.Get(ctx, name)
}
func (p *fakeProvider) Endpoint(_ context.Context, name string) (provider.Endpoint, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	w, ok := p.wss[name]
	if !ok {
		return provider.Endpoint{}, fmt.Errorf("endpoint %q: %w", name, provider.ErrNotFound)
	}
	if w.State != provider.StateStarted {
		return provider.Endpoint{}, fmt.Errorf("endpoint %q: %w", name, provider.ErrNotStarted)
	}
	return provider.Endpoint{Address: transport.Address{Network: "unix", Addr: p.eps[name]}}, nil
}
func (p *fakeProvider) Close() error { return nil }

type fixture struct {
	prov   *fakeProvider
	agents map[string]*fakeAgent
	conn   *grpc.ClientConn
}

// newFixture starts agents "a" and "b" (real unix sockets), a stopped
// workspace "off", a started workspace "gone" whose agent is not there,
// and a controller (router + workspace service) on bufconn.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fixture{
		prov:   &fakeProvider{wss: map[string]provider.Workspace{}, eps: map[string]string{}},
		agents: map[string]*fakeAgent{},
	}
	for _, name := range []string{"a", "b"} {
		sock := filepath.Join(dir, name+".sock")
		l, err := transport.Listen(transport.Address{Network: "unix", Addr: sock})
		if err != nil {
			t.Fatal(err)
		}
		s := grpc.NewServer()
		healthpb.RegisterHealthServer(s, health.NewServer())
		fa := &fakeAgent{name: name, canceled: make(chan struct{})}
		agentv1.RegisterAgentServiceServer(s, fa)
		go s.Serve(l)
		t.Cleanup(s.Stop)
		f.agents[name] = fa
		f.prov.wss[name] = provider.Workspace{Name: name, State: provider.StateStarted, Labels: map[string]string{"team": "web", "n": name}}
		f.prov.eps[name] = sock
	}
	f.prov.wss["off"] = provider.Workspace{Name: "off", State: provider.StateStopped, Labels: map[string]string{"team": "db"}}
	f.prov.wss["gone"] = provider.Workspace{Name: "gone", State: provider.StateStarted}
	f.prov.eps["gone"] = filepath.Join(dir, "gone.sock")

	log := hclog.NewNullLogger()
	pl := pool.New(pool.Config{Resolve: f.prov.Endpoint, Logger: log})
	srv := rpcserver.New(rpcserver.Config{Logger: log, Codec: Codec()})
	controllerv1.RegisterWorkspaceServiceServer(srv, NewWorkspaceService(f.prov, pl, log))
	NewRouter(pl, log).Register(srv)
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
	f.conn = conn
	return f
}

func ctxFor(t *testing.T, ws string) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	if ws != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, WorkspaceMetadataKey, ws)
	}
	return ctx
}

func TestRouteUnaryByWorkspace(t *testing.T) {
	f := newFixture(t)
	c := agentv1.NewAgentServiceClient(f.conn)
	for _, ws := range []string{"a", "b", "a"} {
		ctx := metadata.AppendToOutgoingContext(ctxFor(t, ws), "authorization", "Bearer secret", "x-trace", "t1")
		info, err := c.GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
		if err != nil {
			t.Fatalf("%s: %v", ws, err)
		}
		if info.GetWorkspace() != ws {
			t.Errorf("routed to %q, want %q", info.GetWorkspace(), ws)
		}
	}
	fa := f.agents["a"]
	fa.mu.Lock()
	md := fa.lastMD
	fa.mu.Unlock()
	if len(md.Get("authorization")) != 0 {
		t.Errorf("the caller's authorization reached the agent: %v", md)
	}
	if got := md.Get("x-trace"); !slices.Equal(got, []string{"t1"}) {
		t.Errorf("x-trace = %v, want forwarded", got)
	}
}

func TestRouteErrors(t *testing.T) {
	f := newFixture(t)
	c := agentv1.NewAgentServiceClient(f.conn)
	tests := []struct {
		ws   string
		code codes.Code
		msg  string
	}{
		{"", codes.InvalidArgument, "set metadata dtmux-workspace"},
		{"nope", codes.NotFound, `workspace "nope" not found`},
		{"off", codes.FailedPrecondition, "not started"},
		{"gone", codes.Unavailable, "gone.sock"},
	}
	for _, tt := range tests {
		t.Run(tt.ws, func(t *testing.T) {
			_, err := c.GetAgentInfo(ctxFor(t, tt.ws), &agentv1.GetAgentInfoRequest{})
			if status.Code(err) != tt.code || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("err = %v, want %v containing %q", err, tt.code, tt.msg)
			}
			// Streams fail the same way.
			st, err := c.Exec(ctxFor(t, tt.ws))
			if err == nil {
				_, err = st.Recv()
			}
			if status.Code(err) != tt.code {
				t.Errorf("Exec err = %v, want %v", err, tt.code)
			}
		})
	}
}

func TestRouteStream(t *testing.T) {
	f := newFixture(t)
	c := agentv1.NewAgentServiceClient(f.conn)
	st, err := c.Exec(ctxFor(t, "b"))
	if err != nil {
		t.Fatal(err)
	}
	// Each message comes back before the next is sent: nothing is held
	// back waiting for more.
	for i := range 20 {
		msg := fmt.Sprintf("chunk %d", i)
		if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Stdin{Stdin: []byte(msg)}}); err != nil {
			t.Fatal(err)
		}
		ev, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if got := string(ev.GetOutput().GetData()); got != msg {
			t.Fatalf("got %q, want %q", got, msg)
		}
	}
	h, err := st.Header()
	if err != nil || !slices.Equal(h.Get("x-agent"), []string{"b"}) {
		t.Errorf("header = %v, %v; want x-agent=b", h, err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after close: %v, want EOF", err)
	}
	if tr := st.Trailer(); !slices.Equal(tr.Get("x-done"), []string{"yes"}) {
		t.Errorf("trailer = %v, want x-done=yes", tr)
	}

	// The agent's own status comes through unchanged.
	st, err = c.Exec(ctxFor(t, "b"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Stdin{Stdin: []byte("fail")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "too many runs") {
		t.Errorf("err = %v, want the agent's ResourceExhausted", err)
	}
}

func TestRouteCancelPropagates(t *testing.T) {
	f := newFixture(t)
	c := agentv1.NewAgentServiceClient(f.conn)
	ctx, cancel := context.WithCancel(ctxFor(t, "a"))
	st, err := c.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Stdin{Stdin: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-f.agents["a"].canceled:
	case <-time.After(20 * time.Second):
		t.Fatal("the agent never saw the caller's cancellation")
	}
}

func TestReflectionAndHealth(t *testing.T) {
	f := newFixture(t)
	ctx := ctxFor(t, "")
	r, err := reflectionpb.NewServerReflectionClient(f.conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := r.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"dtmux.agent.v1.AgentService", "dtmux.controller.v1.WorkspaceService"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, want %s", names, want)
		}
	}
	// The descriptor resolves, so grpcurl can describe and call methods.
	if err := r.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "dtmux.agent.v1.AgentService"}}); err != nil {
		t.Fatal(err)
	}
	resp, err = r.Recv()
	if err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Errorf("file for AgentService: %v, %v", resp, err)
	}
	_ = r.CloseSend()

	h, err := healthpb.NewHealthClient(f.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "dtmux.agent.v1.AgentService"})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health = %v, %v", h, err)
	}
}

func TestWorkspaceService(t *testing.T) {
	f := newFixture(t)
	c := controllerv1.NewWorkspaceServiceClient(f.conn)
	ctx := ctxFor(t, "")

	names := func(sel ...string) []string {
		t.Helper()
		r, err := c.ListWorkspaces(ctx, &controllerv1.ListWorkspacesRequest{LabelSelectors: sel})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, w := range r.GetWorkspaces() {
			out = append(out, w.GetName())
			if w.GetProvider() != "fake" {
				t.Errorf("provider = %q", w.GetProvider())
			}
		}
		return out
	}
	if got := names(); !slices.Equal(got, []string{"a", "b", "gone", "off"}) {
		t.Errorf("all = %v", got)
	}
	if got := names("team=web"); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("team=web = %v", got)
	}
	if got := names("team=web", "n=b"); !slices.Equal(got, []string{"b"}) {
		t.Errorf("team=web,n=b = %v", got)
	}
	if _, err := c.ListWorkspaces(ctx, &controllerv1.ListWorkspacesRequest{LabelSelectors: []string{"bad"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad selector: %v", err)
	}

	// Agent status comes from the pool once the agent has been reached.
	if _, err := agentv1.NewAgentServiceClient(f.conn).GetAgentInfo(ctxFor(t, "a"), &agentv1.GetAgentInfoRequest{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		g, err := c.GetWorkspace(ctx, &controllerv1.GetWorkspaceRequest{Name: "a"})
		if err != nil {
			t.Fatal(err)
		}
		if a := g.GetWorkspace().GetAgent(); a.GetConnected() && a.GetVersion() == "v-a" && a.GetConnectedSince() != nil {
			if g.GetWorkspace().GetState() != controllerv1.WorkspaceState_WORKSPACE_STATE_STARTED {
				t.Errorf("state = %v", g.GetWorkspace().GetState())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent status never showed connected: %v", g)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := agentv1.NewAgentServiceClient(f.conn).GetAgentInfo(ctxFor(t, "gone"), &agentv1.GetAgentInfoRequest{}); err == nil {
		t.Fatal("gone reachable")
	}
	g, err := c.GetWorkspace(ctx, &controllerv1.GetWorkspaceRequest{Name: "gone"})
	if err != nil || g.GetWorkspace().GetAgent().GetConnected() || g.GetWorkspace().GetAgent().GetLastError() == "" {
		t.Errorf("gone = %v, %v; want not connected with a last error", g, err)
	}

	errTests := []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"get unknown", func() error {
			_, err := c.GetWorkspace(ctx, &controllerv1.GetWorkspaceRequest{Name: "zz"})
			return err
		}, codes.NotFound},
		{"get empty", func() error {
			_, err := c.GetWorkspace(ctx, &controllerv1.GetWorkspaceRequest{})
			return err
		}, codes.InvalidArgument},
		{"create existing", func() error {
			_, err := c.CreateWorkspace(ctx, &controllerv1.CreateWorkspaceRequest{Name: "a"})
			return err
		}, codes.AlreadyExists},
		{"create invalid", func() error {
			_, err := c.CreateWorkspace(ctx, &controllerv1.CreateWorkspaceRequest{Name: "a/b"})
			return err
		}, codes.InvalidArgument},
		{"delete running without force", func() error {
			_, err := c.DeleteWorkspace(ctx, &controllerv1.DeleteWorkspaceRequest{Name: "a"})
			return err
		}, codes.FailedPrecondition},
		{"delete unsupported", func() error {
			_, err := c.DeleteWorkspace(ctx, &controllerv1.DeleteWorkspaceRequest{Name: "a", Force: true})
			return err
		}, codes.Unimplemented},
		{"get invalid name", func() error {
			_, err := c.GetWorkspace(ctx, &controllerv1.GetWorkspaceRequest{Name: "Bad Name"})
			return err
		}, codes.InvalidArgument},
	}
	for _, tt := range errTests {
		if err := tt.call(); status.Code(err) != tt.code {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.code)
		}
	}
	r, err := c.CreateWorkspace(ctx, &controllerv1.CreateWorkspaceRequest{Name: "new", Labels: map[string]string{"k": "v"}})
	if err != nil || r.GetWorkspace().GetLabels()["k"] != "v" {
		t.Errorf("create = %v, %v", r, err)
	}
}

func TestToStatusUnknownIsInternal(t *testing.T) {
	err := toStatus(hclog.NewNullLogger(), "w", errors.New("disk on fire at /secret/path"))
	if status.Code(err) != codes.Internal || strings.Contains(err.Error(), "/secret/path") {
		t.Errorf("err = %v, want a generic Internal", err)
	}
}
