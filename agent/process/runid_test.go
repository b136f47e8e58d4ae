package process_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/dtmux/dtmux/agent/process"
)

// TestRunIDConflict: a run id reused for another command is refused; the
// same command (argv, shell, working directory) attaches, as retries need,
// also after the run has finished and after an agent restart.
func TestRunIDConflict(t *testing.T) {
	state, work := t.TempDir(), t.TempDir()
	m, _ := newManager(t, func(c *process.Config) { c.StateDir, c.Workdir = state, work })
	spec := process.Spec{ID: "job", Argv: []string{"sh", "-c", "echo one"}}
	r := start(t, m, spec)
	waitDone(t, r)

	again, existing, err := m.Start(spec)
	if err != nil || !existing || again != r {
		t.Fatalf("same command: existing %v err %v", existing, err)
	}
	// "." is the default working directory spelled out: the same command.
	same := spec
	same.Cwd = "."
	if _, existing, err := m.Start(same); err != nil || !existing {
		t.Fatalf("same command, cwd spelled out: existing %v err %v", existing, err)
	}

	for name, mod := range map[string]func(*process.Spec){
		"argv":  func(s *process.Spec) { s.Argv = []string{"sh", "-c", "echo two"} },
		"shell": func(s *process.Spec) { s.Shell = true },
		"cwd":   func(s *process.Spec) { s.Cwd = "/" },
	} {
		other := spec
		other.Argv = append([]string(nil), spec.Argv...)
		mod(&other)
		_, _, err := m.Start(other)
		if !errors.Is(err, process.ErrRunIDConflict) || !strings.Contains(err.Error(), "run id job already exists with a different command") {
			t.Errorf("different %s: err = %v, want ErrRunIDConflict", name, err)
		}
	}

	// After a restart the remembered run is compared the same way.
	m.Sync()
	m2, _ := newManager(t, func(c *process.Config) { c.StateDir, c.Workdir = state, work })
	if _, existing, err := m2.Start(spec); err != nil || !existing {
		t.Fatalf("same command after restart: existing %v err %v", existing, err)
	}
	other := spec
	other.Argv = []string{"true"}
	if _, _, err := m2.Start(other); !errors.Is(err, process.ErrRunIDConflict) {
		t.Errorf("different command after restart: err = %v", err)
	}
}
