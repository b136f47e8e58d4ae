// Package remotebench measures dtmux over an ssh hop (issue 4) beside
// plain ssh to the same private sshd on loopback, in one run:
// Exec(`true`) p50/p99 through the controller with --provider ssh, beside
// `ssh host true` with a new connection and over a ControlMaster; and
// 1 GiB of output through the hop beside `ssh host head -c 1G /dev/zero`.
// dtmux and ssh are measured in alternating rounds (see rounds).
//
// Run with `make bench`, or after `make build`:
//
//	DTMUX_BIN=$PWD/bin go test -run '^$' -bench . -benchtime 1x ./bench/remote/
//
// It needs /usr/sbin/sshd (skipped without it).
package remotebench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dtmux/dtmux/internal/benchenv"
	"github.com/dtmux/dtmux/internal/sshtest"
	"github.com/dtmux/dtmux/internal/testbin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// Sample sizes. The dtmux and ssh figures are taken in alternating
// rounds, so that the machine's drift (on a small VM it moves more than
// the difference being measured) falls on both sides of each ratio; each
// round gives a ratio, and the verdict is on their median.
const (
	rounds      = 5
	apiIters    = 40 // Exec calls over the hop, per round
	masterIters = 10 // ssh over a ControlMaster, per round
	newIters    = 20 // ssh over a new connection (~0.2 s each), once
	tputRounds  = 3  // 1 GiB through each, per round
	gib         = 1 << 30
)

type results struct {
	execHop, sshNew, sshMaster latencies
	latRatios                  []float64 // ControlMaster p50 / Exec p50, per round
	tputHop, tputSSH           []float64 // bytes/s, per round
}

func BenchmarkRemote(b *testing.B) {
	if _, err := os.Stat(sshtest.SSHD); err != nil {
		b.Skipf("%s not installed", sshtest.SSHD)
	}
	r := startRemote(b)
	ctx := context.Background()
	ag := r.agent()
	var res results

	// The first call bootstraps (installs the agent, opens the hop); it
	// is not measured.
	start := time.Now()
	execRun(ctx, b, ag, 0, "true")
	b.Logf("first call (bootstrap and hop): %.0f ms", ms(time.Since(start)))

	b.Run("exec-true-over-ssh-hop-vs-controlmaster", func(b *testing.B) {
		cp := startMaster(b, r.srv)
		args := append(r.srv.Args(), "-o", "ControlMaster=no", "-o", "ControlPath="+cp, r.srv.Destination(), "true")
		for range b.N {
			res.execHop, res.sshMaster, res.latRatios = nil, nil, nil
			for range rounds {
				hop := benchenv.Sample(apiIters, 5, func() { execRun(ctx, b, ag, 0, "true") })
				cm := benchenv.Sample(masterIters, 1, func() { runSSH(b, args) })
				res.execHop = append(res.execHop, hop...)
				res.sshMaster = append(res.sshMaster, cm...)
				res.latRatios = append(res.latRatios, float64(cm.P50())/float64(hop.P50()))
			}
		}
		res.execHop.Report(b)
		b.ReportMetric(benchenv.Median(res.latRatios), "x-controlmaster")
	})
	b.Run("ssh-true-new-connection", func(b *testing.B) {
		args := append(r.srv.Args(), "-o", "ControlMaster=no", "-o", "ControlPath=none", r.srv.Destination(), "true")
		for range b.N {
			res.sshNew = benchenv.Sample(newIters, 2, func() { runSSH(b, args) })
		}
		res.sshNew.Report(b)
	})
	b.Run("1GiB-over-ssh-hop-vs-ssh", func(b *testing.B) {
		args := append(r.srv.Args(), "-o", "ControlMaster=no", "-o", "ControlPath=none", r.srv.Destination(), "head", "-c", "1G", "/dev/zero")
		for range b.N {
			res.tputHop, res.tputSSH = nil, nil
			for range tputRounds {
				t0 := time.Now()
				n, tr := execRun(ctx, b, ag, 0, "head", "-c", "1G", "/dev/zero")
				d := time.Since(t0)
				if n != gib || tr.GetStdoutBytes() != gib {
					b.Fatalf("received %d bytes, trailer says %d; want %d", n, tr.GetStdoutBytes(), gib)
				}
				res.tputHop = append(res.tputHop, gib/d.Seconds())
				res.tputSSH = append(res.tputSSH, benchenv.PipeThroughput(b, exec.Command("ssh", args...), gib))
			}
		}
		b.ReportMetric(benchenv.Median(res.tputHop)/1e9, "GB/s")
		b.ReportMetric(benchenv.Median(ratios(res.tputHop, res.tputSSH)), "x-ssh")
	})
	table(b, &res)
}

// ratios are a[i]/b[i].
func ratios(a, b []float64) []float64 {
	out := make([]float64, min(len(a), len(b)))
	for i := range out {
		out[i] = a[i] / b[i]
	}
	return out
}

func runSSH(b *testing.B, args []string) {
	if out, err := exec.Command("ssh", args...).CombinedOutput(); err != nil {
		b.Fatalf("ssh: %v\n%s", err, out)
	}
}

// startMaster starts a ControlMaster to s and returns its ControlPath.
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

// table prints the figures of this run side by side, with the ratios the
// issue sets targets for: the median of the rounds' ratios, and their
// spread.
func table(b *testing.B, r *results) {
	var sb strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&sb, format+"\n", a...) }
	lat := func(name string, l latencies) {
		if len(l) > 0 {
			w("  %-40s p50 %8.3f ms   p99 %8.3f ms  (n=%d)", name, ms(l.P50()), ms(l.P99()), len(l))
		}
	}
	spread := func(xs []float64) string {
		if len(xs) == 0 {
			return ""
		}
		return fmt.Sprintf("%.2f-%.2f", slices.Min(xs), slices.Max(xs))
	}
	w("")
	w("dtmux over an ssh hop (same private sshd on loopback, one run; dtmux and ssh in alternating rounds)")
	lat("Exec(true) via controller over the hop", r.execHop)
	lat("ssh host true, ControlMaster", r.sshMaster)
	lat("ssh host true, new connection", r.sshNew)
	if len(r.tputHop) > 0 {
		w("  %-40s %6.2f GB/s  (median of %d; %s)", "head -c 1G via controller over the hop", benchenv.Median(r.tputHop)/1e9, len(r.tputHop), spread(scale(r.tputHop, 1e-9)))
		w("  %-40s %6.2f GB/s  (median of %d; %s)", "ssh host head -c 1G", benchenv.Median(r.tputSSH)/1e9, len(r.tputSSH), spread(scale(r.tputSSH, 1e-9)))
	}
	if x := benchenv.Median(r.latRatios); x > 0 {
		w("  Exec(true) p50 is %.2fx faster than ssh ControlMaster (median of %d rounds; %s) (target >= 5x): %s", x, len(r.latRatios), spread(r.latRatios), verdict(x >= 5))
	}
	if len(r.execHop) > 0 && len(r.sshNew) > 0 {
		w("  Exec(true) p50 is %.1fx faster than ssh new connection", float64(r.sshNew.P50())/float64(r.execHop.P50()))
	}
	if rs := ratios(r.tputHop, r.tputSSH); len(rs) > 0 {
		w("  output over the hop is %.2fx plain ssh (median of %d rounds; %s) (target >= 1x): %s", benchenv.Median(rs), len(rs), spread(rs), verdict(benchenv.Median(rs) >= 1))
	}
	fmt.Print(sb.String())
	b.Log(sb.String())
}

func scale(xs []float64, f float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = x * f
	}
	return out
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
