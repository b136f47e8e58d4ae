package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

func newSessionCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "session",
		Aliases: []string{"sessions", "s"},
		Short:   "Manage tmux sessions in a workspace",
	}
	cmd.AddCommand(newSessionLsCmd(app), newSessionNewCmd(app), newSessionKillCmd(app),
		newSessionSendCmd(app), newSessionCaptureCmd(app), newSessionLogsCmd(app))
	return cmd
}

func newSessionLsCmd(app *App) *cobra.Command {
	return &cobra.Command{
		Use:     "ls WS",
		Aliases: []string{"list"},
		Short:   "List sessions with their windows",
		Args:    exactArgs(1, "WS"),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON, err := app.JSON()
			if err != nil {
				return err
			}
			agent, ctx, err := app.Agent(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			resp, err := agent.ListSessions(ctx, &agentv1.ListSessionsRequest{})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(app.Stdout, resp)
			}
			return renderSessions(app, resp.GetSessions(), time.Now())
		},
	}
}

func renderSessions(a *App, sessions []*agentv1.SessionInfo, now time.Time) error {
	t := newTable(a.Stdout, "SESSION", "WINDOWS", "ATTACHED", "SIZE", "AGE")
	for _, s := range sessions {
		t.row(s.GetName(), formatWindows(s.GetWindows()), strconv.Itoa(int(s.GetAttachedClients())), formatSize(s.GetSize()), formatAge(s.GetCreatedAt(), now))
	}
	return t.flush()
}

// formatWindows renders "0:main 1:build(exit 3)".
func formatWindows(ws []*agentv1.WindowInfo) string {
	parts := make([]string, 0, len(ws))
	for _, w := range ws {
		p := fmt.Sprintf("%d:%s", w.GetIndex(), w.GetName())
		for _, pane := range w.GetPanes() {
			if pane.GetDead() {
				if pane.GetSignal() != 0 {
					p += "(" + signalName(pane.GetSignal()) + ")"
				} else {
					p += fmt.Sprintf("(exit %d)", pane.GetExitCode())
				}
				break
			}
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, " ")
}

func formatSize(s *agentv1.TerminalSize) string {
	if s == nil {
		return ""
	}
	return fmt.Sprintf("%dx%d", s.GetCols(), s.GetRows())
}

func newSessionNewCmd(app *App) *cobra.Command {
	var (
		env        []string
		cwd        string
		unique     bool
		windowName string
	)
	cmd := &cobra.Command{
		Use:   "new WS NAME [flags] [-- CMD [ARGS...]]",
		Short: "Create a session (running CMD, or the user's shell)",
		Args:  minArgs(2, "WS NAME [-- CMD ARGS...]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if d := cmd.ArgsLenAtDash(); d > 2 {
				return usageErrorf("session new: unexpected arguments before --: %s", strings.Join(args[2:d], " "))
			}
			spec := &agentv1.CommandSpec{Argv: args[2:], Cwd: cwd}
			em, err := ParseEnv(env)
			if err != nil {
				return usageErrorf("%v", err)
			}
			spec.Env = em
			asJSON, err := app.JSON()
			if err != nil {
				return err
			}
			agent, ctx, err := app.Agent(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			resp, err := agent.CreateSession(ctx, &agentv1.CreateSessionRequest{
				Name: args[1], Command: spec, Unique: unique, WindowName: windowName,
			})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(app.Stdout, resp.GetSession())
			}
			fmt.Fprintln(app.Stdout, resp.GetSession().GetName())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringVarP(&cwd, "workdir", "w", "", "working directory: absolute, relative to the workspace's directory, or '~/...' (quoted) for its home")
	f.BoolVar(&unique, "unique", false, "append a random suffix to NAME; the final name is printed")
	f.StringVar(&windowName, "window-name", "", "name of the first window (default main)")
	return cmd
}

func newSessionKillCmd(app *App) *cobra.Command {
	return &cobra.Command{
		Use:   "kill WS NAME",
		Short: "Kill a session and every process in it",
		Args:  exactArgs(2, "WS NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			agent, ctx, err := app.Agent(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			_, err = agent.KillSession(ctx, &agentv1.KillSessionRequest{Name: args[1]})
			return err
		},
	}
}

// splitTarget reads "NAME" or "NAME:WINDOW".
func splitTarget(s, window string) *agentv1.PaneTarget {
	name, w, ok := strings.Cut(s, ":")
	if ok && window == "" {
		window = w
	} else if !ok {
		name = s
	}
	return &agentv1.PaneTarget{Session: name, Window: window}
}

func newSessionSendCmd(app *App) *cobra.Command {
	var (
		keys, enter, stdin bool
		window             string
	)
	cmd := &cobra.Command{
		Use:   "send WS NAME [flags] TEXT...",
		Short: "Type text (or, with --keys, named keys) into a session",
		Long: `Type TEXT into the session's pane literally: the words are joined with single
spaces and nothing is interpreted by tmux or a shell. --stdin sends stdin's
bytes as well (large input goes through a paste buffer). With --keys, each word
is a key name instead (Enter, C-c, Up, Escape, F1...). --enter presses Enter
afterwards.`,
		Args: minArgs(2, "WS NAME TEXT..."),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &agentv1.SendInputRequest{Target: splitTarget(args[1], window), Enter: enter}
			if keys {
				req.Keys = args[2:]
			} else {
				req.Text = strings.Join(args[2:], " ")
			}
			if req.Text != "" && !utf8.ValidString(req.Text) {
				return usageErrorf("session send: TEXT is not valid UTF-8 (use --stdin for raw bytes)")
			}
			if stdin {
				data, err := io.ReadAll(app.Stdin)
				if err != nil {
					return fmt.Errorf("read stdin: %w", err)
				}
				req.Data = data
			}
			if req.Text == "" && len(req.Data) == 0 && len(req.Keys) == 0 && !enter {
				return usageErrorf("session send: nothing to send (give TEXT, --keys KEY..., or --enter)")
			}
			agent, ctx, err := app.Agent(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			_, err = agent.SendInput(ctx, req)
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVar(&keys, "keys", false, "the words are key names (Enter, C-c, Up...)")
	f.BoolVar(&enter, "enter", false, "press Enter after the text")
	f.BoolVar(&stdin, "stdin", false, "also send stdin's bytes, literally (after TEXT, before keys)")
	f.StringVar(&window, "window", "", "window name or index (default the first; or NAME:WINDOW)")
	return cmd
}

func newSessionCaptureCmd(app *App) *cobra.Command {
	var (
		lines, history uint32
		all            bool
		escapes        bool
		window         string
	)
	cmd := &cobra.Command{
		Use:   "capture WS NAME",
		Short: "Print a pane's screen and scrollback",
		Long: `Print a pane's visible screen. --lines N prints the last N lines of the pane's
content (scrollback and screen, without the blank rows below the last output),
as tail -n does; --history N prints N lines of scrollback above the whole
screen; --all prints the whole scrollback and the screen.`,
		Args: exactArgs(2, "WS NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON, err := app.JSON()
			if err != nil {
				return err
			}
			agent, ctx, err := app.Agent(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			req := &agentv1.CapturePaneRequest{
				Target: splitTarget(args[1], window), HistoryLines: history, AllHistory: all,
				Escapes: escapes, JoinWrapped: true,
			}
			if lines > 0 && !all {
				// N lines of scrollback always hold the last N lines,
				// however much of the screen is blank.
				req.HistoryLines = max(lines, history)
			}
			resp, err := agent.CapturePane(ctx, req)
			if err != nil {
				return err
			}
			if lines > 0 {
				resp.Content = lastLines(trimTrailingBlankLines(resp.GetContent()), int(lines))
			}
			if asJSON {
				return printJSON(app.Stdout, resp)
			}
			_, err = app.Stdout.Write(resp.GetContent())
			return err
		},
	}
	f := cmd.Flags()
	f.Uint32VarP(&lines, "lines", "n", 0, "print the last N lines of the pane's content (scrollback and screen)")
	f.Uint32Var(&history, "history", 0, "lines of scrollback to print above the whole screen")
	f.BoolVar(&all, "all", false, "include the whole scrollback")
	f.BoolVar(&escapes, "escapes", false, "keep colour and attribute escape sequences")
	f.StringVar(&window, "window", "", "window name or index (default the first; or NAME:WINDOW)")
	return cmd
}

func newSessionLogsCmd(app *App) *cobra.Command {
	var (
		follow bool
		window string
	)
	cmd := &cobra.Command{
		Use:   "logs WS NAME",
		Short: "Print a pane's output; with -f, follow it live",
		Args:  exactArgs(2, "WS NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return app.runSessionLogs(cmd.Context(), args[0], splitTarget(args[1], window), follow)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "after the scrollback, stream live output until the pane's command ends")
	cmd.Flags().StringVar(&window, "window", "", "window name or index (default the first; or NAME:WINDOW)")
	return cmd
}

// runSessionLogs prints a pane's scrollback, or with follow its snapshot
// and then its live output until the command ends. A followed pane whose
// command ended makes dtmux exit with its status.
func (a *App) runSessionLogs(ctx context.Context, ws string, target *agentv1.PaneTarget, follow bool) error {
	agent, ctx, err := a.Agent(ctx, ws)
	if err != nil {
		return err
	}
	if !follow {
		resp, err := agent.CapturePane(ctx, &agentv1.CapturePaneRequest{Target: target, AllHistory: true, JoinWrapped: true})
		if err != nil {
			return err
		}
		_, err = a.Stdout.Write(trimTrailingBlankLines(resp.GetContent()))
		return err
	}
	// Where the output got to, so that a follower can take the pane up
	// again there when the hop or the agent goes away under it (a redial,
	// an upgrade), as runs logs -f does. Offsets count from when the agent
	// began to follow the pane: after a restart of the agent they start
	// again, and what the pane printed meanwhile cannot be shown.
	epoch := agentEpoch(ctx, agent)
	req := &agentv1.FollowSessionRequest{Target: target, Snapshot: true}
	var next uint64
	var lost error // the loss being recovered from
	var lostAt time.Time
	wait := reattachEvery
	shown := false // the snapshot came
	for {
		progress, err := a.followPane(ctx, agent, req, &next)
		shown = shown || progress
		var x *ExitError
		if err == nil || errors.As(err, &x) || ctx.Err() != nil {
			return err
		}
		switch {
		case lost == nil && !progress && isLostStream(err) && a.agentAway(ws):
			lost, lostAt = err, time.Now()
			fmt.Fprint(a.Stderr, waitingNote(ws, err))
		case lost == nil && !progress:
			// The first attach failed: say why at once.
			return a.paneLost(err, ws, target)
		case progress:
			if !isLostStream(err) {
				return a.paneLost(err, ws, target)
			}
			lost, lostAt, wait = err, time.Now(), reattachEvery
			fmt.Fprintf(a.Stderr, "dtmux: lost the stream of %s; taking it up again at offset %d\n", paneName(target), next)
		case status.Code(err) == codes.NotFound:
			fmt.Fprintf(a.Stderr, "dtmux: %s closed while the stream was lost\n", paneName(target))
			return nil
		case !isLostStream(err) || time.Since(lostAt) >= reattachFor:
			// The workspace stopped, or the agent stays away: say what
			// became of it.
			return a.paneLost(lost, ws, target)
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = nextReattach(wait)
		req = &agentv1.FollowSessionRequest{Target: target, FromOffset: next}
		if !shown {
			req = &agentv1.FollowSessionRequest{Target: target, Snapshot: true}
		}
		// (An offset from before a restart this misses is taken as
		// "from now" by the agent.)
		switch e := agentEpoch(ctx, agent); {
		case e == "" || e == epoch:
		case epoch == "":
			epoch = e
		default:
			epoch = e
			req.FromOffset = 0 // from now
			fmt.Fprintf(a.Stderr, "dtmux: the agent restarted: what %s printed meanwhile is not shown\n", paneName(target))
		}
	}
}

// followPane streams req's pane to stdout until its command ends (an
// *ExitError with its status, or nil), keeping *next at the offset that
// comes after what was shown. progress says whether anything came.
func (a *App) followPane(ctx context.Context, agent agentv1.AgentServiceClient, req *agentv1.FollowSessionRequest, next *uint64) (progress bool, err error) {
	stream, err := agent.FollowSession(ctx, req)
	if err != nil {
		return false, err
	}
	target := req.GetTarget()
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return progress, nil
		}
		if progress && status.Code(err) == codes.NotFound {
			// The window or session went away under the follower (killed,
			// or closed when its command ended): that ends the output,
			// as tail -f's does when told to stop.
			fmt.Fprintf(a.Stderr, "dtmux: %s closed while following it (its command ended and its window closed, or it was killed)\n", paneName(target))
			return progress, nil
		}
		if err != nil {
			return progress, err
		}
		progress = true
		switch {
		case ev.GetSnapshot() != nil:
			*next = ev.GetSnapshot().GetOffset()
			if _, err := a.Stdout.Write(trimTrailingBlankLines(ev.GetSnapshot().GetContent())); err != nil {
				return progress, err
			}
		case ev.GetOutput() != nil:
			o := ev.GetOutput()
			*next = o.GetOffset() + uint64(len(o.GetData()))
			if _, err := a.Stdout.Write(o.GetData()); err != nil {
				return progress, err
			}
		case ev.GetGap() != nil:
			g := ev.GetGap()
			*next = g.GetOffset() + g.GetBytes()
			fmt.Fprintf(a.Stderr, "dtmux: output lost at offset %d (%d bytes, %s)\n", g.GetOffset(), g.GetBytes(), g.GetReason())
		case ev.GetExited() != nil:
			x := ev.GetExited()
			if x.GetSignal() != 0 {
				return progress, exitCode(128 + int(x.GetSignal()))
			}
			return progress, exitCode(int(x.GetExitCode()))
		}
	}
}

// paneLost is the error of a follower whose stream broke for good.
func (a *App) paneLost(err error, ws string, target *agentv1.PaneTarget) error {
	again := fmt.Sprintf("follow it again with: dtmux session logs %s %s -f", ws, paneName(target))
	return a.lostError(err, ws, lostHints{
		during:     "while following " + paneName(target),
		controller: again,
		agent:      "tmux outlives the agent: " + again,
		removed:    "its sessions ended with it",
	})
}

// agentEpoch names the agent process serving a workspace now (its pid
// and start), or "" when it cannot be asked: pane offsets hold only
// within one.
func agentEpoch(ctx context.Context, agent agentv1.AgentServiceClient) string {
	ctx, cancel := context.WithTimeout(ctx, lostProbeTimeout)
	defer cancel()
	info, err := agent.GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%d@%s", info.GetPid(), info.GetStartedAt().AsTime().Format(time.RFC3339Nano))
}

// paneName names a pane target as the CLI takes it: SESSION[:WINDOW].
func paneName(t *agentv1.PaneTarget) string {
	n := t.GetSession()
	if t.GetWindow() != "" {
		n += ":" + t.GetWindow()
	}
	return n
}

// trimTrailingBlankLines drops the empty lines below a pane's last output
// (the unused part of the screen), keeping one final newline.
func trimTrailingBlankLines(b []byte) []byte {
	end := len(b)
	for end > 0 && (b[end-1] == '\n' || b[end-1] == ' ' || b[end-1] == '\r') {
		end--
	}
	if end == 0 {
		return nil
	}
	out := b[:end:end]
	return append(out, '\n')
}

// lastLines keeps the last n lines of b (each ending in '\n').
func lastLines(b []byte, n int) []byte {
	end := len(b)
	if end > 0 && b[end-1] == '\n' {
		end--
	}
	for i := end - 1; i >= 0; i-- {
		if b[i] == '\n' {
			n--
			if n == 0 {
				return b[i+1:]
			}
		}
	}
	return b
}
