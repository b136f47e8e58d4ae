package agent

import (
	"context"
	"errors"
	"io"

	"github.com/dtmux/dtmux/agent/process"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// runEvents sends one kind of response stream (Exec or AttachRun).
type runEvents interface {
	output(*agentv1.RunOutput) error
	gap(*agentv1.RunGap) error
	trailer(*agentv1.RunTrailer) error
}

// pump copies a run's output from rd to the client, then the trailer once
// the run has finished. Without follow it stops when caught up with a run
// that is still going (no trailer then). The client's pace only ever
// slows this reader.
func pump(ctx context.Context, run *process.Run, rd *process.Reader, follow bool, out runEvents) error {
	for {
		ev, err := rd.Next(ctx, follow)
		switch {
		case errors.Is(err, io.EOF):
			return out.trailer(trailerToProto(run.Trailer()))
		case errors.Is(err, process.ErrCaughtUp):
			return nil
		case err != nil:
			return err
		}
		switch ev.Kind {
		case process.EventOutput:
			err = out.output(&agentv1.RunOutput{Stream: streamToProto(ev.Stream), Offset: ev.Offset, Data: ev.Data})
		case process.EventGap:
			err = out.gap(&agentv1.RunGap{Stream: streamToProto(ev.Stream), Offset: ev.Offset, Bytes: ev.Bytes})
		}
		if err != nil {
			return err
		}
	}
}
