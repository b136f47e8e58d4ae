package sessionbench

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
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
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// binPath returns one of the real binaries: from $DTMUX_BIN (as `make
// bench` sets it; a relative path is taken from the module root), else
// built once for this process by internal/testbin.
func binPath(b testing.TB, name string) string {
	b.Helper()
	dir := os.Getenv("DTMUX_BIN")
	if dir == "" {
		return testbin.Path(b, name)
	}
	if !filepath.IsAbs(dir) {
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "..", "..", dir)
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		b.Fatalf("DTMUX_BIN: %v (run make build)", err)
	}
	return p
}

// controller is a real dtmux-controller on the local provider in a
// private state dir, with one workspace whose agent it started.
type controller struct {
	addr, state, log string
	ws               string
	conn             *grpc.ClientConn // to the controller
	agentConn        *grpc.ClientConn // straight to the workspace's agent
}

const wsName = "sbench"

// startController starts the controller, creates the workspace, and
// arranges for both (and the agent) to stop at cleanup.
func startController(b *testing.B) *controller {
	b.Helper()
	state, err := os.MkdirTemp("", "dtb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(state) })
	// Runs after the controller and its agents stop: tmux sessions
	// outlive their agent by design, so their servers go here.
	b.Cleanup(func() { killTmuxServers(state) })
	c := &controller{
		addr:  "unix://" + filepath.Join(state, "controller.sock"),
		state: state,
		log:   filepath.Join(state, "controller.log"),
		ws:    wsName,
	}
	cmd := exec.Command(binPath(b, testbin.Controller),
		"--state-dir", state, "--listen", c.addr,
		"--agent-binary", binPath(b, testbin.Agent),
		"--log-file", c.log, "--log-level", "warn",
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

	c.conn = dial(b, c.addr)
	if err := waitServing(c.conn, exited); err != nil {
		b.Fatalf("controller: %v\n%s", err, c.readLog())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = controllerv1.NewWorkspaceServiceClient(c.conn).CreateWorkspace(ctx, &controllerv1.CreateWorkspaceRequest{Name: c.ws})
	if err != nil {
		b.Fatalf("create workspace: %v\n%s", err, c.readLog())
	}
	c.agentConn = dial(b, "unix://"+filepath.Join(state, "workspaces", c.ws, "agent.sock"))
	return c
}

func (c *controller) readLog() string {
	out, _ := os.ReadFile(c.log)
	return string(out)
}

// viaController is an AgentService client routed by the controller.
func (c *controller) viaController() agentv1.AgentServiceClient {
	return agentv1.NewAgentServiceClient(routed{c.conn, c.ws})
}

// direct is an AgentService client on the agent's own socket.
func (c *controller) direct() agentv1.AgentServiceClient {
	return agentv1.NewAgentServiceClient(c.agentConn)
}

// cliEnv is the environment of a CLI process talking to this controller.
func (c *controller) cliEnv() []string {
	return append(os.Environ(), "DTMUX_CONTROLLER="+c.addr)
}

func dial(b *testing.B, addr string) *grpc.ClientConn {
	b.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	return cc
}

func waitServing(cc *grpc.ClientConn, exited chan struct{}) error {
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

// killTmuxServers stops every agent's private tmux server under state
// (a socket named tmux.sock, as agent/tmux places it).
func killTmuxServers(state string) {
	_ = filepath.WalkDir(state, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.Name() != "tmux.sock" || d.Type()&fs.ModeSocket == 0 {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = exec.CommandContext(ctx, "tmux", "-S", path, "kill-server").Run()
		return nil
	})
}

// routed adds the controller's routing metadata to every call.
type routed struct {
	cc *grpc.ClientConn
	ws string
}

func (r routed) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return r.cc.Invoke(metadata.AppendToOutgoingContext(ctx, "dtmux-workspace", r.ws), method, args, reply, opts...)
}

func (r routed) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return r.cc.NewStream(metadata.AppendToOutgoingContext(ctx, "dtmux-workspace", r.ws), desc, method, opts...)
}

// latencies is a sample of durations.
type latencies []time.Duration

func (l latencies) pct(p int) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := append(latencies(nil), l...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100 // nearest rank
	return s[min(max(i-1, 0), len(s)-1)]
}

func (l latencies) p50() time.Duration { return l.pct(50) }
func (l latencies) p99() time.Duration { return l.pct(99) }

// report sets p50/p99 metrics on b.
func (l latencies) report(b *testing.B) {
	b.ReportMetric(ms(l.p50()), "p50-ms")
	b.ReportMetric(ms(l.p99()), "p99-ms")
	b.ReportMetric(float64(len(l)), "samples")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func numCPU() int { return runtime.NumCPU() }

// hostDesc names the machine's CPU model and the OS, for the table.
func hostDesc() string {
	model := runtime.GOARCH
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return runtime.GOOS + ", " + model
}
