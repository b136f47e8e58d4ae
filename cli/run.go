package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// DefaultRunSession is the session dtmux run uses without --session.
const DefaultRunSession = "scripts"

// putFileChunk is how much file data one PutFile message carries.
const putFileChunk = 1 << 20

type runOptions struct {
	ws       string
	script   string
	args     []string
	session  string
	timeout  time.Duration
	waitFor  string
	progress string
	env      []string
	// keepWindow leaves the script's window (dead, with its status) after
	// the script ends.
	keepWindow bool
	limits     []string
}

func newRunCmd(app *App) *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run WS SCRIPT [ARGS...]",
		Short: "Upload a local script and run it in a tmux window of the workspace",
		Long: `Upload SCRIPT into the workspace (.dtmux/scripts/<sha>-<name>, mode 0755), run it
with ARGS in a new window of a tmux session (created when missing), stream its
output and exit with its exit status (128+N for signal N, 124 on --timeout).
The window is named after the script with a random suffix (build-3f9a) and is
closed when the script ends, unless --keep-window is given.

--wait-for REGEX returns 0 as soon as the pattern appears in the output; the
script keeps running in its window (exit 1, or the script's failure, when it
ends before the pattern appears). --progress REGEX takes a pattern whose
first group is a percentage and draws a progress bar on a terminal (plain
"progress: N%" lines on stderr otherwise). dtmux's flags may come before or
after SCRIPT; the script's own ARGS that look like flags go after --.

The script's stdin is its window's terminal (dtmux session send, dtmux
attach), not dtmux's. Ctrl-C, SIGTERM and SIGHUP type C-c into the window;
a second one, or 10s after a SIGTERM or SIGHUP, leaves the script running,
says where, and exits 128+N.`,
		Args: minArgs(2, "WS SCRIPT [ARGS...]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.ws, o.script, o.args = args[0], args[1], args[2:]
			return app.runScript(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.session, "session", DefaultRunSession, "session to run in (created when missing)")
	f.DurationVar(&o.timeout, "timeout", 0, "kill the script's process group after this long (exit 124)")
	f.StringVar(&o.waitFor, "wait-for", "", "return 0 as soon as output matches this regex (the script keeps running); exit 1 if the script ends first")
	f.StringVar(&o.progress, "progress", "", "regex whose first group is a percentage, shown as a progress bar")
	f.StringArrayVarP(&o.env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.BoolVar(&o.keepWindow, "keep-window", false, "keep the script's window, dead with its status, after the script ends (default: close it)")
	addLimitFlag(f, &o.limits, "the script (session runs take cpu-time, as, nofile and nproc)")
	return cmd
}

// scriptPath is where a script is uploaded: named by content, so that
// re-uploading the same script is harmless and different versions never
// overwrite each other.
func scriptPath(name string, sum [32]byte) string {
	return ".dtmux/scripts/" + hex.EncodeToString(sum[:6]) + "-" + sanitizeName(name)
}

// sanitizeName keeps letters, digits, '-', '_' and '.', replacing the
// rest with '-'.
func sanitizeName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			b[i] = '-'
		}
	}
	if len(b) == 0 {
		return "script"
	}
	return string(b)
}

// windowName is a session-safe window name for one run of a script: its
// name and a short random suffix, so that parallel runs of the same
// script never share a window name ("build-3f9a").
func windowName(script string) string {
	n := strings.ReplaceAll(sanitizeName(strings.TrimSuffix(filepath.Base(script), filepath.Ext(script))), ".", "-")
	if len(n) > 32 {
		n = n[:32]
	}
	var b [2]byte
	_, _ = rand.Read(b[:])
	return n + "-" + hex.EncodeToString(b[:])
}

func (a *App) runScript(ctx context.Context, o runOptions) error {
	var waitRE, progressRE *regexp.Regexp
	var err error
	if o.waitFor != "" {
		if waitRE, err = regexp.Compile(o.waitFor); err != nil {
			return usageErrorf("--wait-for: %v", err)
		}
	}
	if o.progress != "" {
		if progressRE, err = regexp.Compile(o.progress); err != nil {
			return usageErrorf("--progress: %v", err)
		}
		if progressRE.NumSubexp() < 1 {
			return usageErrorf("--progress: the pattern needs a group holding the percentage, such as '(\\d+)%%'")
		}
	}
	if o.timeout < 0 {
		return usageErrorf("--timeout must not be negative")
	}
	limits, err := parseLimits(o.limits)
	if err != nil {
		return err
	}
	if limits.GetMemoryBytes() != 0 || limits.GetPids() != 0 || limits.GetCpuMillis() != 0 {
		return usageErrorf("--limit memory, pids and cpus need a run's own cgroups, which only dtmux exec gets; dtmux run takes cpu-time, as, nofile and nproc")
	}
	data, err := os.ReadFile(o.script)
	if err != nil {
		return usageErrorf("script: %v", err)
	}
	em, err := ParseEnv(o.env)
	if err != nil {
		return usageErrorf("%v", err)
	}
	agent, ctx, err := a.Agent(ctx, o.ws)
	if err != nil {
		return err
	}
	path, err := putFile(ctx, agent, data, scriptPath(filepath.Base(o.script), sha256.Sum256(data)), 0o755)
	if err != nil {
		return err
	}

	req := &agentv1.RunInSessionRequest{
		Session:       o.session,
		WindowName:    windowName(o.script),
		Command:       &agentv1.CommandSpec{Argv: append([]string{path}, o.args...), Env: em},
		CreateSession: true,
		// A finished run's window is litter in the session, unless asked
		// for to look at.
		CloseWindow: !o.keepWindow,
		Limits:      limits,
	}
	if o.timeout > 0 {
		req.Timeout = durationpb.New(o.timeout)
	}
	if a.stdinPiped() {
		fmt.Fprintf(a.Stderr, "dtmux: the script reads its window's terminal, not this stdin (type into it with dtmux session send %s %s or dtmux attach)\n", o.ws, o.session)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := agent.RunInSession(ctx, req)
	if err != nil {
		return err
	}
	// The script lives in its tmux window, not in this stream. Ctrl-C,
	// SIGTERM and SIGHUP type C-c into the window (the script ends as in
	// a terminal, and its status comes back); a second one, or termGrace
	// after a SIGTERM or SIGHUP, leaves it running and says where.
	var paneID atomic.Value // string, once started
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	left := make(chan syscall.Signal, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		var graceC <-chan time.Time
		var first syscall.Signal
		var dup signalDedup
		leave := func(sig syscall.Signal) {
			left <- sig
			cancel()
		}
		for counted := 0; ; {
			var sig syscall.Signal
			select {
			case <-ctx.Done():
				return
			case <-graceC:
				leave(first)
				return
			case s := <-sigs:
				if dup.repeated(s) {
					continue
				}
				sig = s.(syscall.Signal)
			}
			counted++
			pane, _ := paneID.Load().(string)
			if counted > 1 || pane == "" {
				leave(sig)
				return
			}
			first = sig
			if sig != syscall.SIGINT {
				t := time.NewTimer(termGrace)
				defer t.Stop()
				graceC = t.C
			}
			_, _ = agent.SendInput(ctx, &agentv1.SendInputRequest{
				Target: &agentv1.PaneTarget{Session: o.session, Window: pane}, Keys: []string{"C-c"}})
		}
	})
	w := &outputWatcher{waitFor: waitRE, progress: progressRE, bar: newProgressBar(a.Stderr, a.stderrTerminal())}
	defer w.bar.done()
	var started *agentv1.WindowStarted
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("the agent ended the run without its exit status")
		}
		if err != nil {
			select {
			case sig := <-left:
				w.bar.done()
				where := o.session
				if started != nil {
					where = started.GetSession() + ":" + started.GetWindow()
				}
				stop := o.session
				if pane, _ := paneID.Load().(string); pane != "" {
					stop = o.session + ":" + pane
				}
				return &ExitError{Code: 128 + int(sig), Msg: fmt.Sprintf("%s: gave up waiting; the script may still run in %s (interrupt it: dtmux session send %s %s --keys C-c; end everything in the session: dtmux session kill %s %s)", signalName(int32(sig)), where, o.ws, stop, o.ws, o.session)}
			default:
			}
			if started == nil || ctx.Err() != nil {
				return err
			}
			// The script belongs to its window, not to this stream.
			where := started.GetSession() + ":" + started.GetWindow()
			follow := fmt.Sprintf("the script runs on in its window unless its workspace was stopped; follow it with: dtmux session logs %s %s -f", o.ws, where)
			return a.lostError(err, o.ws, lostHints{
				during:     "during script " + where,
				controller: follow,
				agent:      "tmux outlives the agent: " + follow,
				removed:    "its sessions ended with it",
			})
		}
		switch e := ev.GetEvent().(type) {
		case *agentv1.RunInSessionResponse_Started:
			started = e.Started
			paneID.Store(e.Started.GetPaneId())
		case *agentv1.RunInSessionResponse_Output:
			w.bar.clear()
			if _, err := a.Stdout.Write(e.Output.GetData()); err != nil {
				return err
			}
			matched := w.feed(e.Output.GetData())
			// The bar lives on its own line: it is drawn only when the
			// output left the cursor at the start of a line, and erased
			// before more output.
			if d := e.Output.GetData(); len(d) > 0 && d[len(d)-1] == '\n' {
				w.bar.redraw()
			}
			if matched {
				w.bar.done()
				where := o.session
				if started != nil {
					where = started.GetSession() + ":" + started.GetWindow()
				}
				closes := "; its window closes when it ends (--keep-window keeps it, with its exit status)"
				if o.keepWindow {
					closes = ""
				}
				fmt.Fprintf(a.Stderr, "dtmux: %q appeared; the script keeps running in %s (follow it: dtmux session logs %s %s -f%s)\n",
					o.waitFor, where, o.ws, where, closes)
				return nil
			}
		case *agentv1.RunInSessionResponse_Trailer:
			w.bar.done()
			id := req.WindowName
			if started != nil {
				id = started.GetSession() + ":" + started.GetWindow()
			}
			err := a.trailerExit(id, e.Trailer)
			if err == nil && waitRE != nil {
				// A readiness gate must not pass when its pattern
				// never showed.
				return &ExitError{Code: 1, Msg: fmt.Sprintf("the script %s ended (exit 0) before its output matched --wait-for %q", id, o.waitFor)}
			}
			return err
		}
	}
}

// putFile uploads data to path in the workspace and returns the absolute
// path the agent wrote.
func putFile(ctx context.Context, agent agentv1.AgentServiceClient, data []byte, path string, mode uint32) (string, error) {
	sum := sha256.Sum256(data)
	stream, err := agent.PutFile(ctx)
	if err != nil {
		return "", err
	}
	hdr := &agentv1.PutFileHeader{Path: path, Mode: mode, Size: uint64(len(data)), Sha256: hex.EncodeToString(sum[:])}
	if err := stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Header{Header: hdr}}); err != nil {
		return "", putError(stream, err)
	}
	for off := 0; off < len(data); off += putFileChunk {
		end := min(off+putFileChunk, len(data))
		if err := stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Data{Data: data[off:end]}}); err != nil {
			return "", putError(stream, err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return "", err
	}
	return resp.GetPath(), nil
}

// putError finds the server's reason for a failed Send.
func putError(stream agentv1.AgentService_PutFileClient, err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := stream.CloseAndRecv(); rerr != nil {
			return rerr
		}
	}
	return err
}

// outputWatcher looks for --wait-for and --progress in output, line by
// line ('\n' and '\r' both end a line, since progress output redraws with
// '\r'). The pending partial line is also searched for --wait-for, so a
// prompt without a newline still matches.
type outputWatcher struct {
	waitFor  *regexp.Regexp
	progress *regexp.Regexp
	bar      *progressBar
	line     []byte
}

// maxLine bounds the partial line kept for matching.
const maxLine = 64 << 10

// feed scans data and reports whether --wait-for matched.
func (w *outputWatcher) feed(data []byte) bool {
	if w.waitFor == nil && w.progress == nil {
		return false
	}
	for len(data) > 0 {
		i := bytes.IndexAny(data, "\r\n")
		if i < 0 {
			w.line = append(w.line, data...)
			if len(w.line) > maxLine {
				w.line = w.line[len(w.line)-maxLine:]
			}
			return w.waitFor != nil && w.waitFor.Match(w.line)
		}
		w.line = append(w.line, data[:i]...)
		data = data[i+1:]
		if w.scanLine(w.line) {
			return true
		}
		w.line = w.line[:0]
	}
	return false
}

func (w *outputWatcher) scanLine(line []byte) bool {
	if w.progress != nil {
		if m := w.progress.FindSubmatch(line); m != nil {
			if p, err := strconv.ParseFloat(string(m[1]), 64); err == nil {
				w.bar.set(p)
			}
		}
	}
	return w.waitFor != nil && w.waitFor.Match(line)
}
