package local

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/dtmux/dtmux/controller/provider"
	"github.com/dtmux/dtmux/internal/testbin"
	"github.com/dtmux/dtmux/internal/transport"
)

const fakeAgentEnv = "DTMUX_LOCAL_TEST_FAKE_AGENT"

// TestMain doubles as a stand-in dtmux-agent (serving health on --listen)
// when started by the provider under test, so these tests need no agent
// build; the e2e tests run the real one.
func TestMain(m *testing.M) {
	if os.Getenv(fakeAgentEnv) == "1" {
		os.Exit(fakeAgent())
	}
	os.Setenv(fakeAgentEnv, "1")
	goleak.VerifyTestMain(m)
}

func fakeAgent() int {
	fs := flag.NewFlagSet("fake-agent", flag.ContinueOnError)
	listen := fs.String("listen", "", "")
	fs.String("state-dir", "", "")
	ws := fs.String("workspace", "", "")
	workdir := fs.String("workdir", "", "")
	fs.String("log-file", "", "")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if _, err := os.Stat(*workdir); err != nil || *ws == "" {
		fmt.Fprintln(os.Stderr, "bad workdir or workspace:", err)
		return 2
	}
	a, err := transport.ParseAddress(*listen)
	if err != nil {
		return 2
	}
	l, err := transport.Listen(a)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() { <-sig; s.Stop() }()
	_ = s.Serve(l)
	return 0
}

func newProvider(t *testing.T, dir string, stopOnClose bool) *Provider {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{StateDir: dir, AgentBinary: exe, StopAgentsOnClose: stopOnClose, CheckInterval: 20 * time.Millisecond, StopGrace: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func stateDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Never leave an agent behind, whatever the test did.
		pids, _ := filepath.Glob(filepath.Join(d, "workspaces", "*", "agent.pid"))
		for _, f := range pids {
			if pid := readPID(f); pid > 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		os.RemoveAll(d)
	})
	return d
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func agentPID(t *testing.T, p *Provider, name string) int {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.wss[name].pid
}

func answers(t *testing.T, p *Provider, name string) error {
	t.Helper()
	ep, err := p.Endpoint(ctxT(t), name)
	if err != nil {
		return err
	}
	// A just (re)started agent may not listen yet.
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = checkHealth(ctx, ep.Address.Addr)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLifecycle(t *testing.T) {
	dir := stateDir(t)
	p := newProvider(t, dir, true)
	defer p.Close()
	ctx := ctxT(t)

	w, err := p.Create(ctx, provider.CreateOptions{Name: "web-1", Labels: map[string]string{"team": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	if w.State != provider.StateStarted || w.Labels["team"] != "web" {
		t.Errorf("created = %+v", w)
	}
	if err := answers(t, p, "web-1"); err != nil {
		t.Fatalf("agent does not answer: %v", err)
	}
	if got := readPID(filepath.Join(dir, "workspaces", "web-1", "agent.pid")); got != agentPID(t, p, "web-1") || got == 0 {
		t.Errorf("pid file %d, provider %d", got, agentPID(t, p, "web-1"))
	}
	if _, err := p.Create(ctx, provider.CreateOptions{Name: "web-1"}); !errors.Is(err, provider.ErrAlreadyExists) {
		t.Errorf("duplicate create: %v", err)
	}
	for _, bad := range []string{"", "-x", "a/b", "..", strings.Repeat("a", 64), "a b"} {
		if _, err := p.Create(ctx, provider.CreateOptions{Name: bad}); !errors.Is(err, provider.ErrInvalid) {
			t.Errorf("create %q: %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := p.Create(ctx, provider.CreateOptions{Name: "db", Labels: map[string]string{"team": "db"}}); err != nil {
		t.Fatal(err)
	}
	list, _ := p.List(ctx)
	if len(list) != 2 || list[0].Name != "db" || list[1].Name != "web-1" {
		t.Fatalf("list = %+v", list)
	}

	// Stop: the agent goes, the workspace stays, its endpoint says so.
	pid := agentPID(t, p, "web-1")
	w, err = p.Stop(ctx, "web-1")
	if err != nil || w.State != provider.StateStopped {
		t.Fatalf("stop = %+v, %v", w, err)
	}
	if alive(pid, false) {
		t.Error("agent still running after stop")
	}
	if _, err := p.Endpoint(ctx, "web-1"); !errors.Is(err, provider.ErrNotStarted) {
		t.Errorf("endpoint of stopped: %v", err)
	}
	time.Sleep(100 * time.Millisecond) // several supervisor rounds: it must not restart a stopped workspace
	if agentPID(t, p, "web-1") != 0 {
		t.Error("supervisor restarted a stopped workspace")
	}
	w, err = p.Start(ctx, "web-1", 0)
	if err != nil || w.State != provider.StateStarted {
		t.Fatalf("start = %+v, %v", w, err)
	}
	if err := answers(t, p, "web-1"); err != nil {
		t.Fatal(err)
	}

	// Delete: agent and directory go.
	pid = agentPID(t, p, "web-1")
	// Running: refused unless forced, and nothing is stopped.
	if err := p.Delete(ctx, "web-1", false); !errors.Is(err, provider.ErrPrecondition) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("delete a running workspace without force: %v, want ErrPrecondition naming --force", err)
	}
	if w, err := p.Get(ctx, "web-1"); err != nil || w.State != provider.StateStarted {
		t.Fatalf("after a refused delete: %+v %v", w, err)
	}
	if err := p.Delete(ctx, "web-1", true); err != nil {
		t.Fatal(err)
	}
	if alive(pid, false) {
		t.Error("agent still running after delete")
	}
	if _, err := os.Stat(filepath.Join(dir, "workspaces", "web-1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory left behind: %v", err)
	}
	if _, err := p.Get(ctx, "web-1"); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("get deleted: %v", err)
	}
	if err := p.Delete(ctx, "web-1", false); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("delete again: %v", err)
	}

	// Close with StopAgentsOnClose stops the rest.
	pid = agentPID(t, p, "db")
	p.Close()
	if alive(pid, false) {
		t.Error("agent still running after Close with StopAgentsOnClose")
	}
}

func TestSupervisorRestartsDeadAgent(t *testing.T) {
	p := newProvider(t, stateDir(t), true)
	defer p.Close()
	ctx := ctxT(t)
	if _, err := p.Create(ctx, provider.CreateOptions{Name: "w"}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		old := agentPID(t, p, "w")
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a new agent", func() bool {
			pid := agentPID(t, p, "w")
			return pid != 0 && pid != old
		})
		if err := answers(t, p, "w"); err != nil {
			t.Fatalf("restarted agent does not answer: %v", err)
		}
	}
	w, _ := p.Get(ctx, "w")
	if w.State != provider.StateStarted {
		t.Errorf("state = %v", w.State)
	}
}

func TestAdoptAfterRestart(t *testing.T) {
	dir := stateDir(t)
	ctx := ctxT(t)
	p1 := newProvider(t, dir, false)
	for _, n := range []string{"a", "b", "c"} {
		if _, err := p1.Create(ctx, provider.CreateOptions{Name: n, Labels: map[string]string{"n": n}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p1.Stop(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	pidA, pidB := agentPID(t, p1, "a"), agentPID(t, p1, "b")
	if err := p1.Close(); err != nil {
		t.Fatal(err)
	}
	if !alive(pidA, false) || !alive(pidB, false) {
		t.Fatal("agents did not outlive the provider")
	}
	// b dies while no controller runs.
	syscall.Kill(pidB, syscall.SIGKILL)
	waitFor(t, "b to die", func() bool { return !alive(pidB, true) })

	p2 := newProvider(t, dir, true)
	defer p2.Close()
	if got := agentPID(t, p2, "a"); got != pidA {
		t.Errorf("a: pid %d, want the adopted %d", got, pidA)
	}
	if got := agentPID(t, p2, "b"); got == 0 || got == pidB {
		t.Errorf("b: pid %d, want a fresh agent", got)
	}
	for _, n := range []string{"a", "b"} {
		if err := answers(t, p2, n); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
	c, err := p2.Get(ctx, "c")
	if err != nil || c.State != provider.StateStopped || c.Labels["n"] != "c" {
		t.Errorf("c = %+v, %v; want stopped with its labels", c, err)
	}
}

func TestSocketPathTooLong(t *testing.T) {
	base := stateDir(t)
	long := filepath.Join(base, strings.Repeat("d", 90))
	p := newProvider(t, long, true)
	defer p.Close()
	_, err := p.Create(ctxT(t), provider.CreateOptions{Name: "w"})
	if !errors.Is(err, provider.ErrInvalid) || !strings.Contains(err.Error(), "shorter --state-dir") {
		t.Errorf("err = %v, want a clear ErrInvalid", err)
	}
}

func TestMissingAgentBinary(t *testing.T) {
	dir := stateDir(t)
	p, err := New(Config{StateDir: dir, AgentBinary: filepath.Join(dir, "nope"), StopAgentsOnClose: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Create(ctxT(t), provider.CreateOptions{Name: "w"}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("err = %v, want it to name the missing binary", err)
	}
	if list, _ := p.List(ctxT(t)); len(list) != 0 {
		t.Errorf("failed create left %v", list)
	}
}

// An agent's tmux server outlives the agent by design, but deleting the
// workspace ends it: a deleted workspace leaves no processes. The fake
// agent starts no tmux, so the test starts the server where a real agent
// would.
func TestDeleteKillsTmuxServer(t *testing.T) {
	tmux := testbin.RequireTool(t, "tmux")
	dir := stateDir(t)
	p := newProvider(t, dir, true)
	defer p.Close()
	ctx := ctxT(t)
	if _, err := p.Create(ctx, provider.CreateOptions{Name: "ws"}); err != nil {
		t.Fatal(err)
	}
	sockDir := filepath.Join(dir, "workspaces", "ws", "agent", "tmux")
	if err := os.MkdirAll(sockDir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(sockDir, "tmux.sock")
	out, err := exec.Command(tmux, "-S", sock, "-f", "/dev/null", "new-session", "-d", "-P", "-F", "#{pid} #{pane_pid}", "sleep", "600").Output()
	if err != nil {
		t.Fatalf("start tmux: %v", err)
	}
	t.Cleanup(func() { _ = exec.Command(tmux, "-S", sock, "kill-server").Run() })
	var server, pane int
	if _, err := fmt.Sscan(string(out), &server, &pane); err != nil {
		t.Fatalf("tmux said %q: %v", out, err)
	}
	if err := p.Delete(ctx, "ws", true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the tmux server and its pane to end", func() bool { return !alive(server, false) && !alive(pane, false) })
}
