package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

func newRunsCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "runs",
		Short: "List, follow and kill a workspace's runs",
	}
	cmd.AddCommand(newRunsLsCmd(app), newRunsLogsCmd(app), newRunsKillCmd(app))
	return cmd
}

func newRunsLsCmd(app *App) *cobra.Command {
	var labels []string
	cmd := &cobra.Command{
		Use:     "ls WS",
		Aliases: []string{"list"},
		Short:   "List running runs and recently finished ones",
		Args:    exactArgs(1, "WS"),
		RunE: func(cmd *cobra.Command, args []string) error {
			lm, err := ParseLabels(labels)
			if err != nil {
				return usageErrorf("--label %v", err)
			}
			return app.runRunsLs(cmd.Context(), args[0], lm)
		},
	}
	cmd.Flags().StringArrayVarP(&labels, "label", "l", nil, "only runs with this label key=value (repeatable)")
	return cmd
}

func (a *App) runRunsLs(ctx context.Context, ws string, labels map[string]string) error {
	asJSON, err := a.JSON()
	if err != nil {
		return err
	}
	agent, ctx, err := a.Agent(ctx, ws)
	if err != nil {
		return err
	}
	resp, err := agent.ListRuns(ctx, &agentv1.ListRunsRequest{Labels: labels})
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(a.Stdout, resp)
	}
	return renderRuns(a, resp.GetRuns(), time.Now())
}

func renderRuns(a *App, runs []*agentv1.RunInfo, now time.Time) error {
	t := newTable(a.Stdout, "RUN", "STATE", "EXIT", "PID", "AGE", "COMMAND")
	for _, r := range runs {
		t.row(r.GetRunId(), runState(r), runExit(r), strconv.Itoa(int(r.GetPid())), formatAge(r.GetStartedAt(), now), clip(formatArgv(r.GetArgv())))
	}
	return t.flush()
}

func runState(r *agentv1.RunInfo) string {
	s := "running"
	if r.GetState() == agentv1.RunState_RUN_STATE_FINISHED {
		s = strings.ToLower(strings.TrimPrefix(r.GetTrailer().GetReason().String(), "EXIT_REASON_"))
	}
	if r.GetDetached() {
		s += ",detached"
	}
	return s
}

func runExit(r *agentv1.RunInfo) string {
	if r.GetState() != agentv1.RunState_RUN_STATE_FINISHED {
		return ""
	}
	t := r.GetTrailer()
	if t.GetSignal() != 0 {
		return signalName(t.GetSignal())
	}
	if t.GetExitCode() < 0 {
		return ""
	}
	return strconv.Itoa(int(t.GetExitCode()))
}

func newRunsLogsCmd(app *App) *cobra.Command {
	var (
		follow           bool
		from, fromStderr uint64
	)
	cmd := &cobra.Command{
		Use:   "logs WS RUN",
		Short: "Print a run's output (stdout to stdout, stderr to stderr)",
		Long: `Print a run's spooled output, stdout to stdout and stderr to stderr, starting
at the given byte offsets. With -f, follow it until the run ends and exit
with its status; when the agent or the connection to it goes away meanwhile
(an agent upgrade, an ssh hop redialled), take it up again where it was, for
up to a minute. Bytes evicted from the bounded spool are reported on stderr.`,
		Args: exactArgs(2, "WS RUN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return app.runRunsLogs(cmd.Context(), args[0], &agentv1.AttachRunRequest{
				RunId: args[1], StdoutOffset: from, StderrOffset: fromStderr, Follow: follow,
			})
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&follow, "follow", "f", false, "follow the output until the run ends, then exit with its status")
	f.Uint64Var(&from, "from", 0, "start at this byte offset of stdout")
	f.Uint64Var(&fromStderr, "from-stderr", 0, "start at this byte offset of stderr")
	return cmd
}

func (a *App) runRunsLogs(ctx context.Context, ws string, req *agentv1.AttachRunRequest) error {
	agent, ctx, err := a.Agent(ctx, ws)
	if err != nil {
		return err
	}
	// Where the output got to, so that a follower can reattach there when
	// the agent or the hop goes away under it (an agent upgrade, a redial)
	// and print every byte once.
	next := [2]uint64{req.GetStdoutOffset(), req.GetStderrOffset()}
	var stream agentv1.AgentService_AttachRunClient
	going, received := false, false // any event yet; output since the last loss
	recv := func() (runEvent, error) {
		ev, err := stream.Recv()
		if err != nil {
			return ev, err
		}
		going = true
		// Progress is output (or its loss), not the started event every
		// attach begins with: an agent that accepts and drops the stream
		// again and again must not keep the follower going forever.
		if o := ev.GetOutput(); o != nil {
			next[streamIndex(o.GetStream())] = o.GetOffset() + uint64(len(o.GetData()))
			received = true
		}
		if g := ev.GetGap(); g != nil {
			next[streamIndex(g.GetStream())] = g.GetOffset() + g.GetBytes()
			received = true
		}
		return ev, nil
	}
	var lostAt time.Time
	wait := reattachEvery
	for attached := false; ; attached = true {
		var trailer *agentv1.RunTrailer
		stream, err = agent.AttachRun(ctx, req)
		if err == nil {
			trailer, err = a.copyRunOutput(recv, "\n")
		}
		if err == nil {
			if !req.GetFollow() {
				return nil
			}
			if trailer == nil {
				return fmt.Errorf("run %s: the stream ended without the run's exit status", req.GetRunId())
			}
			return a.trailerExit(req.GetRunId(), trailer)
		}
		if ctx.Err() != nil {
			return err
		}
		// Only a stream that got going is taken up again: a first attach
		// that fails (no controller, no such run) says why at once.
		retry := attached || going
		if !retry && req.GetFollow() && isLostStream(err) && a.agentAway(ws) {
			retry, lostAt = true, time.Now()
			fmt.Fprint(a.Stderr, waitingNote(ws, err))
		}
		if retry && (received || lostAt.IsZero()) {
			// Output flowed since the last loss: a new one.
			lostAt, received, wait = time.Now(), false, reattachEvery
			if req.GetFollow() && isLostStream(err) {
				fmt.Fprintf(a.Stderr, "dtmux: lost the stream of run %s; reattaching at stdout byte %d, stderr byte %d\n", req.GetRunId(), next[0], next[1])
			}
		}
		if !retry || !req.GetFollow() || !isLostStream(err) || time.Since(lostAt) >= reattachFor {
			id := req.GetRunId()
			return a.lostError(err, ws, lostHints{
				during:     "while following run " + id,
				controller: fmt.Sprintf("a detached run goes on; reattach with: dtmux runs logs %s %s -f --from %d --from-stderr %d", ws, id, next[0], next[1]),
				agent:      fmt.Sprintf("see what became of the run with: dtmux runs ls %s", ws),
				removed:    "its runs ended with it",
			})
		}
		req = &agentv1.AttachRunRequest{RunId: req.GetRunId(), StdoutOffset: next[0], StderrOffset: next[1], Follow: true}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = nextReattach(wait)
	}
}

// A follower that lost its stream reattaches after reattachEvery, then
// less and less often (each try may be an ssh login for the controller),
// for up to reattachFor (an agent upgrade or a hop's redial takes
// seconds).
var (
	reattachEvery = 200 * time.Millisecond
	reattachFor   = time.Minute
)

// nextReattach is the wait after wait between tries: 1.5 times longer,
// up to 3 s.
func nextReattach(wait time.Duration) time.Duration { return min(wait*3/2, 3*time.Second) }

// streamIndex is 0 for stdout, 1 for stderr.
func streamIndex(s agentv1.Stream) int {
	if s == agentv1.Stream_STREAM_STDERR {
		return 1
	}
	return 0
}

func newRunsKillCmd(app *App) *cobra.Command {
	var sig string
	cmd := &cobra.Command{
		Use:   "kill WS RUN",
		Short: "Signal a run's process group (default SIGTERM)",
		Args:  exactArgs(2, "WS RUN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := ParseSignal(sig)
			if err != nil {
				return usageErrorf("%v", err)
			}
			agent, ctx, err := app.Agent(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if _, err := agent.SignalRun(ctx, &agentv1.SignalRunRequest{RunId: args[1], Signal: s}); err != nil {
				return err
			}
			fmt.Fprintf(app.Stderr, "sent %s to run %s\n", signalName(int32(s)), args[1])
			return nil
		},
	}
	cmd.Flags().StringVarP(&sig, "signal", "s", "TERM", "signal name or number: TERM, INT, HUP, KILL, ...")
	return cmd
}
