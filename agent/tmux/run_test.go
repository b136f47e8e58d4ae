package tmux

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

type runOut struct {
	started RunStarted
	data    bytes.Buffer
}

func runIn(t *testing.T, m *Manager, spec RunSpec) (*runOut, RunResult, error) {
	t.Helper()
	o := &runOut{}
	res, err := m.RunInSession(ctx(t), spec, func(s RunStarted) error { o.started = s; return nil },
		func(off uint64, d []byte) error {
			if off != uint64(o.data.Len()) {
				t.Errorf("output at offset %d, have %d bytes", off, o.data.Len())
			}
			o.data.Write(d)
			return nil
		})
	return o, res, err
}

func TestRunInSessionExitStatus(t *testing.T) {
	m := newManager(t)
	mustCreate(t, m, "runs", "sleep", "600")
	cases := []struct {
		name   string
		argv   []string
		shell  bool
		code   int
		signal int
		out    string
	}{
		{"exit0", []string{"true"}, false, 0, 0, ""},
		{"exit3", []string{"sh", "-c", "echo working; exit 3"}, false, 3, 0, "working\r\n"},
		{"signal", []string{"sh", "-c", "kill -KILL $$"}, false, -1, 9, ""},
		{"shell", []string{"echo a;", "exit 7"}, true, 7, 0, "a\r\n"},
		{"one word with spaces", []string{"echo"}, false, 0, 0, "\r\n"},
		{"argv words", []string{"printf", "%s|", "x;", "it's", "*", "", "#{pane_id}", "$HOME"}, false, 0, 0, "x;|it's|*||#{pane_id}|$HOME|"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, res, err := runIn(t, m, RunSpec{Session: "runs", Command: Command{Argv: tc.argv, Shell: tc.shell}, CloseWindow: true})
			if err != nil {
				t.Fatal(err)
			}
			if res.Exit.Code != tc.code || res.Exit.Signal != tc.signal {
				t.Errorf("exit = %+v, want code %d signal %d", res.Exit, tc.code, tc.signal)
			}
			if got := o.data.String(); got != tc.out {
				t.Errorf("output = %q, want %q", got, tc.out)
			}
			if o.started.Pane == "" || o.started.PID == 0 {
				t.Errorf("started = %+v", o.started)
			}
		})
	}
}

// Many short-lived panes: tmux 3.3a loses SIGCHLD for some of them and
// leaves them dead without a status (#311, #4559). Every run must still
// end with its own status.
func TestRunInSessionLostSIGCHLD(t *testing.T) {
	m := newManager(t)
	mustCreate(t, m, "chld", "sleep", "600")
	for i := range 20 {
		_, res, err := runIn(t, m, RunSpec{Session: "chld", Command: Command{Argv: []string{"sh", "-c", fmt.Sprintf("exit %d", i)}}, CloseWindow: true})
		if err != nil {
			t.Fatal(err)
		}
		if res.Exit.Code != i {
			t.Errorf("run %d: exit %+v", i, res.Exit)
		}
	}
}

// Fast output loses its tail in 3.3a unless pipe-pane is active (#4807):
// every byte must arrive, in order.
func TestRunInSessionEveryByteArrives(t *testing.T) {
	m := newManager(t)
	mustCreate(t, m, "tail", "sleep", "600")
	dir := t.TempDir()
	var src bytes.Buffer
	for i := range 60000 {
		fmt.Fprintf(&src, "line %06d %s\n", i, strings.Repeat("x", i%50))
	}
	if err := os.WriteFile(filepath.Join(dir, "data"), src.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	// stty raw: no LF->CRLF, so the output is the file, byte for byte.
	o, res, err := runIn(t, m, RunSpec{Session: "tail", Command: Command{Argv: []string{"sh", "-c", "stty raw -echo; cat data", "x"}, Cwd: dir}, CloseWindow: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Exit.Code != 0 {
		t.Errorf("exit %+v", res.Exit)
	}
	if got := o.data.Bytes(); !bytes.Equal(got, src.Bytes()) {
		d := 0
		for d < len(got) && d < src.Len() && got[d] == src.Bytes()[d] {
			d++
		}
		t.Fatalf("got %d bytes (sha %x), want %d (sha %x); first difference at %d", len(got), sha256.Sum256(got), src.Len(), sha256.Sum256(src.Bytes()), d)
	}
	if res.Bytes != uint64(src.Len()) {
		t.Errorf("bytes = %d", res.Bytes)
	}
}

// A session run's command is the pane's foreground job: tmux names the
// pane after it, and a timeout reaches it even when it ignores SIGTERM.
func TestRunInSessionCommandIsTheForegroundJob(t *testing.T) {
	m := newManager(t)
	mustCreate(t, m, "fg", "sleep", "600")
	dir := t.TempDir()
	marker := filepath.Join(dir, "started")
	t.Cleanup(func() { _ = exec.Command("pkill", "-KILL", "-f", "sleep 317").Run() })
	type result struct {
		res RunResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := m.RunInSession(ctx(t), RunSpec{Session: "fg", WindowName: "stubborn", Timeout: time.Second, Grace: 300 * time.Millisecond,
			Command: Command{Argv: []string{"sh", "-c", `trap "" TERM HUP; touch "$0"; exec sleep 317`, marker}}},
			func(RunStarted) error { return nil }, func(uint64, []byte) error { return nil })
		done <- result{res, err}
	}()
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		_, err := os.Stat(marker)
		s, serr := m.Session(ctx(t), "fg")
		if err == nil && serr == nil && len(s.Windows) == 2 && s.Windows[1].Panes[0].CurrentCommand == "sleep" {
			break
		}
		if time.Since(start) > 900*time.Millisecond {
			t.Fatalf("the run's pane is not named after its command: %+v %v", s, serr)
		}
	}
	r := <-done
	if r.err != nil || !r.res.TimedOut || r.res.Exit.Signal != int(syscall.SIGKILL) {
		t.Fatalf("timed out run: %+v %v", r.res, r.err)
	}
	if out, _ := exec.Command("pgrep", "-f", "sleep 317").Output(); len(out) > 0 {
		t.Errorf("the command outlived its SIGKILL: pids %s", out)
	}
}

func TestRunInSessionTimeoutAndErrors(t *testing.T) {
	m := newManager(t)
	_, res, err := runIn(t, m, RunSpec{Session: "to", CreateSession: true, Command: Command{Argv: []string{"sleep", "300"}}, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if !res.TimedOut || res.Exit.Signal != int(syscall.SIGTERM) {
		t.Errorf("timeout result %+v", res)
	}
	// The window stays, dead, for inspection.
	s, err := m.Session(ctx(t), "to")
	if err != nil || len(s.Windows) != 2 || !s.Windows[1].Panes[0].Dead {
		t.Errorf("session after run: %+v %v", s, err)
	}
	if _, _, err := runIn(t, m, RunSpec{Session: "to", Command: Command{Argv: []string{"no-such-cmd-xyz"}}}); !errors.Is(err, ErrCommandNotFound) {
		t.Errorf("missing command: %v", err)
	}
	if _, _, err := runIn(t, m, RunSpec{Session: "absent", Command: Command{Argv: []string{"true"}}}); !errors.Is(err, ErrSessionNotFound) {
		t.Errorf("absent session: %v", err)
	}
	if _, _, err := runIn(t, m, RunSpec{Session: "to", WindowName: "bad;name", Command: Command{Argv: []string{"true"}}}); !errors.Is(err, ErrInvalidName) {
		t.Errorf("bad window name: %v", err)
	}
}

func TestRunInSessionEnvAndCwd(t *testing.T) {
	m := newManager(t)
	dir := t.TempDir()
	sub := filepath.Join(dir, "a#{b}")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	o, _, err := runIn(t, m, RunSpec{Session: "env", CreateSession: true, Command: Command{
		Argv: []string{"sh", "-c", `printf '%s|%s' "$FOO" "$PWD"`},
		Env:  map[string]string{"FOO": "a b;$HOME \"q\" #{x}"},
		Cwd:  sub,
	}})
	if err != nil {
		t.Fatal(err)
	}
	if want := "a b;$HOME \"q\" #{x}|" + sub; o.data.String() != want {
		t.Errorf("got %q, want %q", o.data.String(), want)
	}
}

// A session run belongs to its window: a caller that goes away (the CLI
// returning on --wait-for cancels its stream) leaves the command running,
// and its timeout is still enforced after the caller left.
func TestRunInSessionOutlivesCaller(t *testing.T) {
	m := newManager(t)
	mustCreate(t, m, "det", "sleep", "600")
	run := func(win string, timeout time.Duration) RunStarted {
		t.Helper()
		c, cancel := context.WithCancel(ctx(t))
		var st RunStarted
		// The windows stay (no CloseWindow) so that their state shows.
		_, err := m.RunInSession(c, RunSpec{Session: "det", WindowName: win, Timeout: timeout,
			Command: Command{Argv: []string{"sh", "-c", "echo ready; exec sleep 300"}}},
			func(s RunStarted) error { st = s; return nil },
			func(_ uint64, d []byte) error {
				if bytes.Contains(d, []byte("ready")) {
					cancel()
				}
				return nil
			})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("run %s: %v, want context.Canceled", win, err)
		}
		return st
	}
	pane := func(win string) Pane {
		t.Helper()
		s, err := m.Session(ctx(t), "det")
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range s.Windows {
			if w.Name == win {
				return w.Panes[0]
			}
		}
		t.Fatalf("window %s is gone: %+v", win, s)
		return Pane{}
	}

	st := run("keep", 0)
	if p := pane("keep"); p.Dead || syscall.Kill(st.PID, 0) != nil {
		t.Errorf("the command died with its caller: %+v", p)
	}

	run("limited", 300*time.Millisecond)
	deadline := time.Now().Add(20 * time.Second)
	for p := pane("limited"); !p.Dead || p.Exit.Signal != int(syscall.SIGTERM); p = pane("limited") {
		if time.Now().After(deadline) {
			t.Fatalf("the timeout was not enforced after the caller left: %+v", p)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p := pane("keep"); p.Dead {
		t.Errorf("the run without a timeout ended: %+v", p)
	}
	// Killing the server hangs up the pane: the command goes with it, as
	// a shell's job goes with a closed terminal.
	m.KillServer()
	for deadline := time.Now().Add(5 * time.Second); syscall.Kill(st.PID, 0) == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			out, _ := exec.Command("ps", "-o", "pid,pgid,stat,args", "--ppid", strconv.Itoa(st.PID)).Output()
			t.Fatalf("the run outlived its pane's hang-up:\n%s", out)
		}
	}
}
