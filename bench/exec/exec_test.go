// Package execbench measures running commands through dtmux beside the
// floors and the ssh baselines, in one run: Exec(`true`) through the
// controller and straight to the agent, the local fork/exec floor, the
// whole `dtmux exec WS -- true` CLI process, first-output-byte and
// stdin-to-output latency, and 1 GiB of output; and, when /usr/sbin/sshd
// is installed, `ssh host true` over a new connection and over a
// ControlMaster, and `ssh host head -c 1G /dev/zero`, against a private
// sshd on loopback that the benchmark starts itself (internal/sshtest).
//
// Run with `make bench`, or after `make build`:
//
//	DTMUX_BIN=$PWD/bin go test -run '^$' -bench . -benchtime 1x ./bench/exec/
//
// Without DTMUX_BIN the binaries are built from this tree. The table at
// the end compares the figures with the project's targets.
package execbench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dtmux/dtmux/internal/benchenv"
	"github.com/dtmux/dtmux/internal/sshtest"
	"github.com/dtmux/dtmux/internal/testbin"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// Sample sizes.
const (
	apiIters = 200 // API calls, local fork/exec
	cliIters = 50  // whole CLI processes, ssh over a ControlMaster
	sshIters = 20  // ssh over a new connection (~0.2 s each)
	warmup   = 10
	gib      = 1 << 30
)

// results collects the figures of one run for the table.
type results struct {
	floor, unaryCtl, execCtl, execAgent, cli latencies
	execCtlStarted, execCtlProc              latencies // parts of execCtl
	firstByte, echoCtl, echoAgent            latencies
	sshNew, sshMaster                        latencies
	tputCtl, tputAgent, tputLocal, tputSSH   float64 // bytes/s
	tputCtlBigSpool                          float64 // bytes/s with a spool that holds it all
	chunkCtl, chunkAgent                     float64 // mean bytes per output event
	// The ratios the targets are about, from rounds in which dtmux and
	// ssh alternate (see sshBaselines): ControlMaster p50 / Exec(true)
	// p50, and throughput via the controller / ssh's, per round.
	latRatios, tputRatios []float64
}

// Rounds of the interleaved comparisons.
const (
	rounds      = 5
	roundAPI    = 40 // Exec calls per round
	roundMaster = 10 // ssh over a ControlMaster per round
	tputRounds  = 3
)

func BenchmarkExec(b *testing.B) {
	c := benchenv.StartController(b, wsName)
	var r results
	ctx := context.Background()

	b.Run("local-fork-exec-true", func(b *testing.B) {
		for range b.N {
			r.floor = sample(b, apiIters, func() {
				if err := exec.Command("true").Run(); err != nil {
					b.Fatal(err)
				}
			})
		}
		r.floor.Report(b)
	})
	b.Run("grpc-unary-via-controller", func(b *testing.B) {
		ag := c.ViaController()
		for range b.N {
			r.unaryCtl = sample(b, apiIters, func() {
				if _, err := ag.GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{}); err != nil {
					b.Fatal(err)
				}
			})
		}
		r.unaryCtl.Report(b)
	})
	b.Run("exec-true-via-controller", func(b *testing.B) {
		ag := c.ViaController()
		for range b.N {
			r.execCtl, r.execCtlStarted, r.execCtlProc = execTrue(ctx, b, ag)
		}
		r.execCtl.Report(b)
	})
	b.Run("exec-true-direct-to-agent", func(b *testing.B) {
		ag := c.Direct()
		for range b.N {
			r.execAgent, _, _ = execTrue(ctx, b, ag)
		}
		r.execAgent.Report(b)
	})
	b.Run("cli-dtmux-exec-true", func(b *testing.B) {
		cli := benchenv.BinPath(b, testbin.CLI)
		env := c.CLIEnv()
		for range b.N {
			r.cli = sampleN(b, cliIters, 3, func() {
				cmd := exec.Command(cli, "exec", c.WS, "--", "true")
				cmd.Env = env
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("dtmux exec: %v\n%s", err, out)
				}
			})
		}
		r.cli.Report(b)
	})
	b.Run("first-output-byte-via-controller", func(b *testing.B) {
		ag := c.ViaController()
		for range b.N {
			r.firstByte = firstByte(ctx, b, ag)
		}
		r.firstByte.Report(b)
	})
	b.Run("stdin-to-output-via-controller", func(b *testing.B) {
		for range b.N {
			r.echoCtl = echo(ctx, b, c.ViaController())
		}
		r.echoCtl.Report(b)
	})
	b.Run("stdin-to-output-direct-to-agent", func(b *testing.B) {
		for range b.N {
			r.echoAgent = echo(ctx, b, c.Direct())
		}
		r.echoAgent.Report(b)
	})
	b.Run("1GiB-via-controller", func(b *testing.B) {
		for range b.N {
			r.tputCtl, r.chunkCtl = throughput(ctx, b, c.ViaController(), 0)
		}
		b.ReportMetric(r.tputCtl/1e9, "GB/s")
		b.ReportMetric(r.chunkCtl/1024, "KiB/event")
	})
	b.Run("1GiB-via-controller-1GiB-spool", func(b *testing.B) {
		for range b.N {
			r.tputCtlBigSpool, _ = throughput(ctx, b, c.ViaController(), gib)
		}
		b.ReportMetric(r.tputCtlBigSpool/1e9, "GB/s")
	})
	b.Run("1GiB-direct-to-agent", func(b *testing.B) {
		for range b.N {
			r.tputAgent, r.chunkAgent = throughput(ctx, b, c.Direct(), 0)
		}
		b.ReportMetric(r.tputAgent/1e9, "GB/s")
		b.ReportMetric(r.chunkAgent/1024, "KiB/event")
	})
	b.Run("1GiB-local-pipe", func(b *testing.B) {
		for range b.N {
			r.tputLocal = benchenv.PipeThroughput(b, exec.Command("head", "-c", "1G", "/dev/zero"), gib)
		}
		b.ReportMetric(r.tputLocal/1e9, "GB/s")
	})
	sshBaselines(ctx, b, c, &r)

	table(b, &r)
}

// sample times f n times after a warm-up.
func sample(b *testing.B, n int, f func()) latencies { return sampleN(b, n, warmup, f) }

func sampleN(b *testing.B, n, warm int, f func()) latencies {
	b.Helper()
	return benchenv.Sample(n, warm, f)
}

// firstByte runs `date +%s%N`, which prints the wall clock just before it
// writes, and takes the time until that output reaches the client: the
// latency from a process's write to the API client (same host, same
// clock).
func firstByte(ctx context.Context, b *testing.B, ag agentv1.AgentServiceClient) latencies {
	b.Helper()
	var out latencies
	for i := range apiIters + warmup {
		var seen time.Time
		r := execRun(ctx, b, ag, execOpts{keep: true, onOutput: func([]byte) {
			if seen.IsZero() {
				seen = time.Now()
			}
		}}, "date", "+%s%N")
		ns, err := strconv.ParseInt(strings.TrimSpace(string(r.stdout)), 10, 64)
		if err != nil {
			b.Fatalf("date printed %q: %v", r.stdout, err)
		}
		if i >= warmup {
			out = append(out, seen.Sub(time.Unix(0, ns)))
		}
	}
	return out
}

// echo keeps one `cat` running and times, for each line sent on stdin,
// the wait until it comes back on stdout: client → agent → process →
// client, as when typing into a remote program.
func echo(ctx context.Context, b *testing.B, ag agentv1.AgentServiceClient) latencies {
	b.Helper()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := ag.Exec(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"cat"}}}}}); err != nil {
		b.Fatal(err)
	}
	var out latencies
	for i := range apiIters + warmup {
		line := fmt.Sprintf("line %d\n", i)
		start := time.Now()
		if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Stdin{Stdin: []byte(line)}}); err != nil {
			b.Fatal(err)
		}
		var got []byte
		for len(got) < len(line) {
			ev, err := st.Recv()
			if err != nil {
				b.Fatal(err)
			}
			if o := ev.GetOutput(); o != nil {
				got = append(got, o.GetData()...)
			}
			if t := ev.GetTrailer(); t != nil {
				b.Fatalf("cat ended early: %v", t)
			}
		}
		if string(got) != line {
			b.Fatalf("echoed %q, want %q", got, line)
		}
		if i >= warmup {
			out = append(out, time.Since(start))
		}
	}
	if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_CloseStdin{CloseStdin: &agentv1.ExecStdinClose{}}}); err != nil {
		b.Fatal(err)
	}
	for {
		ev, err := st.Recv()
		if err != nil {
			b.Fatal(err)
		}
		if t := ev.GetTrailer(); t != nil {
			if t.GetExitCode() != 0 {
				b.Fatalf("cat: %v", t)
			}
			return out
		}
	}
}

// execTrue times Exec(`true`) calls: the whole call, the part until the
// agent reported the process started, and the process's lifetime as the
// agent measured it (the trailer's duration).
func execTrue(ctx context.Context, b *testing.B, ag agentv1.AgentServiceClient) (total, started, proc latencies) {
	b.Helper()
	for range warmup {
		execRun(ctx, b, ag, execOpts{}, "true")
	}
	for range apiIters {
		t0 := time.Now()
		r := execRun(ctx, b, ag, execOpts{}, "true")
		total = append(total, time.Since(t0))
		if !r.started.IsZero() {
			started = append(started, r.started.Sub(t0))
		}
		proc = append(proc, r.trailer.GetDuration().AsDuration())
	}
	return total, started, proc
}

// throughput moves 1 GiB of zeros from `head` to the client and returns
// bytes per second; it fails when a byte is missing. spool is the run's
// spool size per stream (0: the agent's default, 64 MiB). The Exec stream
// owns its run, so the default spool loses nothing either: the process
// waits for the client. A spool that holds all of it costs 1 GiB of fresh
// page cache per run.
func throughput(ctx context.Context, b *testing.B, ag agentv1.AgentServiceClient, spool uint64) (bytesPerSec, avgEvent float64) {
	b.Helper()
	start := time.Now()
	r := execRun(ctx, b, ag, execOpts{maxOutput: spool}, "head", "-c", "1G", "/dev/zero")
	d := time.Since(start)
	if r.nOut != gib || r.gaps != 0 || r.trailer.GetStdoutBytes() != gib {
		b.Fatalf("received %d bytes (%d lost in gaps), trailer says %d; want %d", r.nOut, r.gaps, r.trailer.GetStdoutBytes(), gib)
	}
	return gib / d.Seconds(), gib / float64(r.events)
}

// sshBaselines measures ssh against a private sshd on loopback, or notes
// why not.
func sshBaselines(ctx context.Context, b *testing.B, c *benchenv.Controller, r *results) {
	if _, err := os.Stat(sshtest.SSHD); err != nil {
		b.Logf("ssh baselines skipped: %s not installed", sshtest.SSHD)
		return
	}
	b.Run("ssh-true-new-connection", func(b *testing.B) {
		s := sshtest.Start(b, sshtest.Options{})
		args := append(s.Args(), "-o", "ControlMaster=no", "-o", "ControlPath=none", s.Destination(), "true")
		for range b.N {
			r.sshNew = sampleN(b, sshIters, 2, func() {
				if out, err := exec.Command("ssh", args...).CombinedOutput(); err != nil {
					b.Fatalf("ssh: %v\n%s", err, out)
				}
			})
		}
		r.sshNew.Report(b)
	})
	b.Run("ssh-true-controlmaster", func(b *testing.B) {
		s := sshtest.Start(b, sshtest.Options{})
		cp := startMaster(b, s)
		args := append(s.Args(), "-o", "ControlMaster=no", "-o", "ControlPath="+cp, s.Destination(), "true")
		for range b.N {
			r.sshMaster = sampleN(b, cliIters, 3, func() {
				if out, err := exec.Command("ssh", args...).CombinedOutput(); err != nil {
					b.Fatalf("ssh: %v\n%s", err, out)
				}
			})
		}
		r.sshMaster.Report(b)

		// The machine's speed drifts between sub-benchmarks by more than
		// the differences measured: the target's ratio comes from rounds
		// in which both sides alternate.
		ag := c.ViaController()
		for range b.N {
			r.latRatios = nil
			for range rounds {
				d := sampleN(b, roundAPI, 5, func() { execRun(ctx, b, ag, execOpts{}, "true") })
				m := sampleN(b, roundMaster, 1, func() {
					if out, err := exec.Command("ssh", args...).CombinedOutput(); err != nil {
						b.Fatalf("ssh: %v\n%s", err, out)
					}
				})
				r.latRatios = append(r.latRatios, float64(m.P50())/float64(d.P50()))
			}
		}
		b.ReportMetric(benchenv.Median(r.latRatios), "x-controlmaster-rounds")
	})
	b.Run("ssh-1GiB", func(b *testing.B) {
		s := sshtest.Start(b, sshtest.Options{})
		args := append(s.Args(), "-o", "ControlMaster=no", "-o", "ControlPath=none", s.Destination(), "head", "-c", "1G", "/dev/zero")
		for range b.N {
			r.tputSSH = benchenv.PipeThroughput(b, exec.Command("ssh", args...), gib)
			r.tputRatios = nil
			for range tputRounds {
				d, _ := throughput(ctx, b, c.ViaController(), 0)
				r.tputRatios = append(r.tputRatios, d/benchenv.PipeThroughput(b, exec.Command("ssh", args...), gib))
			}
		}
		b.ReportMetric(r.tputSSH/1e9, "GB/s")
		b.ReportMetric(benchenv.Median(r.tputRatios), "x-ssh-rounds")
	})
}

// startMaster starts a ControlMaster for s and returns its ControlPath.
func startMaster(b *testing.B, s *sshtest.Server) string {
	b.Helper()
	cp := filepath.Join(s.Dir, "cm")
	master := exec.Command("ssh", append(s.Args(), "-M", "-N", "-o", "ControlPath="+cp, s.Destination())...)
	if err := master.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { master.Process.Kill(); master.Wait() })
	for i := 0; ; i++ {
		if exec.Command("ssh", append(s.Args(), "-o", "ControlPath="+cp, "-O", "check", s.Destination())...).Run() == nil {
			return cp
		}
		if i > 500 {
			b.Fatal("ControlMaster did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// table prints every figure measured in this run beside its baseline and
// the target.
func table(b *testing.B, r *results) {
	var sb strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&sb, format+"\n", a...) }
	lat := func(name string, l latencies, note string) {
		if len(l) == 0 {
			return
		}
		w("  %-44s p50 %8.3f ms   p99 %8.3f ms  (n=%d)  %s", name, ms(l.P50()), ms(l.P99()), len(l), note)
	}
	tput := func(name string, v float64, note string) {
		if v == 0 {
			return
		}
		w("  %-44s %6.2f GB/s  %s", name, v/1e9, note)
	}
	w("")
	w("dtmux exec benchmark (%s, %d CPUs)", benchenv.HostDesc(), benchenv.NumCPU())
	w("latency:")
	lat("local fork/exec `true` from Go (floor)", r.floor, "")
	lat("gRPC unary via controller (GetAgentInfo)", r.unaryCtl, "")
	lat("Exec(true) direct to agent", r.execAgent, "")
	lat("Exec(true) via controller", r.execCtl, "")
	lat("  of which: call -> started event", r.execCtlStarted, "")
	lat("  process lifetime, agent's view (trailer)", r.execCtlProc, "")
	lat("dtmux exec WS -- true (whole CLI)", r.cli, "")
	lat("ssh host true, new connection", r.sshNew, "")
	lat("ssh host true, ControlMaster", r.sshMaster, "")
	lat("first output byte, process write -> client", r.firstByte, "(via controller)")
	lat("stdin -> cat -> stdout, via controller", r.echoCtl, "")
	lat("stdin -> cat -> stdout, direct to agent", r.echoAgent, "")
	w("throughput (1 GiB of zeros):")
	tput("head -c 1G via controller", r.tputCtl, fmt.Sprintf("(%.0f KiB per output event)", r.chunkCtl/1024))
	tput("head -c 1G direct to agent", r.tputAgent, fmt.Sprintf("(%.0f KiB per output event)", r.chunkAgent/1024))
	tput("head -c 1G local pipe (floor)", r.tputLocal, "")
	tput("head -c 1G via controller, 1 GiB spool", r.tputCtlBigSpool, "(the spool keeps all of it)")
	tput("ssh host head -c 1G (after the handshake)", r.tputSSH, "")
	w("against the targets:")
	if len(r.execCtl) > 0 && len(r.floor) > 0 {
		over := r.execCtl.P50() - r.floor.P50()
		w("  Exec(true) via controller p50 %.2f ms = floor + %.2f ms (target <= +1 ms): %s", ms(r.execCtl.P50()), ms(over), verdict(over <= time.Millisecond))
	}
	if len(r.latRatios) > 0 {
		x := benchenv.Median(r.latRatios)
		w("  Exec(true) via controller is %.2fx faster than ssh ControlMaster (median of %d alternating rounds; %.2f-%.2f) (target >= 5x): %s",
			x, len(r.latRatios), slices.Min(r.latRatios), slices.Max(r.latRatios), verdict(x >= 5))
	}
	if len(r.cli) > 0 && len(r.sshNew) > 0 {
		x := float64(r.sshNew.P50()) / float64(r.cli.P50())
		w("  dtmux exec CLI p50 %.2f ms = %.1fx faster than ssh new connection %.2f ms (target >= 20x): %s", ms(r.cli.P50()), x, ms(r.sshNew.P50()), verdict(x >= 20))
	}
	if len(r.cli) > 0 && len(r.sshMaster) > 0 {
		w("  dtmux exec CLI p50 %.2f ms vs ssh ControlMaster %.2f ms: %s (no target; for reference)", ms(r.cli.P50()), ms(r.sshMaster.P50()), faster("dtmux", r.cli.P50(), "ssh", r.sshMaster.P50()))
	}
	if len(r.firstByte) > 0 {
		w("  first output byte p50 %.3f ms (target <= 2 ms; polling capture-pane every 0.5 s: ~500 ms = %.0fx slower): %s",
			ms(r.firstByte.P50()), 500/ms(r.firstByte.P50()), verdict(r.firstByte.P50() <= 2*time.Millisecond))
	}
	if len(r.tputRatios) > 0 {
		x := benchenv.Median(r.tputRatios)
		w("  output via controller is %.2fx ssh (median of %d alternating rounds; %.2f-%.2f) (target >= 1.5x): %s",
			x, len(r.tputRatios), slices.Min(r.tputRatios), slices.Max(r.tputRatios), verdict(x >= 1.5))
	}
	fmt.Print(sb.String())
	b.Log(sb.String())
}

// faster says which of two durations is shorter, and by what factor.
func faster(aName string, a time.Duration, bName string, b time.Duration) string {
	if a <= b {
		return fmt.Sprintf("%s %.1fx faster", aName, float64(b)/float64(a))
	}
	return fmt.Sprintf("%s %.1fx faster", bName, float64(a)/float64(b))
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
