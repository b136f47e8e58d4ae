package tmux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RunSpec describes a command run in a new window of a session.
type RunSpec struct {
	Session    string
	WindowName string
	Command    Command
	// Timeout kills the command's process group when it passes (0: none).
	Timeout time.Duration
	// Grace between SIGTERM and SIGKILL (default 2s).
	Grace time.Duration
	// CreateSession creates the session when it is missing.
	CreateSession bool
	// CloseWindow kills the window after the command ended.
	CloseWindow bool
	// Wrap, when set, rewrites the command's final argv (after the shell
	// and PATH handling), e.g. to run it under a helper that sets limits.
	Wrap func(argv []string) ([]string, error)
}

// RunStarted says where the command runs.
type RunStarted struct {
	Session, Window, Pane string
	PID                   int
	At                    time.Time
}

// RunResult is how the command ended.
type RunResult struct {
	Exit     PaneExit
	TimedOut bool
	Bytes    uint64
	Started  time.Time
	Ended    time.Time
}

// RunInSession runs a command in a new window and reports its output and
// its exit status as tmux records it. Every byte the command wrote is
// delivered: live output comes from %output, and what tmux 3.3a drops at
// exit (#4807), or what a slow caller let the buffer evict, is read from a
// pipe-pane log by byte offset.
//
// The command belongs to its window, not to the caller: when ctx ends
// first (the client cancelled or went away) or a callback fails, the
// command keeps running like a detached run and ctx's (or the callback's)
// error is returned. Only the timeout, which the pane helper (without
// one, a Manager-owned watchdog) keeps enforcing after the caller left,
// or an explicit kill (KillSession, a signal) ends it. With CloseWindow
// its window then closes when it ends.
func (m *Manager) RunInSession(ctx context.Context, spec RunSpec, started func(RunStarted) error, output func(offset uint64, data []byte) error) (RunResult, error) {
	if err := m.Err(); err != nil {
		return RunResult{}, err
	}
	if err := ValidName(spec.Session); err != nil {
		return RunResult{}, err
	}
	win := spec.WindowName
	if win == "" {
		win = "run-" + randomSuffix()
	}
	if err := ValidName(win); err != nil {
		return RunResult{}, fmt.Errorf("window name: %w", err)
	}
	if len(spec.Command.Argv) == 0 {
		return RunResult{}, fmt.Errorf("%w: empty command", ErrInvalidArgument)
	}
	argv, err := m.prepare(spec.Command)
	if err != nil {
		return RunResult{}, err
	}
	if spec.Wrap != nil {
		if argv, err = spec.Wrap(argv); err != nil {
			return RunResult{}, err
		}
	}
	c, err := m.client(ctx, spec.Session)
	if errors.Is(err, ErrSessionNotFound) && spec.CreateSession {
		_, err = m.CreateSession(ctx, SessionSpec{Name: spec.Session})
		if err == nil || errors.Is(err, ErrSessionExists) {
			c, err = m.client(ctx, spec.Session)
		}
	}
	if err != nil {
		return RunResult{}, err
	}
	r := &run{m: m, c: c, spec: spec, output: output}
	defer r.cleanup()
	if err := r.start(ctx, win, argv); err != nil {
		return RunResult{}, err
	}
	if err := started(RunStarted{Session: spec.Session, Window: win, Pane: r.pane, PID: r.cmdPID, At: r.res.Started}); err != nil {
		r.detach()
		return RunResult{}, err
	}
	return r.wait(ctx)
}

type run struct {
	m      *Manager
	c      *Client
	spec   RunSpec
	output func(uint64, []byte) error

	pane, window string
	pid          int // the pane's process (the helper, when there is one)
	cmdPID       int // the command's
	log          string
	pidFile      string
	buf          *Buffer
	res          RunResult

	delivered uint64 // bytes passed to output
	fromLog   bool   // %output lost count (paused): read only the log
	ended     bool   // the command's exit status was seen

	// deadline is when the timeout ends the command (zero: none).
	deadline time.Time
	// timedOut is when SIGTERM was sent for the timeout (zero: not yet).
	timedOut time.Time

	waitCancel context.CancelFunc
	waitWG     sync.WaitGroup
}

func (r *run) start(ctx context.Context, win string, argv []string) error {
	id := randomSuffix()
	r.log = filepath.Join(r.m.cfg.StateDir, "logs", id+".log")
	blocks, err := r.c.Command(ctx, line("new-window", "-d", "-t", quoteWord("="+r.spec.Session+":"), "-n", quoteWord(win),
		"-P", "-F", quoteWord("#{pane_id} #{window_id}"), "--", placeholder[0], placeholder[1]))
	if err != nil {
		return fmt.Errorf("new window: %w", err)
	}
	if len(blocks) != 1 || len(blocks[0].Body) != 1 {
		return errors.New("new window: unexpected reply")
	}
	ids := strings.Fields(string(blocks[0].Body[0]))
	if len(ids) != 2 {
		return fmt.Errorf("new window: unexpected reply %q", blocks[0].Body[0])
	}
	r.pane, r.window = ids[0], ids[1]
	r.c.setWindow(r.pane, r.window)
	r.c.ownPipe(r.pane, true) // a Follow must not replace the run's pipe
	r.buf = r.c.Buffer(r.pane)
	// The log is complete even when %output loses the tail (TMUX.md §6).
	// pipe-pane expands formats and strftime, so '#' and '%' are doubled.
	// The pipe stays open while a dead pane remains (pipe-pane refuses to
	// close it: "target pane has exited"), so completion is read from
	// cat's own counters; its pid is written first (exec keeps it).
	r.pidFile = r.log + ".pid"
	pipe := fmt.Sprintf("echo $$ > %s; exec cat >> %s", shellQuote(r.pidFile), shellQuote(r.log))
	pipe = strings.ReplaceAll(escapeFormat(pipe), "%", "%%")
	if _, err := r.c.Command(ctx, line("pipe-pane", "-O", "-t", quoteWord(r.pane), quoteWord(pipe))); err != nil {
		return fmt.Errorf("pipe pane: %w", err)
	}
	// Start waiting for the death hook before the command can die.
	wctx, cancel := context.WithCancel(context.Background())
	r.waitCancel = cancel
	r.waitWG.Go(func() { r.waitDeath(wctx) })
	if r.spec.Timeout > 0 {
		r.deadline = time.Now().Add(r.spec.Timeout)
	}
	if h := r.m.cfg.PaneHelper; len(h) > 0 {
		// The helper enforces the deadline itself: it outlives the agent.
		argv = append(slices.Clone(h), paneExecArgs(r.deadline, r.grace(), argv)...)
	}
	respawn := r.m.respawnLine(r.pane, r.spec.Command, argv)
	blocks, err = r.c.CommandN(ctx, respawn+" ; display-message -p -t "+quoteWord(r.pane)+" "+quoteWord("#{pane_pid}"), 2, nil)
	if err != nil {
		return fmt.Errorf("start command: %w", err)
	}
	r.res.Started = time.Now()
	if len(blocks) == 2 && len(blocks[1].Body) == 1 {
		r.pid, _ = strconv.Atoi(string(blocks[1].Body[0]))
	}
	r.cmdPID = r.pid
	if len(r.m.cfg.PaneHelper) > 0 && r.pid > 0 {
		// The pane's process is the helper; the command is the
		// foreground process group it starts.
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			pg := foregroundGroup(r.pid)
			if pg > 0 && pg != r.pid {
				r.cmdPID = pg
				break
			}
			if pg <= 0 { // the helper is gone already (or has no terminal)
				break
			}
		}
	}
	return nil
}

// waitDeath waits on the pane-died hook's channel, then reads the pane's
// state. A dead pane without a status is the 3.3a lost SIGCHLD: nudge
// the server; the subscription then reports the status.
func (r *run) waitDeath(ctx context.Context) {
	cmd := r.m.command(ctx, "wait-for", "dtmux-died-"+r.pane)
	if err := cmd.Run(); err != nil {
		return
	}
	for i := 0; ctx.Err() == nil; i++ {
		blocks, err := r.c.Command(ctx, line("display-message", "-p", "-t", quoteWord(r.pane),
			quoteWord("#{pane_dead}/#{pane_dead_status}/#{pane_dead_signal}")))
		if err != nil || len(blocks[0].Body) != 1 {
			return
		}
		e, dead, known := parseDead(string(blocks[0].Body[0]))
		if dead && known {
			r.buf.setExit(e)
			return
		}
		r.m.nudge()
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(50<<min(i, 6)) * time.Millisecond):
		}
	}
}

func (r *run) kill(sig syscall.Signal) {
	if r.pid > 0 {
		killPane(r.pid, sig)
	}
}

func (r *run) grace() time.Duration {
	if r.spec.Grace > 0 {
		return r.spec.Grace
	}
	return 2 * time.Second
}

// helped reports whether the pane helper runs the command, and so
// enforces its deadline.
func (r *run) helped() bool { return len(r.m.cfg.PaneHelper) > 0 }

func (r *run) wait(ctx context.Context) (RunResult, error) {
	var timeout, grace <-chan time.Time
	if !r.deadline.IsZero() {
		t := time.NewTimer(time.Until(r.deadline))
		defer t.Stop()
		timeout = t.C
	}
	graceD := r.grace()
	if r.helped() {
		// The helper sends the signals; the agent only steps in when it
		// has not (it died).
		graceD += 2 * time.Second
	}
	cur := r.buf.NewCursor(0)
	for {
		ch := r.buf.Next(cur, 32<<10)
		switch {
		case ch.Gap != nil && ch.Gap.Reason == GapPaused:
			r.fromLog = true
		case ch.Gap != nil:
			if !r.fromLog {
				if err := r.fromLogTo(ch.Gap.Offset + ch.Gap.Bytes); err != nil {
					r.detach()
					return r.res, err
				}
			}
		case ch.Data != nil:
			if !r.fromLog && ch.Offset > r.delivered {
				if err := r.fromLogTo(ch.Offset); err != nil {
					r.detach()
					return r.res, err
				}
				if r.delivered < ch.Offset {
					r.fromLog = true // the log lags; stay on it
				}
			}
			if r.fromLog {
				if err := r.fromLogTo(0); err != nil {
					r.detach()
					return r.res, err
				}
				break
			}
			if end := ch.Offset + uint64(len(ch.Data)); end > r.delivered {
				if err := r.output(r.delivered, ch.Data[r.delivered-ch.Offset:]); err != nil {
					r.detach()
					return r.res, err
				}
				r.delivered = end
			}
		case ch.Exit != nil:
			r.ended = true
			r.res.Exit = *ch.Exit
			r.res.Ended = time.Now()
			if !r.deadline.IsZero() && ch.Exit.Signal != 0 && !r.res.Ended.Before(r.deadline) {
				r.res.TimedOut = true // the helper's deadline came first
			}
			err := r.drainLog(ctx)
			r.res.Bytes = r.delivered
			return r.res, err
		case ch.Closed:
			return r.res, fmt.Errorf("window of %q closed before the command ended: %w", r.spec.Session, ErrWindowNotFound)
		default:
			select {
			case <-ch.Wait:
			case <-timeout:
				r.res.TimedOut = true
				r.timedOut = time.Now()
				timeout = nil
				if !r.helped() {
					r.kill(syscall.SIGTERM)
				}
				grace = time.After(graceD)
			case <-grace:
				grace = nil
				r.kill(syscall.SIGKILL)
			case <-ctx.Done():
				r.detach()
				return r.res, ctx.Err()
			}
		}
	}
}

// drainLog waits until the log holds everything tmux read from the
// pane, then delivers what %output lost. The pane is dead, so tmux has
// drained its pty into the pipe; the log is complete once the pipe is
// empty and cat has written all it read.
func (r *run) drainLog(ctx context.Context) error {
	deadline := time.Now().Add(logSettleTimeout)
	settled := 0
	for settled < 2 && time.Now().Before(deadline) && ctx.Err() == nil {
		if r.pipeDrained() {
			settled++
		} else {
			settled = 0
		}
		time.Sleep(2 * time.Millisecond)
	}
	if settled < 2 {
		r.m.log.Warn("pipe-pane log not confirmed complete", "pane", r.pane)
	}
	return r.fromLogTo(0)
}

// pipeDrained reports whether the run's pipe-pane cat has an empty pipe
// and has written every byte it read.
func (r *run) pipeDrained() bool { return pipeDrained(r.pidFile) }

// fromLogTo delivers log bytes from r.delivered up to end (0: to EOF).
func (r *run) fromLogTo(end uint64) error {
	f, err := os.Open(r.log)
	if err != nil {
		return fmt.Errorf("read run log: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(int64(r.delivered), io.SeekStart); err != nil {
		return err
	}
	buf := make([]byte, 32<<10)
	for end == 0 || r.delivered < end {
		want := len(buf)
		if end > 0 {
			want = int(min(uint64(want), end-r.delivered))
		}
		n, err := f.Read(buf[:want])
		if n > 0 {
			if oerr := r.output(r.delivered, append([]byte(nil), buf[:n]...)); oerr != nil {
				return oerr
			}
			r.delivered += uint64(n)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// detach leaves the command running in its window after the caller has
// gone. Its timeout, if any, stays with the pane helper, which outlives
// the agent too; without a helper a watchdog the Manager owns takes it
// (until the agent stops).
func (r *run) detach() {
	// The pane helper enforces the deadline by itself.
	if r.pid <= 0 || r.deadline.IsZero() || r.helped() {
		return
	}
	w := &watchdog{m: r.m, pid: r.pid, pane: r.pane, buf: r.buf, grace: r.grace()}
	if r.timedOut.IsZero() {
		w.term = r.deadline
		w.kill = w.term.Add(w.grace)
	} else {
		w.kill = r.timedOut.Add(w.grace)
	}
	r.m.watch(w)
}

func (r *run) cleanup() {
	if r.waitCancel != nil {
		r.waitCancel()
		r.waitWG.Wait()
	}
	if r.pane != "" {
		defer r.c.ownPipe(r.pane, false)
	}
	if r.pane != "" && !r.ended {
		// The command outlives this call: stop copying its output into a
		// log nobody will read, but keep a pipe so that tmux still reads
		// its last output at exit (drain.go); the new pipe replaces the
		// log's. A window that was to close after the run closes when the
		// command ends, since nobody waits for its status any more.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = r.c.Command(ctx, drainLine(r.pane))
		if r.spec.CloseWindow {
			_, _ = r.c.Command(ctx, line("set-option", "-w", "-t", quoteWord(r.window), "remain-on-exit", "off"))
			// It may have ended meanwhile, and a dead pane stays.
			if b, err := r.c.Command(ctx, line("display-message", "-p", "-t", quoteWord(r.pane), quoteWord("#{pane_dead}"))); err == nil &&
				len(b) == 1 && len(b[0].Body) == 1 && string(b[0].Body[0]) == "1" {
				_, _ = r.c.Command(ctx, line("kill-window", "-t", quoteWord(r.window)))
			}
		}
		cancel()
	}
	if r.pane != "" && r.spec.CloseWindow && r.ended {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = r.c.Command(ctx, line("kill-window", "-t", quoteWord(r.window)))
		cancel()
	}
	if r.log != "" {
		_ = os.Remove(r.log)
		_ = os.Remove(r.pidFile)
	}
}
