package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// runEvent is one event of an Exec or AttachRun stream.
type runEvent struct {
	started *agentv1.RunStarted
	output  *agentv1.RunOutput
	gap     *agentv1.RunGap
	trailer *agentv1.RunTrailer
}

type recvFunc func() (runEvent, error)

func execRecv(st agentv1.AgentService_ExecClient) recvFunc {
	return func() (runEvent, error) {
		m, err := st.Recv()
		if err != nil {
			return runEvent{}, err
		}
		return runEvent{started: m.GetStarted(), output: m.GetOutput(), gap: m.GetGap(), trailer: m.GetTrailer()}, nil
	}
}

func attachRecv(st agentv1.AgentService_AttachRunClient) recvFunc {
	return func() (runEvent, error) {
		m, err := st.Recv()
		if err != nil {
			return runEvent{}, err
		}
		return runEvent{started: m.GetStarted(), output: m.GetOutput(), gap: m.GetGap(), trailer: m.GetTrailer()}, nil
	}
}

// unreachableError marks an error as "the agent could not be reached".
type unreachableError struct{ err error }

func (u unreachableError) Error() string { return u.err.Error() }
func (u unreachableError) Unwrap() error { return u.err }

// classify tells whether err means the agent was not reached (so the
// command cannot have been started by this attempt's stream, or starting
// again with the same run id is harmless) and whether trying again can
// help.
func classify(err error) (unreachable, retry bool) {
	var u unreachableError
	if errors.As(err, &u) {
		return true, true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted:
		return true, true
	case codes.Unauthenticated, codes.PermissionDenied:
		return true, false
	}
	return false, false
}

// errMessage is an error's message without the gRPC decoration.
func errMessage(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Message()
	}
	return err.Error()
}

// follower streams one target's run to its trailer, reattaching from the
// offsets already delivered when the stream breaks, so that nothing is
// lost and nothing is delivered twice.
type follower struct {
	targets Targets
	out     *emitter
	name    string
	runID   string
	// reconnects is how many consecutive failed reattach attempts are
	// tolerated; backoff is the first wait between them.
	reconnects int
	backoff    time.Duration
	offsets    [3]uint64 // next byte wanted, by agentv1.Stream
}

// follow reads recv until the trailer. With live false, the end of the
// stream without a trailer means the run is still going: it returns nil,
// nil. It returns an error when ctx ends, emitting fails, or the agent
// cannot be reattached.
func (f *follower) follow(ctx context.Context, recv recvFunc, live bool) (*agentv1.RunTrailer, error) {
	failures := 0
	for {
		ev, err := recv()
		if err == nil {
			failures = 0
			switch {
			case ev.output != nil:
				if err := f.deliver(ev.output); err != nil {
					return nil, err
				}
			case ev.gap != nil:
				s := ev.gap.GetStream()
				if int(s) < len(f.offsets) {
					f.offsets[s] = max(f.offsets[s], ev.gap.GetOffset()+ev.gap.GetBytes())
				}
				if err := f.out.send(Event{Kind: KindGap, Workspace: f.name, Gap: ev.gap}); err != nil {
					return nil, err
				}
			case ev.trailer != nil:
				return ev.trailer, nil
			}
			continue
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, io.EOF) && !live {
			return nil, nil
		}
		if !errors.Is(err, io.EOF) {
			if unreachable, _ := classify(err); !unreachable {
				return nil, err
			}
		}
		failures++
		if failures > max(f.reconnects, 1) {
			return nil, fmt.Errorf("lost the agent: %s", errMessage(err))
		}
		if !sleep(ctx, f.backoff<<(failures-1)) {
			return nil, ctx.Err()
		}
		recv = f.reattach(ctx, live)
	}
}

// deliver emits output past what was already delivered.
func (f *follower) deliver(o *agentv1.RunOutput) error {
	s := o.GetStream()
	if int(s) >= len(f.offsets) {
		return nil
	}
	off, data := o.GetOffset(), o.GetData()
	if want := f.offsets[s]; off < want {
		// A replay overlapping what we have: drop the known prefix.
		skip := want - off
		if skip >= uint64(len(data)) {
			return nil
		}
		o = &agentv1.RunOutput{Stream: s, Offset: want, Data: data[skip:]}
		off, data = want, data[skip:]
	}
	f.offsets[s] = off + uint64(len(data))
	return f.out.send(Event{Kind: KindOutput, Workspace: f.name, Output: o})
}

// reattach opens AttachRun from the current offsets. Errors come back
// through the returned recvFunc so that follow counts them.
func (f *follower) reattach(ctx context.Context, live bool) recvFunc {
	c, err := f.targets.Client(ctx, f.name)
	if err != nil {
		return func() (runEvent, error) { return runEvent{}, unreachableError{err} }
	}
	st, err := c.AttachRun(ctx, &agentv1.AttachRunRequest{
		RunId:        f.runID,
		StdoutOffset: f.offsets[agentv1.Stream_STREAM_STDOUT],
		StderrOffset: f.offsets[agentv1.Stream_STREAM_STDERR],
		Follow:       live,
	})
	if err != nil {
		return func() (runEvent, error) { return runEvent{}, err }
	}
	return attachRecv(st)
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
