package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/agent/daemon"
	"github.com/dtmux/dtmux/agent/process"
)

// A daemon asked to re-execute as another build (daemon.ReexecSignal)
// shuts down like SIGTERM, except that its detached runs are handed over
// (process.Manager.HandOver), then execs: the list of handed-over runs and
// their descriptors goes to the new image in a file named by envHandover.

const (
	envHandover  = "DTMUX_AGENT_HANDOVER"
	handoverName = "agent.handover"
)

// reexec is what run returns when the daemon is to re-execute; main does
// it once every deferred cleanup of run has happened.
type reexec struct {
	req    daemon.Request
	handed []process.Handed
	state  string
	log    hclog.Logger
}

func (r *reexec) Error() string { return "re-execute as " + r.req.Path }

// exec replaces this process; it returns only on failure, and then the
// handed-over runs are lost as in a crash.
func (r *reexec) exec() error {
	path := filepath.Join(r.state, handoverName)
	b, err := json.Marshal(r.handed)
	if err == nil {
		err = os.WriteFile(path, b, 0o600)
	}
	if err != nil {
		return fmt.Errorf("record the handover: %w", err)
	}
	r.log.Info("re-executing", "path", r.req.Path, "runs_handed_over", len(r.handed))
	// No fork between making the runs' descriptors inheritable and the
	// exec (forks take ForkLock for writing).
	syscall.ForkLock.RLock()
	for _, h := range r.handed {
		if err := h.Inherit(); err != nil {
			syscall.ForkLock.RUnlock()
			return fmt.Errorf("pass on run %s: %w", h.ID, err)
		}
	}
	err = daemon.Exec(r.req, envHandover+"="+path)
	if err != nil {
		// The new build cannot run (gone, not executable here): this
		// build takes its runs back rather than lose them.
		r.log.Error("re-execute as the new build failed; re-executing as this one", "error", err)
		daemon.RecordFailure(r.state, r.req, err.Error())
		err = errors.Join(err, daemon.Exec(daemon.Request{Path: "/proc/self/exe", Args: os.Args[1:]}, envHandover+"="+path))
	}
	syscall.ForkLock.RUnlock()
	os.Remove(path)
	return err
}

// takeHandover returns the runs the previous image of this process handed
// over, if it was one (envHandover), and forgets the record.
func takeHandover(log hclog.Logger) []process.Handed {
	path, ok := os.LookupEnv(envHandover)
	if !ok {
		return nil
	}
	os.Unsetenv(envHandover)
	b, err := os.ReadFile(path)
	os.Remove(path)
	var hs []process.Handed
	if err == nil {
		err = json.Unmarshal(b, &hs)
	}
	if err != nil {
		log.Warn("read the runs the previous image handed over", "error", err)
		return nil
	}
	return hs
}
