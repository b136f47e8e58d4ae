package process

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Adoption. A detached run without a PTY writes its stdout and stderr into
// named pipes in its run directory rather than into anonymous pipes, and a
// keeper process (a sleep, in its own process group) holds a read end of
// each: when the agent goes away (a crash, a SIGKILL, a stop and a later
// start), no pipe is ever without a reader, so the run does not die of
// SIGPIPE at its next write as it did with pipes. It goes on, and once it
// has filled a pipe (64 KiB, or 1 MiB once grown for bulk output) it
// blocks in write until an agent reads again. The next agent finds it in the journal with its process group (or
// its keeper) alive, opens the pipes again and copies on into the spools
// from where their headers say the last agent stopped: the run is RUNNING
// again, `runs logs -f` follows it to its end, and kills, limits, deadlines
// and workspace stops reach it. Output a run left in its pipes when it
// ended while no agent ran is kept by the keeper until the next one
// drains it. When the run is over for the agent (it ended, or the agent
// gave up waiting for what it left behind to close its output), the keeper
// is killed: a process still writing then gets SIGPIPE, as with pipes,
// rather than block forever.
//
// Its deadlines go on, counted from its start. What it cannot have: its
// exit status, since the new agent is not the leader's parent (it learns
// of the exit through a pidfd), so such a run ends AGENT_LOST with
// complete output and a detail that says so (TIMED_OUT, KILLED or
// LIMIT_EXCEEDED when this agent ended it or a limit did); and the bytes
// an agent that crashed had read and not yet spooled (at most one read:
// reads from named pipes stay at 64 KiB for that).
// An agent stopping on its own (SIGTERM) spools what it read before it
// exits, so a stop and a start lose nothing. A PTY cannot be reopened;
// such runs stay as orphan.go says.

// fifoPath is the named pipe of output stream k.
func (r *Run) fifoPath(k int) string {
	return filepath.Join(r.dir, streamNames[k]+".fifo")
}

// makeFIFOs makes the run's named pipes and starts their keeper: the
// agent's and the child's end of stdout, then of stderr.
func (r *Run) makeFIFOs() ([4]*os.File, error) {
	var ends [4]*os.File
	fail := func(err error) ([4]*os.File, error) {
		for _, f := range ends {
			if f != nil {
				f.Close()
			}
		}
		r.endKeeper()
		r.keeperEnded.Store(false)
		r.info.KeeperPID, r.info.KeeperTicks = 0, 0 // not published yet
		r.removeFIFOs()
		return [4]*os.File{}, err
	}
	if r.m.sleep == "" {
		return ends, errors.New("no sleep command for the keeper of its named pipes")
	}
	if err := r.prepareDir(); err != nil {
		return ends, err
	}
	r.info.OutputFIFOs = true // for removeFIFOs
	for k := range streamNames {
		if err := unix.Mkfifo(r.fifoPath(k), 0o600); err != nil {
			return fail(&os.PathError{Op: "mkfifo", Path: r.fifoPath(k), Err: err})
		}
	}
	if err := r.startKeeper(); err != nil {
		return fail(err)
	}
	for k := range streamNames {
		ours, child, err := childFIFO(r.fifoPath(k))
		if err != nil {
			return fail(err)
		}
		ends[2*k], ends[2*k+1] = ours, child
	}
	return ends, nil
}

// startKeeper starts the run's keeper (see above): a sleep with a read end
// of each named pipe, in its own process group, outside the run's cgroup.
func (r *Run) startKeeper() error {
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for k := range streamNames {
		f, err := keeperEnd(r.fifoPath(k))
		if err != nil {
			return err
		}
		files = append(files, f)
	}
	cmd := exec.Command(r.m.sleep, "2147483647")
	cmd.ExtraFiles = files
	cmd.Dir = "/"
	// As a run's processes are marked, so that stopping a workspace whose
	// agent is gone ends it too (its own group keeps it out of groupAlive).
	cmd.Env = []string{"DTMUX_WORKSPACE=" + r.m.cfg.Workspace, "DTMUX_RUN_ID=" + r.info.ID}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the keeper of its named pipes: %w", err)
	}
	r.info.KeeperPID = cmd.Process.Pid
	r.info.KeeperTicks = startTicks(cmd.Process.Pid)
	cmd.Process.Release() // endKeeper reaps it
	return nil
}

// endKeeper kills the run's keeper, if it still runs, and reaps it when it
// is this process's child (from this image or the one before).
func (r *Run) endKeeper() {
	if !r.keeperEnded.Swap(true) {
		stopKeeper(r.info.KeeperPID, r.info.KeeperTicks)
	}
}

// stopKeeper kills keeper pid, started at ticks, and reaps it when it is
// this process's child.
func stopKeeper(pid int, ticks uint64) {
	// Only the keeper itself (a zombie of ours counts): a pid reused since
	// may be another run's leader, whose status its supervisor reaps.
	if !keeperAlive(pid, ticks) {
		return
	}
	syscall.Kill(pid, syscall.SIGKILL)
	reap(pid) // ECHILD at once when it is not a child
}

// keeperAlive reports whether the keeper pid, started at ticks, is
// still there (a zombie not reaped yet counts: its pid is not reused).
func keeperAlive(pid int, ticks uint64) bool {
	return pid > 0 && ticks != 0 && startTicks(pid) == ticks
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

// adoptedLoss is added to the trailer detail of a run adopted from an
// agent that crashed: the one read it may have lost.
func (r *Run) adoptedLoss() string {
	if len(r.info.Losses) == 0 {
		return ""
	}
	var at []string
	for _, l := range r.info.Losses {
		at = append(at, fmt.Sprintf("stdout byte %d or stderr byte %d", l[0], l[1]))
	}
	what := "the agent before crashed"
	if len(at) > 1 {
		what = fmt.Sprintf("agents before crashed %d times", len(at))
	}
	return fmt.Sprintf("%s: up to %d bytes each had read may be missing right before %s", what, firstChunk, strings.Join(at, "; before "))
}

// adopt takes over run info, left in flight by an earlier agent with its
// output in named pipes (see above), when its process group still runs.
func (m *Manager) adopt(info Info) (*Run, error) {
	// With its keeper gone too, what it left in its pipes is gone.
	if !m.groupAlive(info) && !keeperAlive(info.KeeperPID, info.KeeperTicks) {
		return nil, fmt.Errorf("run %s: its process group and its keeper have ended", info.ID)
	}
	r, err := m.reopen(info)
	if err != nil {
		return nil, err
	}
	for k := range streamNames {
		f, err := openFIFO(r.fifoPath(k))
		if err != nil {
			r.closeOutputs()
			r.closeSpools()
			return nil, fmt.Errorf("run %s: %w", info.ID, err)
		}
		r.outputs = append(r.outputs, f)
		// The agent before may have died writing a chunk past the end
		// its header records, over the oldest bytes of the ring.
		r.out[k].mayHaveOverrun()
	}
	proc, err := os.FindProcess(info.PID)
	if err != nil {
		return nil, err
	}
	// Only a marker of a process to signal (by its group); its pidfd
	// would stay open as long as the run is kept.
	proc.Release()
	if !info.Released {
		// The agent before crashed, maybe between reading a chunk and
		// spooling it: the trailer says where bytes may be missing.
		_, out := r.out[0].bounds()
		_, errb := r.out[1].bounds()
		info.Losses = append(slices.Clone(info.Losses), [2]uint64{out, errb})
	}
	info.Released = false
	r.adopted = true
	r.proc, r.reap = proc, func() (*os.ProcessState, error) { return nil, errNotChild }
	m.goOn(r, info)
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
