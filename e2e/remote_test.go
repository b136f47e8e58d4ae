package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
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
	deny := sshtest.Start(t, sshtest.Options{RejectAll: true})
	hosts := filepath.Join(shortTempDir(t), "hosts.yaml")
	q := func(ss []string) string { return `["` + strings.Join(ss, `","`) + `"]` }
	yaml := fmt.Sprintf("hosts:\n  - {name: web1, destination: %q, labels: {team: web}, ssh_args: %s}\n  - {name: locked, destination: %q, ssh_args: %s}\n",
		srv.Destination(), q(srv.Args()), deny.Destination(), q(deny.Args()))
	if err := os.WriteFile(hosts, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	c := StartController(t, ControllerOptions{Provider: "ssh", Args: []string{"--hosts", hosts, "--agent-dir", testbin.Dir(t)}})
	return c, srv
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
	var outb bytes.Buffer
	var tr *agentv1.RunTrailer
	for attempt := 0; tr == nil; attempt++ {
		if attempt > 100 || ctx.Err() != nil {
			t.Fatalf("could not reattach: %v\n%s", err, c.Log())
		}
		outb.Reset()
		var as agentv1.AgentService_AttachRunClient
		as, err = a.AttachRun(ctx, &agentv1.AttachRunRequest{RunId: "remote-r1", Follow: true})
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
	var want strings.Builder
	for i := 1; i <= 40; i++ {
		fmt.Fprintf(&want, "line%d\n", i)
	}
	if outb.String() != want.String() {
		t.Fatalf("reattached output incomplete:\n%q", outb.String())
	}
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
