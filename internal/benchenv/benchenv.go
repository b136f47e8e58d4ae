// Package benchenv is the shared harness of the benchmarks under bench/:
// the real binaries, a real controller on the local provider with one
// workspace, clients routed through it or straight to the agent, and
// latency samples. It is for benchmarks only; no binary imports it.
package benchenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/dtmux/dtmux/internal/testbin"
	"github.com/dtmux/dtmux/internal/tmuxserver"
	"github.com/dtmux/dtmux/internal/transport"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// BinPath returns one of the real binaries (testbin.Agent, Controller or
// CLI): from $DTMUX_BIN (as `make bench` sets it; a relative path is taken
// from the module root), else built once for this process by
// internal/testbin.
func BinPath(tb testing.TB, name string) string {
	tb.Helper()
	dir := os.Getenv("DTMUX_BIN")
	if dir == "" {
		return testbin.Path(tb, name)
	}
	if !filepath.IsAbs(dir) {
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "..", "..", dir)
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		tb.Fatalf("DTMUX_BIN: %v (run make build)", err)
	}
	return p
}

// Controller is a real dtmux-controller on the local provider in a
// private state dir, with one workspace whose agent it started.
type Controller struct {
	// Addr is the controller's address (unix://...), State its state
	// directory, Log its log file, WS the workspace's name.
	Addr, State, Log string
	WS               string
	// Conn reaches the controller; AgentConn the workspace's agent
	// directly.
	Conn      *grpc.ClientConn
	AgentConn *grpc.ClientConn
}

// StartController starts the controller, creates the workspace ws, and
// arranges for both (and the agent, and any tmux server of the agent) to
// stop at cleanup.
func StartController(b *testing.B, ws string) *Controller {
	b.Helper()
	state, err := os.MkdirTemp("", "dtb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(state) })
	// Runs after the controller and its agents stop: tmux sessions
	// outlive their agent by design, so their servers go here.
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := tmuxserver.KillUnder(ctx, state); err != nil {
			b.Errorf("stop the agent's tmux server: %v", err)
		}
	})
	c := &Controller{
		Addr:  "unix://" + filepath.Join(state, "controller.sock"),
		State: state,
		Log:   filepath.Join(state, "controller.log"),
		WS:    ws,
	}
	cmd := exec.Command(BinPath(b, testbin.Controller),
		"--state-dir", state, "--listen", c.Addr,
		"--agent-binary", BinPath(b, testbin.Agent),
		"--log-file", c.Log, "--log-level", "warn",
		"--stop-agents-on-exit")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		killRecordedAgents(state)
	})

	c.Conn = Dial(b, c.Addr)
	if err := WaitServing(c.Conn, exited); err != nil {
		b.Fatalf("controller: %v\n%s", err, c.ReadLog())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = controllerv1.NewWorkspaceServiceClient(c.Conn).CreateWorkspace(ctx, &controllerv1.CreateWorkspaceRequest{Name: c.WS})
	if err != nil {
		b.Fatalf("create workspace: %v\n%s", err, c.ReadLog())
	}
	c.AgentConn = Dial(b, "unix://"+filepath.Join(state, "workspaces", c.WS, "agent.sock"))
	return c
}

// ReadLog returns the controller's log so far.
func (c *Controller) ReadLog() string {
	out, _ := os.ReadFile(c.Log)
	return string(out)
}

// ViaController is an AgentService client routed by the controller.
func (c *Controller) ViaController() agentv1.AgentServiceClient {
	return agentv1.NewAgentServiceClient(Routed{c.Conn, c.WS})
}

// Direct is an AgentService client on the agent's own socket.
func (c *Controller) Direct() agentv1.AgentServiceClient {
	return agentv1.NewAgentServiceClient(c.AgentConn)
}

// CLIEnv is the environment of a CLI process talking to this controller.
func (c *Controller) CLIEnv() []string {
	return append(os.Environ(), "DTMUX_CONTROLLER="+c.Addr)
}

// Dial connects to addr (unix:// or tcp://) with the options every dtmux
// client uses, and closes the connection at cleanup.
func Dial(tb testing.TB, addr string) *grpc.ClientConn {
	tb.Helper()
	a, err := transport.ParseAddress(addr)
	if err != nil {
		tb.Fatal(err)
	}
	cc, err := transport.Dial(a, transport.DialConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cc.Close() })
	return cc
}

// WaitServing waits (up to 30 s) until cc answers health checks as
// SERVING, or fails early when exited closes.
func WaitServing(cc *grpc.ClientConn, exited chan struct{}) error {
	hc := healthpb.NewHealthClient(cc)
	var last error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-exited:
			return fmt.Errorf("exited")
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		last = err
	}
	return fmt.Errorf("not serving: %v", last)
}

// killRecordedAgents kills the process group of every agent the local
// provider recorded, in case the controller did not stop them.
func killRecordedAgents(state string) {
	pids, _ := filepath.Glob(filepath.Join(state, "workspaces", "*", "agent.pid"))
	for _, p := range pids {
		raw, _ := os.ReadFile(p)
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(raw))); pid > 0 {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// Routed adds the controller's routing metadata (the workspace WS) to
// every call on CC.
type Routed struct {
	CC *grpc.ClientConn
	WS string
}

// Invoke implements grpc.ClientConnInterface.
func (r Routed) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return r.CC.Invoke(metadata.AppendToOutgoingContext(ctx, "dtmux-workspace", r.WS), method, args, reply, opts...)
}

// NewStream implements grpc.ClientConnInterface.
func (r Routed) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return r.CC.NewStream(metadata.AppendToOutgoingContext(ctx, "dtmux-workspace", r.WS), desc, method, opts...)
}
