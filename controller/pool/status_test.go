package pool

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/dtmux/dtmux/controller/provider"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// Status tells the three cases a listing shows apart: never dialled (no
// version, no error), failing (an error), and reached before but closed
// as idle (not connected, no error, the version kept). A later success
// clears the error; Evict (stop, delete) forgets the version.
func TestStatusIdleFailedAndEvicted(t *testing.T) {
	sock := filepath.Join(sockDir(t), "a.sock")
	p := newPool(t, Config{IdleTimeout: 40 * time.Millisecond, Resolve: func(ctx context.Context, name string) (provider.Endpoint, error) {
		ep := unixEndpoint(sock)
		ep.Key = sock // as the local provider does: a failing entry is kept
		if name == "kept" {
			ep.IdleTimeout = -1 // never closed as idle
		}
		return ep, nil
	}})
	ctx := ctxT(t)

	if st := p.Status("kept"); st != (Status{}) {
		t.Fatalf("never dialled: %+v, want the zero status", st)
	}
	if _, err := p.Conn(ctx, "kept"); err == nil {
		t.Fatal("Conn with no agent listening succeeded")
	}
	if st := p.Status("kept"); st.Connected || st.LastError == "" {
		t.Fatalf("failed: %+v, want a last error", st)
	}
	serve(t, sock, "v9")
	// The kept connection is in grpc's reconnect backoff; the first call
	// after the agent is back must still get through.
	if _, err := p.Conn(ctx, "kept"); err != nil {
		t.Fatalf("first call after the agent came back: %v", err)
	}
	waitFor(t, "connected with the version and the error cleared", func() bool {
		st := p.Status("kept")
		return st.Connected && st.Version == "v9" && st.LastError == ""
	})

	cc, err := p.Conn(ctx, "idle")
	if err != nil {
		t.Fatal(err)
	}
	// A stream in flight keeps the connection from being closed as idle
	// while its status is checked.
	sctx, cancel := context.WithCancel(ctx)
	if _, err := agentv1.NewAgentServiceClient(cc).Exec(sctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "connected with the version", func() bool {
		st := p.Status("idle")
		return st.Connected && st.Version == "v9"
	})
	cancel()
	waitFor(t, "idle eviction", func() bool { return p.Len() == 1 })
	if st := p.Status("idle"); st.Connected || st.LastError != "" || st.Version != "v9" {
		t.Fatalf("idle-evicted: %+v, want not connected, no error, version v9", st)
	}
	// Redialled: the version is there before the new connection reports.
	if _, err := p.Conn(ctx, "idle"); err != nil {
		t.Fatal(err)
	}
	if st := p.Status("idle"); st.Version != "v9" {
		t.Fatalf("redialled: %+v, want version v9", st)
	}
	p.Evict("idle")
	if st := p.Status("idle"); st != (Status{}) {
		t.Fatalf("evicted (stop/delete): %+v, want the zero status", st)
	}
}
