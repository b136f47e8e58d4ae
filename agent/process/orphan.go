package process

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/dtmux/dtmux/internal/procfs"
)

// Orphans. When an agent dies, the runs it had in flight are finished by
// the next agent as AGENT_LOST: their output pipes went with the old agent,
// so nothing they print from then on is kept, and no exit status will come.
// But their process groups may live on (a detached run is meant to survive
// its clients). Such a run stays FINISHED/AGENT_LOST, which is the truth
// about what the agent knows of it, with a detail that says its group is
// still running; SignalRun still reaches that group, so that `runs kill`
// and a workspace stop can end it.
//
// A group is the run's when its leader is alive with the start time
// recorded at spawn (/proc/PID/stat, immune to pid reuse), or, once the
// leader is gone, when a member of the process group numbered like the
// leader's pid carries the run's DTMUX_RUN_ID and DTMUX_WORKSPACE (a
// process group's number is not reused while it has members).

// startTicks returns the start time of pid, or 0 when it is unknown.
func startTicks(pid int) uint64 {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return 0
	}
	return st.StartTime
}

// groupAlive reports whether the process group of run info is still
// running (see above).
func (m *Manager) groupAlive(info Info) bool {
	pid := info.PID
	if pid <= 0 {
		return false
	}
	if st, err := procfs.ReadStat(pid); err == nil && info.StartTicks != 0 && st.StartTime == info.StartTicks && st.State != 'Z' {
		return true
	}
	wantID := []byte("DTMUX_RUN_ID=" + info.ID)
	wantWS := []byte("DTMUX_WORKSPACE=" + m.cfg.Workspace)
	for _, p := range procfs.Pids() {
		st, err := procfs.ReadStat(p)
		if err != nil || st.PGRP != pid || st.State == 'Z' {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "environ"))
		if err != nil {
			continue
		}
		var id, ws bool
		for _, kv := range bytes.Split(env, []byte{0}) {
			id = id || bytes.Equal(kv, wantID)
			ws = ws || bytes.Equal(kv, wantWS)
		}
		if id && ws {
			return true
		}
	}
	return false
}

// orphanAlive reports whether r is a run of an earlier agent whose process
// group still runs. Once gone, a group stays gone.
func (r *Run) orphanAlive() bool {
	if !r.orphan || r.orphanGone.Load() {
		return false
	}
	if r.m.groupAlive(r.info) {
		return true
	}
	r.orphanGone.Store(true)
	return false
}

// orphanDetail is the trailer detail of an orphan run now.
func (r *Run) orphanDetail(detail string) string {
	if r.orphanAlive() {
		return fmt.Sprintf("%s; its process group is still running (pid %d) but its output since the agent restart is lost", detail, r.info.PID)
	}
	return fmt.Sprintf("%s; its process group ran on after the agent restart (pid %d) and has ended since", detail, r.info.PID)
}

// signalOrphan sends sig to the process group of an orphan run.
func (r *Run) signalOrphan(sig syscall.Signal) error {
	if !r.orphanAlive() {
		return fmt.Errorf("signal run %s: %w", r.info.ID, ErrRunFinished)
	}
	if err := syscall.Kill(-r.info.PID, sig); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("signal run %s: %w", r.info.ID, ErrRunFinished)
		}
		return fmt.Errorf("signal run %s: %w", r.info.ID, err)
	}
	r.log.Info("signalled the process group of a run from before the agent restart", "pid", r.info.PID, "signal", sig.String())
	return nil
}

// hangUpOrphans ends the attached runs of an earlier agent whose process
// groups still run: their client's stream went with that agent, and an
// attached run does not outlive its client (ssh hangs up a session whose
// connection dropped). They get SIGHUP now and SIGKILL after HangupGrace,
// from a goroutine that Close stops. Detached runs are left alone.
func (m *Manager) hangUpOrphans() {
	var hung []*Run
	for _, r := range m.runs {
		if r.info.Detached || r.signalOrphan(syscall.SIGHUP) != nil {
			continue
		}
		_ = r.signalOrphan(syscall.SIGCONT)
		hung = append(hung, r)
	}
	if len(hung) == 0 {
		return
	}
	m.sweeping.Go(func() {
		t := time.NewTimer(m.cfg.HangupGrace)
		defer t.Stop()
		select {
		case <-m.stop:
		case <-t.C:
		}
		for _, r := range hung {
			_ = r.signalOrphan(syscall.SIGKILL)
		}
	})
}
