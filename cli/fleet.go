package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"
	"google.golang.org/protobuf/types/known/durationpb"

	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

const fleetExitHelp = `Exit codes: 0 when every target succeeded; otherwise the worst exit code
among failed targets (128+N for signal N, 124 for a timeout); 253 when none
failed but some were unreachable, skipped or cancelled; 255 when the fleet
call itself failed (controller unreachable, nothing selected); 254 for
usage errors; 130 when interrupted (the runs keep going: collect them with
dtmux fleet attach RUN_ID).`

func newFleetCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Run a command on many workspaces at once",
		Long: `Run one command on many workspaces over the controller's pooled
connections, with bounded parallelism, retries of unreachable targets,
fail-fast and a summary.

` + fleetExitHelp,
	}
	cmd.AddCommand(newFleetExecCmd(app), newFleetAttachCmd(app), newFleetLsCmd(app))
	return cmd
}

// fleetSelector holds the selection flags.
type fleetSelector struct {
	ws     []string
	labels []string
	all    bool
}

func (s *fleetSelector) flags(f *pflag.FlagSet) {
	f.StringSliceVar(&s.ws, "ws", nil, "workspace names, comma-separated (repeatable)")
	f.StringArrayVarP(&s.labels, "label", "l", nil, "label selector key=value; all must match (repeatable)")
	f.BoolVar(&s.all, "all", false, "every started workspace")
}

func (s *fleetSelector) proto() (*controllerv1.Selector, error) {
	if s.all && (len(s.ws) > 0 || len(s.labels) > 0) {
		// Selectors add up, so --all would make the others moot: say so
		// rather than run on more than the user may have meant (as
		// kubectl refuses --all with --selector).
		return nil, usageErrorf("--all selects every started workspace: give it alone, or --ws / --label without it")
	}
	for _, l := range s.labels {
		if _, _, err := ParseLabel(l); err != nil {
			return nil, usageErrorf("--label %v", err)
		}
	}
	var ws []string
	for _, w := range s.ws {
		if w = strings.TrimSpace(w); w != "" {
			ws = append(ws, w)
		}
	}
	return &controllerv1.Selector{Workspaces: ws, LabelSelectors: s.labels, All: s.all}, nil
}

// fleetOutput holds the output-mode flags.
type fleetOutput struct {
	json   bool
	group  bool
	logDir string
}

func (o *fleetOutput) flags(f *pflag.FlagSet) {
	f.BoolVar(&o.json, "json", false, "print NDJSON: one event a line, the summary last")
	f.BoolVar(&o.group, "group", false, "print each distinct output once with the workspaces that produced it (like dshbak -c)")
	f.StringVar(&o.logDir, "log-dir", "", "write NAME.stdout and NAME.stderr per workspace (instead of the terminal, which gets the summary), and the succeeded and failed lists, into this directory")
}

// renderer picks the output mode; the progress line is nil unless stderr
// is a terminal and the mode prints nothing live on it.
func (a *App) fleetRenderer(o fleetOutput) (fleetRenderer, *fleetProgress, bool, error) {
	asJSON, err := a.JSON()
	if err != nil {
		return nil, nil, false, err
	}
	o.json = o.json || asJSON
	n := 0
	for _, set := range []bool{o.json, o.group, o.logDir != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		return nil, nil, false, usageErrorf("--json, --group and --log-dir exclude each other")
	}
	var p *fleetProgress
	if a.stderrTerminal() {
		p = &fleetProgress{w: a.Stderr}
	}
	switch {
	case o.json:
		return &jsonRenderer{w: a.Stdout}, p, true, nil
	case o.group:
		return newGroupRenderer(a.Stdout), p, false, nil
	case o.logDir != "":
		r, err := newLogDirRenderer(o.logDir)
		return r, p, false, err
	}
	return newPrefixRenderer(a.Stdout, a.Stderr, a.colorStdout()), p, false, nil
}

// colorStdout reports whether names may be coloured: stdout is a terminal
// and NO_COLOR is unset.
func (a *App) colorStdout() bool {
	f, ok := a.Stdout.(*os.File)
	return ok && term.IsTerminal(int(f.Fd())) && a.Getenv("NO_COLOR") == ""
}

type fleetExecOptions struct {
	sel           fleetSelector
	out           fleetOutput
	shell         bool
	env           []string
	secretEnv     []string
	secretEnvFile string
	cwd           string
	maxParallel   uint32
	timeout       time.Duration
	targetTimeout time.Duration
	idleTimeout   time.Duration
	retries       uint32
	retryBackoff  time.Duration
	failFast      bool
	maxFailures   uint32
	cancelRunning bool
	runID         string
	limits        []string
}

func newFleetExecCmd(app *App) *cobra.Command {
	var o fleetExecOptions
	cmd := &cobra.Command{
		Use:   "exec (--ws A,B | --label K=V... | --all) [flags] -- CMD [ARGS...]",
		Short: "Run a command on the selected workspaces",
		Long: `Run a command on every selected workspace, at most --max-parallel at a
time, and stream the output as whole lines prefixed with the workspace name
("name | line"; stdout to stdout, stderr to stderr), then a summary on
stderr. Lines from different workspaces never mix, however long: a line is
held until its newline and printed in one piece. Only a line longer than
4 MiB is cut, into 4 MiB pieces: the first after "name | ", each further
piece after "name + " (a continuation, as tools reading the output can
join), so that no byte is lost and memory stays bounded.

A target whose agent cannot be reached is retried (--retries, doubling
--retry-backoff) and then reported unreachable. A command that started is
never run again: every target gets the same run id, so a retried start
attaches to the run instead. With --fail-fast or --max-failures N no new
targets start after that many failed or unreachable ones; --cancel-running
also kills those still running.

The runs outlive dtmux: on Ctrl-C (or a lost connection) they keep going
and "dtmux fleet attach RUN_ID" collects their whole output.

` + fleetExitHelp,
		Args: minArgs(1, "-- CMD [ARGS...]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if d := cmd.ArgsLenAtDash(); d > 0 {
				return usageErrorf("fleet exec: unexpected arguments before --: %s", strings.Join(args[:d], " "))
			}
			if o.failFast && o.maxFailures > 0 {
				return usageErrorf("--fail-fast and --max-failures exclude each other")
			}
			return app.runFleetExec(cmd.Context(), o, args)
		},
	}
	f := cmd.Flags()
	o.sel.flags(f)
	o.out.flags(f)
	f.BoolVar(&o.shell, "shell", false, "run the words joined with spaces by /bin/sh -c")
	f.StringArrayVarP(&o.env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringArrayVar(&o.secretEnv, "secret-env", nil, "secret environment variable KEY=VALUE: never logged or listed (repeatable)")
	f.StringVar(&o.secretEnvFile, "secret-env-file", "", "file of secret KEY=VALUE lines")
	f.StringVarP(&o.cwd, "workdir", "w", "", "working directory: absolute, relative to each workspace's directory, or '~/...' (quoted) for its home (default: each workspace's directory)")
	f.Uint32VarP(&o.maxParallel, "max-parallel", "p", 32, "targets running at once")
	f.DurationVar(&o.timeout, "timeout", 0, "kill the command on a target after this long (the agent enforces it)")
	addLimitFlag(f, &o.limits, "the command on each target")
	f.DurationVar(&o.targetTimeout, "target-timeout", 0, "deadline for a target as a whole, connecting included")
	f.DurationVar(&o.idleTimeout, "idle-timeout", 0, "kill the command on a target after this long without output")
	f.Uint32Var(&o.retries, "retries", 2, "extra attempts to reach an unreachable target")
	f.DurationVar(&o.retryBackoff, "retry-backoff", 500*time.Millisecond, "wait before the first retry; doubles after each")
	f.BoolVar(&o.failFast, "fail-fast", false, "start no new targets after the first failure")
	f.Uint32Var(&o.maxFailures, "max-failures", 0, "start no new targets after this many failures (0: no limit)")
	f.BoolVar(&o.cancelRunning, "cancel-running", false, "when stopping early, also kill the targets still running")
	f.StringVar(&o.runID, "run-id", "", "fleet run id (default: a fresh one)")
	return cmd
}

func (a *App) runFleetExec(ctx context.Context, o fleetExecOptions, argv []string) error {
	sel, err := o.sel.proto()
	if err != nil {
		return err
	}
	if len(sel.GetWorkspaces()) == 0 && len(sel.GetLabelSelectors()) == 0 && !sel.GetAll() {
		return usageErrorf("fleet exec: select workspaces with --ws, --label or --all")
	}
	spec, err := buildCommand(argv, o.shell, o.env, o.secretEnv, o.secretEnvFile, o.cwd)
	if err != nil {
		return err
	}
	limits, err := parseLimits(o.limits)
	if err != nil {
		return err
	}
	r, p, _, err := a.fleetRenderer(o.out)
	if err != nil {
		return err
	}
	fc, err := a.Fleet()
	if err != nil {
		return err
	}
	req := &controllerv1.FleetExecRequest{
		Selector:      sel,
		Command:       spec,
		MaxParallel:   o.maxParallel,
		Retries:       o.retries,
		FailFast:      o.failFast,
		MaxFailures:   o.maxFailures,
		CancelRunning: o.cancelRunning,
		RunId:         o.runID,
		RetryBackoff:  durationpb.New(o.retryBackoff),
		Limits:        limits,
	}
	for _, d := range []struct {
		v   time.Duration
		dst **durationpb.Duration
	}{{o.timeout, &req.Timeout}, {o.targetTimeout, &req.TargetTimeout}, {o.idleTimeout, &req.IdleTimeout}} {
		if d.v > 0 {
			*d.dst = durationpb.New(d.v)
		}
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	st, err := fc.FleetExec(ctx, req)
	if err != nil {
		return err
	}
	return a.renderFleet(ctx, func() (*controllerv1.FleetEvent, error) {
		m, err := st.Recv()
		return m.GetEvent(), err
	}, r, p)
}

// renderFleet feeds a fleet stream to a renderer and turns the summary
// into the exit code.
func (a *App) renderFleet(ctx context.Context, recv func() (*controllerv1.FleetEvent, error), r fleetRenderer, p *fleetProgress) error {
	var runID string
	var sum *controllerv1.FleetSummary
	for {
		ev, err := recv()
		if err != nil {
			p.clear()
			_ = r.finish(nil)
			if ctx.Err() != nil && runID != "" {
				fmt.Fprintf(a.Stderr, "dtmux: interrupted; fleet run %s keeps going: collect it with `dtmux fleet attach %s`\n", runID, runID)
				return &ExitError{Code: 130}
			}
			if errors.Is(err, io.EOF) {
				err = errors.New("the controller ended the fleet stream without a summary")
			}
			if runID != "" {
				fmt.Fprintf(a.Stderr, "dtmux: fleet run %s: collect the rest with `dtmux fleet attach %s`\n", runID, runID)
			}
			return err
		}
		if s := ev.GetStarted(); s != nil {
			runID = s.GetRunId()
		}
		if s := ev.GetSummary(); s != nil {
			sum = s
		}
		p.clear()
		if err := r.event(ev); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		if sum != nil {
			break
		}
		p.update(ev)
		p.draw()
	}
	if err := r.finish(sum); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	if _, isJSON := r.(*jsonRenderer); !isJSON {
		fmt.Fprintln(a.Stderr, summaryLine(sum))
	}
	return exitCode(fleetExit(sum))
}

// summaryLine is the one-line summary printed on stderr.
func summaryLine(s *controllerv1.FleetSummary) string {
	var b strings.Builder
	fmt.Fprintf(&b, "dtmux: fleet %s: %d/%d succeeded", s.GetRunId(), s.GetSucceeded(), s.GetTotal())
	for _, c := range []struct {
		n    uint32
		what string
	}{{s.GetFailed(), "failed"}, {s.GetUnreachable(), "unreachable"}, {s.GetSkipped(), "skipped"}, {s.GetCancelled(), "cancelled"}, {s.GetNotFound(), "not found"}} {
		if c.n > 0 {
			fmt.Fprintf(&b, ", %d %s", c.n, c.what)
		}
	}
	fmt.Fprintf(&b, " in %s", s.GetDuration().AsDuration().Round(time.Millisecond))
	if s.GetFailed() > 0 {
		fmt.Fprintf(&b, "; worst exit code %d", s.GetWorstExitCode())
	}
	if ws := notOK(s); len(ws) > 0 {
		fmt.Fprintf(&b, "; not ok: %s", nameList(ws))
	}
	if ws := s.GetNotAskedWorkspaces(); len(ws) > 0 {
		fmt.Fprintf(&b, "; could not ask (not counted): %s", nameList(ws))
	}
	return b.String()
}

// nameList joins names with spaces, the first 20 of them.
func nameList(ws []string) string {
	const show = 20
	list := strings.Join(ws[:min(len(ws), show)], " ")
	if len(ws) > show {
		list += fmt.Sprintf(" (and %d more)", len(ws)-show)
	}
	return list
}

func newFleetAttachCmd(app *App) *cobra.Command {
	var sel fleetSelector
	var out fleetOutput
	var noFollow bool
	cmd := &cobra.Command{
		Use:   "attach RUN_ID [flags]",
		Short: "Collect a fleet run's output and results from every agent that has it",
		Long: `Collect a fleet run by its id from every workspace's agent that has it
(default: ask every started workspace): each target's output from the
first byte, its exit status, and the summary. Works after dtmux or the
controller was restarted: the agents keep the runs.

Only the run's targets count. Each target's run records how many targets
the run has: once that many are found, workspaces that could not be asked
are not targets and are left out. Until then they are listed as "could
not be asked" and not counted, and the targets not found count as such
(exit 253).

` + fleetExitHelp,
		Args: exactArgs(1, "RUN_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return app.runFleetAttach(cmd.Context(), args[0], sel, out, !noFollow)
		},
	}
	sel.flags(cmd.Flags())
	out.flags(cmd.Flags())
	cmd.Flags().BoolVar(&noFollow, "no-follow", false, "print what the agents hold now and return; do not wait for running targets")
	return cmd
}

func (a *App) runFleetAttach(ctx context.Context, runID string, s fleetSelector, o fleetOutput, follow bool) error {
	sel, err := s.proto()
	if err != nil {
		return err
	}
	r, p, _, err := a.fleetRenderer(o)
	if err != nil {
		return err
	}
	fc, err := a.Fleet()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	st, err := fc.AttachFleetRun(ctx, &controllerv1.AttachFleetRunRequest{RunId: runID, Selector: sel, Follow: follow})
	if err != nil {
		return err
	}
	return a.renderFleet(ctx, func() (*controllerv1.FleetEvent, error) {
		m, err := st.Recv()
		return m.GetEvent(), err
	}, r, p)
}

func newFleetLsCmd(app *App) *cobra.Command {
	var sel fleetSelector
	cmd := &cobra.Command{
		Use:   "ls [flags]",
		Short: "List the fleet runs the agents know",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return app.runFleetLs(cmd.Context(), sel)
		},
	}
	sel.flags(cmd.Flags())
	return cmd
}

func (a *App) runFleetLs(ctx context.Context, s fleetSelector) error {
	sel, err := s.proto()
	if err != nil {
		return err
	}
	asJSON, err := a.JSON()
	if err != nil {
		return err
	}
	fc, err := a.Fleet()
	if err != nil {
		return err
	}
	resp, err := fc.ListFleetRuns(ctx, &controllerv1.ListFleetRunsRequest{Selector: sel})
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(a.Stdout, resp)
	}
	t := newTable(a.Stdout, "RUN ID", "AGE", "TARGETS", "RUNNING", "OK", "FAILED", "COMMAND")
	now := time.Now()
	for _, r := range resp.GetRuns() {
		t.row(r.GetRunId(), formatAge(r.GetStartedAt(), now), fmt.Sprint(r.GetTargets()), fmt.Sprint(r.GetRunning()),
			fmt.Sprint(r.GetSucceeded()), fmt.Sprint(r.GetFailed()), formatArgv(r.GetArgv()))
	}
	if err := t.flush(); err != nil {
		return err
	}
	if u := resp.GetUnreachableWorkspaces(); len(u) > 0 {
		fmt.Fprintf(a.Stderr, "dtmux: not asked (unreachable): %s\n", strings.Join(u, " "))
	}
	return nil
}
