package process_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/dtmux/dtmux/agent/process"
)

// TestOrphanAfterRestart: a detached run in flight when its agent died is
// AGENT_LOST for the next agent, whose detail says when its process group
// still runs; signalling the run reaches that group (by its leader, or by
// a member once the leader is gone), and then the detail says it ended.
func TestOrphanAfterRestart(t *testing.T) {
	state, work := t.TempDir(), t.TempDir()
	m1, _ := newManager(t, func(c *process.Config) { c.StateDir, c.Workdir = state, work })
	// leader: the leader itself runs on. member: the leader exits after
	// the crash, a background child keeps the group (and prints its pid).
	leader := start(t, m1, process.Spec{ID: "leader", Argv: []string{"sh", "-c", "echo up; exec sleep 1000"}, Detach: true})
	member := start(t, m1, process.Spec{ID: "member", Argv: []string{"sh", "-c", "sleep 1000 >/dev/null & echo $!; read x"}, Detach: true})
	waitFor(t, "output", func() bool { return leader.Info().StdoutBytes > 0 && member.Info().StdoutBytes > 0 })
	m1.Sync()
	// The state directory as a crash would leave it.
	crashed := t.TempDir()
	copyDir(t, filepath.Join(state, "runs"), filepath.Join(crashed, "runs"))
	memberPID := func() int {
		if err := member.CloseStdin(); err != nil { // the leader exits
			t.Fatal(err)
		}
		res := collect(t, member, 0, 0)
		pid, err := strconv.Atoi(strings.TrimSpace(string(res.stdout)))
		if err != nil {
			t.Fatalf("member pid %q: %v", res.stdout, err)
		}
		return pid
	}()
	t.Cleanup(func() { syscall.Kill(memberPID, syscall.SIGKILL) })
	t.Cleanup(func() { syscall.Kill(leader.Info().PID, syscall.SIGKILL) })

	m2, _ := newManager(t, func(c *process.Config) { c.StateDir, c.Workdir = crashed, work })
	for _, tc := range []struct {
		id  string
		pid int // the process the signal must end
	}{{"leader", leader.Info().PID}, {"member", memberPID}} {
		r, err := m2.Get(tc.id)
		if err != nil {
			t.Fatal(err)
		}
		in := r.Info()
		if in.State != process.StateFinished || in.Trailer.Reason != process.ReasonAgentLost || !strings.Contains(in.Trailer.Detail, "still running (pid "+strconv.Itoa(in.PID)+")") {
			t.Errorf("%s after restart: %+v", tc.id, in.Trailer)
		}
		if err := r.Signal(syscall.SIGKILL, ""); err != nil {
			t.Fatalf("%s: signal an orphan: %v", tc.id, err)
		}
		waitGone(t, tc.pid)
		if tr := r.Trailer(); tr.Reason != process.ReasonAgentLost || !strings.Contains(tr.Detail, "has ended since") {
			t.Errorf("%s after the kill: %+v", tc.id, tr)
		}
		if err := r.Signal(syscall.SIGTERM, ""); !errors.Is(err, process.ErrRunFinished) {
			t.Errorf("%s: signal after its group ended: %v", tc.id, err)
		}
	}
	waitDone(t, leader)
}

// An attached run whose agent died lost its client with it: the next
// agent hangs its process group up, SIGKILL after the grace for one that
// ignores SIGHUP, as ssh ends a session whose connection dropped. A
// detached run of the same agent keeps running.
func TestAttachedOrphanIsHungUp(t *testing.T) {
	state, work := t.TempDir(), t.TempDir()
	m1, _ := newManager(t, func(c *process.Config) { c.StateDir, c.Workdir = state, work })
	attached := start(t, m1, process.Spec{ID: "attached", Argv: []string{"sh", "-c", `trap "" HUP; echo up; exec sleep 1000`}})
	detached := start(t, m1, process.Spec{ID: "detached", Argv: []string{"sh", "-c", "echo up; exec sleep 1000"}, Detach: true})
	waitFor(t, "output", func() bool { return attached.Info().StdoutBytes > 0 && detached.Info().StdoutBytes > 0 })
	m1.Sync()
	crashed := t.TempDir()
	copyDir(t, filepath.Join(state, "runs"), filepath.Join(crashed, "runs"))
	aPID, dPID := attached.Info().PID, detached.Info().PID
	t.Cleanup(func() { syscall.Kill(-aPID, syscall.SIGKILL); syscall.Kill(-dPID, syscall.SIGKILL) })

	m2, _ := newManager(t, func(c *process.Config) { c.StateDir, c.Workdir = crashed, work })
	waitFor(t, "the attached orphan's group ended", func() bool { return syscall.Kill(aPID, 0) != nil || processState(aPID) == 'Z' })
	if syscall.Kill(dPID, 0) != nil {
		t.Error("the detached orphan was ended too")
	}
	r, err := m2.Get("attached")
	if err != nil {
		t.Fatal(err)
	}
	if tr := r.Trailer(); tr == nil || tr.Reason != process.ReasonAgentLost || !strings.Contains(tr.Detail, "hung up") {
		t.Errorf("attached orphan trailer: %+v", tr)
	}
}

// processState is the state letter of pid in /proc, or 0.
func processState(pid int) byte {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}
