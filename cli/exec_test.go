package cli

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"google.golang.org/grpc"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

func TestExecStreamsAndExitCodes(t *testing.T) {
	addr, _ := startFake(t)
	tests := []struct {
		name           string
		args           []string
		stdout, stderr string
		code           int
	}{
		{"streams kept apart", []string{"exec", "ws", "--", "both"}, "out", "err", 0},
		{"exit code", []string{"exec", "ws", "--", "exit", "3"}, "", "", 3},
		{"signal is 128+N", []string{"exec", "ws", "--", "signal", "9"}, "", "", 137},
		{"without --", []string{"exec", "ws", "exit", "5"}, "", "", 5},
		{"timeout", []string{"exec", "ws", "--timeout", "1s", "--", "timeout"}, "", "dtmux: run r1 timed out: wall-clock timeout 1s; its process group was killed\n", ExitTimedOut},
		{"gap note", []string{"exec", "ws", "--", "gap"}, "tail", "10 bytes of stdout at offset 0 were evicted", 0},
		{"stdin piped", []string{"exec", "ws", "--", "cat"}, "hello\n", "", 0},
		{"no trailer is a failure", []string{"exec", "ws", "--", "notrailer"}, "partial", "dtmux: run r1: the stream ended without the run's exit status\n", ExitFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dtmux(t, addr, "hello\n", tt.args...)
			if r.code != tt.code || r.stdout != tt.stdout || !strings.Contains(r.stderr, tt.stderr) || (tt.stderr == "" && r.stderr != "") {
				t.Errorf("got code %d stdout %q stderr %q; want %d %q %q", r.code, r.stdout, r.stderr, tt.code, tt.stdout, tt.stderr)
			}
		})
	}
}

func TestExecStdinLarge(t *testing.T) {
	addr, _ := startFake(t)
	in := strings.Repeat("x", 3*stdinChunk+17)
	r := dtmux(t, addr, in, "exec", "ws", "--", "count")
	if r.code != 0 || r.stdout != "98321" {
		t.Errorf("count = %q (code %d, stderr %q), want %d", r.stdout, r.code, r.stderr, len(in))
	}
	r = dtmux(t, addr, "", "exec", "ws", "--", "count")
	if r.stdout != "0" {
		t.Errorf("empty stdin: count = %q, want 0 (EOF must close stdin)", r.stdout)
	}
}

func TestExecStartRequest(t *testing.T) {
	addr, f := startFake(t)
	secrets := filepath.Join(t.TempDir(), "secrets")
	if err := os.WriteFile(secrets, []byte("TOKEN=abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := dtmux(t, addr, "", "exec", "ws", "-e", "A=1", "-e", "B=x=y", "--secret-env", "S=2", "--secret-env-file", secrets,
		"-w", "/tmp", "--timeout", "90s", "--idle-timeout", "5s", "--shell", "--run-id", "job-1", "--max-output", "1M", "-tt", "--", "exit", "0")
	if r.code != 0 {
		t.Fatalf("code %d: %s", r.code, r.stderr)
	}
	s := f.starts[0]
	c := s.GetCommand()
	if c.GetEnv()["A"] != "1" || c.GetEnv()["B"] != "x=y" || c.GetSecretEnv()["S"] != "2" || c.GetSecretEnv()["TOKEN"] != "abc" ||
		c.GetCwd() != "/tmp" || !c.GetShell() || s.GetRunId() != "job-1" || s.GetDetach() ||
		s.GetTimeout().AsDuration() != 90*time.Second || s.GetIdleTimeout().AsDuration() != 5*time.Second ||
		s.GetPty().GetRows() != 24 || s.GetPty().GetCols() != 80 || s.GetLimits().GetMaxOutputBytes() != 1<<20 {
		t.Errorf("start = %v", s)
	}
}

func TestDetachedAndScriptRunsSayStdinIsNotRead(t *testing.T) {
	addr, _ := startFake(t)
	if r := dtmux(t, addr, "data", "exec", "-d", "ws", "--", "cat"); r.code != 0 || !strings.Contains(r.stderr, "a detached run gets no stdin") {
		t.Errorf("exec -d with piped stdin: %+v, want a note that it is not read", r)
	}
	if r := dtmux(t, addr, "", "exec", "-d", "ws", "--", "cat"); r.stderr != "" {
		t.Errorf("exec -d with empty stdin: stderr %q, want nothing", r.stderr)
	}
}

func TestExecDetachPrintsRunID(t *testing.T) {
	addr, f := startFake(t)
	r := dtmux(t, addr, "", "exec", "-d", "ws", "--run-id", "bg-7", "--", "both")
	if r.code != 0 || r.stdout != "bg-7\n" || r.stderr != "" {
		t.Errorf("got %+v, want the run id alone", r)
	}
	if !f.starts[0].GetDetach() {
		t.Error("detach not requested")
	}
}

func TestExecUsageErrorsMakeNoCall(t *testing.T) {
	addr, f := startFake(t)
	tests := map[string][]string{
		"empty argv":          {"exec", "ws"},
		"env without =":       {"exec", "ws", "-e", "NOPE", "--", "exit", "0"},
		"empty env name":      {"exec", "ws", "-e", "=v", "--", "exit", "0"},
		"bad secret":          {"exec", "ws", "--secret-env", "hunter2", "--", "exit", "0"},
		"empty command":       {"exec", "ws", "--", ""},
		"negative timeout":    {"exec", "ws", "--timeout", "-1s", "--", "exit", "0"},
		"words before --":     {"exec", "ws", "stray", "--", "exit", "0"},
		"bad flag":            {"exec", "ws", "--nope", "--", "exit", "0"},
		"bad duration":        {"exec", "ws", "--timeout", "soon", "--", "exit", "0"},
		"missing secret file": {"exec", "ws", "--secret-env-file", "/nonexistent/x", "--", "exit", "0"},
	}
	for name, args := range tests {
		r := dtmux(t, addr, "", args...)
		if r.code != ExitUsage || strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "dtmux: ") {
			t.Errorf("%s: code %d stderr %q, want %d and one line", name, r.code, r.stderr, ExitUsage)
		}
		if strings.Contains(r.stderr, "hunter2") {
			t.Errorf("%s: the secret is echoed: %q", name, r.stderr)
		}
	}
	if n := f.callCount(); n != 0 {
		t.Errorf("%d calls reached the server", n)
	}
}

func TestUnknownWorkspace(t *testing.T) {
	addr, _ := startFake(t)
	r := dtmux(t, addr, "", "exec", "nope", "--", "exit", "0")
	if r.code != ExitFailure || r.stderr != "dtmux: workspace \"nope\" not found\n" {
		t.Errorf("got %+v", r)
	}
}

func TestNoController(t *testing.T) {
	dir := t.TempDir()
	r := dtmux(t, "unix://"+dir+"/controller.sock", "", "ws", "ls")
	want := "dtmux: no controller at unix://" + dir + "/controller.sock: start one with `dtmux-controller`\n"
	if r.code != ExitFailure || r.stderr != want {
		t.Errorf("got %+v, want %q", r, want)
	}
	// A socket file with nobody listening is a connection failure.
	sock := filepath.Join(dir, "stale.sock")
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r = dtmux(t, "unix://"+sock, "", "ws", "ls")
	if r.code != ExitFailure || !strings.HasPrefix(r.stderr, "dtmux: cannot reach controller at unix://"+sock) || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("got %+v", r)
	}
}

func TestControllerAddress(t *testing.T) {
	tests := []struct {
		flag string
		env  map[string]string
		want string
	}{
		{"tcp://127.0.0.1:7000", map[string]string{"DTMUX_CONTROLLER": "unix:///x.sock"}, "tcp://127.0.0.1:7000"},
		{"", map[string]string{"DTMUX_CONTROLLER": "unix:///x.sock", "DTMUX_STATE_DIR": "/s"}, "unix:///x.sock"},
		{"", map[string]string{"DTMUX_STATE_DIR": "/s", "XDG_STATE_HOME": "/x"}, "unix:///s/controller.sock"},
		{"", map[string]string{"XDG_STATE_HOME": "/x", "HOME": "/h"}, "unix:///x/dtmux/controller.sock"},
		{"", map[string]string{"HOME": "/h"}, "unix:///h/.local/state/dtmux/controller.sock"},
	}
	for _, tt := range tests {
		a := &App{controller: tt.flag, Getenv: func(k string) string { return tt.env[k] }}
		got, err := a.ControllerAddress()
		if err != nil || got.String() != tt.want {
			t.Errorf("flag %q env %v: %v, %v; want %s", tt.flag, tt.env, got, err, tt.want)
		}
	}
	a := &App{controller: "http://x", Getenv: func(string) string { return "" }}
	if _, err := a.ControllerAddress(); ErrorCode(err) != ExitUsage {
		t.Errorf("bad address: %v", err)
	}
}

func TestExecDetachClosesStdin(t *testing.T) {
	addr, f := startFake(t)
	if r := dtmux(t, addr, "typed\n", "exec", "-d", "ws", "--", "cat"); r.code != 0 {
		t.Fatalf("exec -d: %+v", r)
	}
	// The fake records what followed the start once it has read it (or
	// once the client hung up without sending anything more).
	var got []bool
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		f.mu.Lock()
		got = append([]bool(nil), f.detachStdin...)
		f.mu.Unlock()
		if len(got) > 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(got) != 1 || !got[0] {
		t.Errorf("detached run's stdin: closed = %v, want close_stdin right after start", got)
	}
}

func TestExecRefusalExitCodes(t *testing.T) {
	addr, _ := startFake(t)
	for _, tt := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"command not found", []string{"exec", "ws", "--", "nosuchcmd", "x"}, 127, "dtmux: nosuchcmd: command not found\n"},
		{"not executable", []string{"exec", "ws", "--", "noexec"}, 126, "dtmux: noexec: cannot execute (\"noexec\": permission denied)\n"},
		{"detached, not found", []string{"exec", "-d", "ws", "--", "nosuchcmd"}, 127, "dtmux: nosuchcmd: command not found\n"},
		{"run id conflict", []string{"exec", "ws", "--run-id", "taken", "--", "both"}, ExitUsage, "dtmux: run id \"taken\" is already used by a different command: choose another --run-id, or leave it out\n"},
		{"invalid run id rejected by the server", []string{"exec", "ws", "--run-id", "bad id", "--", "both"}, ExitUsage, "dtmux: run id \"bad id\": want 1 to 64 letters, digits, '.', '_' or '-'\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := dtmux(t, addr, "", tt.args...)
			if r.code != tt.code || r.stderr != tt.stderr || r.stdout != "" {
				t.Errorf("got %+v, want exit %d and stderr %q", r, tt.code, tt.stderr)
			}
		})
	}
}

func TestExecLostStream(t *testing.T) {
	addr, _ := startFake(t)
	r := dtmux(t, addr, "", "exec", "ws", "--", "agentlost")
	want := "dtmux: lost the connection to workspace ws's agent during run r1 (the run's exit status is unknown; see what became of it with: dtmux runs ls ws)\n"
	if r.code != ExitFailure || r.stdout != "partial" || r.stderr != want {
		t.Errorf("agent lost: %+v, want exit 255 and %q", r, want)
	}
	r = dtmux(t, addr, "", "exec", "ws", "--", "removed")
	want = "dtmux: workspace ws was removed during run r1 (its runs ended with it)\n"
	if r.code != ExitFailure || r.stderr != want {
		t.Errorf("workspace removed: %+v, want exit 255 and %q", r, want)
	}
}

// TestExecControllerLost kills the (fake) controller in the middle of a
// run: the CLI says it lost the controller, not "unavailable: EOF".
func TestExecControllerLost(t *testing.T) {
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "c.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	started := make(chan struct{})
	agentv1.RegisterAgentServiceServer(s, &hangingAgent{started: started})
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = s.Serve(l)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-served
	})
	go func() {
		<-started
		s.Stop() // the controller goes away mid-run
	}()
	r := dtmux(t, "unix://"+sock, "", "exec", "ws", "--", "sleep", "300")
	want := "dtmux: lost the connection to the controller during run h1 on ws (an attached run is hung up when its client goes away; start long jobs with -d and reattach with: dtmux runs logs ws h1 -f)\n"
	if r.code != ExitFailure || r.stderr != want {
		t.Errorf("controller lost: %+v, want exit 255 and %q", r, want)
	}
}

// hangingAgent starts a run and then waits until its server is stopped.
type hangingAgent struct {
	agentv1.UnimplementedAgentServiceServer
	started chan struct{}
}

func (h *hangingAgent) Exec(stream agentv1.AgentService_ExecServer) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	if err := stream.Send(&agentv1.ExecResponse{Event: &agentv1.ExecResponse_Started{Started: &agentv1.RunStarted{RunId: "h1"}}}); err != nil {
		return err
	}
	// The client closes stdin (it is empty) once it has the start: only
	// then is the run under way on its side.
	if _, err := stream.Recv(); err != nil {
		return err
	}
	close(h.started)
	<-stream.Context().Done()
	return stream.Context().Err()
}

func TestExecTTYNeedsATerminal(t *testing.T) {
	addr, f := startFake(t)
	r := dtmux(t, addr, "", "exec", "-t", "ws", "--", "exit", "0")
	if r.code != 0 || !strings.Contains(r.stderr, "no pseudo-terminal: stdin is not a terminal") {
		t.Errorf("got %+v, want a note that no PTY is used", r)
	}
	if f.starts[0].GetPty() != nil || f.starts[0].GetNoStdin() {
		t.Errorf("start = %v, want no PTY and stdin forwarded", f.starts[0])
	}
	r = dtmux(t, addr, "", "exec", "-d", "-t", "ws", "--", "exit", "0")
	if r.code != 0 || r.stderr != "" || f.starts[1].GetPty() == nil {
		t.Errorf("-d -t: %+v, start %v: a detached run reads no stdin and keeps its PTY", r, f.starts[1])
	}
}

// TestForwardSignalsResizesInBursts: a window dragged to a new size sends
// SIGWINCH after SIGWINCH; every one is forwarded, so the last size is.
func TestForwardSignalsResizesInBursts(t *testing.T) {
	var sent atomic.Int64
	x := &execStream{stream: countingExecClient{n: &sent}}
	sigs := make(chan os.Signal, 5)
	for range 5 {
		sigs <- syscall.SIGWINCH
	}
	// A terminal whose size can be read.
	ptmx, pts, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer pts.Close()
	if err := pty.Setsize(pts, &pty.Winsize{Rows: 30, Cols: 100}); err != nil {
		t.Fatal(err)
	}
	done, giveUp := make(chan struct{}), make(chan syscall.Signal, 1)
	go x.forwardSignals(sigs, done, giveUp, int(pts.Fd()))
	defer close(done)
	for start := time.Now(); sent.Load() < 5; time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("forwarded %d of 5 resizes", sent.Load())
		}
	}
}

func TestForwardSignalsGivesUp(t *testing.T) {
	defer func(g time.Duration) { termGrace = g }(termGrace)
	termGrace = 50 * time.Millisecond
	for name, tc := range map[string]struct {
		sigs      []os.Signal
		want      syscall.Signal
		forwarded int64
		grace     time.Duration
	}{
		"third SIGINT":        {[]os.Signal{syscall.SIGINT, syscall.SIGINT, syscall.SIGINT}, syscall.SIGINT, 2, time.Minute},
		"second SIGTERM":      {[]os.Signal{syscall.SIGTERM, syscall.SIGTERM}, syscall.SIGTERM, 1, time.Minute},
		"SIGHUP, then grace":  {[]os.Signal{syscall.SIGHUP}, syscall.SIGHUP, 1, 50 * time.Millisecond},
		"SIGTERM, then grace": {[]os.Signal{syscall.SIGINT, syscall.SIGTERM}, syscall.SIGTERM, 2, 50 * time.Millisecond},
	} {
		t.Run(name, func(t *testing.T) {
			termGrace = tc.grace
			var sent atomic.Int64
			x := &execStream{stream: countingExecClient{n: &sent}}
			sigs := make(chan os.Signal, len(tc.sigs))
			go func() {
				for _, s := range tc.sigs {
					sigs <- s
					time.Sleep(2 * dupWindow) // apart, as a person or a supervisor sends them
				}
			}()
			done, giveUp := make(chan struct{}), make(chan syscall.Signal, 1)
			go x.forwardSignals(sigs, done, giveUp)
			defer close(done)
			select {
			case got := <-giveUp:
				if got != tc.want {
					t.Errorf("gave up on %v, want %v", got, tc.want)
				}
				if n := sent.Load(); n != tc.forwarded {
					t.Errorf("forwarded %d signals, want %d", n, tc.forwarded)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("did not give up")
			}
		})
	}
	// Cases that keep waiting: the signals arrive at once.
	for name, tc := range map[string]struct {
		sigs  []os.Signal
		grace time.Duration
	}{
		"SIGTERM twice at once (timeout(1) signals dtmux, then its group): one": {[]os.Signal{syscall.SIGTERM, syscall.SIGTERM}, time.Minute},
		"one SIGINT": {[]os.Signal{syscall.SIGINT}, 50 * time.Millisecond},
	} {
		t.Run(name, func(t *testing.T) {
			termGrace = tc.grace
			var sent atomic.Int64
			x := &execStream{stream: countingExecClient{n: &sent}}
			sigs := make(chan os.Signal, len(tc.sigs))
			for _, sig := range tc.sigs {
				sigs <- sig
			}
			done, giveUp := make(chan struct{}), make(chan syscall.Signal, 1)
			go x.forwardSignals(sigs, done, giveUp)
			defer close(done)
			select {
			case got := <-giveUp:
				t.Errorf("gave up on %v", got)
			case <-time.After(500 * time.Millisecond):
			}
			if n := sent.Load(); n != 1 {
				t.Errorf("forwarded %d signals, want 1", n)
			}
		})
	}
}

// countingExecClient counts the requests forwardSignals sends.
type countingExecClient struct {
	agentv1.AgentService_ExecClient
	n *atomic.Int64
}

func (c countingExecClient) Send(*agentv1.ExecRequest) error { c.n.Add(1); return nil }
