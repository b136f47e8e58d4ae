package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/agent/daemon"
	"github.com/dtmux/dtmux/internal/tmuxserver"
	"github.com/dtmux/dtmux/internal/transport"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// stateDir is a short state dir (it holds the daemon's socket) whose daemon
// is stopped, and checked to stop, before the dir is removed.
func stateDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := daemon.Stop(dir, 10*time.Second); err != nil {
			t.Errorf("stop the agent daemon: %v", err)
		}
		// The daemon's tmux server outlives it, by design.
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := tmuxserver.KillUnder(ctx, dir); err != nil {
			t.Errorf("stop the daemon's tmux server: %v", err)
		}
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(dir, daemon.LogName)); err == nil {
				t.Logf("daemon log:\n%s", b)
			}
		}
		os.RemoveAll(dir)
	})
	return dir
}

// pump is one `dtmux-agent --stdio` process, as at the end of a hop, with
// a gRPC client on its pipes.
type pump struct {
	cmd     *exec.Cmd
	client  agentv1.AgentServiceClient
	exited  chan struct{}
	waitErr error    // set before exited is closed
	pipes   []string // the hop's stdin and stdout, as /proc names them
	hop     net.Conn // this end of the hop
}

func startPump(t *testing.T, bin, state, workdir string, extra ...string) *pump {
	t.Helper()
	args := append([]string{"--stdio", "--state-dir", state, "--workdir", workdir, "--log-level", "debug"}, extra...)
	p := &pump{cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	stdin, err := p.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = os.Stderr
	// The hop's two pipes, as /proc names them: the child's ends, which
	// exec closes in this process after Start.
	for _, f := range []any{p.cmd.Stdin, p.cmd.Stdout} {
		if l, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.(*os.File).Fd())); err == nil {
			p.pipes = append(p.pipes, l)
		}
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.waitErr = p.cmd.Wait(); close(p.exited) }()
	conn := transport.NewPipeConn(stdout, stdin, "pump", nil)
	p.hop = conn
	var once sync.Once
	cc, err := grpc.NewClient("passthrough:///stdio",
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			var c net.Conn
			once.Do(func() { c = conn })
			if c == nil {
				return nil, errors.New("the pump is gone")
			}
			return c, nil
		}),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cc.Close()
		p.cmd.Process.Kill()
		<-p.exited
	})
	p.client = agentv1.NewAgentServiceClient(cc)
	return p
}

func (p *pump) info(t *testing.T) *agentv1.GetAgentInfoResponse {
	t.Helper()
	info, err := p.client.GetAgentInfo(ctxT(t), &agentv1.GetAgentInfoRequest{})
	if err != nil {
		t.Fatalf("GetAgentInfo through a pump: %v", err)
	}
	return info
}

func (p *pump) waitExit(t *testing.T, why string) {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("the pump did not exit after %s", why)
	}
}

// TestStdioRunsOutliveThePump is issue 4's defect: the hop (here the pump
// at its end) dies while a detached run is going; the call in flight fails
// with Unavailable, and through a new pump the run is reattached with all
// its output.
func TestStdioRunsOutliveThePump(t *testing.T) {
	state, work := stateDir(t), t.TempDir()
	p1 := startPump(t, agentBin, state, work)
	daemonPID := p1.info(t).GetPid()
	if daemonPID == int32(p1.cmd.Process.Pid) {
		t.Fatal("the --stdio process serves the API itself")
	}
	script := `for i in $(seq 1 40); do echo line$i; sleep 0.05; done; exit 7`
	stream, started := execStart(t, p1.client, ctxT(t), &agentv1.ExecStart{
		Command: cmdSpec("sh", "-c", script), RunId: "hop-1", Detach: true,
	})
	t.Cleanup(func() { syscall.Kill(-int(started.GetPid()), syscall.SIGKILL) })
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("before the kill: %v", err)
		}
		if ev.GetOutput() != nil {
			break
		}
	}
	p1.cmd.Process.Signal(syscall.SIGKILL)
	p1.waitExit(t, "SIGKILL")
	for {
		_, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("stream through a dead pump: want Unavailable, got %v", err)
			}
			break
		}
	}

	p2 := startPump(t, agentBin, state, work)
	if got := p2.info(t).GetPid(); got != daemonPID {
		t.Fatalf("second pump reached agent pid %d, want the same daemon %d", got, daemonPID)
	}
	wantLines(t, p2.client, "reattached run", "hop-1", 40)
}

// wantLines follows run id from its start to its trailer and wants the
// lines "line1".."lineN", no gap, and exit 7.
func wantLines(t *testing.T, c agentv1.AgentServiceClient, what, id string, n int) {
	t.Helper()
	att, err := c.AttachRun(ctxT(t), &agentv1.AttachRunRequest{RunId: id, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	var tr *agentv1.RunTrailer
	for tr == nil {
		ev, err := att.Recv()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if g := ev.GetGap(); g != nil {
			t.Errorf("%s: gap in the output: %v", what, g)
		}
		out.Write(ev.GetOutput().GetData())
		tr = ev.GetTrailer()
	}
	var want strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&want, "line%d\n", i)
	}
	if out.String() != want.String() || tr.GetExitCode() != 7 || tr.GetReason() != agentv1.ExitReason_EXIT_REASON_EXITED {
		t.Fatalf("%s: output %q, trailer %v; want %d lines and exit 7", what, out.String(), tr, n)
	}
}

// TestStdioPumpEndsWithTheDaemon: a daemon that dies ends the pump (and so
// the hop), so the controller redials instead of waiting on a dead pipe;
// the next pump starts a new daemon.
func TestStdioPumpEndsWithTheDaemon(t *testing.T) {
	state, work := stateDir(t), t.TempDir()
	p1 := startPump(t, agentBin, state, work)
	pid := p1.info(t).GetPid()
	syscall.Kill(int(pid), syscall.SIGKILL)
	p1.waitExit(t, "its daemon was killed")
	if p1.waitErr != nil {
		t.Errorf("pump exit: %v", p1.waitErr)
	}
	// Until its lock is gone the dying daemon may still accept.
	if err := daemon.Stop(state, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	p2 := startPump(t, agentBin, state, work)
	if got := p2.info(t).GetPid(); got == pid || got <= 0 {
		t.Fatalf("after the daemon died: pid %d (old %d)", got, pid)
	}
}

// TestStdioConcurrentStartsOneDaemon: hops opening at once on a fresh
// state dir share one daemon.
func TestStdioConcurrentStartsOneDaemon(t *testing.T) {
	state, work := stateDir(t), t.TempDir()
	const n = 4
	pumps := make([]*pump, n)
	for i := range pumps {
		pumps[i] = startPump(t, agentBin, state, work)
	}
	pids := make([]int32, n)
	var wg sync.WaitGroup
	for i, p := range pumps {
		wg.Go(func() {
			info, err := p.client.GetAgentInfo(ctxT(t), &agentv1.GetAgentInfoRequest{})
			if err != nil {
				t.Errorf("pump %d: %v", i, err)
				return
			}
			pids[i] = info.GetPid()
		})
	}
	wg.Wait()
	for i := 1; i < n; i++ {
		if pids[i] != pids[0] {
			t.Fatalf("concurrent pumps reached different agents: %v", pids)
		}
	}
}

// TestStdioNewBuildTakesOver: a re-bootstrapped agent (another build, even
// with the same version string) or other flags replace the running daemon
// gracefully; the old hop's pump ends with it.
func TestStdioNewBuildTakesOver(t *testing.T) {
	newBin := filepath.Join(t.TempDir(), "dtmux-agent")
	build := exec.Command("go", "build", "-ldflags", "-X github.com/dtmux/dtmux/internal/version.Version=v2-test", "-o", newBin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build a second agent: %v\n%s", err, out)
	}
	state, work := stateDir(t), t.TempDir()
	p1 := startPump(t, agentBin, state, work)
	old := p1.info(t)
	if old.GetVersion() != "dev" {
		t.Fatalf("first agent version %q", old.GetVersion())
	}
	// An attached run on the old daemon ends with a trailer, not silently.
	stream, _ := execStart(t, p1.client, ctxT(t), &agentv1.ExecStart{Command: cmdSpec("sleep", "1000")})
	// A detached run goes on under the new build: same process, all of
	// its output, its exit status (the daemon re-executes in place and
	// hands it over).
	script := `for i in $(seq 1 30); do echo line$i; sleep 0.05; done; exit 7`
	_, detached := execStart(t, p1.client, ctxT(t), &agentv1.ExecStart{
		Command: cmdSpec("sh", "-c", script), RunId: "upgrade-1", Detach: true,
	})
	t.Cleanup(func() { syscall.Kill(-int(detached.GetPid()), syscall.SIGKILL) })
	time.Sleep(200 * time.Millisecond)

	p2 := startPump(t, newBin, state, work)
	cur := p2.info(t)
	if cur.GetVersion() != "v2-test" || cur.GetPid() != old.GetPid() {
		t.Fatalf("after a new build: version %q pid %d, want v2-test re-executed in place (pid %d)", cur.GetVersion(), cur.GetPid(), old.GetPid())
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("attached run on the replaced daemon: %v", err)
			}
			break
		}
		if tr := ev.GetTrailer(); tr != nil {
			if tr.GetReason() != agentv1.ExitReason_EXIT_REASON_KILLED {
				t.Fatalf("attached run on the replaced daemon: %v", tr)
			}
			break
		}
	}
	p1.waitExit(t, "its daemon was replaced")

	wantLines(t, p2.client, "handed-over run", "upgrade-1", 30)

	// Same build, same flags: joined. Other flags: re-executed with them.
	if got := startPump(t, newBin, state, work).info(t); got.GetPid() != cur.GetPid() || !got.GetStartedAt().AsTime().Equal(cur.GetStartedAt().AsTime()) {
		t.Fatalf("same build and flags: pid %d started %v, want the same daemon (%d, %v)", got.GetPid(), got.GetStartedAt().AsTime(), cur.GetPid(), cur.GetStartedAt().AsTime())
	}
	if got := startPump(t, newBin, state, work, "--max-runs", "7").info(t); got.GetStartedAt().AsTime().Equal(cur.GetStartedAt().AsTime()) {
		t.Fatal("other flags did not replace the daemon")
	}
}

// TestStdioReplacesADaemonThatCannotReexec: a daemon that does not announce
// re-exec (an older build) is stopped and a new one started, as before.
func TestStdioReplacesADaemonThatCannotReexec(t *testing.T) {
	state, work := stateDir(t), t.TempDir()
	old := startPump(t, agentBin, state, work).info(t)
	if err := os.Remove(filepath.Join(state, daemon.FeaturesName)); err != nil {
		t.Fatalf("the daemon did not announce re-exec: %v", err)
	}
	cur := startPump(t, agentBin, state, work, "--max-runs", "7").info(t)
	if cur.GetPid() == old.GetPid() {
		t.Fatalf("pid %d: the daemon was not replaced by a new process", cur.GetPid())
	}
}

// TestStdioDaemonDetached: the daemon has its own session, logs into the
// state dir, serves the hop's own pipes (handed over by the pump, which
// keeps no copy) while the hop lasts, and lets go of them when the hop
// ends, so that sshd, which waits for them to close, ends the session.
func TestStdioDaemonDetached(t *testing.T) {
	state, work := stateDir(t), t.TempDir()
	p := startPump(t, agentBin, state, work)
	pid := int(p.info(t).GetPid())
	sid, err := sessionOf(pid)
	if err != nil || sid != pid {
		t.Errorf("daemon session %d %v, want its own (%d)", sid, err, pid)
	}
	if len(p.pipes) != 2 {
		t.Fatalf("hop pipes %v", p.pipes)
	}
	holds := func(pid int) (n int) {
		for _, l := range openFDs(t, pid) {
			if slices.Contains(p.pipes, l) {
				n++
			}
		}
		return n
	}
	if n := holds(pid); n != 2 {
		t.Errorf("the daemon holds %d of the hop's pipes, want both (handed over)", n)
	}
	if n := holds(p.cmd.Process.Pid); n != 0 {
		t.Errorf("the pump still holds %d of the hop's pipes after handing them over", n)
	}
	st, err := os.Stat(filepath.Join(state, daemon.SocketName))
	if err != nil || st.Mode().Perm() != 0o600 || st.Mode().Type() != os.ModeSocket {
		t.Errorf("daemon socket: %v %v", st, err)
	}
	st, err = os.Stat(filepath.Join(state, daemon.HopSocketName))
	if err != nil || st.Mode().Perm() != 0o600 || st.Mode().Type() != os.ModeSocket {
		t.Errorf("hand-off socket: %v %v", st, err)
	}
	b, err := os.ReadFile(filepath.Join(state, daemon.LogName))
	if err != nil || !strings.Contains(string(b), "serving") {
		t.Errorf("daemon log %q %v", b, err)
	}
	// The hop ends: the daemon lets go of its pipes and the pump exits;
	// the daemon lives on.
	p.hop.Close()
	p.waitExit(t, "its hop ended")
	deadline := time.Now().Add(10 * time.Second)
	for holds(pid) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the daemon still holds the hop's pipes after the hop ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Errorf("the daemon went with the hop: %v", err)
	}
}

// openFDs lists what a process's descriptors point at.
func openFDs(t *testing.T, pid int) []string {
	t.Helper()
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	var out []string
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil {
			out = append(out, l)
		}
	}
	return out
}

// sessionOf reads a process's session id from /proc/PID/stat.
func sessionOf(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 4 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	var sid int
	_, err = fmt.Sscan(f[3], &sid)
	return sid, err
}

// TestStdioDaemonExitsWhenItsSocketGoes: a daemon whose socket was removed
// (its state dir deleted) can never be reached again and shuts down.
func TestStdioDaemonExitsWhenItsSocketGoes(t *testing.T) {
	state, work := stateDir(t), t.TempDir()
	p := startPump(t, agentBin, state, work)
	pid := p.info(t).GetPid()
	if err := os.Remove(filepath.Join(state, daemon.SocketName)); err != nil {
		t.Fatal(err)
	}
	p.waitExit(t, "its daemon's socket was removed")
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(state, daemon.LogName))
		if strings.Contains(string(b), "shutting down") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon %d did not shut down; log:\n%s", pid, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDaemonArgs(t *testing.T) {
	tests := []struct {
		in, want []string
	}{
		{[]string{"--stdio"}, []string{"--state-dir", "/s", "--listen", "unix:///s/agent.sock"}},
		{[]string{"-stdio=true", "--max-runs", "3", "--state-dir", "rel"}, []string{"--max-runs", "3", "--state-dir", "rel", "--state-dir", "/s", "--listen", "unix:///s/agent.sock"}},
		{[]string{"--workspace", "stdio", "--stdio"}, []string{"--workspace", "stdio", "--state-dir", "/s", "--listen", "unix:///s/agent.sock"}},
	}
	for _, tt := range tests {
		if got := daemonArgs(tt.in, "/s"); !slices.Equal(got, tt.want) {
			t.Errorf("daemonArgs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestStdioIdleHopDoesNotHoldShutdown: a hop whose client never speaks
// (a half-open connection) does not keep a stopping daemon from exiting,
// which a re-execution to a new build waits for too.
func TestStdioIdleHopDoesNotHoldShutdown(t *testing.T) {
	state, work := stateDir(t), t.TempDir()
	startPump(t, agentBin, state, work).info(t) // the daemon is up
	idle := exec.Command(agentBin, "--stdio", "--state-dir", state, "--workdir", work)
	stdin, err := idle.StdinPipe() // never written
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	idle.Stdout = io.Discard
	if err := idle.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { idle.Process.Kill(); idle.Wait() }()
	b, err := os.ReadFile(filepath.Join(state, daemon.PIDName))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the idle hop is handed over
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); syscall.Kill(pid, 0) == nil; time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("daemon %d still running 20s after SIGTERM, with an idle hop open", pid)
		}
	}
}

// TestStdioFailedReexecKeepsTheDaemon: a daemon asked to become a build
// that cannot run (here a file that is not executable) takes its runs back
// as itself; pumps then join it as it is rather than stop it or ask again.
func TestStdioFailedReexecKeepsTheDaemon(t *testing.T) {
	state, work := stateDir(t), t.TempDir()
	p := startPump(t, agentBin, state, work)
	before := p.info(t)
	script := `for i in $(seq 1 30); do echo line$i; sleep 0.05; done; exit 7`
	_, started := execStart(t, p.client, ctxT(t), &agentv1.ExecStart{
		Command: cmdSpec("sh", "-c", script), RunId: "kept-1", Detach: true,
	})
	t.Cleanup(func() { syscall.Kill(-int(started.GetPid()), syscall.SIGKILL) })
	broken := filepath.Join(t.TempDir(), "dtmux-agent")
	if err := os.WriteFile(broken, []byte("not a program"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The pump that asked joins the daemon as it is, and so does the next
	// one, without asking again.
	for i := range 2 {
		conn, err := daemon.Connect(ctxT(t), daemon.Config{
			StateDir: state, Path: broken, Args: []string{"--listen", "unix://" + daemon.SocketPath(state)},
		})
		if err != nil {
			t.Fatalf("connect %d asking for a build that cannot run: %v", i, err)
		}
		conn.Close()
	}
	q := startPump(t, agentBin, state, work)
	if after := q.info(t); after.GetPid() != before.GetPid() {
		t.Fatalf("daemon pid %d after the failed re-exec, want %d kept", after.GetPid(), before.GetPid())
	}
	wantLines(t, q.client, "run kept across a failed re-exec", "kept-1", 30)
	if log, _ := os.ReadFile(filepath.Join(state, daemon.LogName)); strings.Count(string(log), "re-executing as this one") != 1 || !strings.Contains(string(log), "run taken over from the previous image") {
		t.Errorf("the daemon did not go through the failed exec and take its run back:\n%s", log)
	}
}
