package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/agent/daemon"
	"github.com/dtmux/dtmux/controller/bootstrap"
	"github.com/dtmux/dtmux/internal/sshtest"
	"github.com/dtmux/dtmux/internal/testbin"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// remoteController runs the real controller with --provider ssh against a
// private sshd: "web1" reachable, "locked" refusing every login.
func remoteController(t *testing.T) (*Controller, *sshtest.Server) {
	t.Helper()
	srv := remoteServer(t)
	return remoteControllerOn(t, srv, testbin.Dir(t)), srv
}

// remoteServer is the private sshd of "web1", whose agent daemon is
// stopped at cleanup.
func remoteServer(t *testing.T) *sshtest.Server {
	t.Helper()
	srv := sshtest.Start(t, sshtest.Options{})
	// The agent daemon the hops start outlives them (that is its job):
	// stop it before the server's home goes.
	t.Cleanup(func() {
		if err := daemon.Stop(remoteStateDir(srv), 15*time.Second); err != nil {
			t.Errorf("stop the remote agent daemon: %v", err)
		}
		// Its tmux server outlives it too, by design.
		killTmuxServers(t, remoteStateDir(srv))
	})
	return srv
}

// remoteControllerOn starts a controller whose "web1" is srv, installing
// agents from agentDir.
func remoteControllerOn(t *testing.T, srv *sshtest.Server, agentDir string) *Controller {
	t.Helper()
	deny := sshtest.Start(t, sshtest.Options{RejectAll: true})
	hosts := filepath.Join(shortTempDir(t), "hosts.yaml")
	q := func(ss []string) string { return `["` + strings.Join(ss, `","`) + `"]` }
	yaml := fmt.Sprintf("hosts:\n  - {name: web1, destination: %q, labels: {team: web}, ssh_args: %s}\n  - {name: locked, destination: %q, ssh_args: %s}\n",
		srv.Destination(), q(srv.Args()), deny.Destination(), q(deny.Args()))
	if err := os.WriteFile(hosts, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return StartController(t, ControllerOptions{Provider: "ssh", Args: []string{"--hosts", hosts, "--agent-dir", agentDir}})
}

// remoteStateDir is the remote agent's default state dir on srv.
func remoteStateDir(srv *sshtest.Server) string {
	return filepath.Join(srv.Home, ".local", "state", "dtmux-agent")
}

func TestRemoteSSH(t *testing.T) {
	c, srv := remoteController(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := c.Agent("web1")
	installed := filepath.Join(srv.Home, ".dtmux", "bin", bootstrap.AgentName)

	out, errb, tr, err := Exec(ctx, a, nil, "sh", "-c", "echo out; echo err >&2; exit 3")
	if err != nil {
		t.Fatalf("first exec (bootstraps): %v\n%s", err, c.Log())
	}
	if string(out) != "out\n" || string(errb) != "err\n" || tr.GetExitCode() != 3 {
		t.Fatalf("exec = %q %q exit %d", out, errb, tr.GetExitCode())
	}
	st1, err := os.Stat(installed)
	if err != nil {
		t.Fatalf("agent not installed: %v", err)
	}
	if out, _, _, err := Exec(ctx, a, []byte("piped stdin"), "cat"); err != nil || string(out) != "piped stdin" {
		t.Fatalf("stdin: %q %v", out, err)
	}
	for i := 0; i < 100; i++ {
		if _, _, tr, err := Exec(ctx, a, nil, "true"); err != nil || tr.GetExitCode() != 0 {
			t.Fatalf("exec %d: %v", i, err)
		}
	}
	if pids := bootstrap.SSHProcesses(srv.Config, "--stdio"); len(pids) != 1 {
		t.Fatalf("want exactly one ssh process for web1 after 100 execs, got %v", pids)
	}
	st2, _ := os.Stat(installed)
	if !os.SameFile(st1, st2) || !st1.ModTime().Equal(st2.ModTime()) {
		t.Fatal("agent uploaded more than once")
	}
}

func TestRemoteSSHHopKilledMidStream(t *testing.T) {
	// The hop dies mid-stream; only the --stdio pump at its end dies with
	// it, the agent daemon and its detached run live on.
	c, srv := remoteController(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := c.Agent("web1")
	if _, _, _, err := Exec(ctx, a, nil, "true"); err != nil {
		t.Fatal(err)
	}
	before, err := a.GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := a.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	script := `for i in $(seq 1 40); do echo line$i; sleep 0.05; done`
	if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: &agentv1.ExecStart{
		Command: &agentv1.CommandSpec{Argv: []string{"sh", "-c", script}}, RunId: "remote-r1", Detach: true}}}); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := st.Recv()
		if err != nil {
			t.Fatalf("before the kill: %v", err)
		}
		if ev.GetOutput() != nil {
			break
		}
	}
	for _, pid := range bootstrap.SSHProcesses(srv.Config, "--stdio") {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for {
		_, err := st.Recv()
		if err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("stream over a killed hop: want Unavailable, got %v", err)
			}
			break
		}
	}
	// The pool redials; the run is reattached from offset 0 with all its
	// output.
	wantRemoteLines(ctx, t, c, a, "remote-r1", 40)
	if pids := bootstrap.SSHProcesses(srv.Config, "--stdio"); len(pids) != 1 {
		t.Fatalf("want one hop after the redial, got %v", pids)
	}
	after, err := a.GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
	if err != nil || after.GetPid() != before.GetPid() {
		t.Fatalf("agent after the redial: pid %d %v, want the same agent (pid %d)", after.GetPid(), err, before.GetPid())
	}
}

func TestRemoteSSHAuthRefused(t *testing.T) {
	c, _ := remoteController(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, _, _, err := Exec(ctx, c.Agent("locked"), nil, "true")
	if err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("want an error naming the host, got %v", err)
	}
	// The good host is unaffected.
	if _, _, tr, err := Exec(ctx, c.Agent("web1"), nil, "true"); err != nil || tr.GetExitCode() != 0 {
		t.Fatalf("web1 after locked failed: %v", err)
	}
}

// wantRemoteLines reattaches to run id from offset 0 (retrying while the
// pool redials) and wants its stdout to be "line1".."lineN" (n > 0), or
// those lines for some N (n = 0).
func wantRemoteLines(ctx context.Context, t *testing.T, c *Controller, a agentv1.AgentServiceClient, id string, n int) *agentv1.RunTrailer {
	t.Helper()
	var outb bytes.Buffer
	var tr *agentv1.RunTrailer
	var err error
	for attempt := 0; tr == nil; attempt++ {
		if attempt > 100 || ctx.Err() != nil {
			t.Fatalf("could not reattach: %v\n%s", err, c.Log())
		}
		outb.Reset()
		var as agentv1.AgentService_AttachRunClient
		as, err = a.AttachRun(ctx, &agentv1.AttachRunRequest{RunId: id, Follow: true})
		if err != nil {
			continue
		}
		for {
			ev, rerr := as.Recv()
			if rerr != nil {
				err = rerr
				break
			}
			if o := ev.GetOutput(); o != nil && o.GetStream() != agentv1.Stream_STREAM_STDERR {
				outb.Write(o.GetData())
			}
			if ev.GetTrailer() != nil {
				tr = ev.GetTrailer()
				break
			}
		}
		if tr == nil {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if n == 0 {
		n = strings.Count(outb.String(), "\n")
	}
	var want strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&want, "line%d\n", i)
	}
	if n == 0 || outb.String() != want.String() {
		t.Fatalf("reattached output incomplete:\n%q", outb.String())
	}
	return tr
}

// TestRemoteSSHUpgradeKeepsDetachedRuns: a controller with another agent
// build (an upgrade) installs it over the hop, and the workspace's agent
// daemon re-executes as that build in place: a detached run in flight goes
// on, with all of its output and its exit status.
func TestRemoteSSHUpgradeKeepsDetachedRuns(t *testing.T) {
	// The second build: same version, another build id.
	dir2 := shortTempDir(t)
	build := exec.Command("go", "build", "-ldflags", "-X main.upgradeTest=1", "-o", filepath.Join(dir2, bootstrap.AgentName), "github.com/dtmux/dtmux/agent/cmd/dtmux-agent")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build a second agent: %v\n%s", err, out)
	}
	srv := remoteServer(t)
	c1 := remoteControllerOn(t, srv, testbin.Dir(t))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := c1.Agent("web1")
	before, err := a.GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
	if err != nil {
		t.Fatalf("first call (bootstraps): %v\n%s", err, c1.Log())
	}
	st, err := a.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Prints until the test says stop, after the upgrade.
	stop := filepath.Join(shortTempDir(t), "stop")
	script := `i=0; while [ ! -e "$1" ]; do i=$((i+1)); echo line$i; sleep 0.02; done; exit 7`
	if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: &agentv1.ExecStart{
		Command: &agentv1.CommandSpec{Argv: []string{"sh", "-c", script, "sh", stop}}, RunId: "upgrade-r1", Detach: true, NoStdin: true}}}); err != nil {
		t.Fatal(err)
	}
	if ev, err := st.Recv(); err != nil || ev.GetStarted() == nil {
		t.Fatalf("start: %v %v", ev, err)
	}
	c1.Stop(t)

	c2 := remoteControllerOn(t, srv, dir2)
	a = c2.Agent("web1")
	after, err := a.GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
	if err != nil {
		t.Fatalf("first call of the new controller (installs the second build): %v\n%s", err, c2.Log())
	}
	if after.GetPid() != before.GetPid() || after.GetStartedAt().AsTime().Equal(before.GetStartedAt().AsTime()) {
		t.Fatalf("agent after the upgrade: pid %d started %v; want pid %d re-executed", after.GetPid(), after.GetStartedAt().AsTime(), before.GetPid())
	}
	if err := os.WriteFile(stop, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tr := wantRemoteLines(ctx, t, c2, a, "upgrade-r1", 0)
	if tr.GetReason() != agentv1.ExitReason_EXIT_REASON_EXITED || tr.GetExitCode() != 7 {
		t.Fatalf("trailer after the upgrade: %v, want exit 7", tr)
	}
	if log, _ := os.ReadFile(filepath.Join(remoteStateDir(srv), daemon.LogName)); !bytes.Contains(log, []byte("run taken over from the previous image")) {
		t.Fatalf("the run was not handed over; agent log:\n%s", log)
	}
	installed, err := os.ReadFile(filepath.Join(srv.Home, ".dtmux", "bin", bootstrap.AgentName))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(filepath.Join(dir2, bootstrap.AgentName))
	if !bytes.Equal(installed, want) {
		t.Fatal("the second build was not installed")
	}
}

// TestRemoteSSHSessionFollowerRidesThroughAHopKill: `session logs -f` takes
// the pane up again where it was when the ssh hop dies under it (the
// agent lives on): every line once, in order.
func TestRemoteSSHSessionFollowerRidesThroughAHopKill(t *testing.T) {
	c, srv := remoteController(t)
	mustCLI(t, c, "session", "new", "web1", "dev", "--", "sh", "-c", `i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo line$i; sleep 0.05; done; exec sleep 1000`)
	l := startCLI(t, c, "session", "logs", "web1", "dev", "-f")
	time.Sleep(500 * time.Millisecond)
	for _, pid := range bootstrap.SSHProcesses(srv.Config, "--stdio") {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for i := 0; !strings.Contains(l.rest.String(), "line60"); i++ {
		if i == 600 {
			t.Fatalf("follower after the hop's kill: %q; stderr %q", l.rest.String(), l.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	mustCLI(t, c, "session", "kill", "web1", "dev")
	l.wait(t)
	var got []int
	for _, m := range regexp.MustCompile(`line(\d+)`).FindAllStringSubmatch(l.first+"\n"+l.rest.String(), -1) {
		n, _ := strconv.Atoi(m[1])
		got = append(got, n)
	}
	for i, n := range got {
		if n != i+1 {
			t.Fatalf("lines followed: %v, want 1..60 once each", got)
		}
	}
	if len(got) != 60 || !strings.Contains(l.stderr.String(), "taking it up again") {
		t.Errorf("lines followed: %v; stderr %q", got, l.stderr.String())
	}
}

// A host reached with ssh -A: runs and tmux sessions use the ssh agent
// the controller's side forwards, also when -A came after the agent
// daemon was started, and after the hop was redialled (sshd removes the
// socket of a session that ended, and runs inherited the first hop's);
// once no hop forwards one, runs get no SSH_AUTH_SOCK.
func TestRemoteSSHForwardedAgentFollowsTheHop(t *testing.T) {
	srv := remoteServer(t)
	testbin.RequireTool(t, "ssh-add") // in the workspace's runs
	sock := filepath.Join(shortTempDir(t), "agent.sock")
	agent := exec.Command(testbin.RequireTool(t, "ssh-agent"), "-D", "-a", sock)
	if err := agent.Start(); err != nil {
		t.Fatalf("ssh-agent: %v", err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i == 100 {
			t.Fatal("ssh-agent did not make its socket")
		}
		time.Sleep(20 * time.Millisecond)
	}
	hosts := filepath.Join(shortTempDir(t), "hosts.yaml")
	edits := 0
	// web2, when listed, reaches the same account with -A: one agent
	// daemon serves both.
	web2 := false
	writeHosts := func(extra ...string) {
		t.Helper()
		args := `["` + strings.Join(append(srv.Args(), extra...), `","`) + `"]`
		yaml := fmt.Sprintf("hosts:\n  - {name: web1, destination: %q, ssh_args: %s}\n", srv.Destination(), args)
		if web2 {
			yaml += fmt.Sprintf("  - {name: web2, destination: %q, ssh_args: [\"%s\", \"-A\"]}\n", srv.Destination(), strings.Join(srv.Args(), `","`))
		}
		if err := os.WriteFile(hosts, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		edits++ // a new modification time, however fast the edits
		at := time.Now().Add(time.Duration(edits) * time.Hour)
		os.Chtimes(hosts, at, at)
	}
	writeHosts()
	c := StartController(t, ControllerOptions{Provider: "ssh", Args: []string{"--hosts", hosts, "--agent-dir", testbin.Dir(t)},
		Env: []string{"SSH_AUTH_SOCK=" + sock}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := c.Agent("web1")
	// What a run sees: ssh-add -l exits 1 when it reached an agent with no
	// keys, 2 when it reached none.
	probe := func() string {
		t.Helper()
		out, _, _, err := Exec(ctx, a, nil, "sh", "-c", `ssh-add -l >/dev/null 2>&1; echo "rc=$? sock=[$SSH_AUTH_SOCK]"`)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	// probeUntil waits up to 5 s for probe to say want (hops end, and
	// sshd removes their sockets, a moment after their ssh is killed).
	probeUntil := func(want, what string) {
		t.Helper()
		for i := 0; ; i++ {
			got := probe()
			if strings.HasPrefix(got, want) {
				return
			}
			if i == 50 {
				t.Fatalf("%s: %s", what, got)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if got := probe(); !strings.HasPrefix(got, "rc=2 sock=[]") {
		t.Errorf("a hop without -A: %s, want no agent and no SSH_AUTH_SOCK", got)
	}
	// -A from now on: the edit redials; the daemon, and its tmux server,
	// stay the ones started without an agent.
	writeHosts("-A")
	if got := probe(); !strings.HasPrefix(got, "rc=1") {
		t.Errorf("after -A was added: %s, want the forwarded agent", got)
	}
	for range 2 {
		hops := bootstrap.SSHProcesses(srv.Config, "--stdio")
		if len(hops) != 1 {
			t.Fatalf("hops %v, want one", hops)
		}
		syscall.Kill(hops[0], syscall.SIGKILL)
		var err error
		for range 50 {
			if _, _, _, err = Exec(ctx, a, nil, "true"); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("no redial: %v", err)
		}
		if got := probe(); !strings.HasPrefix(got, "rc=1") {
			t.Errorf("after a redial: %s, want the forwarded agent", got)
		}
	}
	// A second hop with -A to the same account, newest: when it ends,
	// runs through the first get the first one's agent.
	web2 = true
	writeHosts("-A")
	before := bootstrap.SSHProcesses(srv.Config, "--stdio")
	if _, _, _, err := Exec(ctx, c.Agent("web2"), nil, "true"); err != nil {
		t.Fatal(err)
	}
	for _, pid := range bootstrap.SSHProcesses(srv.Config, "--stdio") {
		if !slices.Contains(before, pid) {
			syscall.Kill(pid, syscall.SIGKILL) // web2's hop
		}
	}
	probeUntil("rc=1", "after the newest -A hop ended, through the other, want its agent")
	web2 = false
	writeHosts("-A")
	// A tmux session's shell.
	mustCLI(t, c, "session", "new", "web1", "agentcheck", "--", "sh", "-c", `ssh-add -l >/dev/null 2>&1; echo "rc=$?"; exec sleep 1000`)
	defer mustCLI(t, c, "session", "kill", "web1", "agentcheck")
	for i := 0; ; i++ {
		out := mustCLI(t, c, "session", "capture", "web1", "agentcheck").stdout
		if strings.Contains(out, "rc=") {
			if !strings.Contains(out, "rc=1") {
				t.Errorf("a session's shell: ssh-add -l said %q, want the forwarded agent (rc=1)", strings.TrimSpace(out))
			}
			break
		}
		if i == 100 {
			t.Fatalf("session printed %q", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// -A gone: once the last forwarding hop's session is over, no run
	// gets a dead SSH_AUTH_SOCK.
	writeHosts()
	probeUntil("rc=2 sock=[]", "after -A was removed, want no SSH_AUTH_SOCK")
}
