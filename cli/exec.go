package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// stdinChunk is how much stdin one message carries.
const stdinChunk = 32 << 10

// execOptions are the flags of dtmux exec.
type execOptions struct {
	ws            string
	argv          []string
	tty           int // -t once, or -tt to force a PTY without a local terminal
	detach        bool
	shell         bool
	env           []string
	secretEnv     []string
	secretEnvFile string
	cwd           string
	timeout       time.Duration
	idleTimeout   time.Duration
	runID         string
	maxOutput     string
	limits        []string
}

func newExecCmd(app *App) *cobra.Command {
	var o execOptions
	cmd := &cobra.Command{
		Use:   "exec WS [flags] -- CMD [ARGS...]",
		Short: "Run a command in a workspace",
		Long: `Run a command in a workspace, streaming its stdout to stdout and its stderr
to stderr, and exit with its exit status (128+N when it died from signal N).

Stdin is piped to the command (EOF closes its stdin), except when stdin is a
terminal and -t is not given: then the command gets an empty stdin, as with
ssh -n. With -t the command runs on a pseudo-terminal when stdin is one
(-tt: always).

Ctrl-C, SIGTERM, SIGHUP and SIGQUIT are forwarded to the remote process
group. dtmux gives up waiting at a third Ctrl-C, at a second SIGTERM or
SIGHUP, or 10s after the first if the run is still going; the run then gets
SIGHUP, as when ssh goes away, and dtmux exits with 128+N.

The command is argv: nothing is interpreted by a shell unless --shell is
given, which joins the words with spaces and runs them with /bin/sh -c.`,
		Args: minArgs(1, "WS -- CMD [ARGS...]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.ws = args[0]
			o.argv = args[1:]
			if d := cmd.ArgsLenAtDash(); d > 1 {
				return usageErrorf("exec: unexpected arguments before --: %s", strings.Join(args[1:d], " "))
			}
			return app.runExec(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.CountVarP(&o.tty, "tty", "t", "run on a pseudo-terminal, with the local terminal in raw mode; -tt forces one when stdin is not a terminal")
	f.BoolVarP(&o.detach, "detach", "d", false, "start the run, print its id and return (reattach with dtmux runs logs)")
	f.BoolVar(&o.shell, "shell", false, "run the words joined with spaces by /bin/sh -c")
	f.StringArrayVarP(&o.env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringArrayVar(&o.secretEnv, "secret-env", nil, "secret environment variable KEY=VALUE: never logged or listed (repeatable)")
	f.StringVar(&o.secretEnvFile, "secret-env-file", "", "file of secret KEY=VALUE lines")
	f.StringVarP(&o.cwd, "workdir", "w", "", "working directory: absolute, relative to the workspace's directory, or '~/...' (quoted) for the workspace's home (default: the workspace's directory)")
	f.DurationVar(&o.timeout, "timeout", 0, "kill the process group after this long (exit 124)")
	f.DurationVar(&o.idleTimeout, "idle-timeout", 0, "kill the process group after this long without output (exit 124)")
	f.StringVar(&o.runID, "run-id", "", "run id; starting the same id again attaches to the run instead of running twice")
	f.StringVar(&o.maxOutput, "max-output", "", "output kept in the run's spool per stream, such as 256M (default: the agent's, 64M); a reader further behind loses bytes")
	addLimitFlag(f, &o.limits, "the command")
	return cmd
}

// buildCommand checks argv and env and builds the CommandSpec, so that a
// bad entry is reported before any call is made.
func buildCommand(argv []string, shell bool, env, secretEnv []string, secretEnvFile, cwd string) (*agentv1.CommandSpec, error) {
	if len(argv) == 0 {
		return nil, usageErrorf("no command given (put it after --)")
	}
	if argv[0] == "" && !shell {
		return nil, usageErrorf("empty command name")
	}
	if shell && strings.TrimSpace(strings.Join(argv, "")) == "" {
		return nil, usageErrorf("--shell: the command is empty")
	}
	for _, w := range argv {
		if !utf8.ValidString(w) || strings.ContainsRune(w, 0) {
			return nil, usageErrorf("command word %q: must be valid UTF-8 without NUL", clip(w))
		}
	}
	em, err := ParseEnv(env)
	if err != nil {
		return nil, usageErrorf("%v", err)
	}
	sm, err := ParseEnv(secretEnv)
	if err != nil {
		// Never echo a secret back: name the key only, when there is one.
		for _, e := range secretEnv {
			if _, _, err := ParseEnvEntry(e); err != nil {
				if k, _, ok := strings.Cut(e, "="); ok && k != "" && utf8.ValidString(k) && !strings.ContainsRune(k, 0) {
					return nil, usageErrorf("--secret-env %s: the value must be valid UTF-8 without NUL", clip(k))
				}
				return nil, usageErrorf("--secret-env: want KEY=VALUE with a non-empty KEY (entry not shown)")
			}
		}
		return nil, usageErrorf("--secret-env: invalid entry")
	}
	if secretEnvFile != "" {
		fm, err := ParseEnvFile(secretEnvFile)
		if err != nil {
			return nil, usageErrorf("secret env file: %v", err)
		}
		if sm == nil {
			sm = map[string]string{}
		}
		for k, v := range fm {
			sm[k] = v
		}
	}
	if !utf8.ValidString(cwd) {
		return nil, usageErrorf("working directory: not valid UTF-8")
	}
	return &agentv1.CommandSpec{Argv: argv, Shell: shell, Env: em, SecretEnv: sm, Cwd: cwd}, nil
}

func (a *App) runExec(ctx context.Context, o execOptions) error {
	spec, err := buildCommand(o.argv, o.shell, o.env, o.secretEnv, o.secretEnvFile, o.cwd)
	if err != nil {
		return err
	}
	if o.timeout < 0 || o.idleTimeout < 0 {
		return usageErrorf("timeouts must not be negative")
	}
	asJSON, err := a.JSON()
	if err != nil {
		return err
	}
	start := &agentv1.ExecStart{Command: spec, RunId: o.runID, Detach: o.detach}
	if o.timeout > 0 {
		start.Timeout = durationpb.New(o.timeout)
	}
	if o.idleTimeout > 0 {
		start.IdleTimeout = durationpb.New(o.idleTimeout)
	}
	limits, err := parseLimits(o.limits)
	if err != nil {
		return err
	}
	start.Limits = limits
	if o.maxOutput != "" {
		n, err := ParseSize(o.maxOutput)
		if err != nil || n == 0 {
			return usageErrorf("--max-output: want a positive size such as 256M")
		}
		start.Limits = withMaxOutput(start.Limits, n)
	}
	inFD, inTTY := a.stdinTerminal()
	outFD := fdOf(a.Stdout)
	// As ssh: -t asks for a PTY for an interactive terminal; with stdin
	// not a terminal (a pipe, a file, /dev/null) the command runs without
	// one, unless -tt insists. (A PTY fed from a file ends only if the
	// program reads the ^D its EOF becomes.)
	tty := o.tty > 0
	if o.tty == 1 && !inTTY && !o.detach {
		fmt.Fprintln(a.Stderr, "dtmux: no pseudo-terminal: stdin is not a terminal (-tt forces one)")
		tty = false
	}
	// Stdin is forwarded unless the run is detached or stdin is a
	// terminal without -t (as ssh -n): then the process reads /dev/null
	// from the start. (ExecStdinClose is still sent below, for agents
	// older than no_stdin.)
	start.NoStdin = o.detach || (!tty && inTTY)
	if tty {
		start.Pty = &agentv1.PtySpec{Rows: 24, Cols: 80, Term: a.termName()}
		if rows, cols, ok := terminalSize(inFD, outFD); ok {
			start.Pty.Rows, start.Pty.Cols = rows, cols
		}
	}

	agent, ctx, err := a.Agent(ctx, o.ws)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := agent.Exec(ctx)
	if err != nil {
		return err
	}
	x := &execStream{stream: stream}
	if err := x.send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: start}}); err != nil {
		return startError(recvError(stream, err), o.argv, o.runID)
	}
	if o.detach {
		// A detached run has no stdin (as docker run -d): close it now,
		// or a command that reads stdin would wait for input forever.
		if err := x.send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_CloseStdin{CloseStdin: &agentv1.ExecStdinClose{}}}); err != nil {
			return startError(recvError(stream, err), o.argv, o.runID)
		}
	}
	first, err := stream.Recv()
	if err != nil {
		return startError(err, o.argv, o.runID)
	}
	started := first.GetStarted()
	if started == nil {
		return fmt.Errorf("agent sent %T before the run started", first.GetEvent())
	}
	if o.detach {
		if a.stdinPiped() {
			fmt.Fprintln(a.Stderr, "dtmux: a detached run gets no stdin (as docker run -d): the piped input was not read")
		}
		if asJSON {
			return printJSON(a.Stdout, started)
		}
		fmt.Fprintln(a.Stdout, started.GetRunId())
		return nil
	}
	if started.GetAttachedExisting() {
		fmt.Fprintf(a.Stderr, "dtmux: run %s already exists: attached to it instead of running again\n", started.GetRunId())
	}

	restore := func() {}
	eol := "\n" // a raw terminal needs "\r\n"
	if tty && inTTY {
		eol = "\r\n"
		r, err := rawMode(inFD)
		if err != nil {
			return fmt.Errorf("terminal raw mode: %w", err)
		}
		restore = r
	}
	defer restore()

	// Stdin: forwarded unless it is a terminal without -t (as ssh -n).
	// The reader goroutine may stay blocked in Read after the run ends; it
	// is owned by the process, which exits right after.
	if tty || !inTTY {
		go x.pumpStdin(a.Stdin)
	} else if err := x.send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_CloseStdin{CloseStdin: &agentv1.ExecStdinClose{}}}); err != nil {
		return recvError(stream, err)
	}

	// Signals: forwarded to the remote process group; SIGWINCH resizes.
	sigs := make(chan os.Signal, 8)
	notify := []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT}
	if tty {
		notify = append(notify, syscall.SIGWINCH)
	}
	signal.Notify(sigs, notify...)
	var wg sync.WaitGroup
	done := make(chan struct{})
	giveUp := make(chan syscall.Signal, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		x.forwardSignals(sigs, done, giveUp, inFD, outFD)
	}()
	defer func() {
		signal.Stop(sigs)
		close(done)
		wg.Wait()
	}()

	type result struct {
		trailer *agentv1.RunTrailer
		err     error
	}
	res := make(chan result, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		t, err := a.copyRunOutput(func() (runEvent, error) { return stream.Recv() }, eol)
		res <- result{t, err}
	}()
	var r result
	select {
	case r = <-res:
	case sig := <-giveUp:
		cancel()
		restore()
		<-res
		return &ExitError{Code: 128 + int(sig), Msg: fmt.Sprintf("%s: gave up waiting; run %s gets SIGHUP now that dtmux is gone", signalName(int32(sig)), started.GetRunId())}
	}
	restore()
	if r.err != nil {
		if ctx.Err() != nil {
			return r.err
		}
		id := started.GetRunId()
		return a.lostError(r.err, o.ws, lostHints{
			during:     "during run " + id,
			controller: fmt.Sprintf("an attached run is hung up when its client goes away; start long jobs with -d and reattach with: dtmux runs logs %s %s -f", o.ws, id),
			agent:      fmt.Sprintf("the run's exit status is unknown; see what became of it with: dtmux runs ls %s", o.ws),
			removed:    "its runs ended with it",
		})
	}
	if r.trailer == nil {
		return fmt.Errorf("run %s: the stream ended without the run's exit status", started.GetRunId())
	}
	return a.trailerExit(started.GetRunId(), r.trailer)
}

// execStream serialises sends on an Exec stream: stdin, signals and resizes
// come from different goroutines, and gRPC allows one sender at a time.
type execStream struct {
	stream agentv1.AgentService_ExecClient
	mu     sync.Mutex // serialises Send
}

func (x *execStream) send(req *agentv1.ExecRequest) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.stream.Send(req)
}

// pumpStdin copies r to the run's stdin and closes it at EOF.
func (x *execStream) pumpStdin(r io.Reader) {
	buf := make([]byte, stdinChunk)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			data := append([]byte(nil), buf[:n]...)
			if x.send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Stdin{Stdin: data}}) != nil {
				return
			}
		}
		if err != nil {
			// EOF or a read error: either way the process's stdin ends.
			_ = x.send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_CloseStdin{CloseStdin: &agentv1.ExecStdinClose{}}})
			return
		}
	}
}

// signalDedup drops a SIGTERM or SIGHUP that repeats the one before
// within dupWindow: timeout(1) sends its signal to dtmux and then to
// dtmux's process group, and Go may deliver both; one kill must count
// once. Other signals always count (resizes come in bursts, and so do the
// Ctrl-Cs of a held key).
type signalDedup struct {
	last os.Signal
	at   time.Time
}

const dupWindow = 100 * time.Millisecond

func (d *signalDedup) repeated(s os.Signal) bool {
	if s != syscall.SIGTERM && s != syscall.SIGHUP {
		return false
	}
	now := time.Now()
	if s == d.last && now.Sub(d.at) < dupWindow {
		return true
	}
	d.last, d.at = s, now
	return false
}

// termGrace is how long dtmux waits for the run to end after forwarding
// SIGTERM or SIGHUP before it gives up itself: whoever sent the signal (a
// supervisor, timeout(1), a closed terminal) wants dtmux gone, and a
// remote program may ignore it (an interactive shell ignores SIGTERM).
var termGrace = 10 * time.Second

// forwardSignals sends local signals to the run until done. It gives up
// (sends the signal on giveUp, once) at the third SIGINT, at a second
// SIGTERM or SIGHUP, or termGrace after the first.
func (x *execStream) forwardSignals(sigs <-chan os.Signal, done <-chan struct{}, giveUp chan<- syscall.Signal, fds ...int) {
	ints, terms := 0, 0
	var graceC <-chan time.Time
	var graceSig syscall.Signal
	var dup signalDedup
	stop := func(sig syscall.Signal) {
		select {
		case giveUp <- sig:
		default:
		}
	}
	for {
		select {
		case <-done:
			return
		case <-graceC:
			graceC = nil
			stop(graceSig)
		case s := <-sigs:
			if dup.repeated(s) {
				continue
			}
			var req *agentv1.ExecRequest
			switch s {
			case syscall.SIGWINCH:
				rows, cols, ok := terminalSize(fds...)
				if !ok {
					continue
				}
				req = &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Resize{Resize: &agentv1.TerminalSize{Rows: rows, Cols: cols}}}
			default:
				switch s {
				case syscall.SIGINT:
					ints++
					if ints == 3 {
						stop(syscall.SIGINT)
						continue
					}
				case syscall.SIGTERM, syscall.SIGHUP:
					terms++
					if terms == 2 {
						stop(s.(syscall.Signal))
						continue
					}
					t := time.NewTimer(termGrace)
					defer t.Stop()
					graceC, graceSig = t.C, s.(syscall.Signal)
				}
				req = &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Signal{Signal: &agentv1.ExecSignal{Signal: agentv1.Signal(s.(syscall.Signal))}}}
			}
			_ = x.send(req)
		}
	}
}

// recvError explains a failed Send: gRPC reports the real cause (say, the
// workspace is unknown) on Recv.
func recvError(stream interface{ RecvMsg(any) error }, sendErr error) error {
	if errors.Is(sendErr, io.EOF) {
		if err := stream.RecvMsg(new(agentv1.ExecResponse)); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
	}
	return sendErr
}

// runEvent is the part of an Exec or AttachRun event that output copying
// needs.
type runEvent interface {
	GetOutput() *agentv1.RunOutput
	GetGap() *agentv1.RunGap
	GetTrailer() *agentv1.RunTrailer
}

// copyRunOutput writes output events to stdout and stderr until the
// trailer, and returns it. A stream that ends without a trailer returns
// nil (AttachRun without follow on a running run); a status error is
// returned as is.
func (a *App) copyRunOutput(recv func() (runEvent, error), eol string) (*agentv1.RunTrailer, error) {
	for {
		ev, err := recv()
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		switch {
		case ev.GetOutput() != nil:
			out := ev.GetOutput()
			w := a.Stdout
			if out.GetStream() == agentv1.Stream_STREAM_STDERR {
				w = a.Stderr
			}
			if _, err := w.Write(out.GetData()); err != nil {
				return nil, fmt.Errorf("write output: %w", err)
			}
		case ev.GetGap() != nil:
			g := ev.GetGap()
			fmt.Fprintf(a.Stderr, "%sdtmux: %d bytes of %s at offset %d were evicted from the run's spool and are lost (a larger --max-output keeps more)%s",
				eol, g.GetBytes(), streamName(g.GetStream()), g.GetOffset(), eol)
		case ev.GetTrailer() != nil:
			return ev.GetTrailer(), nil
		}
	}
}

func streamName(s agentv1.Stream) string {
	if s == agentv1.Stream_STREAM_STDERR {
		return "stderr"
	}
	return "stdout"
}

// trailerExit turns a run's trailer into dtmux's exit: the exit code, 128+N
// for a signal, 124 for a deadline, and a line on stderr when the agent
// (not the process) ended the run.
func (a *App) trailerExit(runID string, t *agentv1.RunTrailer) error {
	detail := ""
	if t.GetDetail() != "" {
		detail = ": " + t.GetDetail()
	}
	switch t.GetReason() {
	case agentv1.ExitReason_EXIT_REASON_EXITED:
		return exitCode(int(t.GetExitCode()))
	case agentv1.ExitReason_EXIT_REASON_SIGNALED:
		return exitCode(128 + int(t.GetSignal()))
	case agentv1.ExitReason_EXIT_REASON_TIMED_OUT:
		return &ExitError{Code: ExitTimedOut, Msg: fmt.Sprintf("run %s timed out%s; its process group was killed", runID, detail)}
	case agentv1.ExitReason_EXIT_REASON_KILLED:
		code := 128 + int(t.GetSignal())
		if t.GetSignal() == 0 {
			code = 128 + int(syscall.SIGKILL)
		}
		return &ExitError{Code: code, Msg: fmt.Sprintf("run %s was killed%s", runID, detail)}
	case agentv1.ExitReason_EXIT_REASON_AGENT_LOST:
		return &ExitError{Code: ExitFailure, Msg: fmt.Sprintf("run %s: the agent was lost, exit status unknown%s", runID, detail)}
	case agentv1.ExitReason_EXIT_REASON_LIMIT_EXCEEDED:
		code := ExitFailure
		if t.GetSignal() != 0 {
			code = 128 + int(t.GetSignal())
		}
		return &ExitError{Code: code, Msg: fmt.Sprintf("run %s exceeded a resource limit%s", runID, detail)}
	default:
		if t.GetSignal() != 0 {
			return exitCode(128 + int(t.GetSignal()))
		}
		if t.GetExitCode() >= 0 {
			return exitCode(int(t.GetExitCode()))
		}
		return &ExitError{Code: ExitFailure, Msg: fmt.Sprintf("run %s ended for an unknown reason%s", runID, detail)}
	}
}
