package pool

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/connectivity"

	"github.com/dtmux/dtmux/controller/provider"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// countingEndpoint dials the unix socket at sock through Dial (as a hop
// does), after delay, counting the dials.
func countingEndpoint(sock string, dials *atomic.Int64, delay time.Duration) provider.Endpoint {
	return provider.Endpoint{
		Key: "hop:" + sock,
		Dial: func(ctx context.Context) (net.Conn, error) {
			dials.Add(1)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}
}

// A hop that installs the agent first takes longer than a socket's
// connect timeout: its endpoint's ConnectTimeout bounds the dial and the
// caller's wait instead (an install over a slow link took minutes and
// was cut at 5-10 s).
func TestSlowDialGetsItsEndpointsConnectTimeout(t *testing.T) {
	sock := filepath.Join(sockDir(t), "a.sock")
	serve(t, sock, "v1")
	var dials atomic.Int64
	var deadline atomic.Int64
	p := newPool(t, Config{ConnectTimeout: 200 * time.Millisecond, Resolve: func(ctx context.Context, name string) (provider.Endpoint, error) {
		ep := countingEndpoint(sock, &dials, time.Second)
		dial := ep.Dial
		ep.Dial = func(ctx context.Context) (net.Conn, error) {
			if dl, ok := ctx.Deadline(); ok {
				deadline.Store(int64(time.Until(dl)))
			}
			return dial(ctx)
		}
		ep.ConnectTimeout = 3 * time.Minute
		return ep, nil
	}})
	if _, err := p.Conn(ctxT(t), "slow"); err != nil {
		t.Fatalf("a dial slower than the pool's connect timeout: %v", err)
	}
	if d := time.Duration(deadline.Load()); d < 2*time.Minute {
		t.Errorf("the dial had %v, want about the endpoint's 3m", d)
	}
}

// Calls to an agent that is down fail with one dial each (shared by
// calls at the same time), not with grpc's backoff schedule of dials
// while each waits; calls that keep coming (a follower retrying) get
// dials spaced out like a backoff, each an ssh login; unused, the failing
// connection is closed (no redials with nobody asking) and keeps its last
// error for its status.
func TestDownAgentCostsOneDialPerCallAndIsLetGo(t *testing.T) {
	sock := filepath.Join(sockDir(t), "none.sock")
	var dials, lookups atomic.Int64
	p := newPool(t, Config{FailingIdleTimeout: 300 * time.Millisecond, Resolve: func(ctx context.Context, name string) (provider.Endpoint, error) {
		lookups.Add(1)
		time.Sleep(20 * time.Millisecond) // a provider CLI
		return countingEndpoint(sock, &dials, 0), nil
	}})
	ctx := ctxT(t)
	const calls = 5
	for i := range calls {
		if _, err := p.Conn(ctx, "down"); err == nil {
			t.Fatalf("call %d to a down agent succeeded", i)
		}
	}
	if n := dials.Load(); n > 2*calls {
		t.Errorf("%d calls dialled %d times", calls, n)
	}
	n0, tight := dials.Load(), 0
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); tight++ {
		p.Conn(ctx, "down")
	}
	if n := dials.Load() - n0; n > 15 {
		t.Errorf("%d calls in a tight loop for 1.5 s dialled %d times", tight, n)
	}

	// Callers at the same time share the provider lookup.
	before := lookups.Load()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() { p.Conn(ctx, "down") })
	}
	wg.Wait()
	if n := lookups.Load() - before; n > 10 {
		t.Errorf("20 concurrent calls made %d provider lookups", n)
	}

	waitFor(t, "the failing connection closed", func() bool { return p.Len() == 0 })
	if st := p.Status("down"); st.Connected || st.LastError == "" {
		t.Errorf("status after it was let go: %+v, want its last error", st)
	}
	n := dials.Load()
	time.Sleep(time.Second)
	if d := dials.Load() - n; d != 0 {
		t.Errorf("%d dials with nobody asking", d)
	}
}

// A failed dial is not retried in the background while nobody calls: for
// an ssh hop each retry was a refused login (twelve in the 30 s before
// the connection was let go, for one command), or another upload over a
// link too slow for it. The next call dials again, with the real reason.
func TestFailedDialIsNotRetriedWithNobodyAsking(t *testing.T) {
	sock := filepath.Join(sockDir(t), "none.sock")
	var dials atomic.Int64
	p := newPool(t, Config{Resolve: func(ctx context.Context, name string) (provider.Endpoint, error) {
		return countingEndpoint(sock, &dials, 0), nil
	}})
	ctx := ctxT(t)
	n := oneCallThenNoDials(t, p, "down", &dials)
	_, err := p.Conn(ctx, "down")
	if err == nil || dials.Load() == n {
		t.Fatalf("the next call: err %v after %d dials, want a fresh dial that fails", err, dials.Load()-n)
	}
	if want := "no such file"; !strings.Contains(err.Error(), want) {
		t.Errorf("the next call's error %q does not say %q", err, want)
	}
}

// A dial that works to a connection that then fails (the hop's agent gone
// before the handshake) is not redialled in the background either.
func TestBrokenConnectionIsNotRedialledWithNobodyAsking(t *testing.T) {
	var dials atomic.Int64
	p := newPool(t, Config{ConnectTimeout: time.Second, Resolve: func(ctx context.Context, name string) (provider.Endpoint, error) {
		return provider.Endpoint{Key: "broken", Dial: func(ctx context.Context) (net.Conn, error) {
			dials.Add(1)
			ours, theirs := net.Pipe()
			theirs.Close() // the far end is gone at once
			return ours, nil
		}}, nil
	}})
	oneCallThenNoDials(t, p, "broken", &dials)
}

// oneCallThenNoDials makes one call to ws, which must fail, and checks that
// nothing is dialled for 2 s after it; it returns the dials made so far.
func oneCallThenNoDials(t *testing.T, p *Pool, ws string, dials *atomic.Int64) int64 {
	t.Helper()
	if _, err := p.Conn(ctxT(t), ws); err == nil {
		t.Fatalf("a call to %s succeeded", ws)
	}
	n := dials.Load()
	// grpc's backoff (100 ms, x1.6) would have dialled about six times.
	time.Sleep(2 * time.Second)
	if d := dials.Load() - n; d != 0 {
		t.Errorf("%d dials in 2 s with nobody asking", d)
	}
	return n
}

// A call to a hop whose agent was reached before and fails now costs one
// dial: the grace that waits for a restarting local agent would have
// logged in over ssh every 100 ms for 3 s (a refused key: eight logins).
func TestHopReachedBeforeCostsOneDialPerCall(t *testing.T) {
	sock := filepath.Join(sockDir(t), "a.sock")
	stop := serve(t, sock, "v1")
	var dials atomic.Int64
	p := newPool(t, Config{Resolve: func(ctx context.Context, name string) (provider.Endpoint, error) {
		return countingEndpoint(sock, &dials, 0), nil
	}})
	ctx := ctxT(t)
	cc, err := p.Conn(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agentv1.NewAgentServiceClient(cc).GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{}); err != nil {
		t.Fatal(err)
	}
	stop()
	waitFor(t, "the connection lost", func() bool { return cc.GetState() != connectivity.Ready })
	n := dials.Load()
	start := time.Now()
	if _, err := p.Conn(ctx, "w"); err == nil {
		t.Fatal("a call to a stopped agent succeeded")
	}
	if d := dials.Load() - n; d > 1 {
		t.Errorf("one call dialled %d times in %v", d, time.Since(start).Round(time.Millisecond))
	}
}
