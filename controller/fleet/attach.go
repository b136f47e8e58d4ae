package fleet

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// AttachSpec names a fleet run to collect.
type AttachSpec struct {
	// RunID of the fleet run.
	RunID string
	// Selector says which workspaces to ask; empty means all.
	Selector Selector
	// Follow waits for every target to end; without it, what the agents
	// hold is sent and running targets are left running.
	Follow bool
	// MaxParallel bounds the agents asked at once (0: DefaultParallel).
	MaxParallel int
	// Retries and RetryBackoff apply to reattaching a broken stream.
	Retries      int
	RetryBackoff time.Duration
}

// Attach collects a fleet run from every agent that has it: each target's
// output from the first byte (or a gap for what was evicted) and its
// trailer, then the summary. Agents without the run are left out. The
// summary counts the run's targets only: when every target was found
// (TargetsLabelKey), agents that cannot be asked are not targets and are
// left out too; otherwise they are reported not asked (KindNotAsked) and
// counted nowhere, and the targets not found count as NotFound.
func (e *Engine) Attach(ctx context.Context, spec AttachSpec, emit Emit) (Summary, error) {
	began := time.Now()
	if !ValidRunID(spec.RunID) {
		return Summary{}, fmt.Errorf("%w: run id %q", ErrInvalid, spec.RunID)
	}
	// Only asking every workspace can find every target; a narrower
	// selector asks about the targets among those it selects.
	every := spec.Selector.Empty() || spec.Selector.All
	if spec.Selector.Empty() {
		spec.Selector.All = true
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

	// Phase 1: which agents have the run.
	type probe struct {
		name    string
		client  agentv1.AgentServiceClient
		has     bool
		started time.Time // the run's start on this target, if known
		count   int       // the run's TargetsLabelKey; 0: not known
		err     error
	}
	probes := make([]probe, 0, len(targets))
	for _, t := range targets {
		if t.Skip == "" {
			probes = append(probes, probe{name: t.Name})
		}
	}
	parallel(ctx, len(probes), spec.MaxParallel, func(i int) {
		p := &probes[i]
		c, err := e.targets.Client(ctx, p.name)
		if err != nil {
			p.err = err
			return
		}
		p.client = c
		resp, err := c.GetRun(ctx, &agentv1.GetRunRequest{RunId: spec.RunID})
		switch {
		case err == nil:
			p.has = true
			if ts := resp.GetRun().GetStartedAt(); ts != nil {
				p.started = ts.AsTime()
			}
			if n, err := strconv.Atoi(resp.GetRun().GetLabels()[TargetsLabelKey]); err == nil && n > 0 {
				p.count = n
			}
		case status.Code(err) == codes.NotFound:
		default:
			p.err = err
		}
	})
	if err := ctx.Err(); err != nil {
		return Summary{}, err
	}
	var names []string
	var have, notAsked []probe
	count := 0 // the run's number of targets; 0: not known
	for _, p := range probes {
		switch {
		case p.has:
			names = append(names, p.name)
			have = append(have, p)
			count = max(count, p.count)
		case p.err != nil:
			notAsked = append(notAsked, p)
		}
	}
	if len(have) == 0 {
		msg := fmt.Sprintf("asked %d workspaces", len(probes)-len(notAsked))
		if len(notAsked) > 0 {
			msg += fmt.Sprintf("; %d could not be asked", len(notAsked))
		}
		return Summary{}, fmt.Errorf("%w: %s (%s)", ErrRunNotFound, spec.RunID, msg)
	}
	if !every {
		count = 0
	}
	if count > 0 && len(have) >= count {
		// Every target found: the rest are not targets.
		if len(notAsked) > 0 {
			e.log.Debug("fleet attach: every target found; workspaces not asked are not targets", "fleet_run", spec.RunID, "not_asked", len(notAsked))
		}
		notAsked = nil
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := &emitter{fn: emit, cancel: cancel}
	t := newTally(names)
	if err := out.send(Event{Kind: KindStarted, RunID: spec.RunID, Workspaces: names}); err != nil {
		return Summary{}, err
	}
	for _, p := range notAsked {
		if err := out.send(Event{Kind: KindNotAsked, Workspace: p.name, Reason: errMessage(p.err)}); err != nil {
			return Summary{}, err
		}
	}

	// Phase 2: stream each target's run from the first byte.
	span := &runSpan{}
	for _, p := range have {
		span.start(p.started)
	}
	parallel(ctx, len(have), spec.MaxParallel, func(i int) {
		p := have[i]
		f := &follower{targets: e.targets, out: out, name: p.name, runID: spec.RunID, reconnects: spec.Retries, backoff: spec.RetryBackoff}
		st, err := p.client.AttachRun(ctx, &agentv1.AttachRunRequest{RunId: spec.RunID, Follow: spec.Follow})
		var recv recvFunc
		if err != nil {
			recv = func() (runEvent, error) { return runEvent{}, err }
		} else {
			recv = attachRecv(st)
		}
		tr, err := f.follow(ctx, recv, spec.Follow)
		if ctx.Err() != nil {
			return
		}
		switch {
		case tr == nil && err == nil:
			span.end(time.Now()) // still running; not following
			return
		case tr == nil:
			tr = &agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_AGENT_LOST, ExitCode: -1, Detail: errMessage(err)}
			span.end(time.Now())
		default:
			span.ended(p.started, tr)
		}
		if Succeeded(tr) {
			t.set(p.name, resSucceeded, 0)
		} else {
			t.set(p.name, resFailed, ExitCode(tr))
		}
		_ = out.send(Event{Kind: KindExited, Workspace: p.name, Trailer: tr})
	})
	if err := out.failed(); err != nil {
		return Summary{}, err
	}
	if err := ctx.Err(); err != nil {
		return Summary{}, err
	}
	sum := t.summary(spec.RunID, span.duration(time.Since(began)))
	if count > len(have) {
		sum.NotFound = count - len(have)
		sum.Total = count
	}
	for _, p := range notAsked {
		sum.NotAsked = append(sum.NotAsked, p.name)
	}
	return sum, nil
}

// runSpan is the time a fleet run took on its targets: from the earliest
// start to the latest end, as the agents recorded them (not how long
// collecting it took). Safe for concurrent use.
type runSpan struct {
	mu          sync.Mutex
	first, last time.Time // guarded by mu
}

func (s *runSpan) start(t time.Time) {
	if t.IsZero() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.first.IsZero() || t.Before(s.first) {
		s.first = t
	}
}

func (s *runSpan) end(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.After(s.last) {
		s.last = t
	}
}

// ended records a target's end from its trailer: ended_at, else its start
// plus the trailer's duration.
func (s *runSpan) ended(started time.Time, tr *agentv1.RunTrailer) {
	switch {
	case tr.GetEndedAt() != nil:
		s.end(tr.GetEndedAt().AsTime())
	case tr.GetDuration() != nil && !started.IsZero():
		s.end(started.Add(tr.GetDuration().AsDuration()))
	}
}

// duration is the span, or fallback when it is not known.
func (s *runSpan) duration(fallback time.Duration) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.first.IsZero() || s.last.IsZero() || s.last.Before(s.first) {
		return fallback
	}
	return s.last.Sub(s.first)
}

// parallel calls fn(0..n-1) with at most limit calls at once and returns
// when all have returned. It stops starting calls once ctx ends.
func parallel(ctx context.Context, n, limit int, fn func(i int)) {
	sem := make(chan struct{}, max(limit, 1))
	var wg sync.WaitGroup
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			fn(i)
		}()
	}
	wg.Wait()
}
