package process_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dtmux/dtmux/agent/cgroup"
	"github.com/dtmux/dtmux/agent/process"
)

// cgroupManager is a run manager with the host's real cgroups; it skips
// when the host offers none of want.
func cgroupManager(t *testing.T, want ...string) *process.Manager {
	t.Helper()
	cg := cgroup.Detect(cgroup.Options{Name: fmt.Sprintf("dtmux-ptest-%d", os.Getpid())})
	for _, c := range want {
		if !cg.Supports(c) {
			t.Skipf("host offers no %s cgroup controller: %s", c, cg.Reason())
		}
	}
	t.Cleanup(func() {
		if err := cg.Close(); err != nil {
			t.Errorf("remove cgroups: %v", err)
		}
	})
	m, _ := newManager(t, func(c *process.Config) { c.Cgroups = cg })
	return m
}

// servesOthers checks that the manager runs another command to the end
// while a limited run is going.
func servesOthers(t *testing.T, m *process.Manager) {
	t.Helper()
	res := collect(t, start(t, m, sh("echo still serving")), 0, 0)
	if string(res.stdout) != "still serving\n" || res.trailer.ExitCode != 0 {
		t.Errorf("another run meanwhile: stdout %q trailer %+v", res.stdout, res.trailer)
	}
}

func TestForkBombStoppedByPidsLimit(t *testing.T) {
	m := cgroupManager(t, "pids")
	spec := sh(`f() { f | f & }; f; wait; sleep 600`)
	spec.Limits.Pids = 40
	spec.Timeout = 2 * time.Minute // a backstop; the trailer must not say timed_out
	r := start(t, m, spec)
	servesOthers(t, m)
	res := collect(t, r, 0, 0)
	if tr := res.trailer; tr.Reason != process.ReasonLimitExceeded || !strings.Contains(tr.Detail, "pids limit 40") {
		t.Errorf("trailer %+v, want LIMIT_EXCEEDED naming the pids limit", tr)
	}
}

func TestMemoryHogStoppedByMemoryLimit(t *testing.T) {
	m := cgroupManager(t, "memory")
	// The shell keeps the whole substitution in memory.
	spec := sh(`x=$(head -c 400000000 /dev/zero | tr '\0' a); echo survived ${#x}`)
	spec.Limits.MemoryBytes = 64 << 20
	spec.Timeout = 2 * time.Minute
	r := start(t, m, spec)
	servesOthers(t, m)
	res := collect(t, r, 0, 0)
	if tr := res.trailer; tr.Reason != process.ReasonLimitExceeded || !strings.Contains(tr.Detail, "memory_bytes limit 67108864") {
		t.Errorf("trailer %+v (stdout %q), want LIMIT_EXCEEDED naming the memory limit", tr, res.stdout)
	}
	if strings.Contains(string(res.stdout), "survived") {
		t.Errorf("the hog survived: %q", res.stdout)
	}
}

func TestCPUQuotaAccepted(t *testing.T) {
	m := cgroupManager(t, "cpu")
	spec := sh("echo ok")
	spec.Limits.CPUMillis = 250
	res := collect(t, start(t, m, spec), 0, 0)
	if string(res.stdout) != "ok\n" || res.trailer.ExitCode != 0 {
		t.Errorf("stdout %q trailer %+v", res.stdout, res.trailer)
	}
}

func TestCgroupLimitsRefusedWithoutCgroups(t *testing.T) {
	m, _ := newManager(t, nil)
	spec := sh("true")
	spec.Limits.MemoryBytes = 1 << 30
	_, _, err := m.Start(spec)
	if !errors.Is(err, process.ErrLimitUnavailable) || !errors.Is(err, process.ErrInvalidSpec) || !strings.Contains(err.Error(), "cgroups") {
		t.Errorf("start with a memory limit and no cgroups: %v", err)
	}
}

func TestFileOpenerStoppedByOpenFiles(t *testing.T) {
	m, _ := newManager(t, nil)
	// Opens descriptors until the shell fails.
	spec := sh(`i=3; while :; do eval "exec $i</dev/null" || exit 24; i=$((i+1)); done`)
	spec.Limits.OpenFiles = 64
	spec.Timeout = time.Minute
	r := start(t, m, spec)
	servesOthers(t, m)
	res := collect(t, r, 0, 0)
	tr := res.trailer
	if tr.Reason != process.ReasonExited || tr.ExitCode == 0 || !strings.Contains(tr.Detail, "open_files 64") {
		t.Errorf("trailer %+v (stderr %q), want a failed exit naming open_files", tr, res.stderr)
	}
}

func TestInfinitePrinterStoppedByTimeoutWithBoundedSpool(t *testing.T) {
	m, _ := newManager(t, nil)
	spec := process.Spec{Argv: []string{"yes"}, Timeout: time.Second}
	spec.Limits.MaxOutputBytes = 1 << 20
	r := start(t, m, spec)
	servesOthers(t, m)
	waitDone(t, r)
	tr := r.Trailer()
	if tr.Reason != process.ReasonTimedOut || !strings.Contains(tr.Detail, "timeout") {
		t.Errorf("trailer %+v, want TIMED_OUT", tr)
	}
	fi, err := os.Stat(filepath.Join(m.StateDir(), "runs", r.ID(), "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 1<<20+8 || tr.StdoutBytes <= 1<<20 {
		t.Errorf("spool file %d bytes after %d bytes of output; want at most the limit, and output beyond it", fi.Size(), tr.StdoutBytes)
	}
}
