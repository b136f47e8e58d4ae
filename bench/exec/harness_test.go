package execbench

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/dtmux/dtmux/internal/benchenv"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// The shared harness (controller, binaries, samples) is internal/benchenv.

const wsName = "bench"

type latencies = benchenv.Latencies

var ms = benchenv.MS

// run is one Exec call's outcome.
type run struct {
	stdout  []byte // kept only when asked
	nOut    uint64 // stdout bytes received
	events  int    // stdout output events received
	gaps    uint64 // bytes reported lost in gap events
	started time.Time
	trailer *agentv1.RunTrailer
}

// execOpts tune execRun.
type execOpts struct {
	keep      bool         // keep stdout in run.stdout
	onOutput  func([]byte) // sees every stdout chunk as it arrives
	maxOutput uint64       // the run's spool size per stream (0: the agent's default)
}

// execRun starts argv with no stdin, reads the stream to its trailer,
// and fails b unless the command exited 0.
func execRun(ctx context.Context, b testing.TB, c agentv1.AgentServiceClient, o execOpts, argv ...string) run {
	b.Helper()
	st, err := c.Exec(ctx)
	if err != nil {
		b.Fatalf("exec %v: %v", argv, err)
	}
	// Nothing to send: stdin is /dev/null from the start (as ssh -n).
	es := &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: argv}, NoStdin: true}
	if o.maxOutput > 0 {
		es.Limits = &agentv1.RunLimits{MaxOutputBytes: o.maxOutput}
	}
	start := &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: es}}
	if err := st.Send(start); err != nil && err != io.EOF {
		b.Fatalf("exec %v: send: %v", argv, err)
	}
	var r run
	for {
		ev, err := st.Recv()
		if err != nil {
			b.Fatalf("exec %v: %v", argv, err)
		}
		switch e := ev.Event.(type) {
		case *agentv1.ExecResponse_Started:
			r.started = time.Now()
		case *agentv1.ExecResponse_Output:
			if e.Output.GetStream() != agentv1.Stream_STREAM_STDOUT {
				continue
			}
			d := e.Output.GetData()
			r.nOut += uint64(len(d))
			r.events++
			if o.keep {
				r.stdout = append(r.stdout, d...)
			}
			if o.onOutput != nil {
				o.onOutput(d)
			}
		case *agentv1.ExecResponse_Gap:
			r.gaps += e.Gap.GetBytes()
		case *agentv1.ExecResponse_Trailer:
			r.trailer = e.Trailer
			_ = st.CloseSend()
			if e.Trailer.GetReason() != agentv1.ExitReason_EXIT_REASON_EXITED || e.Trailer.GetExitCode() != 0 {
				b.Fatalf("exec %v: %v", argv, e.Trailer)
			}
			return r
		}
	}
}
