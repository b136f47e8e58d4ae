package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/dtmux/dtmux/agent/process"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// Exec starts a run (or attaches to the one with the same id), streams its
// output and trailer, and feeds it the client's stdin, signals and
// resizes.
func (s *Server) Exec(stream agentv1.AgentService_ExecServer) error {
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return toStatus(s.log, fmt.Errorf("the Exec stream ended before its start message: %w", errInvalid))
	}
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return toStatus(s.log, fmt.Errorf("the first Exec message must be start: %w", errInvalid))
	}
	spec, err := specFromStart(start)
	if err != nil {
		return toStatus(s.log, err)
	}
	// The stream that starts an attached run owns it: like ssh, the
	// process waits for this client rather than lose output it has not
	// read. Other viewers get gaps instead.
	spec.Owner = !spec.Detach
	run, existing, err := s.runs.Start(spec)
	if err != nil {
		return toStatus(s.log, err)
	}
	// The run is not bound to this stream's context (see Manager.Start);
	// only the hang-up below, for attached runs, ties them together.
	release := run.AddClient(true)
	defer release()

	var rd *process.Reader
	if !existing {
		rd = run.OwnerReader() // nil for a detached run
	}
	if rd == nil {
		var stdoutFrom, stderrFrom uint64
		if existing {
			stdoutFrom, stderrFrom = start.GetStdoutOffset(), start.GetStderrOffset()
		}
		rd = run.NewReader(stdoutFrom, stderrFrom)
	}
	// Deferred after release, so it runs first: the process stops waiting
	// for this stream before the hang-up.
	defer rd.Close()

	if err := stream.Send(&agentv1.ExecResponse{Event: &agentv1.ExecResponse_Started{Started: startedToProto(run.Info(), existing)}}); err != nil {
		return err
	}

	ctx, stop := s.streamContext(stream.Context())
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in := &execInput{s: s, run: run, stream: stream, cancel: cancel}
	// The input goroutine ends when the client half-closes, or when this
	// handler returns (gRPC then fails its Recv).
	go in.loop()

	err = pump(ctx, run, rd, true, execEvents{stream})
	if ierr := in.failure(); ierr != nil {
		return toStatus(s.log, ierr)
	}
	return toStatus(s.log, ended(ctx, err))
}

// execInput applies the client messages after start.
type execInput struct {
	s      *Server
	run    *process.Run
	stream agentv1.AgentService_ExecServer
	cancel context.CancelFunc

	mu  sync.Mutex
	err error // guarded by mu; a client mistake that ends the stream
}

func (in *execInput) failure() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.err
}

func (in *execInput) fail(err error) {
	in.mu.Lock()
	in.err = err
	in.mu.Unlock()
	in.cancel()
}

func (in *execInput) loop() {
	for {
		req, err := in.stream.Recv()
		if err != nil {
			// io.EOF: the client half-closed; it still reads the output.
			return
		}
		var aerr error
		switch m := req.GetMsg().(type) {
		case *agentv1.ExecRequest_Stdin:
			aerr = in.run.WriteStdin(m.Stdin)
		case *agentv1.ExecRequest_CloseStdin:
			aerr = in.run.CloseStdin()
		case *agentv1.ExecRequest_Signal:
			sig, err := signalOf(m.Signal.GetSignal())
			if err != nil {
				in.fail(err)
				return
			}
			aerr = in.run.Signal(sig, "")
		case *agentv1.ExecRequest_Resize:
			if m.Resize.GetRows() > 0xffff || m.Resize.GetCols() > 0xffff {
				in.fail(fmt.Errorf("resize to %dx%d: too large: %w", m.Resize.GetCols(), m.Resize.GetRows(), errInvalid))
				return
			}
			aerr = in.run.Resize(uint16(m.Resize.GetRows()), uint16(m.Resize.GetCols()))
		case *agentv1.ExecRequest_Start:
			in.fail(fmt.Errorf("start may only be the first Exec message: %w", errInvalid))
			return
		default:
			in.fail(fmt.Errorf("empty Exec message: %w", errInvalid))
			return
		}
		switch {
		case aerr == nil, errors.Is(aerr, process.ErrRunFinished):
			// Input racing the end of the run is not the client's fault.
		case errors.Is(aerr, process.ErrInvalidSpec):
			in.fail(aerr)
			return
		default:
			in.s.log.Debug("exec input", "run_id", in.run.ID(), "error", aerr)
		}
	}
}

type execEvents struct {
	stream agentv1.AgentService_ExecServer
}

func (e execEvents) output(o *agentv1.RunOutput) error {
	return e.stream.Send(&agentv1.ExecResponse{Event: &agentv1.ExecResponse_Output{Output: o}})
}

func (e execEvents) gap(g *agentv1.RunGap) error {
	return e.stream.Send(&agentv1.ExecResponse{Event: &agentv1.ExecResponse_Gap{Gap: g}})
}

func (e execEvents) trailer(t *agentv1.RunTrailer) error {
	return e.stream.Send(&agentv1.ExecResponse{Event: &agentv1.ExecResponse_Trailer{Trailer: t}})
}
