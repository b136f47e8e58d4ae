// Package fleetbench measures fleet operations: `true` on 100 and 1000
// agents through the FleetService with a warm pool (wall time and the
// controller side's RSS), beside the same 100 commands as ssh to a
// loopback sshd run 50 at a time with xargs, with and without
// ControlMaster. Run with `go test -run '^$' -bench . ./bench/...`.
//
// The agents are real AgentService servers (package agent over the real
// run manager) on real unix sockets, all in one child process (the
// "farm"), so that this process holds only the controller side: the pool,
// the fleet engine and the FleetService.
package fleetbench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dtmux/dtmux/agent"
	"github.com/dtmux/dtmux/agent/process"
	"github.com/dtmux/dtmux/controller"
	"github.com/dtmux/dtmux/controller/pool"
	"github.com/dtmux/dtmux/controller/provider"
	"github.com/dtmux/dtmux/internal/rpcserver"
	"github.com/dtmux/dtmux/internal/sshtest"
	"github.com/dtmux/dtmux/internal/transport"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

const farmEnv = "DTMUX_BENCH_FLEET_FARM" // "DIR N": serve N agents in DIR

func TestMain(m *testing.M) {
	if v := os.Getenv(farmEnv); v != "" {
		os.Exit(farm(v))
	}
	os.Exit(m.Run())
}

func agentName(i int) string { return fmt.Sprintf("a%04d", i) }

// farm serves n agents on DIR/aNNNN.sock, prints "ready", and stops them
// when stdin closes.
func farm(v string) int {
	dir, ns, _ := strings.Cut(v, " ")
	n, err := strconv.Atoi(ns)
	if err != nil {
		fmt.Fprintln(os.Stderr, "farm:", err)
		return 2
	}
	type served struct {
		srv  *rpcserver.Server
		runs *process.Manager
		done chan struct{}
	}
	all := make([]served, 0, n)
	for i := range n {
		name := agentName(i)
		runs, err := process.NewManager(process.Config{
			StateDir:    filepath.Join(dir, "s", name),
			Workspace:   name,
			Workdir:     dir,
			LimitHelper: []string{"/nonexistent/helper"}, // no limits in this benchmark
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "farm:", err)
			return 1
		}
		srv := rpcserver.New(rpcserver.Config{Unix: true})
		agentv1.RegisterAgentServiceServer(srv.Server, agent.New(agent.Options{Runs: runs, Workspace: name, Workdir: dir}))
		srv.MarkServing()
		l, err := transport.Listen(transport.Address{Network: "unix", Addr: filepath.Join(dir, name+".sock")})
		if err != nil {
			fmt.Fprintln(os.Stderr, "farm:", err)
			return 1
		}
		s := served{srv: srv, runs: runs, done: make(chan struct{})}
		go func() { defer close(s.done); _ = srv.Serve(l) }()
		all = append(all, s)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, s := range all {
		s.srv.Stop()
		<-s.done
		_ = s.runs.Close()
	}
	return 0
}

// startFarm runs the farm child for n agents and returns the socket dir.
func startFarm(b *testing.B, n int) string {
	b.Helper()
	dir, err := os.MkdirTemp("", "dtb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d", farmEnv, dir, n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		b.Fatalf("farm did not start: %q %v", line, err)
	}
	return dir
}

// farmTargets is the provider side: every farm agent, started.
type farmProvider struct {
	provider.Provider // only List and Endpoint are used
	dir               string
	n                 int
}

func (p farmProvider) List(context.Context) ([]provider.Workspace, error) {
	ws := make([]provider.Workspace, p.n)
	for i := range ws {
		ws[i] = provider.Workspace{Name: agentName(i), State: provider.StateStarted}
	}
	return ws, nil
}

func (p farmProvider) Endpoint(_ context.Context, name string) (provider.Endpoint, error) {
	a := transport.Address{Network: "unix", Addr: filepath.Join(p.dir, name+".sock")}
	return provider.Endpoint{Address: a, Key: a.String()}, nil
}

func rssMiB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func BenchmarkFleetTrue(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("agents=%d", n), func(b *testing.B) { benchFleet(b, n) })
	}
}

func benchFleet(b *testing.B, n int) {
	dir := startFarm(b, n)
	prov := farmProvider{dir: dir, n: n}
	pl := pool.New(pool.Config{Resolve: prov.Endpoint, Logger: hclog.NewNullLogger()})
	b.Cleanup(func() { pl.Close() })

	// The controller's FleetService on a unix socket, called as the CLI does.
	srv := rpcserver.New(rpcserver.Config{})
	controllerv1.RegisterFleetServiceServer(srv.Server, controller.NewFleetService(controller.NewFleetEngine(prov, pl, hclog.NewNullLogger()), nil))
	sock := filepath.Join(dir, "ctl.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(l) }()
	b.Cleanup(func() { srv.Stop(); <-served })
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	fc := controllerv1.NewFleetServiceClient(cc)

	ctx := context.Background()
	// Warm the pool: one connection per agent, dialled with the pool's bound.
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := pl.Conn(ctx, agentName(i)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	parallel := uint32(min(n, 256))
	run := func() time.Duration {
		start := time.Now()
		st, err := fc.FleetExec(ctx, &controllerv1.FleetExecRequest{
			Selector:    &controllerv1.Selector{All: true},
			Command:     &agentv1.CommandSpec{Argv: []string{"true"}},
			MaxParallel: parallel,
		})
		if err != nil {
			b.Fatal(err)
		}
		for {
			m, err := st.Recv()
			if err != nil {
				b.Fatal(err)
			}
			if s := m.GetEvent().GetSummary(); s != nil {
				if s.GetSucceeded() != uint32(n) {
					b.Fatalf("summary %v", s)
				}
				return time.Since(start)
			}
		}
	}
	run() // warm-up: the agents' first runs
	b.ResetTimer()
	var total time.Duration
	for range b.N {
		total += run()
	}
	b.StopTimer()
	wall := total / time.Duration(b.N)
	b.ReportMetric(wall.Seconds(), "s/fleet")
	b.ReportMetric(rssMiB(), "controller-RSS-MiB")
	b.ReportMetric(float64(parallel), "max-parallel")
	b.Logf("fleet `true` on %d agents, max-parallel %d: %v wall (target for 1000: <= 2s); controller-side RSS %.1f MiB", n, parallel, wall, rssMiB())
}

// BenchmarkSSHXargs is the baseline: 100 × `ssh host true`, 50 at a time.
func BenchmarkSSHXargs(b *testing.B) {
	if _, err := exec.LookPath("xargs"); err != nil {
		b.Skip("xargs not installed")
	}
	s := sshtest.Start(b, sshtest.Options{})
	base := strings.Join(append(s.Args(), "-o", "ConnectTimeout=30"), " ")
	bench := func(b *testing.B, sshOpts string) {
		cmdline := fmt.Sprintf("seq 100 | xargs -P 50 -I{} ssh %s %s %s true", base, sshOpts, s.Destination())
		var total time.Duration
		for range b.N {
			start := time.Now()
			out, err := exec.Command("sh", "-c", cmdline).CombinedOutput()
			if err != nil {
				b.Fatalf("%v\n%s", err, out)
			}
			total += time.Since(start)
		}
		wall := total / time.Duration(b.N)
		b.ReportMetric(wall.Seconds(), "s/fleet")
		b.Logf("100 x ssh true, xargs -P 50 %s: %v wall", sshOpts, wall)
	}
	b.Run("new-connection", func(b *testing.B) { bench(b, "-o ControlMaster=no -o ControlPath=none") })
	b.Run("controlmaster", func(b *testing.B) {
		cp := filepath.Join(s.Dir, "cm")
		master := exec.Command("ssh", append(s.Args(), "-M", "-N", "-o", "ControlPath="+cp, s.Destination())...)
		if err := master.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { master.Process.Kill(); master.Wait() })
		for i := 0; ; i++ {
			if exec.Command("ssh", append(s.Args(), "-o", "ControlPath="+cp, "-O", "check", s.Destination())...).Run() == nil {
				break
			}
			if i > 500 {
				b.Fatal("ControlMaster did not come up")
			}
			time.Sleep(20 * time.Millisecond)
		}
		bench(b, "-o ControlMaster=no -o ControlPath="+cp)
	})
}
