package process_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dtmux/dtmux/agent/process"
)

// TestExitDuringTeardownIsExited: a process that outlives the agent's
// teardown signal and then exits by itself is EXITED with its own status;
// KILLED is only for a process the agent's signal (or its SIGKILL after
// the grace) actually ended.
func TestExitDuringTeardownIsExited(t *testing.T) {
	// A long grace: the process must end by itself, never by the SIGKILL.
	m, _ := newManager(t, func(c *process.Config) { c.HangupGrace, c.KillGrace = time.Minute, time.Minute })
	dir := t.TempDir()
	// The script ends only once the file "go" exists.
	script := func(trap string) process.Spec {
		return sh(trap + `; echo a; while [ ! -e ` + filepath.Join(dir, "go") + ` ]; do sleep 0.01; done; echo b; exit 3`)
	}
	release := func() {
		if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("client went away, SIGHUP ignored", func(t *testing.T) {
		t.Cleanup(func() { os.Remove(filepath.Join(dir, "go")) })
		r := start(t, m, script(`trap "" HUP`))
		waitFor(t, "the trap", func() bool { return r.Info().StdoutBytes > 0 })
		r.AddClient(true)() // the last client goes: SIGHUP, sent before this returns
		release()
		waitDone(t, r)
		tr := r.Trailer()
		if tr.Reason != process.ReasonExited || tr.ExitCode != 3 || tr.Signal != 0 || !strings.Contains(tr.Detail, "client went away") {
			t.Errorf("trailer %+v, want EXITED 3 saying the client went away", tr)
		}
	})
	t.Run("kill, SIGTERM handled", func(t *testing.T) {
		t.Cleanup(func() { os.Remove(filepath.Join(dir, "go")) })
		r := start(t, m, script(`trap "touch `+filepath.Join(dir, "go")+`" TERM`))
		waitFor(t, "the trap", func() bool { return r.Info().StdoutBytes > 0 })
		r.Kill("test kill")
		waitDone(t, r)
		tr := r.Trailer()
		if tr.Reason != process.ReasonExited || tr.ExitCode != 3 {
			t.Errorf("trailer %+v, want EXITED 3", tr)
		}
	})
	t.Run("kill, SIGTERM fatal", func(t *testing.T) {
		r := start(t, m, process.Spec{Argv: []string{"sleep", "1000"}})
		r.Kill("test kill")
		waitDone(t, r)
		if tr := r.Trailer(); tr.Reason != process.ReasonKilled || tr.Signal != int(syscall.SIGTERM) || tr.Detail != "test kill" {
			t.Errorf("trailer %+v, want KILLED by SIGTERM", tr)
		}
	})
}
