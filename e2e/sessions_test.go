package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dtmux/dtmux/internal/testbin"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// Sessions outlive their agent: an agent killed with SIGKILL and
// restarted by the local provider's supervisor lists the same sessions,
// and following one streams new output and then the exit status, all
// through the controller.
func TestSessionsSurviveAgentKill(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)
	ctx := ctlCtx(t)
	agent := c.Agent("w1")
	created, err := agent.CreateSession(ctx, &agentv1.CreateSessionRequest{Name: "keep", Command: &agentv1.CommandSpec{Argv: []string{"cat"}}})
	if err != nil {
		t.Fatal(err)
	}
	before := created.GetSession().GetWindows()[0].GetPanes()[0].GetPid()

	old := c.AgentPID("w1")
	if old == 0 {
		t.Fatal("no agent pid recorded")
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ctlEventually(t, "a new agent that lists the session", func() error {
		if pid := c.AgentPID("w1"); pid == old || pid == 0 {
			return fmt.Errorf("agent pid still %d", pid)
		}
		r, err := agent.ListSessions(ctx, &agentv1.ListSessionsRequest{})
		if err != nil {
			return err
		}
		if len(r.GetSessions()) != 1 || r.GetSessions()[0].GetName() != "keep" {
			return fmt.Errorf("sessions %v", r.GetSessions())
		}
		p := r.GetSessions()[0].GetWindows()[0].GetPanes()[0]
		if p.GetDead() || p.GetPid() != before {
			return fmt.Errorf("pane %v, want pid %d alive", p, before)
		}
		return nil
	})

	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	follow, err := agent.FollowSession(fctx, &agentv1.FollowSessionRequest{Target: &agentv1.PaneTarget{Session: "keep"}, Snapshot: true})
	if err != nil {
		t.Fatal(err)
	}
	// The snapshot comes first: from then on, output is live.
	if ev, err := follow.Recv(); err != nil || ev.GetSnapshot() == nil {
		t.Fatalf("first follow event %v, %v; want the snapshot", ev, err)
	}
	if _, err := agent.SendInput(ctx, &agentv1.SendInputRequest{Target: &agentv1.PaneTarget{Session: "keep"}, Text: "after-restart", Enter: true}); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	// The tty echoes the line, then cat prints it.
	for bytes.Count(got.Bytes(), []byte("after-restart\r\n")) < 2 {
		ev, err := follow.Recv()
		if err != nil {
			t.Fatalf("follow after restart: %v; got %q", err, got.Bytes())
		}
		got.Write(ev.GetOutput().GetData())
	}
	// C-c ends cat: the new agent reports the status tmux keeps.
	if _, err := agent.SendInput(ctx, &agentv1.SendInputRequest{Target: &agentv1.PaneTarget{Session: "keep"}, Keys: []string{"C-c"}}); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := follow.Recv()
		if err != nil {
			t.Fatalf("follow: %v before the exit", err)
		}
		if x := ev.GetExited(); x != nil {
			if x.GetSignal() != int32(syscall.SIGINT) {
				t.Errorf("exited %v, want SIGINT", x)
			}
			break
		}
	}
}

// Ctrl-C on `dtmux run` types C-c into the script's window, as in a
// terminal: the script ends and dtmux exits with its status (130). The
// stream alone going away would leave the script running.
func TestCLIRunInterrupt(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)
	script := filepath.Join(t.TempDir(), "long.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho started\nexec sleep 300\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testbin.Path(t, testbin.CLI), "run", "w1", "--session", "intr", script)
	cmd.Env = c.Env()
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	eventually(t, "the script's first line", func() string {
		if s := out.String(); !strings.Contains(s, "started") {
			return fmt.Sprintf("output so far %q", s)
		}
		return ""
	})
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Errorf("dtmux run after Ctrl-C: %v, output %q; want exit 130", err, out.String())
	}
	if scriptRunning(t, c, "w1", "intr", "long") {
		t.Error("the script still runs after Ctrl-C")
	}
}

// Key names are checked, not typed as text; input to a dead pane is an
// error, not dropped.
func TestCLISessionsKeysAndDeadPanes(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)
	mustCLI(t, c, "session", "new", "w1", "s1", "--", "cat")

	r := dtmuxCLI(t, c, nil, "session", "send", "w1", "s1", "--keys", "NotAKey", "Entr")
	if r.code != 254 {
		t.Errorf("unknown key: exit %d, want 254 (invalid argument)", r.code)
	}
	oneLineError(t, r, `"NotAKey"`)
	mustCLI(t, c, "session", "send", "w1", "s1", "--keys", "m", "a", "r", "k", "#", "Enter")
	eventually(t, "typed keys in capture", func() string {
		got := mustCLI(t, c, "session", "capture", "w1", "s1").stdout
		if !strings.Contains(got, "mark#\nmark#\n") { // the tty's echo, then cat's
			return fmt.Sprintf("capture:\n%s", got)
		}
		return ""
	})
	if got := mustCLI(t, c, "session", "capture", "w1", "s1").stdout; strings.Contains(got, "NotAKey") || strings.Contains(got, "Entr") {
		t.Errorf("rejected keys were typed:\n%s", got)
	}

	mustCLI(t, c, "session", "new", "w1", "s2", "--", "sh", "-c", "exit 9")
	// A pane that exited 0 says so too: zero is an answer, not a missing
	// key.
	mustCLI(t, c, "session", "new", "w1", "s0", "--", "true")
	eventually(t, "the panes to die", func() string {
		r := mustCLI(t, c, "session", "ls", "w1", "-o", "json")
		var listed struct {
			Sessions []struct {
				Name    string `json:"name"`
				Windows []struct {
					Panes []struct {
						Dead     bool `json:"dead"`
						ExitCode *int `json:"exit_code"`
					} `json:"panes"`
				} `json:"windows"`
			} `json:"sessions"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &listed); err != nil {
			return err.Error()
		}
		want := map[string]int{"s2": 9, "s0": 0}
		for _, ss := range listed.Sessions {
			code, ok := want[ss.Name]
			if !ok {
				continue
			}
			for _, w := range ss.Windows {
				for _, p := range w.Panes {
					if p.Dead && p.ExitCode != nil && *p.ExitCode == code {
						delete(want, ss.Name)
					}
				}
			}
		}
		if len(want) > 0 {
			return fmt.Sprintf("no dead pane with exit_code %v in:\n%s", want, r.stdout)
		}
		return ""
	})
	r = dtmuxCLI(t, c, nil, "session", "send", "w1", "s2", "--enter", "hello")
	if r.code == 0 {
		t.Error("send to a dead pane exited 0")
	}
	oneLineError(t, r, "of session s2 is dead (exit status 9): nothing was sent")
}

// ps before up and after down lists nothing and succeeds; logs of a
// service that does not exist says so; logs of an exited service is its
// output, without tmux's screen padding or dead-pane line.
func TestCLIServicesMissingAndExited(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)
	if r := dtmuxCLI(t, c, nil, "ps", "w1"); r.code != 0 || strings.Contains(r.stdout, "services") || r.stderr != "" {
		t.Errorf("ps before up: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	r := dtmuxCLI(t, c, nil, "logs", "w1", "nosuch")
	if r.code == 0 {
		t.Error("logs of a missing service exited 0")
	}
	oneLineError(t, r, `service "nosuch" not found`)

	file := filepath.Join(t.TempDir(), "services.yaml")
	if err := os.WriteFile(file, []byte("services:\n  - name: crasher\n    command: [sh, -c, 'echo starting; echo crashed; exit 9']\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, c, "up", "w1", "-f", file)
	eventually(t, "crasher exited", func() string {
		if out := mustCLI(t, c, "ps", "w1").stdout; !strings.Contains(out, "exited") {
			return out
		}
		return ""
	})
	if out := mustCLI(t, c, "logs", "w1", "crasher").stdout; out != "starting\ncrashed\n" {
		t.Errorf("logs of an exited service = %q, want %q", out, "starting\ncrashed\n")
	}
	r = dtmuxCLI(t, c, nil, "logs", "w1", "nosuch")
	oneLineError(t, r, `service "nosuch" not found`)

	mustCLI(t, c, "down", "w1")
	if r := dtmuxCLI(t, c, nil, "ps", "w1"); r.code != 0 || strings.Contains(r.stdout, "crasher") || r.stderr != "" {
		t.Errorf("ps after down: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
}

// `session logs -f` ends cleanly, saying why, when the session it follows
// is killed.
func TestCLISessionLogsFollowEndsWhenKilled(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)
	mustCLI(t, c, "session", "new", "w1", "k1", "--", "cat")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testbin.Path(t, testbin.CLI), "session", "logs", "w1", "k1", "-f")
	cmd.Env = c.Env()
	var out, errb syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, c, "session", "send", "w1", "k1", "--enter", "marker-1")
	eventually(t, "the followed output", func() string {
		if s := out.String(); !strings.Contains(s, "marker-1") {
			return fmt.Sprintf("output so far %q", s)
		}
		return ""
	})
	mustCLI(t, c, "session", "kill", "w1", "k1")
	if err := cmd.Wait(); err != nil {
		t.Errorf("session logs -f after the session was killed: %v (stderr %q), want exit 0", err, errb.String())
	}
	if !strings.Contains(errb.String(), "k1 closed while following it") {
		t.Errorf("stderr %q, want a line saying the session went away", errb.String())
	}
}

// Session commands answer like a shell and like exec: a missing program
// is 127, a session name already taken is invalid input (254).
func TestCLISessionExitCodes(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)
	if r := dtmuxCLI(t, c, nil, "session", "new", "w1", "x", "--", "/no/such/dtmux-cmd"); r.code != 127 {
		t.Errorf("session new with a missing program: exit %d stderr %q, want 127", r.code, r.stderr)
	}
	mustCLI(t, c, "session", "new", "w1", "dup", "--", "cat")
	if r := dtmuxCLI(t, c, nil, "session", "new", "w1", "dup", "--", "cat"); r.code != 254 {
		t.Errorf("session new with a taken name: exit %d stderr %q, want 254", r.code, r.stderr)
	}
	if r := dtmuxCLI(t, c, nil, "exec", "--shell", "w1", "--", " "); r.code != 254 || !strings.Contains(r.stderr, "the command is empty") {
		t.Errorf("exec --shell with an empty command: exit %d stderr %q", r.code, r.stderr)
	}
}
