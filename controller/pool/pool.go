// Package pool keeps one long-lived gRPC connection per workspace agent:
// dialled lazily, kept alive, health-checked, redialled with backoff and
// evicted when idle.
package pool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/controller/provider"
	"github.com/dtmux/dtmux/internal/transport"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// ErrUnreachable wraps every failure to reach a started workspace's agent.
// Provider errors (provider.ErrNotFound, provider.ErrNotStarted, ...) are
// returned as they are.
var ErrUnreachable = errors.New("agent unreachable")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("pool closed")

// Defaults for Config.
const (
	DefaultIdleTimeout        = 30 * time.Minute
	DefaultMaxConcurrentDials = 64
	DefaultConnectTimeout     = 10 * time.Second
	// DefaultFailingIdleTimeout closes a connection that is failing and
	// carried no call for that long: grpc would otherwise redial it (an
	// ssh login refused every 10 s, fail2ban's delight) for as long as the
	// idle timeout, with nobody asking. The next call dials afresh.
	DefaultFailingIdleTimeout = 30 * time.Second
)

// Config configures a Pool.
type Config struct {
	// Resolve says how to reach a workspace's agent; normally a
	// provider's Endpoint method.
	Resolve func(ctx context.Context, name string) (provider.Endpoint, error)
	// Logger is named "pool" by New.
	Logger hclog.Logger
	// IdleTimeout closes a connection that carried no call for that long
	// (default DefaultIdleTimeout; negative: never). An endpoint's own
	// IdleTimeout overrides it.
	IdleTimeout time.Duration
	// MaxConcurrentDials bounds connection attempts in flight across all
	// workspaces (default DefaultMaxConcurrentDials), so that dialling a
	// thousand agents at once does not stampede the host or the hops.
	MaxConcurrentDials int
	// ConnectTimeout bounds how long Conn waits for a connection that is
	// not ready yet (default DefaultConnectTimeout), within the caller's
	// context.
	ConnectTimeout time.Duration
	// FailingIdleTimeout closes a failing connection that carried no call
	// for that long (default DefaultFailingIdleTimeout); its last error
	// stays in its Status.
	FailingIdleTimeout time.Duration
	// DialOptions are added to every connection (tests, tuning).
	DialOptions []grpc.DialOption
	// CurrentKey, when set, says cheaply which endpoint key a workspace
	// has now, or provider.ErrNotFound (provider.KeyReporter): a
	// connection whose workspace is gone is closed, one whose endpoint
	// changed is redialled, before a call reuses it and at each sweep.
	CurrentKey func(name string) (string, error)
}

// Status is the pool's view of one workspace's agent. Three cases read
// apart: connected (Connected); idle, never dialled or closed for want of
// calls (not Connected, no LastError; Version is kept when the agent was
// reached before); and failing (LastError set).
type Status struct {
	// Connected is true while the connection is ready.
	Connected bool
	// Version is the agent's version, once reached; it survives the
	// connection being closed as idle.
	Version string
	// LastError says why the last attempt to reach the agent failed. It is
	// cleared when an attempt succeeds.
	LastError string
	// LastErrorAt is when it did.
	LastErrorAt time.Time
	// Since is when the current connection became ready.
	Since time.Time
}

// Pool holds the connections. It is safe for concurrent use.
type Pool struct {
	cfg  Config
	log  hclog.Logger
	dial chan struct{} // semaphore bounding concurrent dials

	ctx    context.Context // cancelled by Close; parent of watchers
	cancel context.CancelFunc
	wg     sync.WaitGroup // watchers and the janitor

	wake chan struct{} // tells the janitor an endpoint brought its own idle timeout

	mu      sync.Mutex
	entries map[string]*entry // guarded by mu
	closed  bool              // guarded by mu
	// reached holds the version of agents whose connection was closed as
	// idle, so that their status still says which agent answered last.
	// Guarded by mu; Evict (stop, delete) forgets a workspace.
	reached map[string]string
	// failed holds why the connections closed while failing (see
	// failingIdle) failed, for their status. Guarded by mu.
	failed map[string]failure
	// lookups are the provider lookups in flight, by workspace. Guarded
	// by mu.
	lookups map[string]*lookup
	// draining are connections replaced (their endpoint changed) while
	// calls were under way on them, closed once those end. Guarded by mu.
	draining []*entry
}

// failure is a connection's last error.
type failure struct {
	msg string
	at  time.Time
}

// entry is one workspace's connection. Fields below mu are guarded by the
// entry's own mu; the rest are set once at creation.
type entry struct {
	name    string
	key     string
	cc      *grpc.ClientConn
	idle    time.Duration
	connect time.Duration // how long a caller waits for a connection attempt
	active  atomic.Int64
	used    atomic.Int64 // unix nanos of the last call start or end
	hop     bool         // the provider dials it (Endpoint.Dial): each dial costs, an ssh login

	mu          sync.Mutex
	version     string
	since       time.Time
	lastErr     string
	lastErrAt   time.Time
	dialErr     error         // the last dial's failure, nil after a dial succeeded
	dialing     int           // dials under way
	failures    int           // dials failed in a row
	dialAt      time.Time     // when the last dial started; zero before the first
	dialStarted chan struct{} // closed and replaced when a dial starts
	dialEnded   chan struct{} // closed and replaced when a dial ends
	everReached bool
}

// New starts a pool; Close stops it.
func New(cfg Config) *Pool {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxConcurrentDials <= 0 {
		cfg.MaxConcurrentDials = DefaultMaxConcurrentDials
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.FailingIdleTimeout <= 0 {
		cfg.FailingIdleTimeout = DefaultFailingIdleTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{
		cfg:     cfg,
		log:     cfg.Logger.Named("pool"),
		dial:    make(chan struct{}, cfg.MaxConcurrentDials),
		ctx:     ctx,
		cancel:  cancel,
		entries: make(map[string]*entry),
		reached: make(map[string]string),
		failed:  make(map[string]failure),
		lookups: make(map[string]*lookup),
		wake:    make(chan struct{}, 1),
	}
	p.wg.Add(1)
	go p.janitor()
	return p
}

// Conn returns a ready connection to the workspace's agent, dialling it
// when there is none. Errors wrap the provider's sentinels or
// ErrUnreachable with the reason. The connection belongs to the pool: do
// not close it.
func (p *Pool) Conn(ctx context.Context, name string) (*grpc.ClientConn, error) {
	e, err := p.entry(ctx, name, nil)
	if err != nil {
		return nil, err
	}
	e.touch()
	if e.cc.GetState() == connectivity.Ready {
		return e.cc, nil
	}
	err = p.awaitReady(ctx, e)
	if err == nil {
		return e.cc, nil
	}
	if ctx.Err() != nil {
		return nil, err
	}
	// It failed: the workspace may have been stopped, deleted or moved
	// meanwhile. Ask the provider, and try once more if the endpoint
	// changed.
	e2, rerr := p.entry(ctx, name, e)
	if rerr != nil {
		return nil, rerr
	}
	if e2 == e {
		return nil, err
	}
	if err := p.awaitReady(ctx, e2); err != nil {
		return nil, err
	}
	return e2.cc, nil
}

// entry returns the workspace's entry, creating it (and replacing one
// that is failing or stale, when its endpoint changed) as needed. When
// failed is the current entry, the provider is asked again even if the
// connection is not in failure yet.
func (p *Pool) entry(ctx context.Context, name string, failed *entry) (*entry, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	e := p.entries[name]
	p.mu.Unlock()
	if e != nil {
		stale, err := p.current(e)
		if err != nil {
			return nil, err
		}
		st := e.cc.GetState()
		if e != failed && st != connectivity.TransientFailure && st != connectivity.Shutdown && !stale {
			return e, nil
		}
	}
	// No entry, or a failing or stale one: ask the provider afresh, so
	// that a stopped or deleted workspace says so and a moved agent is
	// redialled.
	ep, err := p.resolve(ctx, name)
	if err != nil {
		if e != nil && ctx.Err() == nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			p.evict(name, e)
		}
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	cur := p.entries[name]
	if cur != nil && cur != e {
		return cur, nil // someone else replaced it meanwhile
	}
	if cur != nil && cur.key == ep.Key && cur.cc.GetState() != connectivity.Shutdown {
		return cur, nil
	}
	ne, err := p.newEntry(name, ep)
	if err != nil {
		return nil, fmt.Errorf("%w: workspace %q: %v", ErrUnreachable, name, err)
	}
	// Until the redialled agent says otherwise, it is the one reached last.
	ne.version = p.reached[name]
	delete(p.reached, name)
	delete(p.failed, name)
	if cur != nil {
		p.log.Debug("endpoint changed, redialling", "workspace", name)
		if !p.drain(cur) {
			cur.cc.Close()
		}
	}
	p.entries[name] = ne
	if ne.idle != p.cfg.IdleTimeout {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
	p.wg.Add(1)
	go p.watch(ne)
	return ne, nil
}

// current checks e against its workspace's endpoint now (CurrentKey):
// when the workspace is gone, e is retired and the error returned; stale
// says its endpoint changed, for entry to replace it.
func (p *Pool) current(e *entry) (stale bool, err error) {
	if p.cfg.CurrentKey == nil {
		return false, nil
	}
	key, err := p.cfg.CurrentKey(e.name)
	switch {
	case errors.Is(err, provider.ErrNotFound):
		p.log.Info("workspace gone: closing its connection", "workspace", e.name)
		p.retire(e)
		return false, err
	case err == nil && key != "":
		return key != e.key, nil
	}
	return false, nil
}

// drain keeps e, taken out of the pool, open while calls are under way on
// it (an attached exec finishes there; closeDrained closes it once they
// have ended) and reports whether it did; false: close it now. Callers
// hold p.mu.
func (p *Pool) drain(e *entry) bool {
	if e.active.Load() == 0 || e.cc.GetState() != connectivity.Ready {
		return false
	}
	p.draining = append(p.draining, e)
	return true
}

// retire takes e out of the pool: new calls do not get it, and it is
// closed now, or once the calls under way on it (an attached exec) have
// ended (closeDrained).
func (p *Pool) retire(e *entry) {
	p.mu.Lock()
	if p.entries[e.name] != e {
		p.mu.Unlock()
		return
	}
	delete(p.entries, e.name)
	delete(p.reached, e.name)
	delete(p.failed, e.name)
	drained := p.drain(e)
	p.mu.Unlock()
	if !drained {
		e.cc.Close()
	}
}

// newEntry builds a (not yet connected) client for ep. Callers hold p.mu.
func (p *Pool) newEntry(name string, ep provider.Endpoint) (*entry, error) {
	e := &entry{name: name, key: ep.Key, idle: p.cfg.IdleTimeout, connect: p.cfg.ConnectTimeout,
		dialStarted: make(chan struct{}), dialEnded: make(chan struct{})}
	if ep.IdleTimeout != 0 {
		e.idle = ep.IdleTimeout
	}
	// grpc gives a dial max(MinConnectTimeout, its backoff) in all, the
	// agent's handshake included.
	minConnect := 5 * time.Second
	if ep.ConnectTimeout > 0 {
		e.connect = max(e.connect, ep.ConnectTimeout)
		minConnect = max(minConnect, ep.ConnectTimeout)
	}
	var (
		addr   transport.Address
		target string
		dialFn func(ctx context.Context) (net.Conn, error)
	)
	switch {
	case ep.Dial != nil:
		e.hop = true
		addr = transport.Address{Network: "pipe", Addr: name}
		target = "passthrough:///ws-" + name
		dialFn = ep.Dial
	case ep.Address.Network == "unix":
		addr = ep.Address
		target = "passthrough:///ws-" + name
		dialFn = dialer("unix", ep.Address.Addr)
	case ep.Address.Network == "tcp":
		addr = ep.Address
		target = "passthrough:///" + ep.Address.Addr
		dialFn = dialer("tcp", ep.Address.Addr)
	default:
		return nil, fmt.Errorf("endpoint has neither a dialer nor an address (%q)", ep.Address)
	}
	if e.key == "" {
		e.key = addr.String()
	}
	opts := append(transport.DialOptions(addr, ep.DialConfig),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return p.boundedDial(ctx, e, dialFn)
		}),
		// The pool evicts idle connections itself.
		grpc.WithIdleTimeout(0),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 10 * time.Second},
			MinConnectTimeout: minConnect,
		}),
		grpc.WithChainUnaryInterceptor(e.unaryTrack),
		grpc.WithChainStreamInterceptor(e.streamTrack),
	)
	opts = append(opts, p.cfg.DialOptions...)
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, err
	}
	e.cc = cc
	e.touch()
	return e, nil
}

func dialer(network, addr string) func(ctx context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
}

// boundedDial opens one connection, holding a slot of the dial semaphore.
//
// After a failed connection attempt, grpc retries in the background on its
// own backoff (100 ms growing to 10 s): for an ssh hop, a refused login a
// few seconds apart (fail2ban bans after five), or an agent upload sent
// again and again over the slow link whose timeout it exceeded. After the
// first dial, a connection is dialled only for a call that waits for it
// (settle starts that attempt): a retry with no call in flight on the
// connection fails at once with the last error and dials nothing.
func (p *Pool) boundedDial(ctx context.Context, e *entry, dial func(context.Context) (net.Conn, error)) (net.Conn, error) {
	e.mu.Lock()
	if !e.dialAt.IsZero() && e.active.Load() == 0 {
		last := e.dialErr
		if last == nil {
			// The dial worked, the connection did not (a handshake, a
			// hop that died at once).
			last = errors.New(cmp.Or(e.lastErr, "the connection to the agent was lost"))
		}
		e.mu.Unlock()
		return nil, last
	}
	// Under way from here (settle waits for it), also while it waits for
	// a slot.
	e.dialing++
	e.dialAt = time.Now()
	close(e.dialStarted)
	e.dialStarted = make(chan struct{})
	e.mu.Unlock()
	var c net.Conn
	var err error
	dialled := false
	select {
	case p.dial <- struct{}{}:
		dialled = true
		c, err = dial(ctx)
		<-p.dial
	case <-ctx.Done():
		err = ctx.Err()
	}
	e.mu.Lock()
	e.dialing--
	if dialled {
		e.dialErr = err
		e.failures++
		if err == nil {
			e.failures = 0
		}
	}
	close(e.dialEnded)
	e.dialEnded = make(chan struct{})
	e.mu.Unlock()
	if !dialled {
		return nil, err
	}
	if err != nil {
		e.setErr(err.Error())
		p.log.Debug("dial failed", "workspace", e.name, "error", err)
		return nil, err
	}
	return c, nil
}

// awaitReady wakes a connection that is not ready (skipping grpc's backoff
// wait, since a caller is waiting now) and waits, within ConnectTimeout,
// until a health check passes or fails. The failure's reason is in the
// error.
func (p *Pool) awaitReady(ctx context.Context, e *entry) error {
	// A connection being opened counts as in use: a dial (an ssh hop that
	// bootstraps the agent) can take longer than a short idle timeout,
	// and the caller's call follows right after.
	e.active.Add(1)
	defer func() { e.touch(); e.active.Add(-1) }()
	ctx, cancel := context.WithTimeout(ctx, e.connect)
	defer cancel()
	e.mu.Lock()
	wasReached := e.everReached
	e.mu.Unlock()
	var err error
	for start := time.Now(); ; {
		settle(ctx, e)
		var r *healthpb.HealthCheckResponse
		r, err = healthpb.NewHealthClient(e.cc).Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			err = fmt.Errorf("agent health is %s", r.GetStatus())
		}
		if err == nil {
			return nil
		}
		// An agent that was reached before and is gone now is most
		// likely being restarted (a crash the supervisor answers, an
		// upgrade): give it a moment before failing the call. Not over
		// a hop: each try is an ssh login (a refused key made eight in
		// those 3 s), and its pump waits for a restarting daemon itself.
		if !wasReached || e.hop || time.Since(start) >= restartGrace || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	if s, ok := status.FromError(err); ok {
		if s.Code() == codes.Canceled && ctx.Err() != nil {
			return ctx.Err()
		}
		err = errors.New(cleanReason(s.Message()))
	}
	e.setErr(err.Error())
	// A dial that failed for a reason the user must fix (a refused API
	// key) is that reason, not an unreachable agent to retry.
	e.mu.Lock()
	dialErr := e.dialErr
	e.mu.Unlock()
	if errors.Is(dialErr, provider.ErrPrecondition) {
		return dialErr
	}
	return fmt.Errorf("%w: workspace %q: %v", ErrUnreachable, e.name, err)
}

// restartGrace is how long a call waits for an agent that was reached
// before to come back.
const restartGrace = 3 * time.Second

// freshAttemptWait bounds the wait for grpc to start a new connection
// attempt after its backoff was reset.
const freshAttemptWait = 2 * time.Second

// retrySpacing is how long after the start of the last dial a call may
// start another, after failures dials in a row failed: at once after one
// (an agent that just came back is reached by the next call), then from
// 250 ms doubling to 5 s.
func retrySpacing(failures int) time.Duration {
	if failures < 2 {
		return 0
	}
	d := 250 * time.Millisecond
	for i := 2; i < failures && d < 5*time.Second; i++ {
		d *= 2
	}
	return min(d, 5*time.Second)
}

// resolveTimeout bounds one provider lookup (a daytona CLI call).
const resolveTimeout = 30 * time.Second

// handshakeWait bounds the wait for the agent's handshake after a dial
// succeeded (the agent bounds it to 15 s on its side).
const handshakeWait = 16 * time.Second

// settle waits until e's connection has the result of a connection
// attempt made for this call: Ready, or a failure. A connection failing
// from before (an agent that was down may be back) gets its backoff reset
// and a fresh attempt; without it, the health check would fail fast on the
// old failure and the first call after an agent restart would be refused.
func settle(ctx context.Context, e *entry) {
	cc := e.cc
	if cc.GetState() == connectivity.TransientFailure {
		e.mu.Lock()
		started, ended, dialing := e.dialStarted, e.dialEnded, e.dialing > 0
		e.mu.Unlock()
		if cc.GetState() != connectivity.TransientFailure {
			return // it got through meanwhile
		}
		// pick_first stays in TRANSIENT_FAILURE until it is Ready, so the
		// attempt shows as a dial that starts and ends: one per call, or
		// the one under way (an install can take minutes), which callers
		// at the same time share. Calls that keep coming to an agent that
		// keeps failing (a follower retrying) fail at once between dials
		// spaced out like a backoff: an ssh login each.
		if !dialing {
			e.mu.Lock()
			wait := retrySpacing(e.failures) - time.Since(e.dialAt)
			e.mu.Unlock()
			if wait > 0 {
				return
			}
			cc.ResetConnectBackoff()
			select {
			case <-started:
			case <-ended:
			case <-time.After(freshAttemptWait):
				return
			case <-ctx.Done():
				return
			}
		}
		select {
		case <-ended:
		case <-ctx.Done():
			return
		}
		e.mu.Lock()
		err := e.dialErr
		e.mu.Unlock()
		if err == nil {
			// Connected: Ready once the agent's handshake is done.
			wctx, cancel := context.WithTimeout(ctx, handshakeWait)
			cc.WaitForStateChange(wctx, connectivity.TransientFailure)
			cancel()
		}
		return
	}
	cc.Connect()
	for {
		st := cc.GetState()
		if st == connectivity.Ready || st == connectivity.TransientFailure || st == connectivity.Shutdown {
			return
		}
		if !cc.WaitForStateChange(ctx, st) {
			return
		}
	}
}

// resolve asks the provider how to reach the workspace, within
// resolveTimeout. Callers asking at the same time share one lookup (for
// Daytona, a CLI process), which runs on the pool's context: a caller
// that gives up does not fail the others.
func (p *Pool) resolve(ctx context.Context, name string) (provider.Endpoint, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return provider.Endpoint{}, ErrClosed
	}
	l := p.lookups[name]
	if l == nil {
		l = &lookup{done: make(chan struct{})}
		p.lookups[name] = l
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			rctx, cancel := context.WithTimeout(p.ctx, resolveTimeout)
			l.ep, l.err = p.cfg.Resolve(rctx, name)
			cancel()
			p.mu.Lock()
			delete(p.lookups, name)
			p.mu.Unlock()
			close(l.done)
		}()
	}
	p.mu.Unlock()
	select {
	case <-l.done:
		return l.ep, l.err
	case <-ctx.Done():
		return provider.Endpoint{}, ctx.Err()
	}
}

// lookup is a provider lookup in flight (resolve).
type lookup struct {
	done chan struct{} // closed when ep and err are set
	ep   provider.Endpoint
	err  error
}

// cleanReason trims grpc's wording down to the cause. grpc quotes the
// dial error (desc = "..."), so a reason that itself holds quotes, such
// as a workspace name, is unquoted rather than left with backslashes.
func cleanReason(msg string) string {
	const desc = "desc = "
	if i := strings.LastIndex(msg, desc+`"`); i >= 0 {
		if u, err := strconv.Unquote(msg[i+len(desc):]); err == nil {
			msg = msg[:i+len(desc)] + u
		}
	}
	for _, p := range []string{"connection error: desc = ", "transport: Error while dialing: ", "transport: "} {
		if i := strings.LastIndex(msg, p); i >= 0 {
			msg = msg[i+len(p):]
		}
	}
	return strings.Trim(msg, `"`)
}

// watch follows one connection's state until it shuts down: it records
// when it became ready and the agent's version, and logs transitions.
func (p *Pool) watch(e *entry) {
	defer p.wg.Done()
	st := e.cc.GetState()
	for {
		if st == connectivity.Ready {
			p.onReady(e)
		} else {
			e.mu.Lock()
			e.since = time.Time{}
			e.mu.Unlock()
		}
		if !e.cc.WaitForStateChange(p.ctx, st) {
			return // pool closed
		}
		prev := st
		st = e.cc.GetState()
		if st == connectivity.Shutdown {
			return
		}
		if prev == connectivity.Ready && st != connectivity.Ready {
			p.log.Info("agent connection lost", "workspace", e.name, "state", st.String())
		}
	}
}

func (p *Pool) onReady(e *entry) {
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.ConnectTimeout)
	defer cancel()
	info, err := agentv1.NewAgentServiceClient(e.cc).GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
	e.mu.Lock()
	defer e.mu.Unlock()
	e.since = time.Now()
	e.lastErr, e.lastErrAt = "", time.Time{} // reached: the last attempt did not fail
	if err == nil {
		e.version = info.GetVersion()
	}
	if !e.everReached {
		e.everReached = true
		p.log.Debug("agent connected", "workspace", e.name, "version", e.version)
	} else {
		p.log.Info("agent reconnected", "workspace", e.name, "version", e.version)
	}
}

func (e *entry) setErr(msg string) {
	e.mu.Lock()
	e.lastErr, e.lastErrAt = msg, time.Now()
	e.mu.Unlock()
}

func (e *entry) touch() { e.used.Store(time.Now().UnixNano()) }

// unaryTrack and streamTrack count calls in flight so that a connection
// carrying a long stream is never evicted as idle.
func (e *entry) unaryTrack(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	e.active.Add(1)
	e.touch()
	defer func() { e.active.Add(-1); e.touch() }()
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (e *entry) streamTrack(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	e.active.Add(1)
	e.touch()
	// OnFinish runs exactly once, also when the stream fails to start.
	opts = append(opts, grpc.OnFinish(func(error) { e.active.Add(-1); e.touch() }))
	return streamer(ctx, desc, cc, method, opts...)
}

// Status reports on one workspace. Without a connection it is not
// Connected and has no LastError, with the Version of the agent last
// reached when its connection was closed as idle.
func (p *Pool) Status(name string) Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.entries[name]
	version := p.reached[name]
	if e == nil {
		f := p.failed[name]
		return Status{Version: version, LastError: f.msg, LastErrorAt: f.at}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	s := Status{Version: e.version, LastError: e.lastErr, LastErrorAt: e.lastErrAt}
	if e.cc.GetState() == connectivity.Ready {
		s.Connected = true
		s.Since = e.since
		if s.Since.IsZero() {
			s.Since = time.Now()
		}
	}
	return s
}

// Len is the number of connections held.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.entries)
}

// Evict closes the workspace's connection, if any (after a stop or
// delete), and any it replaced that calls still used, and forgets its
// agent's version. Calls in flight on them fail.
func (p *Pool) Evict(name string) { p.evict(name, nil) }

// evict is Evict, of entry e only when e is set: not of a new entry that
// another caller made meanwhile.
func (p *Pool) evict(name string, e *entry) {
	p.mu.Lock()
	cur := p.entries[name]
	if e != nil && cur != e {
		p.mu.Unlock()
		return
	}
	delete(p.entries, name)
	delete(p.reached, name)
	delete(p.failed, name)
	var drained []*entry
	if e == nil {
		p.draining = slices.DeleteFunc(p.draining, func(d *entry) bool {
			if d.name == name {
				drained = append(drained, d)
				return true
			}
			return false
		})
	}
	p.mu.Unlock()
	if cur != nil {
		cur.cc.Close()
	}
	for _, d := range drained {
		d.cc.Close()
	}
}

// janitor evicts idle connections. It sweeps at a quarter of the
// shortest idle timeout in use, the pool's or an endpoint's own (a
// Daytona sandbox's is minutes, so that the sandbox can auto-stop), so a
// connection outlives its idle timeout by at most that quarter.
func (p *Pool) janitor() {
	defer p.wg.Done()
	next := time.Now().Add(p.sweepPeriod())
	t := time.NewTimer(time.Until(next))
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-p.wake:
			// An entry with its own idle timeout joined: sweep sooner if
			// it needs that, never later than planned.
			if n := time.Now().Add(p.sweepPeriod()); n.Before(next) {
				next = n
				t.Reset(time.Until(next))
			}
		case <-t.C:
			p.evictGone()
			p.evictIdle(time.Now())
			p.closeDrained()
			next = time.Now().Add(p.sweepPeriod())
			t.Reset(time.Until(next))
		}
	}
}

// sweepPeriod is a quarter of the shortest idle timeout in use (twice
// the failing one counts too), between 10 ms and a minute.
func (p *Pool) sweepPeriod() time.Duration {
	shortest := p.cfg.IdleTimeout
	if shortest <= 0 || p.cfg.FailingIdleTimeout*2 < shortest {
		shortest = p.cfg.FailingIdleTimeout * 2 // failing ones close sooner
	}
	p.mu.Lock()
	for _, e := range p.entries {
		if e.idle > 0 && (shortest <= 0 || e.idle < shortest) {
			shortest = e.idle
		}
	}
	p.mu.Unlock()
	period := shortest / 4
	if period <= 0 || period > time.Minute {
		period = time.Minute
	}
	if period < 10*time.Millisecond {
		period = 10 * time.Millisecond
	}
	return period
}

// closeDrained closes the replaced connections no call uses any more.
func (p *Pool) closeDrained() {
	p.mu.Lock()
	var done []*entry
	p.draining = slices.DeleteFunc(p.draining, func(e *entry) bool {
		if e.active.Load() > 0 && e.cc.GetState() != connectivity.Shutdown {
			return false
		}
		done = append(done, e)
		return true
	})
	p.mu.Unlock()
	for _, e := range done {
		e.cc.Close()
	}
}

// evictGone closes the connections of workspaces that are gone, and of
// those whose endpoint changed that no call uses (Config.CurrentKey): a
// host removed from the hosts file keeps no ssh process.
func (p *Pool) evictGone() {
	if p.cfg.CurrentKey == nil {
		return
	}
	p.mu.Lock()
	entries := make([]*entry, 0, len(p.entries))
	for _, e := range p.entries {
		entries = append(entries, e)
	}
	p.mu.Unlock()
	for _, e := range entries {
		if stale, err := p.current(e); err == nil && stale && e.active.Load() == 0 {
			p.log.Info("endpoint changed: closing the old connection", "workspace", e.name)
			p.evict(e.name, e)
		}
	}
}

func (p *Pool) evictIdle(now time.Time) {
	var victims []*entry
	p.mu.Lock()
	for name, e := range p.entries {
		if e.active.Load() > 0 {
			continue
		}
		idle := e.idle
		e.mu.Lock()
		dialing := e.dialing > 0
		e.mu.Unlock()
		// Not while a dial is under way: an install over a slow link
		// that its caller gave up waiting for would start over.
		failing := !dialing && e.cc.GetState() == connectivity.TransientFailure
		if failing && (idle < 0 || idle > p.cfg.FailingIdleTimeout) {
			idle = p.cfg.FailingIdleTimeout
		}
		if idle < 0 {
			continue
		}
		if now.Sub(time.Unix(0, e.used.Load())) >= idle {
			delete(p.entries, name)
			victims = append(victims, e)
			e.mu.Lock()
			if e.version != "" {
				p.reached[name] = e.version
			}
			if failing && e.lastErr != "" {
				p.failed[name] = failure{e.lastErr, e.lastErrAt}
			}
			e.mu.Unlock()
		}
	}
	p.mu.Unlock()
	for _, e := range victims {
		p.log.Debug("closing idle connection", "workspace", e.name)
		e.cc.Close()
	}
}

// Close closes every connection and stops the pool's goroutines.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	ccs := make([]*grpc.ClientConn, 0, len(p.entries)+len(p.draining))
	for _, e := range p.entries {
		ccs = append(ccs, e.cc)
	}
	for _, e := range p.draining {
		ccs = append(ccs, e.cc)
	}
	p.entries, p.draining = nil, nil
	p.reached = nil
	p.failed = nil
	p.mu.Unlock()
	p.cancel()
	var errs []error
	for _, cc := range ccs {
		if err := cc.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	p.wg.Wait()
	return errors.Join(errs...)
}
