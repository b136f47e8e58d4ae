package remotebench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/dtmux/dtmux/agent/daemon"
	"github.com/dtmux/dtmux/internal/benchenv"
	"github.com/dtmux/dtmux/internal/sshtest"
	"github.com/dtmux/dtmux/internal/testbin"
	"github.com/dtmux/dtmux/internal/tmuxserver"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// latencies and ms come from the shared harness in internal/benchenv.
type latencies = benchenv.Latencies

var ms = benchenv.MS

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
	// Connected as the CLI connects (internal/transport).
	cc := benchenv.Dial(b, addr)
	r.conn = cc
	if err := benchenv.WaitServing(cc, exited); err != nil {
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
	return agentv1.NewAgentServiceClient(benchenv.Routed{CC: r.conn, WS: wsName})
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
	// Nothing to send: stdin is /dev/null from the start (as ssh -n).
	es := &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: argv}, NoStdin: true}
	if maxOutput > 0 {
		es.Limits = &agentv1.RunLimits{MaxOutputBytes: maxOutput}
	}
	if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: es}}); err != nil && err != io.EOF {
		b.Fatalf("exec %v: send: %v", argv, err)
	}
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
