package process_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
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
// next agent finds a detached run that is still going, and adopts it.
func TestCloseWritesPendingRuns(t *testing.T) {
	state := t.TempDir()
	m1, _ := newManager(t, func(c *process.Config) { c.StateDir = state })
	var pids []int
	const n = 20
	for i := range n {
		r := start(t, m1, process.Spec{ID: "d" + string(rune('a'+i)), Argv: []string{"sleep", "1000"}, Detach: true})
		pids = append(pids, r.Info().PID)
	}
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}
	m2, _ := newManager(t, func(c *process.Config) { c.StateDir = state })
	t.Cleanup(func() {
		// Detached runs outlive their manager: end them (still children
		// of this test, which reaps them), and let the adopting manager
		// write their trailers before the directory goes.
		for _, pid := range pids {
			syscall.Kill(-pid, syscall.SIGKILL)
			var ws syscall.WaitStatus
			syscall.Wait4(pid, &ws, 0, nil)
		}
		for _, in := range m2.List(nil) {
			if r, err := m2.Get(in.ID); err == nil {
				waitDone(t, r)
			}
		}
	})
	infos := m2.List(nil)
	if len(infos) != n {
		t.Fatalf("restarted manager lists %d runs, want %d", len(infos), n)
	}
	for _, in := range infos {
		if in.State != process.StateRunning || in.Trailer != nil || len(in.Argv) != 2 {
			t.Errorf("run %s after restart: %+v", in.ID, in)
		}
	}
}

// An attached run's output stays in memory while it is small: no files
// at all, and a restarted agent still has it (recorded with the run).
// Output beyond the memory part moves to the spool files, byte for byte.
func TestSmallOutputStaysInMemory(t *testing.T) {
	state := t.TempDir()
	m1, _ := newManager(t, func(c *process.Config) { c.StateDir = state })
	small := start(t, m1, process.Spec{ID: "small", Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 4"}})
	big := start(t, m1, process.Spec{ID: "big", Argv: []string{"sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x"}})
	waitDone(t, small)
	waitDone(t, big)
	m1.Sync()
	if _, err := os.Stat(filepath.Join(state, "runs", "small")); !os.IsNotExist(err) {
		t.Errorf("directory of a run with little output: %v, want none", err)
	}
	if _, err := os.Stat(filepath.Join(state, "runs", "big", "stdout")); err != nil {
		t.Errorf("spool of a run with 200000 bytes of output: %v", err)
	}
	check := func(m *process.Manager, when string) {
		t.Helper()
		r, err := m.Get("small")
		if err != nil {
			t.Fatal(err)
		}
		res := collect(t, r, 0, 0)
		if string(res.stdout) != "out\n" || string(res.stderr) != "err\n" || res.trailer.ExitCode != 4 {
			t.Errorf("%s: stdout %q stderr %q trailer %+v", when, res.stdout, res.stderr, res.trailer)
		}
		r, err = m.Get("big")
		if err != nil {
			t.Fatal(err)
		}
		if res := collect(t, r, 0, 0); string(res.stdout) != strings.Repeat("x", 200000) {
			t.Errorf("%s: big run's stdout is %d bytes, want 200000 x", when, len(res.stdout))
		}
	}
	check(m1, "before a restart")
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}
	m2, _ := newManager(t, func(c *process.Config) { c.StateDir = state })
	check(m2, "after a restart")
}

// A memory part that would exceed its limit evicts like the file does:
// a gap, then the newest bytes.
func TestSmallLimitInMemory(t *testing.T) {
	m, _ := newManager(t, nil)
	r := start(t, m, process.Spec{Argv: []string{"sh", "-c", "printf 0123456789abcdef"}, Limits: process.Limits{MaxOutputBytes: 6}})
	waitDone(t, r)
	res := collect(t, r, 0, 0)
	if string(res.stdout) != "abcdef" || len(res.gaps) != 1 || res.gaps[0].Bytes != 10 {
		t.Errorf("stdout %q after gaps %+v, want abcdef after one of 10", res.stdout, res.gaps)
	}
}

// What finished runs keep in memory is bounded: past OutputMemory their
// output moves to their spool files.
func TestOutputMemoryBudget(t *testing.T) {
	state := t.TempDir()
	m, _ := newManager(t, func(c *process.Config) { c.StateDir = state; c.OutputMemory = 10 })
	r := start(t, m, process.Spec{ID: "over", Argv: []string{"sh", "-c", "echo more than ten bytes"}})
	waitDone(t, r)
	m.Sync()
	b, err := os.ReadFile(filepath.Join(state, "runs", "over", "stdout"))
	if err != nil || !bytes.Contains(b, []byte("more than ten bytes\n")) {
		t.Errorf("spool of a run over the memory budget: %q %v", b, err)
	}
	if res := collect(t, r, 0, 0); string(res.stdout) != "more than ten bytes\n" {
		t.Errorf("stdout %q", res.stdout)
	}
}

// A run whose stdout outgrew memory and whose stderr did not keeps both
// across a restart; so does one whose output did not fit the memory
// budget.
func TestMixedSpoolsSurviveRestart(t *testing.T) {
	state := t.TempDir()
	m1, _ := newManager(t, func(c *process.Config) { c.StateDir = state; c.OutputMemory = 100 })
	mixed := start(t, m1, process.Spec{ID: "mixed", Argv: []string{"sh", "-c", "head -c 100000 /dev/zero; echo small >&2"}})
	waitDone(t, mixed)
	m1.Sync()
	over := start(t, m1, process.Spec{ID: "over", Argv: []string{"sh", "-c", "echo 0123456789012345678901234567890123456789; echo 0123456789012345678901234567890123456789012345678901234567890123456789 >&2"}})
	waitDone(t, over)
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}
	m2, _ := newManager(t, func(c *process.Config) { c.StateDir = state })
	for id, want := range map[string][2]int{"mixed": {100000, 6}, "over": {41, 71}} {
		r, err := m2.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		res := collect(t, r, 0, 0)
		if len(res.stdout) != want[0] || len(res.stderr) != want[1] || len(res.gaps) != 0 {
			t.Errorf("%s after a restart: %d bytes of stdout, %d of stderr, gaps %+v; want %v", id, len(res.stdout), len(res.stderr), res.gaps, want)
		}
	}
}
