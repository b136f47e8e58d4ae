package remotebench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/dtmux/dtmux/agent/daemon"
	"github.com/dtmux/dtmux/internal/sshtest"
	"github.com/dtmux/dtmux/internal/testbin"
	"github.com/dtmux/dtmux/internal/tmuxserver"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// binDir is where the real binaries are: $DTMUX_BIN (as `make bench` sets
// it; a relative path is taken from the module root), else built once for
// this process by internal/testbin. The controller installs the agent
// from the same directory.
func binDir(b testing.TB) string {
	b.Helper()
	dir := os.Getenv("DTMUX_BIN")
	if dir == "" {
		return testbin.Dir(b)
	}
	if !filepath.IsAbs(dir) {
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "..", "..", dir)
	}
	for _, name := range []string{testbin.Controller, testbin.Agent} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			b.Fatalf("DTMUX_BIN: %v (run make build)", err)
		}
	}
	return dir
}

// remote is a real dtmux-controller with --provider ssh, its one host
// ("web1") on a private sshd on loopback.
type remote struct {
	srv  *sshtest.Server
	log  string
	conn *grpc.ClientConn
}

const wsName = "web1"

func startRemote(b *testing.B) *remote {
	b.Helper()
	srv := sshtest.Start(b, sshtest.Options{})
	// The agent daemon and its tmux server outlive the hop by design;
	// they go before the server's home does.
	remoteState := filepath.Join(srv.Home, ".local", "state", "dtmux-agent")
	b.Cleanup(func() {
		if err := daemon.Stop(remoteState, 15*time.Second); err != nil {
			b.Errorf("stop the remote agent: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := tmuxserver.KillUnder(ctx, remoteState); err != nil {
			b.Errorf("stop the remote agent's tmux server: %v", err)
		}
	})
	state, err := os.MkdirTemp("", "dtr")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(state) })
	q := func(ss []string) string { return `["` + strings.Join(ss, `","`) + `"]` }
	hosts := filepath.Join(state, "hosts.yaml")
	yaml := fmt.Sprintf("hosts:\n  - {name: %s, destination: %q, ssh_args: %s}\n", wsName, srv.Destination(), q(srv.Args()))
	if err := os.WriteFile(hosts, []byte(yaml), 0o600); err != nil {
		b.Fatal(err)
	}
	bin := binDir(b)
	r := &remote{srv: srv, log: filepath.Join(state, "controller.log")}
	addr := "unix://" + filepath.Join(state, "controller.sock")
	cmd := exec.Command(filepath.Join(bin, testbin.Controller),
		"--state-dir", state, "--listen", addr,
		"--provider", "ssh", "--hosts", hosts, "--agent-dir", bin,
		"--log-file", r.log, "--log-level", "warn")
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
	})
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	r.conn = cc
	if err := waitServing(cc, exited); err != nil {
		b.Fatalf("controller: %v\n%s", err, r.readLog())
	}
	return r
}

func (r *remote) readLog() string {
	out, _ := os.ReadFile(r.log)
	return string(out)
}

// agent is an AgentService client routed by the controller to web1.
func (r *remote) agent() agentv1.AgentServiceClient {
	return agentv1.NewAgentServiceClient(routed{r.conn, wsName})
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
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		last = err
	}
	return fmt.Errorf("not serving: %v", last)
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

// execRun runs argv with stdin at EOF and a spool of maxOutput bytes (0:
// the agent's default), reads the stream to its trailer, fails b unless
// the command exited 0, and returns the stdout bytes received.
func execRun(ctx context.Context, b testing.TB, c agentv1.AgentServiceClient, maxOutput uint64, argv ...string) (nOut uint64, tr *agentv1.RunTrailer) {
	b.Helper()
	st, err := c.Exec(ctx)
	if err != nil {
		b.Fatalf("exec %v: %v", argv, err)
	}
	es := &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: argv}}
	if maxOutput > 0 {
		es.Limits = &agentv1.RunLimits{MaxOutputBytes: maxOutput}
	}
	if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: es}}); err != nil && err != io.EOF {
		b.Fatalf("exec %v: send: %v", argv, err)
	}
	_ = st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_CloseStdin{CloseStdin: &agentv1.ExecStdinClose{}}})
	for {
		ev, err := st.Recv()
		if err != nil {
			b.Fatalf("exec %v: %v", argv, err)
		}
		switch e := ev.Event.(type) {
		case *agentv1.ExecResponse_Output:
			if e.Output.GetStream() == agentv1.Stream_STREAM_STDOUT {
				nOut += uint64(len(e.Output.GetData()))
			}
		case *agentv1.ExecResponse_Trailer:
			_ = st.CloseSend()
			if e.Trailer.GetReason() != agentv1.ExitReason_EXIT_REASON_EXITED || e.Trailer.GetExitCode() != 0 {
				b.Fatalf("exec %v: %v", argv, e.Trailer)
			}
			return nOut, e.Trailer
		}
	}
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

func (l latencies) report(b *testing.B) {
	b.ReportMetric(ms(l.p50()), "p50-ms")
	b.ReportMetric(ms(l.p99()), "p99-ms")
	b.ReportMetric(float64(len(l)), "samples")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// sample times f n times after warm calls.
func sample(n, warm int, f func()) latencies {
	for range warm {
		f()
	}
	out := make(latencies, 0, n)
	for range n {
		start := time.Now()
		f()
		out = append(out, time.Since(start))
	}
	return out
}
