// Package remotebench measures dtmux over an ssh hop (issue 4) beside
// plain ssh to the same private sshd on loopback, in one run:
// Exec(`true`) p50/p99 through the controller with --provider ssh, beside
// `ssh host true` with a new connection and over a ControlMaster; and
// 1 GiB of output through the hop beside `ssh host head -c 1G /dev/zero`.
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

// Sample sizes.
const (
	apiIters    = 200 // Exec calls over the hop
	masterIters = 50  // ssh over a ControlMaster
	newIters    = 20  // ssh over a new connection (~0.2 s each)
	gib         = 1 << 30
)

type results struct {
	execHop, sshNew, sshMaster latencies
	tputHop, tputSSH           float64 // bytes/s
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

	b.Run("exec-true-via-controller-over-ssh-hop", func(b *testing.B) {
		for range b.N {
			res.execHop = benchenv.Sample(apiIters, 10, func() { execRun(ctx, b, ag, 0, "true") })
		}
		res.execHop.Report(b)
	})
	b.Run("ssh-true-new-connection", func(b *testing.B) {
		args := append(r.srv.Args(), "-o", "ControlMaster=no", "-o", "ControlPath=none", r.srv.Destination(), "true")
		for range b.N {
			res.sshNew = benchenv.Sample(newIters, 2, func() { runSSH(b, args) })
		}
		res.sshNew.Report(b)
	})
	b.Run("ssh-true-controlmaster", func(b *testing.B) {
		cp := startMaster(b, r.srv)
		args := append(r.srv.Args(), "-o", "ControlMaster=no", "-o", "ControlPath="+cp, r.srv.Destination(), "true")
		for range b.N {
			res.sshMaster = benchenv.Sample(masterIters, 3, func() { runSSH(b, args) })
		}
		res.sshMaster.Report(b)
	})
	b.Run("1GiB-via-controller-over-ssh-hop", func(b *testing.B) {
		for range b.N {
			t0 := time.Now()
			n, tr := execRun(ctx, b, ag, 0, "head", "-c", "1G", "/dev/zero")
			d := time.Since(t0)
			if n != gib || tr.GetStdoutBytes() != gib {
				b.Fatalf("received %d bytes, trailer says %d; want %d", n, tr.GetStdoutBytes(), gib)
			}
			res.tputHop = gib / d.Seconds()
		}
		b.ReportMetric(res.tputHop/1e9, "GB/s")
	})
	b.Run("ssh-head-1GiB", func(b *testing.B) {
		args := append(r.srv.Args(), "-o", "ControlMaster=no", "-o", "ControlPath=none", r.srv.Destination(), "head", "-c", "1G", "/dev/zero")
		for range b.N {
			res.tputSSH = benchenv.PipeThroughput(b, exec.Command("ssh", args...), gib)
		}
		b.ReportMetric(res.tputSSH/1e9, "GB/s")
	})
	table(b, &res)
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
// issue sets targets for.
func table(b *testing.B, r *results) {
	var sb strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&sb, format+"\n", a...) }
	lat := func(name string, l latencies) {
		if len(l) > 0 {
			w("  %-40s p50 %8.3f ms   p99 %8.3f ms  (n=%d)", name, ms(l.P50()), ms(l.P99()), len(l))
		}
	}
	w("")
	w("dtmux over an ssh hop (same private sshd on loopback, one run)")
	lat("Exec(true) via controller over the hop", r.execHop)
	lat("ssh host true, ControlMaster", r.sshMaster)
	lat("ssh host true, new connection", r.sshNew)
	if r.tputHop > 0 {
		w("  %-40s %6.2f GB/s", "head -c 1G via controller over the hop", r.tputHop/1e9)
	}
	if r.tputSSH > 0 {
		w("  %-40s %6.2f GB/s", "ssh host head -c 1G", r.tputSSH/1e9)
	}
	if len(r.execHop) > 0 && len(r.sshMaster) > 0 {
		x := float64(r.sshMaster.P50()) / float64(r.execHop.P50())
		w("  Exec(true) p50 is %.1fx faster than ssh ControlMaster (target >= 5x): %s", x, verdict(x >= 5))
	}
	if len(r.execHop) > 0 && len(r.sshNew) > 0 {
		w("  Exec(true) p50 is %.1fx faster than ssh new connection", float64(r.sshNew.P50())/float64(r.execHop.P50()))
	}
	if r.tputHop > 0 && r.tputSSH > 0 {
		x := r.tputHop / r.tputSSH
		w("  output over the hop is %.2fx plain ssh (target >= 1x): %s", x, verdict(x >= 1))
	}
	fmt.Print(sb.String())
	b.Log(sb.String())
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
