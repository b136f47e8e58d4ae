package process_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/dtmux/dtmux/agent/process"
)

// A run that printed nothing has no spool files (they are made at the
// first output), and a restarted agent still serves it.
func TestSilentRunSurvivesRestart(t *testing.T) {
	state := t.TempDir()
	m1, _ := newManager(t, func(c *process.Config) { c.StateDir = state })
	r := start(t, m1, process.Spec{ID: "silent", Argv: []string{"sh", "-c", "exit 3"}})
	waitDone(t, r)
	m1.Sync()
	for _, name := range []string{"stdout", "stderr"} {
		if _, err := os.Stat(filepath.Join(state, "runs", "silent", name)); !os.IsNotExist(err) {
			t.Errorf("spool %s of a silent run: %v, want none", name, err)
		}
	}
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}

	m2, _ := newManager(t, func(c *process.Config) { c.StateDir = state })
	r2, err := m2.Get("silent")
	if err != nil {
		t.Fatal(err)
	}
	res := collect(t, r2, 0, 0)
	if len(res.stdout)+len(res.stderr) != 0 || res.trailer.Reason != process.ReasonExited || res.trailer.ExitCode != 3 {
		t.Errorf("after restart: stdout %q stderr %q trailer %+v", res.stdout, res.stderr, res.trailer)
	}
}

// Close writes the metadata of runs started just before it, so that the
// next agent finds a detached run that is still going.
func TestCloseWritesPendingRuns(t *testing.T) {
	state := t.TempDir()
	m1, _ := newManager(t, func(c *process.Config) { c.StateDir = state })
	var runs []*process.Run
	t.Cleanup(func() {
		// Detached runs outlive their manager: end them, and let their
		// supervisors write their trailers before the directory goes.
		for _, r := range runs {
			syscall.Kill(-r.Info().PID, syscall.SIGKILL)
		}
		for _, r := range runs {
			waitDone(t, r)
		}
	})
	const n = 20
	for i := range n {
		runs = append(runs, start(t, m1, process.Spec{ID: "d" + string(rune('a'+i)), Argv: []string{"sleep", "1000"}, Detach: true}))
	}
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}
	m2, _ := newManager(t, func(c *process.Config) { c.StateDir = state })
	infos := m2.List(nil)
	if len(infos) != n {
		t.Fatalf("restarted manager lists %d runs, want %d", len(infos), n)
	}
	for _, in := range infos {
		if in.Trailer == nil || in.Trailer.Reason != process.ReasonAgentLost || len(in.Argv) != 2 {
			t.Errorf("run %s after restart: %+v", in.ID, in)
		}
	}
}
