package process_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dtmux/dtmux/agent/cgroup"
	"github.com/dtmux/dtmux/agent/process"
)

// TestHandOverKeepsDetachedRunsGoing: what a daemon replaced by a new build
// does (HandOver, then exec; here a second manager in the same process
// stands for the new image): a detached run goes on under the next manager
// with the same process, every byte of its output and its real exit status,
// and its stdin still reaches it.
func TestHandOverKeepsDetachedRunsGoing(t *testing.T) {
	state := t.TempDir()
	m1, _ := newManager(t, func(c *process.Config) { c.StateDir = state })
	script := `i=0; while [ $i -lt 30 ]; do echo out$i; echo err$i >&2; i=$((i+1)); sleep 0.02; done; read line; echo "got $line"; exit 7`
	spec := sh(script)
	spec.Detach = true
	spec.ID = "handed"
	r1 := start(t, m1, spec)
	attached := start(t, m1, sh("sleep 100"))
	timed := sh("sleep 100")
	timed.Detach, timed.ID, timed.Timeout = true, "timed", time.Second
	start(t, m1, timed)
	time.Sleep(150 * time.Millisecond) // some output before the handover

	handed, err := m1.HandOver()
	if err != nil {
		t.Fatal(err)
	}
	if len(handed) != 2 || handed[0].ID == handed[1].ID {
		t.Fatalf("handed %+v, want runs handed and timed", handed)
	}
	if tr := attached.Trailer(); tr == nil || tr.Reason != process.ReasonKilled {
		t.Errorf("attached run after the handover: %+v, want killed as by Close", tr)
	}

	m2, _ := newManager(t, func(c *process.Config) { c.StateDir = state; c.Handover = handed })
	r2, err := m2.Get("handed")
	if err != nil {
		t.Fatal(err)
	}
	if info := r2.Info(); info.State != process.StateRunning {
		t.Fatalf("resumed run: %+v, want running", info)
	}
	if err := r2.WriteStdin([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	if r2.Info().PID != r1.Info().PID {
		t.Errorf("resumed run: pid %d, want %d", r2.Info().PID, r1.Info().PID)
	}
	// Its deadline stays the one asked for, counted from its start.
	rt, err := m2.Get("timed")
	if err != nil {
		t.Fatal(err)
	}
	if tr := collect(t, rt, 0, 0).trailer; tr.Reason != process.ReasonTimedOut || tr.Detail != "timeout 1s" {
		t.Errorf("timed run across the handover: %+v, want timed out with its own timeout", tr)
	}
	res := collect(t, r2, 0, 0)
	var wantOut, wantErr strings.Builder
	for i := range 30 {
		wantOut.WriteString("out" + strconv.Itoa(i) + "\n")
		wantErr.WriteString("err" + strconv.Itoa(i) + "\n")
	}
	wantOut.WriteString("got hello\n")
	if string(res.stdout) != wantOut.String() || string(res.stderr) != wantErr.String() || len(res.gaps) != 0 {
		t.Errorf("output across the handover:\nstdout %q\nstderr %q\ngaps %v", res.stdout, res.stderr, res.gaps)
	}
	if res.trailer.Reason != process.ReasonExited || res.trailer.ExitCode != 7 {
		t.Errorf("trailer %+v, want exit 7", res.trailer)
	}
}

// TestHandOverPTYAndCgroupRuns: a detached run on a terminal keeps its
// terminal (input and output) across a handover, and one with cgroup
// limits keeps its group, which the next manager removes when the run ends.
func TestHandOverPTYAndCgroupRuns(t *testing.T) {
	cg := cgroup.Detect(cgroup.Options{Name: fmt.Sprintf("dtmux-htest-%d", os.Getpid())})
	if !cg.Supports("pids") {
		t.Skipf("host offers no pids cgroup controller: %s", cg.Reason())
	}
	t.Cleanup(func() {
		if err := cg.Close(); err != nil {
			t.Errorf("remove cgroups: %v", err)
		}
	})
	state := t.TempDir()
	m1, _ := newManager(t, func(c *process.Config) { c.StateDir, c.Cgroups = state, cg })
	tty := sh(`test -t 0 && test -t 1 && echo tty; read line; echo "got $line"; exit 4`)
	tty.Detach, tty.ID, tty.PTY = true, "tty", &process.PTY{Rows: 24, Cols: 80}
	start(t, m1, tty)
	limited := sh(`i=0; while [ $i -lt 20 ]; do echo c$i; i=$((i+1)); sleep 0.02; done; exit 5`)
	limited.Detach, limited.ID, limited.Limits = true, "limited", process.Limits{Pids: 64}
	rl := start(t, m1, limited)
	time.Sleep(100 * time.Millisecond) // some output; the run's helper has joined its group
	cgDir := pidsCgroupDir(t, rl.Info().PID)
	if !strings.Contains(cgDir, "limited") {
		t.Fatalf("the limited run is in cgroup %s, not its own", cgDir)
	}

	handed, err := m1.HandOver()
	if err != nil {
		t.Fatal(err)
	}
	if len(handed) != 2 {
		t.Fatalf("handed %+v, want both runs", handed)
	}
	m2, _ := newManager(t, func(c *process.Config) { c.StateDir, c.Cgroups, c.Handover = state, cg, handed })

	r, err := m2.Get("tty")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.WriteStdin([]byte("typed\n")); err != nil {
		t.Fatal(err)
	}
	res := collect(t, r, 0, 0)
	if out := strings.ReplaceAll(string(res.stdout), "\r", ""); !strings.Contains(out, "tty\n") || !strings.Contains(out, "got typed\n") || res.trailer.ExitCode != 4 {
		t.Errorf("PTY run across the handover: %q, trailer %+v", out, res.trailer)
	}

	r, err = m2.Get("limited")
	if err != nil {
		t.Fatal(err)
	}
	res = collect(t, r, 0, 0)
	var want strings.Builder
	for i := range 20 {
		want.WriteString("c" + strconv.Itoa(i) + "\n")
	}
	if string(res.stdout) != want.String() || res.trailer.ExitCode != 5 {
		t.Errorf("cgroup run across the handover: %q, trailer %+v", res.stdout, res.trailer)
	}
	if _, err := os.Stat(cgDir); !os.IsNotExist(err) {
		t.Errorf("the run's cgroup %s is still there after it ended: %v", cgDir, err)
	}
}

// pidsCgroupDir is the pids cgroup directory of pid.
func pidsCgroupDir(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == "pids" {
				return filepath.Join("/sys/fs/cgroup/pids", f[2])
			}
		}
		if f[1] == "" && f[0] == "0" && cgroupV2Only() {
			return filepath.Join("/sys/fs/cgroup", f[2])
		}
	}
	t.Fatalf("no pids cgroup in %s", b)
	return ""
}

func cgroupV2Only() bool {
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	return err == nil
}

// TestHandOverInterruptsABlockedStdinWrite: a client writing stdin the
// process does not read does not hold the handover up; the write ends
// saying the run moved on.
func TestHandOverInterruptsABlockedStdinWrite(t *testing.T) {
	state := t.TempDir()
	m1, _ := newManager(t, func(c *process.Config) { c.StateDir = state })
	spec := process.Spec{Argv: []string{"sleep", "30"}, Detach: true, ID: "deaf"}
	r := start(t, m1, spec)
	wrote := make(chan error, 1)
	go func() { wrote <- r.WriteStdin(make([]byte, 8<<20)) }()
	time.Sleep(200 * time.Millisecond) // the write fills the pipe and blocks
	handed := make(chan []process.Handed, 1)
	go func() {
		h, err := m1.HandOver()
		if err != nil {
			t.Error(err)
		}
		handed <- h
	}()
	select {
	case h := <-handed:
		m2, _ := newManager(t, func(c *process.Config) { c.StateDir, c.Handover = state, h })
		if r2, err := m2.Get("deaf"); err != nil || r2.Info().State != process.StateRunning {
			t.Errorf("run after the handover: %v", err)
		} else if err := r2.Signal(syscall.SIGKILL, ""); err != nil {
			t.Error(err)
		} else {
			waitDone(t, r2)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the handover waited for a stdin write the process never reads")
	}
	if err := <-wrote; !errors.Is(err, process.ErrClosed) {
		t.Errorf("the interrupted write: %v, want the run handed over (ErrClosed)", err)
	}
}
