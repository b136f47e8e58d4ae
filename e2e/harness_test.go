// Package e2e holds end-to-end tests that run the real dtmux binaries
// (controller, agents, CLI) against real processes and tmux.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/dtmux/dtmux/internal/testbin"
	"github.com/dtmux/dtmux/internal/tmuxserver"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// WorkspaceMetadataKey is the metadata key the controller routes
// AgentService calls by.
const WorkspaceMetadataKey = "dtmux-workspace"

// ControllerOptions tune StartController. The zero value starts the local
// provider with agents stopped when the controller exits.
type ControllerOptions struct {
	// StateDir to use; default a fresh short temp dir (removed at cleanup).
	StateDir string
	// Provider is passed as --provider when set.
	Provider string
	// KeepAgentsOnExit leaves local agents running when the controller
	// exits (to test adoption by a restarted controller). Cleanup still
	// kills every agent the state dir records.
	KeepAgentsOnExit bool
	// Args are extra controller flags.
	Args []string
	// Env are extra environment entries (KEY=VALUE) for the controller.
	Env []string
}

// Controller is a running dtmux-controller process.
type Controller struct {
	// Addr is the controller's listen address ("unix:///...").
	Addr string
	// Socket is the controller's unix socket path.
	Socket string
	// StateDir is the controller's --state-dir.
	StateDir string
	// LogFile receives the controller's log.
	LogFile string
	// Conn is a client connection to the controller, closed at cleanup.
	Conn *grpc.ClientConn

	opts ControllerOptions
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// shortTempDir returns a temp dir with a short path (unix socket paths are
// limited to ~100 bytes) that is removed at cleanup, after every tmux
// server with a socket in it was ended: agents keep state dirs in these,
// and an agent's tmux server outlives the agent by design.
func shortTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		killTmuxServers(t, d)
		os.RemoveAll(d)
	})
	return d
}

// StartController starts a dtmux-controller built from this tree on a
// private state dir, waits until it serves health, and arranges for it (and
// every local agent it started) to be stopped at cleanup.
func StartController(t testing.TB, o ControllerOptions) *Controller {
	t.Helper()
	if o.StateDir == "" {
		o.StateDir = shortTempDir(t)
	}
	c := &Controller{
		StateDir: o.StateDir,
		Socket:   filepath.Join(o.StateDir, "controller.sock"),
		LogFile:  filepath.Join(o.StateDir, "controller.log"),
		opts:     o,
	}
	c.Addr = "unix://" + c.Socket
	t.Cleanup(func() { killRecordedAgents(t, c.StateDir) })
	c.start(t)
	conn, err := grpc.NewClient(c.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial controller: %v", err)
	}
	c.Conn = conn
	t.Cleanup(func() { conn.Close() })
	return c
}

func (c *Controller) start(t testing.TB) {
	t.Helper()
	args := []string{
		"--state-dir", c.StateDir,
		"--listen", c.Addr,
		"--agent-binary", testbin.Path(t, testbin.Agent),
		"--log-file", c.LogFile,
		"--log-level", "debug",
	}
	if c.opts.Provider != "" {
		args = append(args, "--provider", c.opts.Provider)
	}
	if !c.opts.KeepAgentsOnExit {
		args = append(args, "--stop-agents-on-exit")
	}
	args = append(args, c.opts.Args...)
	cmd := exec.Command(testbin.Path(t, testbin.Controller), args...)
	cmd.Env = append(os.Environ(), c.opts.Env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start controller: %v", err)
	}
	c.cmd = cmd
	c.done = make(chan struct{})
	go func() { c.err = cmd.Wait(); close(c.done) }()
	t.Cleanup(func() { c.stop(t) })

	if err := c.waitServing(30 * time.Second); err != nil {
		c.Kill()
		t.Fatalf("controller did not come up: %v\nstderr:\n%s\nlog:\n%s", err, stderr.String(), c.Log())
	}
}

// waitServing polls the health service until SERVING, the process exits,
// or the timeout passes.
func (c *Controller) waitServing(timeout time.Duration) error {
	conn, err := grpc.NewClient(c.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-c.done:
			return fmt.Errorf("controller exited: %v", c.err)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("timeout; last error: %v", last)
}

// Log returns the controller's log so far.
func (c *Controller) Log() string {
	b, _ := os.ReadFile(c.LogFile)
	return string(b)
}

// Stop sends SIGTERM and waits for the controller to exit (SIGKILL after
// 20 s). It is safe to call more than once.
func (c *Controller) Stop(t testing.TB) {
	t.Helper()
	c.stop(t)
}

func (c *Controller) stop(t testing.TB) {
	if c.cmd == nil {
		return
	}
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		t.Logf("controller did not exit on SIGTERM; killing")
		c.Kill()
	}
}

// Kill SIGKILLs the controller and waits for it. Its agents keep running.
func (c *Controller) Kill() {
	if c.cmd == nil {
		return
	}
	_ = c.cmd.Process.Kill()
	<-c.done
}

// Restart stops the controller (SIGTERM; agents stay up only with
// KeepAgentsOnExit) and starts a new one on the same state dir and address.
func (c *Controller) Restart(t testing.TB) {
	t.Helper()
	c.Stop(t)
	c.start(t)
}

// Env returns an environment for a CLI process that talks to this
// controller.
func (c *Controller) Env() []string {
	return append(os.Environ(), "DTMUX_CONTROLLER="+c.Addr, "DTMUX_STATE_DIR="+c.StateDir)
}

// Workspaces returns a WorkspaceService client.
func (c *Controller) Workspaces() controllerv1.WorkspaceServiceClient {
	return controllerv1.NewWorkspaceServiceClient(c.Conn)
}

// Fleet returns a FleetService client.
func (c *Controller) Fleet() controllerv1.FleetServiceClient {
	return controllerv1.NewFleetServiceClient(c.Conn)
}

// Agent returns an AgentService client whose every call is routed to ws.
func (c *Controller) Agent(ws string) agentv1.AgentServiceClient {
	return agentv1.NewAgentServiceClient(workspaceConn{c.Conn, ws})
}

// WithWorkspace returns ctx with the routing metadata for ws.
func WithWorkspace(ctx context.Context, ws string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, WorkspaceMetadataKey, ws)
}

// workspaceConn adds the routing metadata to every call.
type workspaceConn struct {
	cc *grpc.ClientConn
	ws string
}

func (w workspaceConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return w.cc.Invoke(WithWorkspace(ctx, w.ws), method, args, reply, opts...)
}

func (w workspaceConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return w.cc.NewStream(WithWorkspace(ctx, w.ws), desc, method, opts...)
}

// CreateWorkspace creates a workspace through the controller and fails
// the test on error.
func (c *Controller) CreateWorkspace(t testing.TB, name string, labels map[string]string) *controllerv1.Workspace {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := c.Workspaces().CreateWorkspace(ctx, &controllerv1.CreateWorkspaceRequest{Name: name, Labels: labels})
	if err != nil {
		t.Fatalf("create workspace %q: %v\ncontroller log:\n%s", name, err, c.Log())
	}
	return r.GetWorkspace()
}

// AgentPID returns the pid the local provider recorded for a workspace's
// agent (0 when none).
func (c *Controller) AgentPID(ws string) int {
	return readPID(filepath.Join(c.StateDir, "workspaces", ws, "agent.pid"))
}

func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// killRecordedAgents SIGKILLs every local agent recorded under stateDir,
// so that no test leaves agents behind even when the controller did not
// stop them, then ends every agent's tmux server under stateDir (those
// outlive their agent by design).
func killRecordedAgents(t testing.TB, stateDir string) {
	pids, _ := filepath.Glob(filepath.Join(stateDir, "workspaces", "*", "agent.pid"))
	for _, p := range pids {
		if pid := readPID(p); pid > 0 {
			// The agent leads its own session: kill its process group so
			// its runs go too.
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	killTmuxServers(t, stateDir)
}

// killTmuxServers ends every tmux server with a socket under dir.
func killTmuxServers(t testing.TB, dir string) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := tmuxserver.KillUnder(ctx, dir); err != nil {
		t.Errorf("stop the tmux servers under %s: %v", dir, err)
	}
}

// Exec runs argv in ws through the controller and returns stdout, stderr
// and the trailer. It closes stdin right away unless stdin is non-nil, in
// which case it sends stdin first.
func Exec(ctx context.Context, c agentv1.AgentServiceClient, stdin []byte, argv ...string) (stdout, stderr []byte, tr *agentv1.RunTrailer, err error) {
	st, err := c.Exec(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	// A failed Send returns io.EOF; the call's real status comes from Recv.
	send := func(what string, m *agentv1.ExecRequest) error {
		if err := st.Send(m); err != nil {
			if errors.Is(err, io.EOF) {
				if _, rerr := st.Recv(); rerr != nil {
					return rerr
				}
			}
			return fmt.Errorf("send %s: %w", what, err)
		}
		return nil
	}
	if err := send("start", &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: argv}}}}); err != nil {
		return nil, nil, nil, err
	}
	if len(stdin) > 0 {
		if err := send("stdin", &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Stdin{Stdin: stdin}}); err != nil {
			return nil, nil, nil, err
		}
	}
	if err := send("close stdin", &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_CloseStdin{CloseStdin: &agentv1.ExecStdinClose{}}}); err != nil {
		return nil, nil, nil, err
	}
	var out, errb bytes.Buffer
	for {
		ev, err := st.Recv()
		if err != nil {
			return out.Bytes(), errb.Bytes(), nil, err
		}
		switch e := ev.Event.(type) {
		case *agentv1.ExecResponse_Output:
			if e.Output.GetStream() == agentv1.Stream_STREAM_STDERR {
				errb.Write(e.Output.GetData())
			} else {
				out.Write(e.Output.GetData())
			}
		case *agentv1.ExecResponse_Trailer:
			_ = st.CloseSend()
			return out.Bytes(), errb.Bytes(), e.Trailer, nil
		}
	}
}
