package process

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Handover. A daemon replaced by a new build re-executes itself in place
// (same pid) rather than exit, and hands its detached runs that are still
// going to the new image: the leader stays its child (so its exit status
// still comes), and the read ends of the output pipes (and the write end
// of stdin) survive exec, so the process never writes into a closed pipe
// and nothing it prints is lost. Without this, an upgrade left them as
// AGENT_LOST orphans that died of SIGPIPE at their next write.
//
// HandOver stops the copying and the supervision of each such run without
// touching its process or pipes, records the run, and returns duplicates
// of its descriptors, close-on-exec until Inherit clears that right before
// the exec. The next image passes them back in
// Config.Handover, and the manager resumes the runs where the spools
// (whose headers record their ends) left off, in the same cgroup.

// errHandedOver: the run went to the next image of this agent, which is
// starting; a client tries again there (Unavailable).
var errHandedOver = fmt.Errorf("the run is being handed to the agent's new build: %w", ErrClosed)

// handedOver reports whether the run went to the next image.
func (r *Run) handedOver() bool { return r.stage.Load() == stageHanded }

// Supervision stages of a run (Run.stage).
const (
	stageRunning int32 = iota // the supervisor has the process
	stageEnding               // the supervisor reaps it and writes the trailer
	stageHanded               // handed over: the next image has it
)

// Handed is a run handed to the next image of this process, with the
// descriptors (valid in the process that made them, and after its exec)
// that carry its output and input.
type Handed struct {
	ID  string `json:"id"`
	PID int    `json:"pid"`
	// Outputs are the read ends of stdout and stderr; with PTY, the
	// terminal's master is the first (the run's output and input) and the
	// second is -1.
	Outputs [2]int `json:"outputs"`
	// Stdin is the write end of the run's stdin, or -1.
	Stdin int  `json:"stdin"`
	PTY   bool `json:"pty,omitempty"`
	// ReapOnly marks a child that could not be handed over (its handover
	// failed, or it was still being killed): the next image only waits
	// for it, so that it leaves no zombie; the run is AGENT_LOST there.
	ReapOnly bool `json:"reap_only,omitempty"`
	// Timeout and IdleTimeout are the run's deadlines as given (0: none);
	// the next image counts Timeout from the run's start.
	Timeout     time.Duration `json:"timeout,omitempty"`
	IdleTimeout time.Duration `json:"idle_timeout,omitempty"`
}

// fds lists h's descriptors.
func (h Handed) fds() []int {
	var fds []int
	for _, fd := range []int{h.Outputs[0], h.Outputs[1], h.Stdin} {
		if fd >= 0 {
			fds = append(fds, fd)
		}
	}
	return fds
}

// Inherit clears close-on-exec on h's descriptors, for the exec that
// passes them on. Hold syscall.ForkLock (read) from here to the exec.
func (h Handed) Inherit() error {
	for _, fd := range h.fds() {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return os.NewSyscallError("fcntl", err)
		}
	}
	return nil
}

// Close closes the descriptors of a handover that will not be resumed.
func (h Handed) Close() {
	for _, fd := range h.fds() {
		unix.Close(fd)
	}
}

// waitExited returns once process pid has exited, leaving it unreaped.
func waitExited(pid int) {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

// reapChild reaps child pid of run id when it exits, and passes it on at
// a handover until then.
func (m *Manager) reapChild(pid int, id string) {
	m.mu.Lock()
	if m.reapOnly == nil {
		m.reapOnly = map[int]string{}
	}
	m.reapOnly[pid] = id
	m.mu.Unlock()
	m.reapers.Go(func() {
		reap(pid)
		m.mu.Lock()
		delete(m.reapOnly, pid)
		m.mu.Unlock()
	})
}

// reap waits for child pid to exit and reaps it.
func reap(pid int) {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

// watch starts the goroutines that copy the run's output and supervise
// it; the Manager owns them.
func (r *Run) watch() {
	for i, f := range r.outputs {
		r.copiers.Add(1)
		go r.copyOutput(i, f, r.out[i])
	}
	go r.supervise()
}

// HandOver ends the manager as Close does, except that detached runs still
// going are handed over (see above) instead of left behind. Call it right
// before exec: the returned descriptors are the runs' only link to it.
func (m *Manager) HandOver() ([]Handed, error) {
	var handed []Handed
	err := m.close(closeHandOver, &handed)
	return handed, err
}

// handOver stops the run's supervision and copying, records it and
// returns its descriptors, or false when it cannot be handed over: it is
// ending, or being killed (the kill ends it here; its grace is short).
func (r *Run) handOver() (Handed, bool) {
	if r.adopted || !r.unwatch() {
		// An adopted run is not this process's child: the next image
		// adopts it again through its named pipes (adopt.go).
		return Handed{}, false
	}
	h := Handed{ID: r.info.ID, PID: r.info.PID, Outputs: [2]int{-1, -1}, Stdin: -1, PTY: r.ptmx != nil}
	h.Timeout = r.timeout
	h.IdleTimeout = r.idleTimeout
	// Duplicates, inheritable only at the exec (Inherit); the originals
	// close in release.
	var err error
	for i, f := range r.outputs {
		if h.Outputs[i], err = dupForExec(f); err != nil {
			break
		}
	}
	r.stdinMu.Lock()
	if err == nil && r.stdin != nil && r.ptmx == nil {
		h.Stdin, err = dupForExec(r.stdin)
	}
	r.stdinMu.Unlock()
	if err != nil {
		// The run is left as if the agent had stopped: AGENT_LOST next.
		r.log.Warn("hand over run", "error", err)
		h.Close()
		return Handed{}, false
	}
	r.release()
	r.log.Debug("run handed over", "pid", h.PID)
	return h, true
}

// unwatch stops the run's supervision and output copy without touching
// its process or descriptors, for a handover or for an agent that leaves
// it to the next one; false when it cannot: the run is ending, or being
// killed (the kill ends it here; its grace is short), or its copy does not
// stop. Every byte read from the process is spooled when it returns.
func (r *Run) unwatch() bool {
	if r.proc == nil {
		return false
	}
	r.mu.Lock() // with setKill: a kill and a handover, never both
	ok := r.killReason == ReasonUnknown && r.stage.CompareAndSwap(stageRunning, stageHanded)
	r.mu.Unlock()
	if !ok {
		return false
	}
	// A client's write the process does not read would hold stdinMu, and
	// the handover with it: it ends now (and says the run moved on).
	if r.input != nil {
		r.input.SetWriteDeadline(time.Now())
	}
	close(r.handing)
	<-r.supervised
	// A read in progress ends at once; a chunk read is spooled first.
	for _, f := range r.outputs {
		f.SetReadDeadline(time.Now())
	}
	copied := make(chan struct{})
	go func() { r.copiers.Wait(); close(copied) }()
	select {
	case <-copied:
		return true
	case <-time.After(copyStopWait):
		// A descriptor outside the poller (none should be): the run is
		// left as if the agent had stopped (AGENT_LOST next, reaped by
		// the next image). The copier ends when its read does, or with
		// the exec.
		r.log.Warn("hand over run: its output copy did not stop")
		return false
	}
}

// release closes this agent's ends of an unwatched run's descriptors,
// seals its spools and records it for the agent (or image) that takes it
// over.
func (r *Run) release() {
	r.released.Store(true)
	r.closeOutputs()
	r.stdinMu.Lock()
	if r.stdin != nil && r.ptmx == nil {
		r.stdin.Close()
	}
	r.stdin = nil
	r.stdinMu.Unlock()
	for _, s := range r.out {
		s.seal()
	}
	if err := r.persist(); err != nil {
		r.log.Warn("persist a run left to the next agent", "error", err)
	}
}

// copyStopWait bounds the wait for a run's output copy to stop.
const copyStopWait = 2 * time.Second

// dupForExec returns a duplicate of f's descriptor, close-on-exec until
// Inherit clears that right before the exec (a child forked meanwhile must
// not get a run's pipe).
func dupForExec(f *os.File) (int, error) {
	sc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	cerr := sc.Control(func(fd uintptr) { nfd, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
	if cerr != nil {
		return -1, cerr
	}
	if err != nil {
		return -1, os.NewSyscallError("dup", err)
	}
	return nfd, nil
}

// resume brings back run info, handed over by the image before this one
// with h: it goes on as a run of this manager.
func (m *Manager) resume(info Info, h Handed) (*Run, error) {
	// Still this process's child (an exec keeps children), exited or not.
	var si unix.Siginfo
	if err := unix.Waitid(unix.P_PID, h.PID, &si, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil {
		return nil, fmt.Errorf("run %s: pid %d is not this agent's child: %w", info.ID, h.PID, err)
	}
	proc, err := os.FindProcess(h.PID)
	if err != nil {
		return nil, err
	}
	r, err := m.reopen(info)
	if err != nil {
		return nil, err
	}
	if h.PTY {
		r.ptmx = adoptFD(h.Outputs[0], "ptmx")
		r.stdin, r.input, r.outputs = r.ptmx, r.ptmx, []*os.File{r.ptmx}
	} else {
		for i, fd := range h.Outputs {
			r.outputs = append(r.outputs, adoptFD(fd, streamNames[i]))
		}
		if h.Stdin >= 0 {
			r.stdin = adoptFD(h.Stdin, "stdin")
			r.input = r.stdin
		}
	}
	if info.Timeout == 0 && info.IdleTimeout == 0 {
		// Handed over by a build that did not record them with the run.
		info.Timeout, info.IdleTimeout = h.Timeout, h.IdleTimeout
	}
	r.proc, r.reap = proc, proc.Wait
	m.goOn(r, info)
	r.log.Info("run taken over from the previous image of this agent", "pid", h.PID)
	return r, nil
}

// goOn makes r, reopened with info (its process and reap set), a running
// run of this manager: its deadlines counted from its start, its
// supervisor and output copies started.
func (m *Manager) goOn(r *Run, info Info) {
	info.State, info.Trailer = StateRunning, nil
	r.info = info
	r.startTicks.Store(info.StartTicks)
	r.timeout, r.idleTimeout = info.Timeout, info.IdleTimeout
	if info.Timeout > 0 {
		r.timeoutLeft = max(info.Timeout-time.Since(info.StartedAt), time.Millisecond)
	}
	r.lastOutput.Store(time.Now().UnixNano())
	close(r.ready)
	m.mu.Lock() // the supervisors of runs resumed before this one may end
	m.running++
	m.mu.Unlock()
	r.watch()
	m.writer.add(r)
}

// reopen makes the Run of info, a run of an earlier agent or image that
// goes on here: its spools open for writing where their headers say they
// ended, its cgroup (when it has limits) opened again.
func (m *Manager) reopen(info Info) (*Run, error) {
	dir := filepath.Join(m.runsDir, info.ID)
	r := m.newRun(info.ID, dir)
	r.info.OutputFIFOs = info.OutputFIFOs
	limit := m.spoolLimit(info.Limits)
	for i, name := range streamNames {
		s, err := resumeSpool(filepath.Join(dir, name), limit, r.broadcast, r.prepareDir)
		if err != nil {
			r.closeSpools()
			return nil, fmt.Errorf("run %s: %w", info.ID, err)
		}
		r.out[i] = s
	}
	if info.Limits.hasCgroupLimits() {
		if m.cfg.Cgroups == nil {
			r.closeSpools()
			return nil, fmt.Errorf("run %s: its cgroup limits need cgroups, which this agent was not given", info.ID)
		}
		g, err := m.cfg.Cgroups.Open(info.ID)
		if err != nil {
			r.closeSpools()
			return nil, err
		}
		r.group = g
	}
	return r, nil
}

// pollable returns a duplicate of f in non-blocking mode, which Go's poller
// serves (reads can then be interrupted by a deadline), and closes f.
func pollable(f *os.File) (*os.File, error) {
	fd, err := dupForExec(f)
	if err != nil {
		return nil, err
	}
	nf := adoptFD(fd, f.Name())
	f.Close()
	return nf, nil
}

// adoptFD makes a handed-over descriptor an *os.File in Go's poller, closed
// on exec again.
func adoptFD(fd int, name string) *os.File {
	unix.CloseOnExec(fd)
	unix.SetNonblock(fd, true)
	return os.NewFile(uintptr(fd), "|"+name)
}

// resumeSpool reopens the spool of a handed-over run for writing where its
// header says it ended; a missing file is a stream with no output yet.
func resumeSpool(path string, limit uint64, onWrite func(), mkdir func() error) (*spool, error) {
	s := newSpool(path, limit, 0, onWrite, mkdir)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	if s.end, err = s.readEnd(f); err != nil {
		f.Close()
		return nil, err
	}
	if s.end > limit {
		s.start = s.end - limit
	}
	s.created, s.w, s.f, s.refs = true, f, f, 1
	return s, nil
}

// handedByID indexes handed-over runs.
func handedByID(hs []Handed) map[string]Handed {
	m := make(map[string]Handed, len(hs))
	for _, h := range hs {
		m[h.ID] = h
	}
	return m
}
