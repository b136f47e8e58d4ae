package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/dtmux/dtmux/controller/provider"
	"github.com/dtmux/dtmux/internal/transport"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeAgent is a minimal agent: health, GetAgentInfo, and an Exec that
// blocks until the client goes away.
type fakeAgent struct {
	agentv1.UnimplementedAgentServiceServer
	version string
}

func (f *fakeAgent) GetAgentInfo(context.Context, *agentv1.GetAgentInfoRequest) (*agentv1.GetAgentInfoResponse, error) {
	return &agentv1.GetAgentInfoResponse{Version: f.version}, nil
}

func (f *fakeAgent) Exec(st agentv1.AgentService_ExecServer) error {
	<-st.Context().Done()
	return st.Context().Err()
}

func sockDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// serve starts a fake agent on a unix socket; the returned func stops it.
func serve(t *testing.T, path, version string) func() {
	t.Helper()
	l, err := transport.Listen(transport.Address{Network: "unix", Addr: path})
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	agentv1.RegisterAgentServiceServer(s, &fakeAgent{version: version})
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(l) }()
	var once sync.Once
	stop := func() { once.Do(func() { s.Stop(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func unixEndpoint(path string) provider.Endpoint {
	return provider.Endpoint{Address: transport.Address{Network: "unix", Addr: path}}
}

func newPool(t *testing.T, cfg Config) *Pool {
	t.Helper()
	p := New(cfg)
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return p
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestConnLazyAndStatus(t *testing.T) {
	sock := filepath.Join(sockDir(t), "a.sock")
	serve(t, sock, "v1.2.3")
	var resolves atomic.Int32
	p := newPool(t, Config{Resolve: func(ctx context.Context, name string) (provider.Endpoint, error) {
		resolves.Add(1)
		return unixEndpoint(sock), nil
	}})
	if p.Len() != 0 || p.Status("a").Connected {
		t.Fatal("pool dialled before first use")
	}
	ctx := ctxT(t)
	cc, err := p.Conn(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	info, err := agentv1.NewAgentServiceClient(cc).GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
	if err != nil || info.GetVersion() != "v1.2.3" {
		t.Fatalf("GetAgentInfo = %v, %v", info, err)
	}
	for range 10 {
		cc2, err := p.Conn(ctx, "a")
		if err != nil || cc2 != cc {
			t.Fatalf("second Conn = %p, %v; want the same connection %p", cc2, err, cc)
		}
	}
	if n := resolves.Load(); n != 1 {
		t.Errorf("resolved %d times, want 1 (a ready connection is reused)", n)
	}
	waitFor(t, "version in status", func() bool { return p.Status("a").Version == "v1.2.3" })
	st := p.Status("a")
	if !st.Connected || st.Since.IsZero() {
		t.Errorf("status = %+v, want connected with a since", st)
	}
}

func TestProviderErrorsPassThrough(t *testing.T) {
	p := newPool(t, Config{Resolve: func(ctx context.Context, name string) (provider.Endpoint, error) {
		if name == "stopped" {
			return provider.Endpoint{}, fmt.Errorf("workspace %q: %w", name, provider.ErrNotStarted)
		}
		return provider.Endpoint{}, fmt.Errorf("workspace %q: %w", name, provider.ErrNotFound)
	}})
	if _, err := p.Conn(ctxT(t), "nope"); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("err = %v, want ErrNotFound", err)
	}
	if _, err := p.Conn(ctxT(t), "stopped"); !errors.Is(err, provider.ErrNotStarted) {
		t.Errorf("err = %v, want ErrNotStarted", err)
	}
}

func TestUnreachableThenRecovered(t *testing.T) {
	sock := filepath.Join(sockDir(t), "a.sock")
	p := newPool(t, Config{Resolve: func(ctx context.Context, name string) (provider.Endpoint, error) {
		return unixEndpoint(sock), nil
	}})
	ctx := ctxT(t)
	_, err := p.Conn(ctx, "a")
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v, want ErrUnreachable", err)
	}
	if !strings.Contains(err.Error(), "no such file") && !strings.Contains(err.Error(), "refused") {
		t.Errorf("err = %v, want the reason", err)
	}
	if st := p.Status("a"); st.Connected || st.LastError == "" {
		t.Errorf("status = %+v, want not connected with a last error", st)
	}

	stop := serve(t, sock, "v1")
	if _, err := p.Conn(ctx, "a"); err != nil {
		t.Fatalf("after the agent came up: %v", err)
	}
	stop()
	// The agent went away: calls fail fast with the reason...
	waitFor(t, "unreachable after stop", func() bool {
		_, err := p.Conn(ctx, "a")
		return errors.Is(err, ErrUnreachable)
	})
	// ...and recover without waiting out grpc's backoff once it is back.
	serve(t, sock, "v2")
	cc, err := p.Conn(ctx, "a")
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if _, err := agentv1.NewAgentServiceClient(cc).GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "new version", func() bool { return p.Status("a").Version == "v2" })
}

func TestEndpointKeyChangeRedials(t *testing.T) {
	dir := sockDir(t)
	a, b := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	stopA := serve(t, a, "va")
	serve(t, b, "vb")
	var cur atomic.Value
	cur.Store(a)
	p := newPool(t, Config{Resolve: func(ctx context.Context, name string) (provider.Endpoint, error) {
		path := cur.Load().(string)
		ep := unixEndpoint(path)
		ep.Key = path
		return ep, nil
	}})
	ctx := ctxT(t)
	cc1, err := p.Conn(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	stopA()
	cur.Store(b)
	var cc2 *grpc.ClientConn
	waitFor(t, "redial to the new endpoint", func() bool {
		cc2, err = p.Conn(ctx, "w")
		return err == nil && cc2 != cc1
	})
	info, err := agentv1.NewAgentServiceClient(cc2).GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
	if err != nil || info.GetVersion() != "vb" {
		t.Fatalf("GetAgentInfo = %v, %v; want vb", info, err)
	}
}

func TestIdleEviction(t *testing.T) {
	sock := filepath.Join(sockDir(t), "a.sock")
	serve(t, sock, "v")
	p := newPool(t, Config{IdleTimeout: 30 * time.Millisecond, Resolve: func(ctx context.Context, name string) (provider.Endpoint, error) {
		ep := unixEndpoint(sock)
		if name == "busy" {
			ep.IdleTimeout = 30 * time.Millisecond
		}
		if name == "keep" {
			ep.IdleTimeout = -1
		}
		return ep, nil
	}})
	ctx := ctxT(t)
	for _, n := range []string{"idle", "busy", "keep"} {
		if _, err := p.Conn(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	cc, _ := p.Conn(ctx, "busy")
	sctx, cancel := context.WithCancel(ctx)
	st, err := agentv1.NewAgentServiceClient(cc).Exec(sctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = st
	waitFor(t, "idle eviction", func() bool { return p.Len() == 2 })
	p.mu.Lock()
	_, busy := p.entries["busy"]
	_, keep := p.entries["keep"]
	p.mu.Unlock()
	if !busy || !keep {
		t.Fatalf("evicted the wrong connections: busy held %v, keep held %v", busy, keep)
	}
	// Once the stream ends, the busy connection becomes idle too.
	cancel()
	waitFor(t, "eviction after the stream ended", func() bool { return p.Len() == 1 })
	// An evicted workspace is dialled again on the next call.
	if _, err := p.Conn(ctx, "idle"); err != nil {
		t.Fatal(err)
	}
}

func TestDialerEndpointAndBound(t *testing.T) {
	sock := filepath.Join(sockDir(t), "a.sock")
	serve(t, sock, "v")
	const limit, n = 3, 40
	var inFlight, maxInFlight, dials atomic.Int32
	var closes atomic.Int32
	p := newPool(t, Config{MaxConcurrentDials: limit, Resolve: func(ctx context.Context, name string) (provider.Endpoint, error) {
		return provider.Endpoint{Key: "hop", Dial: func(ctx context.Context) (net.Conn, error) {
			dials.Add(1)
			cur := inFlight.Add(1)
			defer inFlight.Add(-1)
			for {
				m := maxInFlight.Load()
				if cur <= m || maxInFlight.CompareAndSwap(m, cur) {
					break
				}
			}
			time.Sleep(5 * time.Millisecond) // widen the window a stampede would show in
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", sock)
			if err != nil {
				return nil, err
			}
			return &closeCounter{Conn: c, n: &closes}, nil
		}}, nil
	}})
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc, err := p.Conn(ctx, fmt.Sprintf("ws%d", i))
			if err == nil {
				_, err = agentv1.NewAgentServiceClient(cc).GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if m := maxInFlight.Load(); m > limit {
		t.Errorf("%d dials in flight at once, want at most %d", m, limit)
	}
	if d := dials.Load(); d != n {
		t.Errorf("%d dials for %d workspaces, want one each", d, n)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if c := closes.Load(); c != n {
		t.Errorf("Close closed %d hops, want %d", c, n)
	}
	if _, err := p.Conn(ctx, "ws0"); !errors.Is(err, ErrClosed) {
		t.Errorf("Conn after Close = %v, want ErrClosed", err)
	}
}

type closeCounter struct {
	net.Conn
	n    *atomic.Int32
	once sync.Once
}

func (c *closeCounter) Close() error {
	c.once.Do(func() { c.n.Add(1) })
	return c.Conn.Close()
}

func TestEvict(t *testing.T) {
	sock := filepath.Join(sockDir(t), "a.sock")
	serve(t, sock, "v")
	p := newPool(t, Config{Resolve: func(ctx context.Context, name string) (provider.Endpoint, error) {
		return unixEndpoint(sock), nil
	}})
	cc, err := p.Conn(ctxT(t), "a")
	if err != nil {
		t.Fatal(err)
	}
	p.Evict("a")
	if p.Len() != 0 {
		t.Fatal("still held after Evict")
	}
	if _, err := agentv1.NewAgentServiceClient(cc).GetAgentInfo(ctxT(t), &agentv1.GetAgentInfoRequest{}); err == nil {
		t.Fatal("evicted connection still works")
	}
}

func TestCleanReason(t *testing.T) {
	got := cleanReason(`connection error: desc = "transport: Error while dialing: dial unix /x: connect: connection refused"`)
	if want := "dial unix /x: connect: connection refused"; got != want {
		t.Errorf("cleanReason = %q, want %q", got, want)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A workspace edited or removed at its provider (a host in the ssh hosts
// file) while its connection is healthy: the next call goes to the new
// endpoint, or says the workspace is gone, instead of reusing the old hop;
// and a gone workspace's idle connection is closed without a call.
func TestCurrentKeyRedialsEditedAndClosesRemoved(t *testing.T) {
	dir := sockDir(t)
	a, b := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	serve(t, a, "va") // stays up: only the provider's answer changes
	serve(t, b, "vb")
	var cur atomic.Value // the socket path, "" when the workspace is gone
	cur.Store(a)
	key := func(name string) (string, error) {
		if cur.Load().(string) == "" {
			return "", fmt.Errorf("%w: %q", provider.ErrNotFound, name)
		}
		return cur.Load().(string), nil
	}
	p := newPool(t, Config{
		FailingIdleTimeout: 100 * time.Millisecond, // sweeps every 50 ms
		CurrentKey:         key,
		Resolve: func(ctx context.Context, name string) (provider.Endpoint, error) {
			k, err := key(name)
			if err != nil {
				return provider.Endpoint{}, err
			}
			ep := unixEndpoint(k)
			ep.Key = k
			return ep, nil
		},
	})
	ctx := ctxT(t)
	version := func() string {
		t.Helper()
		cc, err := p.Conn(ctx, "w")
		if err != nil {
			t.Fatal(err)
		}
		info, err := agentv1.NewAgentServiceClient(cc).GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return info.GetVersion()
	}
	if v := version(); v != "va" {
		t.Fatalf("first call reached %q", v)
	}
	// A call under way on the old endpoint (an attached exec) finishes
	// there; its connection is closed once it has.
	// callUnderWay starts a call that lasts until the returned func.
	callUnderWay := func() (*grpc.ClientConn, func()) {
		t.Helper()
		cc, err := p.Conn(ctx, "w")
		if err != nil {
			t.Fatal(err)
		}
		sctx, end := context.WithCancel(ctx)
		if _, err := agentv1.NewAgentServiceClient(cc).Exec(sctx); err != nil {
			t.Fatal(err)
		}
		return cc, end
	}
	// closedOnceEnded checks that cc, taken out of the pool under a call,
	// stays open through some sweeps and is closed once the call ends.
	closedOnceEnded := func(cc *grpc.ClientConn, end func(), what string) {
		t.Helper()
		time.Sleep(200 * time.Millisecond) // four sweeps
		if s := cc.GetState(); s == connectivity.Shutdown {
			t.Errorf("%s was closed under a call", what)
		}
		end()
		waitFor(t, what+" closed once its call ended", func() bool { return cc.GetState() == connectivity.Shutdown })
	}
	oldCC, endStream := callUnderWay()
	cur.Store(b)
	if v := version(); v != "vb" {
		t.Errorf("after the endpoint changed, the next call reached %q, want vb", v)
	}
	closedOnceEnded(oldCC, endStream, "the old endpoint's connection")
	// Gone with a call under way on it: new calls are refused, that one
	// finishes (a host commented out for a moment, an editor mid-save).
	ccB, endStream2 := callUnderWay()
	cur.Store("")
	if _, err := p.Conn(ctx, "w"); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("after the workspace went, Conn: %v, want ErrNotFound", err)
	}
	if n := p.Len(); n != 0 {
		t.Errorf("%d connections held for a workspace that is gone", n)
	}
	closedOnceEnded(ccB, endStream2, "the gone workspace's connection")

	// Gone while idle: the sweep closes it.
	cur.Store(a)
	version()
	cur.Store("")
	waitFor(t, "the gone workspace's idle connection closed", func() bool { return p.Len() == 0 })
}
