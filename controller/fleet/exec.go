package fleet

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/dtmux/dtmux/internal/errinfo"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// Exec runs spec on every selected workspace and streams events to emit:
// KindStarted first, then per target queued, started, output, and one
// final event (exited, unreachable or skipped). It returns the summary
// once every target has ended. Runs are detached on the agents: when the
// caller goes away (ctx ends or emit fails) the commands keep running and
// Attach collects them later.
func (e *Engine) Exec(ctx context.Context, spec Spec, emit Emit) (Summary, error) {
	began := time.Now()
	if len(spec.Command.GetArgv()) == 0 {
		return Summary{}, fmt.Errorf("%w: empty command", ErrInvalid)
	}
	if spec.Selector.Empty() {
		return Summary{}, fmt.Errorf("%w: select workspaces by name, label or all", ErrInvalid)
	}
	if spec.RunID == "" {
		spec.RunID = NewRunID()
	} else if !ValidRunID(spec.RunID) {
		return Summary{}, fmt.Errorf("%w: run id %q: use letters, digits, '.', '_', '-', at most 64 bytes", ErrInvalid, spec.RunID)
	}
	if spec.MaxParallel <= 0 {
		spec.MaxParallel = DefaultParallel
	}
	if spec.RetryBackoff <= 0 {
		spec.RetryBackoff = DefaultBackoff
	}
	targets, err := e.targets.Select(ctx, spec.Selector)
	if err != nil {
		return Summary{}, err
	}
	targets = dedupe(targets)
	if len(targets) == 0 {
		return Summary{}, ErrNoTargets
	}
	names := make([]string, len(targets))
	for i, t := range targets {
		names[i] = t.Name
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &fleetRun{
		e:     e,
		spec:  spec,
		out:   &emitter{fn: emit, cancel: cancel},
		tally: newTally(names),
		count: strconv.Itoa(len(targets)),
		stop:  make(chan struct{}),
		log:   e.log.With("fleet_run", spec.RunID),
	}
	r.log.Debug("fleet exec", "targets", len(targets), "max_parallel", spec.MaxParallel)
	if err := r.out.send(Event{Kind: KindStarted, RunID: spec.RunID, Workspaces: names}); err != nil {
		return Summary{}, err
	}
	for _, t := range targets {
		if t.Skip != "" {
			r.skip(t.Name, t.Skip)
			continue
		}
		if err := r.out.send(Event{Kind: KindQueued, Workspace: t.Name}); err != nil {
			return Summary{}, err
		}
	}
	r.dispatch(ctx, targets)
	if err := r.out.failed(); err != nil {
		return Summary{}, err
	}
	if err := ctx.Err(); err != nil {
		return Summary{}, err
	}
	s := r.tally.summary(spec.RunID, time.Since(began))
	r.log.Debug("fleet exec done", "succeeded", s.Succeeded, "failed", s.Failed, "unreachable", s.Unreachable, "duration", s.Duration)
	return s, nil
}

func dedupe(ts []Target) []Target {
	seen := make(map[string]bool, len(ts))
	out := ts[:0:0]
	for _, t := range ts {
		if !seen[t.Name] {
			seen[t.Name] = true
			out = append(out, t)
		}
	}
	return out
}

// fleetRun is one Exec call in progress.
type fleetRun struct {
	e     *Engine
	spec  Spec
	out   *emitter
	tally *tally
	log   hclog.Logger
	// count is the number of targets, the value of TargetsLabelKey.
	count string

	// stop is closed when max-failures is reached; stopReason is written
	// before.
	stop       chan struct{}
	stopOnce   sync.Once
	stopReason string
}

// item is a target waiting for a worker: new, or back from a backoff.
type item struct {
	name     string
	attempt  int           // attempts made so far
	backoff  time.Duration // wait before the next retry
	deadline time.Time     // target deadline; zero: none
}

// queue hands targets to workers in order; a target that must be retried
// goes to the back after its backoff, so it never holds a worker while
// waiting and never delays the targets behind it.
type queue struct {
	mu      sync.Mutex
	items   []*item // guarded by mu
	pending int     // targets not finished, backoffs included; guarded by mu
	wake    chan struct{}
}

func (q *queue) push(it *item) {
	q.mu.Lock()
	q.items = append(q.items, it)
	q.mu.Unlock()
	q.signal()
}

func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// done marks one target finished.
func (q *queue) done() {
	q.mu.Lock()
	q.pending--
	q.mu.Unlock()
	q.signal()
}

// next returns the next target, or false when none is left or the run
// stops.
func (q *queue) next(ctx context.Context, stop <-chan struct{}) (*item, bool) {
	for {
		select {
		case <-stop:
			q.signal() // pass the news on to the next idle worker
			return nil, false
		case <-ctx.Done():
			return nil, false
		default:
		}
		q.mu.Lock()
		if len(q.items) > 0 {
			it := q.items[0]
			q.items = q.items[1:]
			q.mu.Unlock()
			return it, true
		}
		if q.pending == 0 {
			q.mu.Unlock()
			q.signal()
			return nil, false
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-stop:
		case <-ctx.Done():
		}
	}
}

// drain removes what is still queued.
func (q *queue) drain() []*item {
	q.mu.Lock()
	defer q.mu.Unlock()
	its := q.items
	q.items = nil
	return its
}

// dispatch runs the targets with MaxParallel workers until all ended or
// the run stopped; what was never started is reported skipped.
func (r *fleetRun) dispatch(ctx context.Context, targets []Target) {
	q := &queue{wake: make(chan struct{}, 1)}
	for _, t := range targets {
		if t.Skip == "" {
			q.items = append(q.items, &item{name: t.Name, backoff: r.spec.RetryBackoff})
			q.pending++
		}
	}
	var wg sync.WaitGroup // workers and backoff timers
	for range min(r.spec.MaxParallel, q.pending) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				it, ok := q.next(ctx, r.stop)
				if !ok {
					return
				}
				if !r.work(ctx, it) {
					q.done()
					continue
				}
				// Retry after the backoff, at the back of the queue.
				wait := it.backoff
				if !it.deadline.IsZero() {
					wait = min(wait, time.Until(it.deadline))
				}
				it.backoff *= 2
				wg.Add(1)
				go func() {
					defer wg.Done()
					if !sleep(ctx, wait) {
						q.done()
						return
					}
					select {
					case <-r.stop:
						r.skip(it.name, r.stopReason)
						q.done()
					default:
						q.push(it)
					}
				}()
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	for _, it := range q.drain() {
		r.skip(it.name, r.stopReason)
	}
}

func (r *fleetRun) skip(name, reason string) {
	r.tally.set(name, resSkipped, 0)
	_ = r.out.send(Event{Kind: KindSkipped, Workspace: name, Reason: reason})
}

// record sets a target's result and stops the run when max-failures is
// reached.
func (r *fleetRun) record(name string, res result, code int) {
	n := r.tally.set(name, res, code)
	if m := r.spec.MaxFailures; m > 0 && n >= m {
		r.stopOnce.Do(func() {
			if m == 1 {
				r.stopReason = "fail-fast: a target failed"
			} else {
				r.stopReason = fmt.Sprintf("max-failures: %d targets failed", m)
			}
			r.log.Debug("stopping fleet run", "reason", r.stopReason)
			close(r.stop)
		})
	}
}

// Kill reasons, stored in run's killed flag.
const (
	killNone int32 = iota
	killTimeout
	killCancel
)

// work makes one attempt at a target: start the command and follow it to
// the end, or report why it could not start. It returns true when the
// target should be retried (its agent was unreachable).
func (r *fleetRun) work(ctx context.Context, it *item) (retry bool) {
	it.attempt++
	if it.attempt == 1 && r.spec.TargetTimeout > 0 {
		it.deadline = time.Now().Add(r.spec.TargetTimeout)
	}
	// tctx carries every stream of this target; it ends early only when a
	// killed target's trailer does not come (see watch).
	tctx, tcancel := context.WithCancel(ctx)
	defer tcancel()
	st, err := r.start(tctx, it.name, it.deadline)
	if err == nil {
		r.run(ctx, tctx, tcancel, it.name, it.attempt, it.deadline, st)
		return false
	}
	if ctx.Err() != nil {
		return false // the caller went away; nothing to report to
	}
	unreachable, retryable := classify(err)
	if !it.deadline.IsZero() && !time.Now().Before(it.deadline) {
		r.record(it.name, resUnreachable, 0)
		_ = r.out.send(Event{Kind: KindUnreachable, Workspace: it.name, Attempts: uint32(it.attempt),
			Reason: fmt.Sprintf("target timeout (%s) before the command started: %s", r.spec.TargetTimeout, errMessage(err))})
		// The start may have reached the agent: kill by run id, in the
		// background, so that a hung agent does not hold the report (and
		// the summary) for the kill's grace. The engine owns it.
		r.e.bg.Add(1)
		go func() {
			defer r.e.bg.Done()
			r.kill(context.WithoutCancel(ctx), it.name, nil)
		}()
		return false
	}
	if !unreachable {
		tr, code := startFailure(err)
		r.record(it.name, resFailed, code)
		_ = r.out.send(Event{Kind: KindExited, Workspace: it.name, Trailer: tr})
		return false
	}
	if !retryable || it.attempt > r.spec.Retries {
		r.record(it.name, resUnreachable, 0)
		_ = r.out.send(Event{Kind: KindUnreachable, Workspace: it.name, Attempts: uint32(it.attempt), Reason: errMessage(err)})
		return false
	}
	r.log.Debug("target unreachable; will retry", "workspace", it.name, "attempt", it.attempt, "error", err)
	return true
}

// started is a run that started on a target.
type started struct {
	client agentv1.AgentServiceClient
	recv   recvFunc
	pid    int32
}

// start opens an Exec stream with the fleet's run id and waits for the
// RunStarted event. With a deadline, connecting and starting must finish
// before it.
func (r *fleetRun) start(tctx context.Context, name string, deadline time.Time) (started, error) {
	actx, acancel := context.WithCancel(tctx)
	if !deadline.IsZero() {
		t := time.AfterFunc(time.Until(deadline), acancel)
		defer t.Stop()
	}
	ok := false
	defer func() {
		if !ok {
			acancel()
		}
	}()
	c, err := r.e.targets.Client(actx, name)
	if err != nil {
		return started{}, unreachableError{err}
	}
	st, err := c.Exec(actx)
	if err != nil {
		return started{}, err
	}
	req := &agentv1.ExecStart{
		Command: r.spec.Command,
		RunId:   r.spec.RunID,
		Detach:  true,
		Limits:  r.spec.Limits,
		Labels:  map[string]string{LabelKey: r.spec.RunID, TargetsLabelKey: r.count},
	}
	if r.spec.Timeout > 0 {
		req.Timeout = durationpb.New(r.spec.Timeout)
	}
	if r.spec.IdleTimeout > 0 {
		req.IdleTimeout = durationpb.New(r.spec.IdleTimeout)
	}
	// A send error means the stream is gone; Recv says why.
	if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: req}}); err == nil {
		// Fleet commands read no input: EOF on stdin, as pdsh does.
		_ = st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_CloseStdin{CloseStdin: &agentv1.ExecStdinClose{}}})
		_ = st.CloseSend()
	}
	recv := execRecv(st)
	first, err := recv()
	if err != nil {
		return started{}, err
	}
	ok = true
	s := started{client: c, recv: recv, pid: first.started.GetPid()}
	if first.started == nil {
		// Not the documented order, but do not drop the event.
		pending := &first
		s.recv = func() (runEvent, error) {
			if pending != nil {
				ev := *pending
				pending = nil
				return ev, nil
			}
			return recv()
		}
	}
	// actx stays alive with the stream; tctx's cancel ends it.
	_ = acancel
	return s, nil
}

// startFailure turns a start error (not an unreachable agent) into a
// trailer and an exit code, as `dtmux exec` exits: 127 when the program
// was not found, 126 when it cannot be executed, 254 for a request the
// agent refused (a bad working directory, limit, run id), else 1.
func startFailure(err error) (*agentv1.RunTrailer, int) {
	code := 1
	switch errinfo.Reason(err) {
	case errinfo.ProgramNotFound:
		code = 127
	case errinfo.ProgramNotExecutable:
		code = 126
	default:
		if c := status.Code(err); c == codes.InvalidArgument || c == codes.AlreadyExists {
			code = 254
		}
	}
	return &agentv1.RunTrailer{ExitCode: -1, Detail: "start failed: " + errMessage(err)}, code
}

// run follows a started target to its trailer, killing it on the target
// deadline or, with CancelRunning, when the fleet run stops early.
func (r *fleetRun) run(ctx, tctx context.Context, tcancel context.CancelFunc, name string, attempt int, deadline time.Time, st started) {
	if err := r.out.send(Event{Kind: KindTarget, Workspace: name, PID: st.pid, Attempt: uint32(attempt)}); err != nil {
		return
	}
	var killed atomic.Int32
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.watch(ctx, name, st.client, deadline, &killed, done, tcancel)
	}()
	f := &follower{targets: r.e.targets, out: r.out, name: name, runID: r.spec.RunID, reconnects: r.spec.Retries, backoff: r.spec.RetryBackoff}
	tr, err := f.follow(tctx, st.recv, true)
	close(done)
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	k := killed.Load()
	switch {
	case tr == nil && k == killTimeout:
		tr = &agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_TIMED_OUT, ExitCode: -1, Detail: fmt.Sprintf("target timeout (%s); killed, no trailer from the agent", r.spec.TargetTimeout)}
	case tr == nil && k == killCancel:
		tr = &agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_KILLED, ExitCode: -1, Detail: "cancelled; killed, no trailer from the agent"}
	case tr == nil:
		tr = &agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_AGENT_LOST, ExitCode: -1, Detail: errMessage(err)}
	case k == killTimeout && !Succeeded(tr):
		tr = proto.CloneOf(tr)
		tr.Reason = agentv1.ExitReason_EXIT_REASON_TIMED_OUT
		tr.Detail = fmt.Sprintf("target timeout (%s)", r.spec.TargetTimeout)
	}
	res, code := resFailed, ExitCode(tr)
	switch {
	case Succeeded(tr):
		res, code = resSucceeded, 0
	case k == killCancel:
		res, code = resCancelled, 0
	}
	r.record(name, res, code)
	_ = r.out.send(Event{Kind: KindExited, Workspace: name, Trailer: tr})
}

// watch kills the target's run on its deadline or when the fleet run
// stops early with CancelRunning; then, if the trailer does not follow
// within killGrace, it ends the target's streams.
func (r *fleetRun) watch(ctx context.Context, name string, c agentv1.AgentServiceClient, deadline time.Time, killed *atomic.Int32, done <-chan struct{}, tcancel context.CancelFunc) {
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	var stop <-chan struct{}
	if r.spec.CancelRunning {
		stop = r.stop
	}
	select {
	case <-done:
		return
	case <-ctx.Done():
		return
	case <-timeout:
		killed.Store(killTimeout)
	case <-stop:
		killed.Store(killCancel)
	}
	r.kill(ctx, name, c)
	grace := time.NewTimer(killGrace)
	defer grace.Stop()
	select {
	case <-done:
	case <-grace.C:
		tcancel()
	}
}

// kill sends SIGKILL to the run's process group on a target; c may be
// nil (then it is looked up). Errors are logged: the trailer tells.
func (r *fleetRun) kill(ctx context.Context, name string, c agentv1.AgentServiceClient) {
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killGrace)
	defer cancel()
	if c == nil {
		var err error
		if c, err = r.e.targets.Client(kctx, name); err != nil {
			return
		}
	}
	_, err := c.SignalRun(kctx, &agentv1.SignalRunRequest{RunId: r.spec.RunID, Signal: agentv1.Signal_SIGNAL_KILL})
	if err != nil && status.Code(err) != codes.NotFound {
		r.log.Warn("kill target", "workspace", name, "error", err)
	}
}
