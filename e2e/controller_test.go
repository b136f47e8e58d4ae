package e2e

// The controller end to end, at the gRPC level: the real dtmux-controller
// on the local provider starting real dtmux-agent processes.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/internal/testbin"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

func ctlCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// ctlEventually retries fn until it returns nil, failing after a generous
// deadline with fn's last error.
func ctlEventually(t *testing.T, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ctlNames(t *testing.T, c *Controller, sel ...string) []string {
	t.Helper()
	r, err := c.Workspaces().ListWorkspaces(ctlCtx(t), &controllerv1.ListWorkspacesRequest{LabelSelectors: sel})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, w := range r.GetWorkspaces() {
		out = append(out, w.GetName())
	}
	return out
}

func TestControllerWorkspaces(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	ctx := ctlCtx(t)
	ws := c.Workspaces()

	w := c.CreateWorkspace(t, "web-1", map[string]string{"team": "web"})
	if w.GetState() != controllerv1.WorkspaceState_WORKSPACE_STATE_STARTED || w.GetProvider() != "local" || w.GetLabels()["team"] != "web" {
		t.Errorf("created %v", w)
	}
	c.CreateWorkspace(t, "web-2", map[string]string{"team": "web"})
	c.CreateWorkspace(t, "db", map[string]string{"team": "db"})
	if _, err := ws.CreateWorkspace(ctx, &controllerv1.CreateWorkspaceRequest{Name: "db"}); status.Code(err) != codes.AlreadyExists {
		t.Errorf("duplicate: %v", err)
	}
	if _, err := ws.CreateWorkspace(ctx, &controllerv1.CreateWorkspaceRequest{Name: "../x"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad name: %v", err)
	}
	if got := ctlNames(t, c); !slices.Equal(got, []string{"db", "web-1", "web-2"}) {
		t.Errorf("ls = %v", got)
	}
	if got := ctlNames(t, c, "team=web"); !slices.Equal(got, []string{"web-1", "web-2"}) {
		t.Errorf("ls team=web = %v", got)
	}

	// Each call goes to the named workspace's own agent.
	for _, name := range []string{"web-1", "db"} {
		out, _, tr, err := Exec(ctx, c.Agent(name), nil, "sh", "-c", `echo "$DTMUX_WORKSPACE $(pwd)"`)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("%s %s\n", name, filepath.Join(c.StateDir, "workspaces", name, "home"))
		if string(out) != want || tr.GetExitCode() != 0 {
			t.Errorf("%s: %q (exit %d), want %q", name, out, tr.GetExitCode(), want)
		}
	}
	g, err := ws.GetWorkspace(ctx, &controllerv1.GetWorkspaceRequest{Name: "db"})
	if err != nil || !g.GetWorkspace().GetAgent().GetConnected() || g.GetWorkspace().GetAgent().GetVersion() == "" {
		t.Errorf("db after a call: %v, %v; want connected with a version", g, err)
	}

	// Stopped: the agent is gone and calls say why.
	pid := c.AgentPID("db")
	s, err := ws.StopWorkspace(ctx, &controllerv1.StopWorkspaceRequest{Name: "db"})
	if err != nil || s.GetWorkspace().GetState() != controllerv1.WorkspaceState_WORKSPACE_STATE_STOPPED {
		t.Fatalf("stop: %v, %v", s, err)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Errorf("agent %d still running after stop", pid)
	}
	if _, _, _, err := Exec(ctx, c.Agent("db"), nil, "true"); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("exec on stopped: %v", err)
	}
	if _, err := ws.StartWorkspace(ctx, &controllerv1.StartWorkspaceRequest{Name: "db"}); err != nil {
		t.Fatal(err)
	}
	if _, _, tr, err := Exec(ctx, c.Agent("db"), nil, "true"); err != nil || tr.GetExitCode() != 0 {
		t.Errorf("exec after start: %v, %v", tr, err)
	}

	// Deleted: gone from the list, its directory and agent removed.
	pid = c.AgentPID("web-2")
	// A running workspace is deleted only when forced, like docker rm.
	_, err = ws.DeleteWorkspace(ctx, &controllerv1.DeleteWorkspaceRequest{Name: "web-2"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "--force") {
		t.Errorf("delete a running workspace without force: %v, want FailedPrecondition naming --force", err)
	}
	if syscall.Kill(pid, 0) != nil {
		t.Errorf("a refused delete stopped the agent")
	}
	if _, err := ws.DeleteWorkspace(ctx, &controllerv1.DeleteWorkspaceRequest{Name: "web-2", Force: true}); err != nil {
		t.Fatal(err)
	}
	if got := ctlNames(t, c); !slices.Equal(got, []string{"db", "web-1"}) {
		t.Errorf("ls after rm = %v", got)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Errorf("agent %d still running after delete", pid)
	}
	if _, err := os.Stat(filepath.Join(c.StateDir, "workspaces", "web-2")); !os.IsNotExist(err) {
		t.Errorf("workspace dir left: %v", err)
	}
	if _, _, _, err := Exec(ctx, c.Agent("web-2"), nil, "true"); status.Code(err) != codes.NotFound {
		t.Errorf("exec on deleted: %v", err)
	}
}

func TestControllerExec(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w", nil)
	ctx := ctlCtx(t)
	a := c.Agent("w")

	tests := []struct {
		name           string
		stdin          string
		argv           []string
		stdout, stderr string
		code           int32
	}{
		{"ok", "", []string{"echo", "hi"}, "hi\n", "", 0},
		{"exit 3", "", []string{"sh", "-c", "exit 3"}, "", "", 3},
		{"streams apart", "", []string{"sh", "-c", "echo out; echo err >&2; echo out2"}, "out\nout2\n", "err\n", 0},
		{"stdin to EOF", "line1\nline2\n", []string{"sh", "-c", "cat; echo done"}, "line1\nline2\ndone\n", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errb, tr, err := Exec(ctx, a, []byte(tt.stdin), tt.argv...)
			if err != nil {
				t.Fatal(err)
			}
			if string(out) != tt.stdout || string(errb) != tt.stderr || tr.GetExitCode() != tt.code {
				t.Errorf("got out %q err %q exit %d; want %q %q %d", out, errb, tr.GetExitCode(), tt.stdout, tt.stderr, tt.code)
			}
		})
	}

	// A few MB through controller and agent arrive byte-exact.
	want, err := exec.Command("seq", "1", "1000000").Output()
	if err != nil {
		t.Fatal(err)
	}
	out, _, tr, err := Exec(ctx, a, nil, "seq", "1", "1000000")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, want) || tr.GetStdoutBytes() != uint64(len(want)) {
		t.Errorf("seq output: %d bytes (trailer %d), want %d exact", len(out), tr.GetStdoutBytes(), len(want))
	}
}

func TestControllerRoutingErrors(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	ctx := ctlCtx(t)
	_, err := c.Agent("nope").GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), `workspace "nope" not found`) {
		t.Errorf("unknown workspace: %v", err)
	}
	_, err = agentv1.NewAgentServiceClient(c.Conn).GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "dtmux-workspace") {
		t.Errorf("no workspace named: %v", err)
	}
	st, err := c.Agent("nope").Exec(ctx)
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.NotFound {
		t.Errorf("exec on unknown workspace: %v", err)
	}
}

// The agent dies and cannot come back for a while (its binary is gone):
// calls fail with Unavailable and the reason; once it can, the supervisor
// restarts it and calls work again through the same controller.
func TestControllerAgentKilledThenRecovered(t *testing.T) {
	dir := shortTempDir(t)
	bin := filepath.Join(dir, "agent-bin")
	ctlCopy(t, testbin.Path(t, testbin.Agent), bin)
	c := StartController(t, ControllerOptions{Args: []string{"--agent-binary", bin}})
	c.CreateWorkspace(t, "w", nil)
	ctx := ctlCtx(t)
	if _, _, _, err := Exec(ctx, c.Agent("w"), nil, "true"); err != nil {
		t.Fatal(err)
	}

	hidden := bin + ".away"
	if err := os.Rename(bin, hidden); err != nil {
		t.Fatal(err)
	}
	pid := c.AgentPID("w")
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ctlEventually(t, "Unavailable while the agent is down", func() error {
		_, err := c.Agent("w").GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
		if status.Code(err) != codes.Unavailable {
			return fmt.Errorf("got %v", err)
		}
		if !strings.Contains(err.Error(), "agent.sock") {
			return fmt.Errorf("no reason in %v", err)
		}
		return nil
	})
	g, err := c.Workspaces().GetWorkspace(ctx, &controllerv1.GetWorkspaceRequest{Name: "w"})
	if err != nil || g.GetWorkspace().GetAgent().GetConnected() || g.GetWorkspace().GetAgent().GetLastError() == "" {
		t.Errorf("status while down: %v, %v", g, err)
	}

	if err := os.Rename(hidden, bin); err != nil {
		t.Fatal(err)
	}
	ctlEventually(t, "exec after the supervisor restarted the agent", func() error {
		out, _, tr, err := Exec(ctx, c.Agent("w"), nil, "echo", "back")
		if err != nil {
			return err
		}
		if string(out) != "back\n" || tr.GetExitCode() != 0 {
			return fmt.Errorf("got %q exit %d", out, tr.GetExitCode())
		}
		return nil
	})
	if np := c.AgentPID("w"); np == pid || np == 0 {
		t.Errorf("agent pid %d, want a new one (old %d)", np, pid)
	}
}

// A restarted controller finds its workspaces again and adopts the agents
// that kept running, without restarting them.
func TestControllerRestartAdoptsAgents(t *testing.T) {
	c := StartController(t, ControllerOptions{KeepAgentsOnExit: true})
	c.CreateWorkspace(t, "a", map[string]string{"k": "v"})
	c.CreateWorkspace(t, "b", nil)
	ctx := ctlCtx(t)
	if _, err := c.Workspaces().StopWorkspace(ctx, &controllerv1.StopWorkspaceRequest{Name: "b"}); err != nil {
		t.Fatal(err)
	}
	// A detached run keeps going across the controller restart.
	st, err := c.Agent("a").Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: &agentv1.ExecStart{
		RunId: "survivor", Detach: true, Command: &agentv1.CommandSpec{Argv: []string{"sh", "-c", "sleep 1; echo still here"}},
	}}}); err != nil {
		t.Fatal(err)
	}
	if ev, err := st.Recv(); err != nil || ev.GetStarted() == nil {
		t.Fatalf("start detached: %v, %v", ev, err)
	}
	_ = st.CloseSend()
	pid := c.AgentPID("a")

	c.Restart(t)

	if got := c.AgentPID("a"); got != pid {
		t.Errorf("agent pid %d after restart, want the adopted %d", got, pid)
	}
	r, err := c.Workspaces().ListWorkspaces(ctx, &controllerv1.ListWorkspacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]controllerv1.WorkspaceState{}
	for _, w := range r.GetWorkspaces() {
		states[w.GetName()] = w.GetState()
		if w.GetName() == "a" && w.GetLabels()["k"] != "v" {
			t.Errorf("a lost its labels: %v", w)
		}
	}
	if states["a"] != controllerv1.WorkspaceState_WORKSPACE_STATE_STARTED || states["b"] != controllerv1.WorkspaceState_WORKSPACE_STATE_STOPPED {
		t.Errorf("states after restart = %v", states)
	}
	ar, err := c.Agent("a").AttachRun(ctx, &agentv1.AttachRunRequest{RunId: "survivor", Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	var tr *agentv1.RunTrailer
	for {
		ev, err := ar.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		out.Write(ev.GetOutput().GetData())
		if ev.GetTrailer() != nil {
			tr = ev.GetTrailer()
		}
	}
	if out.String() != "still here\n" || tr.GetExitCode() != 0 {
		t.Errorf("detached run after restart: %q, trailer %v", out.String(), tr)
	}
}

func ctlCopy(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// The static provider routes to agents it is given, and manages none.
func TestControllerStaticProvider(t *testing.T) {
	local := StartController(t, ControllerOptions{})
	local.CreateWorkspace(t, "w", nil)
	sock := filepath.Join(local.StateDir, "workspaces", "w", "agent.sock")
	c := StartController(t, ControllerOptions{Provider: "static", Args: []string{"--agent", "x=unix://" + sock + " team=t"}})
	ctx := ctlCtx(t)
	out, _, tr, err := Exec(ctx, c.Agent("x"), nil, "sh", "-c", "echo $DTMUX_WORKSPACE")
	if err != nil || string(out) != "w\n" || tr.GetExitCode() != 0 {
		t.Errorf("exec via static: %q, %v, %v", out, tr, err)
	}
	if got := ctlNames(t, c, "team=t"); !slices.Equal(got, []string{"x"}) {
		t.Errorf("ls team=t = %v", got)
	}
	if _, err := c.Workspaces().CreateWorkspace(ctx, &controllerv1.CreateWorkspaceRequest{Name: "y"}); status.Code(err) != codes.Unimplemented {
		t.Errorf("create on static: %v", err)
	}
}

// wsProcesses lists the live processes whose environment says they came
// from workspace ws of controller c (its HOME, or DTMUX_WORKSPACE with a
// HOME under c's state dir, so that other tests' workspaces of the same
// name never count), keyed by pid, with their command lines.
func wsProcesses(c *Controller, ws string) map[int]string {
	home := filepath.Join(c.StateDir, "workspaces", ws, "home")
	out := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !processAlive(pid) {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			continue
		}
		vars := strings.Split(string(env), "\x00")
		if !slices.Contains(vars, "HOME="+home) && !(slices.Contains(vars, "DTMUX_WORKSPACE="+ws) && slices.ContainsFunc(vars, func(v string) bool {
			return strings.HasPrefix(v, "HOME="+c.StateDir+"/")
		})) {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		out[pid] = strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))
	}
	return out
}

// `ws rm` and `ws stop` end everything in the workspace, as stopping a
// machine would: a detached run and the daemon it left with setsid, what
// an attached run left with nohup, and a tmux session (with a daemon it
// left). After a stop, the detached run reads KILLED (the controller
// killed it through the agent) and a started workspace has no sessions.
func TestControllerStopAndDeleteEndEverything(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	for _, op := range []string{"rm", "stop"} {
		t.Run(op, func(t *testing.T) {
			ws := "end-" + op
			c.CreateWorkspace(t, ws, nil)
			runID := strings.TrimSpace(mustCLI(t, c, "exec", "-d", ws, "--", "sh", "-c", "setsid sleep 301 & sleep 302").stdout)
			mustCLI(t, c, "exec", ws, "--", "sh", "-c", "nohup sleep 303 >/dev/null 2>&1 &")
			mustCLI(t, c, "session", "new", ws, "s", "--", "sh", "-c", "setsid sleep 304 & sleep 305")

			want := []string{"sleep 301", "sleep 302", "sleep 303", "sleep 304", "sleep 305"}
			var before map[int]string
			eventually(t, "the workspace's processes to start", func() string {
				before = wsProcesses(c, ws)
				for _, w := range want {
					if !slices.Contains(slices.Collect(maps.Values(before)), w) {
						return fmt.Sprintf("no %q among %v", w, before)
					}
				}
				return ""
			})
			// Should the fix regress, the escapes outlive the test: end them.
			t.Cleanup(func() {
				for pid := range before {
					if processAlive(pid) {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			})

			if op == "rm" {
				// Refused while running, with the way out; nothing ends.
				r := dtmuxCLI(t, c, nil, "ws", "rm", ws)
				if r.code == 0 {
					t.Fatal("ws rm of a running workspace without --force succeeded")
				}
				oneLineError(t, r, "is running; stop it first (dtmux ws stop "+ws+") or delete it with --force")
				if out := mustCLI(t, c, "runs", "ls", ws).stdout; !strings.Contains(out, runID) || !strings.Contains(out, "running") {
					t.Fatalf("after a refused ws rm, the detached run is not running:\n%s", out)
				}
				mustCLI(t, c, "ws", "rm", "--force", ws)
			} else {
				mustCLI(t, c, "ws", op, ws)
			}
			if left := wsProcesses(c, ws); len(left) > 0 {
				t.Fatalf("after ws %s, still running: %v (before: %v)", op, left, before)
			}
			for pid, cmd := range before {
				if processAlive(pid) {
					t.Errorf("after ws %s, pid %d (%s) still running", op, pid, cmd)
				}
			}
			if op != "stop" {
				return
			}
			mustCLI(t, c, "ws", "start", ws)
			g, err := c.Agent(ws).GetRun(ctlCtx(t), &agentv1.GetRunRequest{RunId: runID})
			if err != nil {
				t.Fatalf("run %q after stop and start: %v", runID, err)
			}
			if r := g.GetRun().GetTrailer().GetReason(); r != agentv1.ExitReason_EXIT_REASON_KILLED {
				t.Errorf("detached run after stop: %v (%s), want KILLED", r, g.GetRun().GetTrailer().GetDetail())
			}
			ls, err := c.Agent(ws).ListSessions(ctlCtx(t), &agentv1.ListSessionsRequest{})
			if err != nil || len(ls.GetSessions()) != 0 {
				t.Errorf("sessions after stop and start: %v, %v; want none", ls.GetSessions(), err)
			}
		})
	}
}
