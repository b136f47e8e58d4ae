package process

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Adoption. A detached run without a PTY writes its stdout and stderr into
// named pipes in its run directory rather than into anonymous pipes. The
// child opens them read-write, so it always holds a reader itself: when the
// agent goes away (a crash, a SIGKILL, a stop and a later start), the run
// does not die of SIGPIPE at its next write as it did with pipes. It goes
// on, and once it has filled a pipe (64 KiB) it blocks in write until an
// agent reads again. The next agent finds it in the journal with its
// process group alive, opens the pipes again and copies on into the
// spools from where their headers say the last agent stopped: the run is
// RUNNING again, `runs logs -f` follows it to its end, and kills, limits
// and workspace stops reach it.
//
// Its deadlines go on, counted from its start. What it cannot have: its
// exit status, since the new agent is not the leader's parent (it learns
// of the exit through a pidfd), so such a run ends AGENT_LOST with
// complete output and a detail that says so (TIMED_OUT or KILLED when
// this agent ends it); and the bytes an agent that
// crashed had read and not yet spooled (at most one read), or that were
// left in a pipe when the run ended while no agent was there to read them
// (a pipe's buffer goes with its last holder). An agent stopping on its
// own (SIGTERM) spools what it read before it exits, so a stop and a start
// lose nothing. A PTY cannot be reopened; such runs stay as orphan.go
// says.

// fifoPath is the named pipe of output stream k.
func (r *Run) fifoPath(k int) string {
	return filepath.Join(r.dir, streamNames[k]+".fifo")
}

// makeFIFOs makes the run's named pipes: the agent's and the child's end
// of stdout, then of stderr.
func (r *Run) makeFIFOs() ([4]*os.File, error) {
	var ends [4]*os.File
	if err := r.prepareDir(); err != nil {
		return ends, err
	}
	for k := range streamNames {
		ours, child, err := childFIFO(r.fifoPath(k))
		if err != nil {
			for _, f := range ends {
				if f != nil {
					f.Close()
				}
			}
			r.removeFIFOs()
			return [4]*os.File{}, err
		}
		ends[2*k], ends[2*k+1] = ours, child
	}
	return ends, nil
}

// removeFIFOs removes the run's named pipes once nothing will read them
// again; open ends stay valid.
func (r *Run) removeFIFOs() {
	if !r.info.OutputFIFOs {
		return
	}
	for k := range streamNames {
		os.Remove(r.fifoPath(k))
	}
}

// errNotChild is the wait result of an adopted run.
var errNotChild = errors.New("not this agent's child")

// adoptedDetail is the trailer detail of an adopted run that ended by
// itself.
const adoptedDetail = "the agent restarted while the run was in flight; its output was taken up again where that agent left it, to its end, but its exit status cannot be known (the new agent is not the process's parent)"

// adopt takes over run info, left in flight by an earlier agent with its
// output in named pipes (see above), when its process group still runs.
func (m *Manager) adopt(info Info) (*Run, error) {
	if !m.groupAlive(info) {
		return nil, fmt.Errorf("run %s: its process group has ended", info.ID)
	}
	r, err := m.reopen(info)
	if err != nil {
		return nil, err
	}
	r.info.OutputFIFOs = true
	for k := range streamNames {
		f, err := openFIFO(r.fifoPath(k))
		if err != nil {
			r.closeOutputs()
			r.closeSpools()
			return nil, fmt.Errorf("run %s: %w", info.ID, err)
		}
		r.outputs = append(r.outputs, f)
	}
	proc, err := os.FindProcess(info.PID)
	if err != nil {
		return nil, err
	}
	info.State, info.Trailer = StateRunning, nil
	r.info = info
	r.adopted = true
	r.proc, r.reap = proc, func() (*os.ProcessState, error) { return nil, errNotChild }
	r.startTicks.Store(info.StartTicks)
	r.timeout, r.idleTimeout = info.Timeout, info.IdleTimeout
	if info.Timeout > 0 {
		// Counted from the run's start, as its first agent did.
		r.timeoutLeft = max(info.Timeout-time.Since(info.StartedAt), time.Millisecond)
	}
	r.lastOutput.Store(time.Now().UnixNano())
	close(r.ready)
	m.mu.Lock()
	m.running++
	m.mu.Unlock()
	r.watch()
	m.writer.add(r)
	r.log.Info("run taken over from an earlier agent through its named pipes", "pid", info.PID)
	return r, nil
}

// waitGone returns once process pid, started at ticks, has exited (or
// right away when it is gone already). It need not be a child.
func waitGone(pid int, ticks uint64) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	// The pidfd pins this pid: if it is still the run's leader now, the
	// pidfd is the leader's.
	if ticks == 0 || startTicks(pid) != ticks {
		return
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(fds, -1); !errors.Is(err, unix.EINTR) {
			return
		}
	}
}
