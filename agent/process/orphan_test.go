package process_test

import (
	"errors"
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
		if err := r.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("%s: signal an orphan: %v", tc.id, err)
		}
		waitGone(t, tc.pid)
		if tr := r.Trailer(); tr.Reason != process.ReasonAgentLost || !strings.Contains(tr.Detail, "has ended since") {
			t.Errorf("%s after the kill: %+v", tc.id, tr)
		}
		if err := r.Signal(syscall.SIGTERM); !errors.Is(err, process.ErrRunFinished) {
			t.Errorf("%s: signal after its group ended: %v", tc.id, err)
		}
	}
	waitDone(t, leader)
}
