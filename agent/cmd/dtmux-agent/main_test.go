package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/dtmux/dtmux/internal/tmuxserver"
	"github.com/dtmux/dtmux/internal/transport"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dtmux-agent-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "dtmux-agent")
	if out, err := exec.Command("go", "build", "-o", agentBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build agent: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestVersionAndBadFlags(t *testing.T) {
	out, err := exec.Command(agentBin, "--version").Output()
	if err != nil || string(out) != "dtmux-agent dev\n" {
		t.Errorf("--version: %q %v", out, err)
	}
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("t0ken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		want string
	}{
		{nil, "exactly one of --listen"},
		{[]string{"--listen", "unix:///x.sock", "--stdio"}, "exactly one of --listen"},
		{[]string{"--nope"}, "flag provided but not defined"},
		{[]string{"--listen", "tcp://127.0.0.1:0"}, "needs --token-file"},
		{[]string{"--listen", "tcp://0.0.0.0:0", "--token-file", tok}, "without TLS on a non-loopback address"},
		{[]string{"--listen", "ftp://x"}, "unknown scheme"},
		{[]string{"--stdio", "--log-level", "loud"}, "unknown log level"},
		{[]string{"--stdio", "--max-runs", "0"}, "must be positive"},
		{[]string{"--stdio", "--max-procs", "0"}, "must be positive"},
	}
	for _, tt := range tests {
		cmd := exec.Command(agentBin, append(tt.args, "--state-dir", t.TempDir())...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 {
			t.Errorf("%v: err %v, want a non-zero exit", tt.args, err)
		}
		msg := stderr.String()
		if !strings.Contains(msg, tt.want) || strings.Count(msg, "\n") != 1 {
			t.Errorf("%v: stderr %q, want one line with %q", tt.args, msg, tt.want)
		}
	}
}

// agentProc is a running dtmux-agent.
type agentProc struct {
	cmd     *exec.Cmd
	sock    string
	state   string
	client  agentv1.AgentServiceClient
	exited  chan struct{} // closed when the process has been waited for
	waitErr error         // set before exited is closed
}

func startAgent(t *testing.T, state string) *agentProc {
	t.Helper()
	return startAgentVia(t, state, nil)
}

// startAgentVia starts the agent through wrapper, a command that ends by
// exec'ing its arguments (nil: none).
func startAgentVia(t *testing.T, state string, wrapper []string) *agentProc {
	t.Helper()
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	a := &agentProc{sock: filepath.Join(dir, "s", "agent.sock"), state: state, exited: make(chan struct{})}
	argv := append(append([]string(nil), wrapper...), agentBin, "--listen", "unix://"+a.sock, "--state-dir", state, "--workspace", "e2e", "--workdir", t.TempDir(), "--log-level", "debug")
	a.cmd = exec.Command(argv[0], argv[1:]...)
	a.cmd.Stderr = os.Stderr
	// The agent's tmux server outlives it by design: end it after the
	// agent (cleanups run last-registered first).
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := tmuxserver.KillUnder(ctx, state); err != nil {
			t.Errorf("stop the agent's tmux server: %v", err)
		}
	})
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.waitErr = a.cmd.Wait(); close(a.exited) }()
	t.Cleanup(func() {
		a.cmd.Process.Kill()
		<-a.exited
	})
	for i := 0; ; i++ {
		if _, err := os.Stat(a.sock); err == nil {
			break
		}
		if i == 1000 {
			t.Fatal("agent socket never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
	addr, _ := transport.ParseAddress("unix://" + a.sock)
	cc, err := transport.Dial(addr, transport.DialConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	a.client = agentv1.NewAgentServiceClient(cc)
	return a
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func execStart(t *testing.T, c agentv1.AgentServiceClient, ctx context.Context, st *agentv1.ExecStart) (agentv1.AgentService_ExecClient, *agentv1.RunStarted) {
	t.Helper()
	stream, err := c.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: st}}); err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return stream, ev.GetStarted()
}

// rest reads a stream to its trailer.
func rest(t *testing.T, stream agentv1.AgentService_ExecClient) (string, *agentv1.RunTrailer) {
	t.Helper()
	var out strings.Builder
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("stream ended without a trailer: %v", err)
		}
		if o := ev.GetOutput(); o != nil {
			out.Write(o.GetData())
		}
		if tr := ev.GetTrailer(); tr != nil {
			return out.String(), tr
		}
	}
}

func cmdSpec(argv ...string) *agentv1.CommandSpec { return &agentv1.CommandSpec{Argv: argv} }

func TestUnixSocketRlimitsAndSecrets(t *testing.T) {
	a := startAgent(t, t.TempDir())
	fi, err := os.Stat(a.sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v %v", fi.Mode(), err)
	}
	const secret = "e2e-secret-31337"
	st := &agentv1.ExecStart{
		Command: &agentv1.CommandSpec{
			Argv:      []string{"sh", "-c", `ulimit -n; echo "$DTMUX_WORKSPACE ${#TOKEN}"; tr '\0' ' ' < /proc/$$/cmdline`},
			SecretEnv: map[string]string{"TOKEN": secret},
		},
		Limits: &agentv1.RunLimits{OpenFiles: 64},
	}
	stream, _ := execStart(t, a.client, ctxT(t), st)
	out, tr := rest(t, stream)
	if !strings.HasPrefix(out, "64\ne2e 16\n") || tr.GetExitCode() != 0 {
		t.Errorf("output %q trailer %v", out, tr)
	}
	if strings.Contains(out, secret) {
		t.Errorf("secret on a command line: %q", out)
	}
}

func TestStdio(t *testing.T) {
	state := stateDir(t)
	cmd := exec.Command(agentBin, "--stdio", "--state-dir", state, "--workdir", t.TempDir())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	conn := transport.NewPipeConn(stdout, stdin, "agent", nil)
	used := false
	cc, err := grpc.NewClient("passthrough:///stdio",
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if used {
				return nil, errors.New("the stdio connection is gone")
			}
			used = true
			return conn, nil
		}),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	client := agentv1.NewAgentServiceClient(cc)
	stream, _ := execStart(t, client, ctxT(t), &agentv1.ExecStart{Command: cmdSpec("echo", "over stdio")})
	if out, tr := rest(t, stream); out != "over stdio\n" || tr.GetExitCode() != 0 {
		t.Errorf("output %q trailer %v", out, tr)
	}
	cc.Close() // closes both pipes: the pump must exit
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("pump exit: %v", waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the --stdio pump did not exit when its connection closed")
	}
}

func TestCrashLeavesAgentLostAndShutdownKillsAttached(t *testing.T) {
	state := t.TempDir()
	a := startAgent(t, state)
	// A detached run with a PTY in flight when the agent is SIGKILLed: a
	// terminal cannot be opened again, so it is lost (runs without one
	// are adopted: TestRestartAdoptsDetachedRuns). It ignores the hangup
	// of its terminal.
	_, started := execStart(t, a.client, ctxT(t), &agentv1.ExecStart{
		Command: cmdSpec("sh", "-c", "trap '' HUP; echo before; exec sleep 1000"), RunId: "lost-1", Detach: true,
		Pty: &agentv1.PtySpec{},
	})
	t.Cleanup(func() { syscall.Kill(int(started.GetPid()), syscall.SIGKILL) })
	for {
		r, err := a.client.GetRun(ctxT(t), &agentv1.GetRunRequest{RunId: "lost-1"})
		if err != nil {
			t.Fatal(err)
		}
		if r.GetRun().GetStdoutBytes() > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.exited

	b := startAgent(t, state)
	att, err := b.client.AttachRun(ctxT(t), &agentv1.AttachRunRequest{RunId: "lost-1", Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	var out string
	var tr *agentv1.RunTrailer
	for tr == nil {
		ev, err := att.Recv()
		if err != nil {
			t.Fatalf("attach after restart: %v", err)
		}
		out += string(ev.GetOutput().GetData())
		tr = ev.GetTrailer()
	}
	if out != "before\r\n" || tr.GetReason() != agentv1.ExitReason_EXIT_REASON_AGENT_LOST || !strings.Contains(tr.GetDetail(), "still running") {
		t.Errorf("after restart: %q %v", out, tr)
	}
	// Its process group outlived the agent: runs kill still reaches it.
	if _, err := b.client.SignalRun(ctxT(t), &agentv1.SignalRunRequest{RunId: "lost-1", Signal: agentv1.Signal_SIGNAL_KILL}); err != nil {
		t.Fatalf("kill an orphaned run: %v", err)
	}
	for i := 0; ; i++ {
		r, err := b.client.GetRun(ctxT(t), &agentv1.GetRunRequest{RunId: "lost-1"})
		if err != nil {
			t.Fatal(err)
		}
		if d := r.GetRun().GetTrailer().GetDetail(); strings.Contains(d, "has ended since") {
			break
		} else if i == 1000 {
			t.Fatalf("orphaned run after its kill: %q", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := b.client.SignalRun(ctxT(t), &agentv1.SignalRunRequest{RunId: "lost-1", Signal: agentv1.Signal_SIGNAL_KILL}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("kill an orphaned run whose group has ended: %v", err)
	}

	// SIGTERM: an attached run is killed and its stream ends with a trailer.
	stream, _ := execStart(t, b.client, ctxT(t), &agentv1.ExecStart{Command: cmdSpec("sleep", "1000")})
	b.cmd.Process.Signal(syscall.SIGTERM)
	_, tr = rest(t, stream)
	if tr.GetReason() != agentv1.ExitReason_EXIT_REASON_KILLED {
		t.Errorf("attached run at shutdown: %v", tr)
	}
	select {
	case <-b.exited:
		if b.waitErr != nil {
			t.Errorf("agent exit after SIGTERM: %v", b.waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not exit after SIGTERM")
	}
}

// A detached run (no PTY) in flight when its agent goes away lives on and
// prints on: the next agent takes it over through its named pipes, with
// every line, whether the agent crashed or stopped (SIGTERM).
func TestRestartAdoptsDetachedRuns(t *testing.T) {
	state := t.TempDir()
	gate := t.TempDir()
	// Prints a line, then 300 more once go1 exists (while no agent
	// runs), and exits 3 once go2 exists (after the next agent is up:
	// a pipe's unread bytes go with its last holder).
	script := `echo before; until [ -e "$1/go1" ]; do sleep 0.01; done
i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo "line $i"; done
until [ -e "$1/go2" ]; do sleep 0.01; done; echo done >&2; exit 3`
	var want strings.Builder
	want.WriteString("before\n")
	for i := 1; i <= 300; i++ {
		fmt.Fprintf(&want, "line %d\n", i)
	}
	touch := func(name string) {
		if err := os.WriteFile(filepath.Join(gate, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	waitBytes := func(c agentv1.AgentServiceClient, id string, n uint64) *agentv1.RunInfo {
		for i := 0; ; i++ {
			r, err := c.GetRun(ctxT(t), &agentv1.GetRunRequest{RunId: id})
			if err != nil {
				t.Fatal(err)
			}
			if r.GetRun().GetStdoutBytes() >= n {
				return r.GetRun()
			}
			if i == 1000 {
				t.Fatalf("run %s: %d bytes of stdout, want %d", id, r.GetRun().GetStdoutBytes(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	follow := func(c agentv1.AgentServiceClient, id string) (string, string, *agentv1.RunTrailer) {
		att, err := c.AttachRun(ctxT(t), &agentv1.AttachRunRequest{RunId: id, Follow: true})
		if err != nil {
			t.Fatal(err)
		}
		var out, errOut strings.Builder
		for {
			ev, err := att.Recv()
			if err != nil {
				t.Fatalf("follow %s: %v", id, err)
			}
			if o := ev.GetOutput(); o != nil {
				if o.GetStream() == agentv1.Stream_STREAM_STDERR {
					errOut.Write(o.GetData())
				} else {
					out.Write(o.GetData())
				}
			}
			if tr := ev.GetTrailer(); tr != nil {
				return out.String(), errOut.String(), tr
			}
		}
	}

	a := startAgent(t, state)
	var pids []int
	t.Cleanup(func() {
		for _, pid := range pids {
			syscall.Kill(-pid, syscall.SIGKILL)
		}
	})
	start := func(c agentv1.AgentServiceClient, id string, argv ...string) {
		_, started := execStart(t, c, ctxT(t), &agentv1.ExecStart{Command: cmdSpec(argv...), RunId: id, Detach: true})
		pids = append(pids, int(started.GetPid()))
	}
	start(a.client, "crash-1", "sh", "-c", script, "sh", filepath.Join(gate, "crash"))
	// Ends while no agent runs: what it printed waits in its pipes, which
	// their keeper holds for the next agent.
	start(a.client, "crash-ended", "sh", "-c", `echo before; until [ -e "$1/go1" ]; do sleep 0.01; done
i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo "line $i"; done; exit 4`, "sh", filepath.Join(gate, "crash"))
	start(a.client, "crash-kill", "sh", "-c", "echo up; exec sleep 1000")
	// Across the crash and then the stop below: the crash's possible loss
	// is remembered through the stop.
	start(a.client, "crash-then-stop", "sh", "-c", `echo up; until [ -e "$1/go3" ]; do sleep 0.01; done`, "sh", gate)
	// Its deadline holds across the restart, counted from its start.
	_, started := execStart(t, a.client, ctxT(t), &agentv1.ExecStart{
		Command: cmdSpec("sh", "-c", "echo up; exec sleep 1000"), RunId: "crash-deadline", Detach: true, Timeout: durationpb.New(3 * time.Second),
	})
	pids = append(pids, int(started.GetPid()))
	os.Mkdir(filepath.Join(gate, "crash"), 0o700)
	waitBytes(a.client, "crash-1", 1)
	waitBytes(a.client, "crash-kill", 1)
	waitBytes(a.client, "crash-deadline", 1)
	waitBytes(a.client, "crash-ended", 1)
	waitBytes(a.client, "crash-then-stop", 1)
	fifos := filepath.Join(state, "runs", "*", "*.fifo")
	if names, _ := filepath.Glob(fifos); len(names) != 10 {
		t.Fatalf("named pipes of five runs: %v", names)
	}
	a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.exited
	// With no agent: a write into a pipe nobody reads would end it
	// (SIGPIPE); this one waits in the named pipe.
	touch("crash/go1")
	time.Sleep(200 * time.Millisecond)

	b := startAgent(t, state)
	if r := waitBytes(b.client, "crash-1", 1); r.GetState() != agentv1.RunState_RUN_STATE_RUNNING {
		t.Fatalf("after the crash: %v", r)
	}
	touch("crash/go2")
	out, errOut, tr := follow(b.client, "crash-1")
	if out != want.String() || errOut != "done\n" {
		t.Errorf("after the crash: stdout %d bytes (want %d), stderr %q", len(out), want.Len(), errOut)
	}
	// (The crashed agent read nothing it did not spool here: the run was
	// quiet then. The detail says where a read could have gone.)
	if tr.GetReason() != agentv1.ExitReason_EXIT_REASON_AGENT_LOST || !strings.Contains(tr.GetDetail(), "exit status cannot be known") ||
		!strings.Contains(tr.GetDetail(), "may be missing right before stdout byte 7 ") || tr.GetStdoutBytes() != uint64(want.Len()) {
		t.Errorf("adopted run's trailer: %v", tr)
	}
	if out, _, tr := follow(b.client, "crash-ended"); out != want.String() || tr.GetReason() != agentv1.ExitReason_EXIT_REASON_AGENT_LOST {
		t.Errorf("a run that ended while no agent ran: stdout %d bytes (want %d), %v", len(out), want.Len(), tr)
	}
	// Kills reach an adopted run.
	if _, err := b.client.SignalRun(ctxT(t), &agentv1.SignalRunRequest{RunId: "crash-kill", Signal: agentv1.Signal_SIGNAL_KILL}); err != nil {
		t.Fatal(err)
	}
	if out, _, tr := follow(b.client, "crash-kill"); out != "up\n" || tr.GetReason() != agentv1.ExitReason_EXIT_REASON_KILLED {
		t.Errorf("adopted run killed: %q %v", out, tr)
	}
	if out, _, tr := follow(b.client, "crash-deadline"); out != "up\n" || tr.GetReason() != agentv1.ExitReason_EXIT_REASON_TIMED_OUT || tr.GetDuration().AsDuration() > 10*time.Second {
		t.Errorf("adopted run with a deadline: %q %v", out, tr)
	}

	// An agent that stops (SIGTERM) leaves its detached runs to the next.
	os.Mkdir(filepath.Join(gate, "stop"), 0o700)
	start(b.client, "stop-1", "sh", "-c", script, "sh", filepath.Join(gate, "stop"))
	waitBytes(b.client, "stop-1", 1)
	b.cmd.Process.Signal(syscall.SIGTERM)
	<-b.exited
	touch("stop/go1")
	time.Sleep(200 * time.Millisecond)
	c := startAgent(t, state)
	waitBytes(c.client, "stop-1", 1)
	touch("stop/go2")
	if out, errOut, tr := follow(c.client, "stop-1"); out != want.String() || errOut != "done\n" || tr.GetReason() != agentv1.ExitReason_EXIT_REASON_AGENT_LOST ||
		strings.Contains(tr.GetDetail(), "may be missing") || strings.HasSuffix(tr.GetDetail(), "; ") {
		t.Errorf("after a stop: stdout %d bytes (want %d), stderr %q, %v", len(out), want.Len(), errOut, tr)
	}
	touch("go3")
	if out, _, tr := follow(c.client, "crash-then-stop"); out != "up\n" || !strings.Contains(tr.GetDetail(), "the agent before crashed: up to 65536 bytes each had read may be missing right before stdout byte 3 or stderr byte 0") {
		t.Errorf("a run adopted after a crash, then after a stop: %q %v", out, tr)
	}
	// Their named pipes went with them.
	if names, _ := filepath.Glob(fifos); len(names) != 0 {
		t.Errorf("named pipes left: %v", names)
	}
}
