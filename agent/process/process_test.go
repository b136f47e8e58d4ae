package process_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"

	"github.com/dtmux/dtmux/agent/process"
)

func TestMain(m *testing.M) {
	// The manager re-executes this test binary to apply rlimits.
	if len(os.Args) > 1 && os.Args[1] == process.ExecLimitedCommand {
		err := process.ExecLimited(os.Args[2:])
		fmt.Fprintln(os.Stderr, err)
		os.Exit(127)
	}
	// Runs must get SIGHUP's default even when this test runs under
	// nohup, as the agent binary arranges for its runs: a caught signal is
	// reset across exec, an inherited ignored one is not.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
	goleak.VerifyTestMain(m)
}

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newManager(t *testing.T, mod func(*process.Config)) (*process.Manager, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	cfg := process.Config{
		StateDir:    t.TempDir(),
		Workspace:   "ws-test",
		Workdir:     t.TempDir(),
		KillGrace:   300 * time.Millisecond,
		HangupGrace: 300 * time.Millisecond,
		DrainGrace:  300 * time.Millisecond,
		Logger:      hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: logs}),
	}
	if mod != nil {
		mod(&cfg)
	}
	m, err := process.NewManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return m, logs
}

func start(t *testing.T, m *process.Manager, spec process.Spec) *process.Run {
	t.Helper()
	r, existing, err := m.Start(spec)
	if err != nil {
		t.Fatalf("start %v: %v", spec.Argv, err)
	}
	if existing {
		t.Fatalf("start %v: attached to an existing run", spec.Argv)
	}
	return r
}

func sh(script string) process.Spec { return process.Spec{Argv: []string{"sh", "-c", script}} }

// result is everything a reader saw.
type result struct {
	stdout, stderr []byte
	gaps           []process.Event
	trailer        *process.Trailer
}

// collect follows r from the offsets to its trailer.
func collect(t *testing.T, r *process.Run, stdoutOff, stderrOff uint64) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rd := r.NewReader(stdoutOff, stderrOff)
	var res result
	next := [2]uint64{stdoutOff, stderrOff}
	for {
		ev, err := rd.Next(ctx, true)
		if errors.Is(err, io.EOF) {
			res.trailer = r.Trailer()
			if res.trailer == nil {
				t.Fatal("EOF without a trailer")
			}
			return res
		}
		if err != nil {
			t.Fatalf("read run %s: %v", r.ID(), err)
		}
		k := int(ev.Stream) - 1
		if ev.Offset != next[k] {
			t.Fatalf("%v event at offset %d, want %d", ev.Stream, ev.Offset, next[k])
		}
		switch ev.Kind {
		case process.EventGap:
			res.gaps = append(res.gaps, ev)
			next[k] += ev.Bytes
		case process.EventOutput:
			next[k] += uint64(len(ev.Data))
			if ev.Stream == process.Stdout {
				res.stdout = append(res.stdout, ev.Data...)
			} else {
				res.stderr = append(res.stderr, ev.Data...)
			}
		}
	}
}

func waitDone(t *testing.T, r *process.Run) {
	t.Helper()
	select {
	case <-r.Done():
	case <-time.After(60 * time.Second):
		t.Fatalf("run %s did not finish", r.ID())
	}
}

func TestExitStatus(t *testing.T) {
	m, _ := newManager(t, nil)
	tests := []struct {
		script string
		reason process.Reason
		code   int
		signal int
	}{
		{"exit 0", process.ReasonExited, 0, 0},
		{"exit 3", process.ReasonExited, 3, 0},
		{"kill -USR1 $$", process.ReasonSignaled, -1, int(syscall.SIGUSR1)},
	}
	for _, tt := range tests {
		t.Run(tt.script, func(t *testing.T) {
			res := collect(t, start(t, m, sh(tt.script)), 0, 0)
			tr := res.trailer
			if tr.Reason != tt.reason || tr.ExitCode != tt.code || tr.Signal != tt.signal {
				t.Errorf("trailer = %+v, want reason %v code %d signal %d", tr, tt.reason, tt.code, tt.signal)
			}
		})
	}
}

func TestStdoutAndStderrApart(t *testing.T) {
	m, _ := newManager(t, nil)
	res := collect(t, start(t, m, sh("echo out; echo err >&2; echo out2")), 0, 0)
	if string(res.stdout) != "out\nout2\n" || string(res.stderr) != "err\n" {
		t.Errorf("stdout %q stderr %q", res.stdout, res.stderr)
	}
	if res.trailer.StdoutBytes != 9 || res.trailer.StderrBytes != 4 {
		t.Errorf("trailer counts %d/%d, want 9/4", res.trailer.StdoutBytes, res.trailer.StderrBytes)
	}
}

func TestEnvironment(t *testing.T) {
	m, _ := newManager(t, nil)
	spec := sh(`printf '%s|%s|%s|' "$DTMUX_WORKSPACE" "$FOO" "$PWD"; test "$DTMUX_RUN_ID" = envrun && echo ok`)
	spec.ID = "envrun"
	spec.Env = map[string]string{"FOO": "bar baz"}
	spec.Cwd = "/tmp"
	res := collect(t, start(t, m, spec), 0, 0)
	if want := "ws-test|bar baz|/tmp|ok\n"; string(res.stdout) != want {
		t.Errorf("stdout %q, want %q", res.stdout, want)
	}
}

func TestStdinWithEOF(t *testing.T) {
	m, _ := newManager(t, nil)
	r := start(t, m, process.Spec{Argv: []string{"wc", "-c"}})
	if err := r.WriteStdin([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteStdin(bytes.Repeat([]byte("x"), 200000)); err != nil {
		t.Fatal(err)
	}
	if err := r.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	res := collect(t, r, 0, 0)
	if strings.TrimSpace(string(res.stdout)) != "200006" || res.trailer.ExitCode != 0 {
		t.Errorf("stdout %q trailer %+v", res.stdout, res.trailer)
	}
}

func TestHundredMegabytesByteExact(t *testing.T) {
	m, _ := newManager(t, nil)
	const n = 100_000_000
	// A reader that keeps up never sees a gap; the spool is larger than
	// the output here so that the test does not depend on the race.
	spec := sh(fmt.Sprintf("yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c %d", n))
	spec.Limits.MaxOutputBytes = 128 << 20
	r := start(t, m, spec)
	ctx := context.Background()
	rd := r.NewReader(0, 0)
	h := sha256.New()
	var got uint64
	for {
		ev, err := rd.Next(ctx, true)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ev.Kind != process.EventOutput || ev.Stream != process.Stdout || ev.Offset != got {
			t.Fatalf("unexpected event %v %v at %d (have %d)", ev.Kind, ev.Stream, ev.Offset, got)
		}
		h.Write(ev.Data)
		got += uint64(len(ev.Data))
	}
	want := sha256.New()
	line := []byte("0123456789abcdefghijklmnopqrstuvwxyz\n")
	for left := n; left > 0; {
		k := min(left, len(line))
		want.Write(line[:k])
		left -= k
	}
	if got != n || !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
		t.Errorf("got %d bytes, checksum match %v", got, bytes.Equal(h.Sum(nil), want.Sum(nil)))
	}
	if tr := r.Trailer(); tr.StdoutBytes != n || tr.ExitCode != 0 {
		t.Errorf("trailer %+v", tr)
	}
}

// gone reports whether pid has exited (a zombie counts: it runs no more).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for range 300 {
		if gone(pid) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	t.Errorf("process %d still running", pid)
}

func TestTimeoutKillsGrandchildren(t *testing.T) {
	m, _ := newManager(t, nil)
	// Two grandchildren: one dies on SIGTERM, one ignores it and needs
	// the SIGKILL after the grace.
	spec := sh(`sleep 1000 & echo $!; (trap "" TERM; exec sleep 1001) & echo $!; wait`)
	spec.Timeout = 500 * time.Millisecond
	res := collect(t, start(t, m, spec), 0, 0)
	if res.trailer.Reason != process.ReasonTimedOut || res.trailer.Detail != "timeout 500ms" || res.trailer.ExitCode != -1 {
		t.Errorf("trailer %+v", res.trailer)
	}
	pids := strings.Fields(string(res.stdout))
	if len(pids) != 2 {
		t.Fatalf("stdout %q: want two pids", res.stdout)
	}
	for _, p := range pids {
		pid, err := strconv.Atoi(p)
		if err != nil {
			t.Fatal(err)
		}
		waitGone(t, pid)
	}
}

func TestIdleTimeout(t *testing.T) {
	m, _ := newManager(t, nil)
	spec := sh("echo hi; sleep 1000")
	spec.IdleTimeout = 300 * time.Millisecond
	res := collect(t, start(t, m, spec), 0, 0)
	if res.trailer.Reason != process.ReasonTimedOut || res.trailer.Detail != "idle timeout 300ms" || string(res.stdout) != "hi\n" {
		t.Errorf("trailer %+v stdout %q", res.trailer, res.stdout)
	}
}

func TestLeaderExitWithGrandchildHoldingPipe(t *testing.T) {
	m, _ := newManager(t, nil)
	// The leader exits at once; a grandchild keeps stdout open. The trailer
	// must still come (after the drain grace) with the leader's status.
	res := collect(t, start(t, m, sh("sleep 1000 & echo $!; exit 4")), 0, 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(res.stdout)))
	if err != nil {
		t.Fatalf("stdout %q: %v", res.stdout, err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	if res.trailer.Reason != process.ReasonExited || res.trailer.ExitCode != 4 {
		t.Errorf("trailer %+v", res.trailer)
	}
}

func TestDetachedReattachFromOffset(t *testing.T) {
	m, _ := newManager(t, nil)
	spec := sh("seq 1 20000; echo done >&2")
	spec.ID = "det-1"
	spec.Detach = true
	r := start(t, m, spec)
	waitDone(t, r)
	full := collect(t, r, 0, 0)

	again, existing, err := m.Start(spec)
	if err != nil || !existing || again != r {
		t.Fatalf("restart of %s: existing %v err %v", spec.ID, existing, err)
	}
	const from = 12345
	res := collect(t, again, from, 2)
	if !bytes.Equal(res.stdout, full.stdout[from:]) || string(res.stderr) != "ne\n" || len(res.gaps) != 0 {
		t.Errorf("got %d stdout bytes (want %d), stderr %q, gaps %v", len(res.stdout), len(full.stdout)-from, res.stderr, res.gaps)
	}
}

func TestGapAfterEviction(t *testing.T) {
	m, _ := newManager(t, nil)
	spec := sh("seq 1 5000") // 23893 bytes
	spec.Limits.MaxOutputBytes = 1000
	r := start(t, m, spec)
	waitDone(t, r)
	var full bytes.Buffer
	for i := 1; i <= 5000; i++ {
		fmt.Fprintf(&full, "%d\n", i)
	}
	res := collect(t, r, 0, 0)
	evicted := uint64(full.Len() - 1000)
	if len(res.gaps) != 1 || res.gaps[0].Offset != 0 || res.gaps[0].Bytes != evicted {
		t.Fatalf("gaps %+v, want one of %d bytes at 0", res.gaps, evicted)
	}
	if !bytes.Equal(res.stdout, full.Bytes()[evicted:]) {
		t.Errorf("after the gap: %q", res.stdout)
	}
	if res.trailer.StdoutBytes != uint64(full.Len()) {
		t.Errorf("trailer counts %d bytes, want %d", res.trailer.StdoutBytes, full.Len())
	}
}

func TestSameRunIDRunsOnce(t *testing.T) {
	m, _ := newManager(t, nil)
	file := filepath.Join(t.TempDir(), "lines")
	spec := sh("echo line >> " + file)
	spec.ID = "once"
	var wg sync.WaitGroup
	var mu sync.Mutex
	fresh := 0
	runs := map[*process.Run]bool{}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, existing, err := m.Start(spec)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			runs[r] = true
			if !existing {
				fresh++
			}
		}()
	}
	wg.Wait()
	if fresh != 1 || len(runs) != 1 {
		t.Fatalf("%d fresh starts over %d runs, want 1 and 1", fresh, len(runs))
	}
	for r := range runs {
		waitDone(t, r)
	}
	if _, existing, err := m.Start(spec); err != nil || !existing {
		t.Fatalf("start after the end: existing %v err %v", existing, err)
	}
	b, err := os.ReadFile(file)
	if err != nil || string(b) != "line\n" {
		t.Errorf("file %q (%v), want one line", b, err)
	}
}

func TestSlowReaderDoesNotBlockTheProcess(t *testing.T) {
	m, _ := newManager(t, nil)
	spec := sh("head -c 20000000 /dev/zero")
	spec.Limits.MaxOutputBytes = 1 << 20
	r := start(t, m, spec)
	stalled := r.NewReader(0, 0) // never reads until the run is over
	first, err := stalled.Next(context.Background(), false)
	if err != nil && !errors.Is(err, process.ErrCaughtUp) {
		t.Fatal(err)
	}
	_ = first
	waitDone(t, r) // would hang if the producer waited for readers
	if tr := r.Trailer(); tr.Reason != process.ReasonExited || tr.StdoutBytes != 20000000 {
		t.Fatalf("trailer %+v", tr)
	}
	res := collect(t, r, 0, 0)
	if len(res.gaps) != 1 || len(res.stdout) != 1<<20 {
		t.Errorf("slow reader: %d gaps, %d bytes", len(res.gaps), len(res.stdout))
	}
}

func TestSecretsStayInTheEnvironment(t *testing.T) {
	const secret = "s3cr3t-value-4711"
	m, logs := newManager(t, nil)
	spec := sh(`printf %s "$TOKEN"; tr '\0' ' ' < /proc/$$/cmdline >&2`)
	spec.SecretEnv = map[string]string{"TOKEN": secret}
	spec.Limits.OpenFiles = 256 // through the rlimit helper too
	spec.ID = "secret-run"
	r := start(t, m, spec)
	res := collect(t, r, 0, 0)
	if string(res.stdout) != secret {
		t.Fatalf("the process did not get the secret: %q (stderr %q)", res.stdout, res.stderr)
	}
	if bytes.Contains(res.stderr, []byte(secret)) {
		t.Errorf("secret on the command line: %q", res.stderr)
	}
	info, _ := json.Marshal(r.Info())
	list, _ := json.Marshal(m.List(nil))
	m.Sync()
	meta, err := os.ReadFile(filepath.Join(m.StateDir(), "runs", "journal"))
	if err != nil {
		t.Fatal(err)
	}
	for what, b := range map[string][]byte{"info": info, "list": list, "journal": meta, "log": []byte(logs.String())} {
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("secret found in %s", what)
		}
	}
	if !bytes.Contains(info, []byte(`"TOKEN"`)) {
		t.Errorf("info lacks the secret key name: %s", info)
	}
}

func TestAttachedRunHangsUpWhenLastClientLeaves(t *testing.T) {
	m, _ := newManager(t, nil)
	r := start(t, m, process.Spec{Argv: []string{"sleep", "1000"}})
	a := r.AddClient(true)
	b := r.AddClient(true)
	a()
	select {
	case <-r.Done():
		t.Fatal("run ended while a client was still attached")
	default:
	}
	b()
	waitDone(t, r)
	if tr := r.Trailer(); tr.Reason != process.ReasonKilled || tr.Signal != int(syscall.SIGHUP) {
		t.Errorf("trailer %+v", tr)
	}
}

func TestDetachedRunSurvivesClients(t *testing.T) {
	m, _ := newManager(t, nil)
	spec := process.Spec{Argv: []string{"sleep", "1000"}, Detach: true}
	r := start(t, m, spec)
	r.AddClient(true)()
	if err := r.Signal(syscall.SIGCONT, ""); err != nil {
		t.Fatalf("detached run gone after its client left: %v", err)
	}
	if r.Info().State != process.StateRunning {
		t.Fatal("detached run not running")
	}
	if err := r.Signal(syscall.SIGKILL, "workspace stopped"); err != nil {
		t.Fatal(err)
	}
	waitDone(t, r)
	if tr := r.Trailer(); tr.Reason != process.ReasonKilled || tr.Detail != "workspace stopped" {
		t.Errorf("trailer %+v, want killed with the reason given", tr)
	}
	if err := r.Signal(syscall.SIGTERM, ""); !errors.Is(err, process.ErrRunFinished) {
		t.Errorf("signal after the end: %v", err)
	}
}

func TestSignalFromClient(t *testing.T) {
	m, _ := newManager(t, nil)
	r := start(t, m, process.Spec{Argv: []string{"sleep", "1000"}})
	if err := r.Signal(syscall.SIGINT, ""); err != nil {
		t.Fatal(err)
	}
	waitDone(t, r)
	if tr := r.Trailer(); tr.Reason != process.ReasonSignaled || tr.Signal != int(syscall.SIGINT) {
		t.Errorf("trailer %+v", tr)
	}
}

func TestValidation(t *testing.T) {
	m, _ := newManager(t, nil)
	tests := []struct {
		name string
		spec process.Spec
		want error
	}{
		{"empty argv", process.Spec{}, process.ErrInvalidSpec},
		{"empty program", process.Spec{Argv: []string{""}}, process.ErrInvalidSpec},
		{"NUL in argv", process.Spec{Argv: []string{"echo", "a\x00b"}}, process.ErrInvalidSpec},
		{"= in env key", process.Spec{Argv: []string{"true"}, Env: map[string]string{"A=B": "c"}}, process.ErrInvalidSpec},
		{"empty env key", process.Spec{Argv: []string{"true"}, Env: map[string]string{"": "c"}}, process.ErrInvalidSpec},
		{"NUL in secret key", process.Spec{Argv: []string{"true"}, SecretEnv: map[string]string{"A\x00": "c"}}, process.ErrInvalidSpec},
		{"bad run id", process.Spec{Argv: []string{"true"}, ID: "a/b"}, process.ErrInvalidSpec},
		{"long run id", process.Spec{Argv: []string{"true"}, ID: strings.Repeat("a", 65)}, process.ErrInvalidSpec},
		{"missing cwd", process.Spec{Argv: []string{"true"}, Cwd: "/nonexistent/dir"}, process.ErrBadCwd},
		{"program not found", process.Spec{Argv: []string{"no-such-program-dtmux"}}, process.ErrProgramNotFound},
		{"relative program not found", process.Spec{Argv: []string{"./nope"}}, process.ErrProgramNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := m.Start(tt.spec)
			if !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
	if got := m.List(nil); len(got) != 0 {
		t.Errorf("failed starts left runs behind: %+v", got)
	}
	secret := "do-not-print-me"
	_, _, err := m.Start(process.Spec{Argv: []string{"true"}, SecretEnv: map[string]string{"K": "a\x00" + secret}})
	if err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("err = %v: want an error without the value", err)
	}
}

func TestMaxRuns(t *testing.T) {
	m, _ := newManager(t, func(c *process.Config) { c.MaxRuns = 1 })
	r := start(t, m, process.Spec{Argv: []string{"sleep", "1000"}})
	_, _, err := m.Start(process.Spec{Argv: []string{"true"}})
	if !errors.Is(err, process.ErrTooManyRuns) || !strings.Contains(err.Error(), "1") {
		t.Errorf("err = %v, want ErrTooManyRuns naming the cap", err)
	}
	r.Kill("test over")
	waitDone(t, r)
	waitDone(t, start(t, m, process.Spec{Argv: []string{"true"}}))
}

func TestRlimits(t *testing.T) {
	m, _ := newManager(t, nil)
	t.Run("open files", func(t *testing.T) {
		spec := sh("ulimit -n")
		spec.Limits.OpenFiles = 37
		res := collect(t, start(t, m, spec), 0, 0)
		if strings.TrimSpace(string(res.stdout)) != "37" {
			t.Errorf("ulimit -n = %q (stderr %q)", res.stdout, res.stderr)
		}
	})
	t.Run("cpu", func(t *testing.T) {
		spec := sh("while :; do :; done")
		spec.Limits.CPUSeconds = 1
		spec.Timeout = time.Minute
		res := collect(t, start(t, m, spec), 0, 0)
		if res.trailer.Reason != process.ReasonLimitExceeded || !strings.Contains(res.trailer.Detail, "cpu_seconds") {
			t.Errorf("trailer %+v", res.trailer)
		}
	})
}

func TestPTY(t *testing.T) {
	m, _ := newManager(t, nil)
	spec := sh(`test -t 0 && test -t 1 && echo "tty $TERM $(stty size)"; read line; echo "got $line"`)
	spec.PTY = &process.PTY{Rows: 30, Cols: 100}
	r := start(t, m, spec)
	if err := r.WriteStdin([]byte("abc\n")); err != nil {
		t.Fatal(err)
	}
	res := collect(t, r, 0, 0)
	out := strings.ReplaceAll(string(res.stdout), "\r", "")
	if !strings.Contains(out, "tty xterm-256color 30 100\n") || !strings.Contains(out, "got abc\n") {
		t.Errorf("pty output %q", out)
	}
	if res.trailer.ExitCode != 0 {
		t.Errorf("trailer %+v", res.trailer)
	}
}

func TestRetention(t *testing.T) {
	m, _ := newManager(t, func(c *process.Config) { c.Retention = 50 * time.Millisecond })
	r := start(t, m, process.Spec{Argv: []string{"true"}})
	waitDone(t, r)
	for range 500 {
		if _, err := m.Get(r.ID()); errors.Is(err, process.ErrRunNotFound) {
			if _, err := os.Stat(filepath.Join(m.StateDir(), "runs", r.ID())); !os.IsNotExist(err) {
				t.Errorf("run directory left behind: %v", err)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("finished run never expired")
}

func TestRestartKeepsRuns(t *testing.T) {
	state := t.TempDir()
	m1, _ := newManager(t, func(c *process.Config) { c.StateDir = state })
	done := start(t, m1, process.Spec{ID: "finished", Argv: []string{"sh", "-c", "echo kept; exit 5"}})
	waitDone(t, done)

	// A run in flight when its agent dies: snapshot its state directory
	// while it runs, as a crash would leave it.
	live := start(t, m1, process.Spec{ID: "inflight", Argv: []string{"sh", "-c", "echo partial; sleep 1000"}, Detach: true})
	for live.Info().StdoutBytes == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	m1.Sync()
	crashed := t.TempDir()
	copyDir(t, filepath.Join(state, "runs"), filepath.Join(crashed, "runs"))
	live.Kill("test over")
	waitDone(t, live)

	m2, _ := newManager(t, func(c *process.Config) { c.StateDir = crashed })
	infos := m2.List(nil)
	if len(infos) != 2 {
		t.Fatalf("restarted manager lists %d runs, want 2", len(infos))
	}
	r, err := m2.Get("finished")
	if err != nil {
		t.Fatal(err)
	}
	res := collect(t, r, 0, 0)
	if string(res.stdout) != "kept\n" || res.trailer.Reason != process.ReasonExited || res.trailer.ExitCode != 5 {
		t.Errorf("finished run after restart: %q %+v", res.stdout, res.trailer)
	}
	r, err = m2.Get("inflight")
	if err != nil {
		t.Fatal(err)
	}
	res = collect(t, r, 0, 0)
	if string(res.stdout) != "partial\n" || res.trailer.Reason != process.ReasonAgentLost {
		t.Errorf("in-flight run after restart: %q %+v", res.stdout, res.trailer)
	}
	// The id is still taken: another command under it is refused (the
	// same command attaches: TestRunIDConflict).
	if _, _, err := m2.Start(process.Spec{ID: "finished", Argv: []string{"false"}}); !errors.Is(err, process.ErrRunIDConflict) {
		t.Errorf("same id, other command after restart: err %v, want ErrRunIDConflict", err)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.Walk(from, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if fi.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		if !fi.Mode().IsRegular() {
			// The named pipes of detached runs: without them the next
			// agent cannot adopt the runs (the crash tests of the agent
			// binary cover adoption), and the runs are AGENT_LOST.
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}
