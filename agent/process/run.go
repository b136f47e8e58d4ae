package process

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/agent/cgroup"
)

// Run is one process group started by the Manager (or remembered from an
// earlier agent). Its output lives in two spools; any number of Readers
// follow it.
type Run struct {
	m   *Manager
	log hclog.Logger
	dir string

	// ready is closed once the run has started (or failed to: startErr).
	ready    chan struct{}
	startErr error

	// Set before ready is closed, read-only afterwards.
	info Info // the immutable parts; counters and trailer live below
	out  [2]*spool
	// proc is the leader, started by this agent or handed over by the
	// image of this process before it (handover.go); nil for a run an
	// earlier agent lost. reap reaps it: exec.Cmd.Wait, or proc.Wait.
	proc  *os.Process
	reap  func() (*os.ProcessState, error)
	state *os.ProcessState // set by the supervisor once reaped
	stdin *os.File         // pipe write end, or the PTY master
	// input is stdin as started, set before ready and never changed (stdin
	// goes nil when closed): a handover interrupts a blocked write on it.
	input *os.File
	ptmx  *os.File
	// outputs are the read ends of the output pipes (or the PTY master).
	outputs     []*os.File
	timeout     time.Duration
	timeoutLeft time.Duration // of timeout, for a run handed over; else 0
	idleTimeout time.Duration
	// group is the run's cgroup when it has cgroup limits; the supervisor
	// closes it.
	group *cgroup.Group
	// copiers counts the goroutines copying outputs to the spools.
	copiers sync.WaitGroup
	// stage says who has the process: its supervisor until it ends it
	// (stageEnding) or the manager hands it over (stageHanded, handover.go).
	stage atomic.Int32
	// handing is closed to end the supervisor without touching the
	// process; supervised is closed when the supervisor has returned.
	handing    chan struct{}
	supervised chan struct{}

	own owner // back-pressure for the owning client

	// orphan marks a run of an earlier agent that was lost in flight: its
	// process group may still run (see orphan.go). Set before ready.
	orphan     bool
	orphanGone atomic.Bool
	// adopted marks a run of an earlier agent taken over through its
	// named pipes: not this agent's child (see adopt.go). Set before ready.
	adopted bool
	// keeperEnded is set once the keeper of its named pipes is gone.
	keeperEnded atomic.Bool
	// released is set once this agent let go of the run with every byte
	// it read spooled (Info.Released).
	released atomic.Bool

	stdinMu sync.Mutex // serialises writes and close of stdin

	lastOutput atomic.Int64 // unix nanoseconds of the latest output
	// startTicks is the leader's start time (Info.StartTicks) of a run
	// started here, read by Start or, for attached runs, the supervisor.
	startTicks atomic.Uint64
	escalate   chan struct{}
	done       chan struct{} // closed when the trailer is final

	// prepareDir makes the run's directory, once, for its spools.
	prepareDir func() error
	saveMu     sync.Mutex  // serialises persist and forget
	savedFinal bool        // guarded by saveMu; the trailer is recorded
	forgotten  bool        // guarded by saveMu; expired: write nothing more
	queued     atomic.Bool // waits in the writer's queue

	mu          sync.Mutex
	notify      chan struct{}  // guarded by mu; closed and replaced on change
	trailer     *Trailer       // guarded by mu
	killReason  Reason         // guarded by mu; why the agent is ending it
	killDetail  string         // guarded by mu
	killSignal  syscall.Signal // guarded by mu; the agent's first teardown signal
	killGrace   time.Duration  // guarded by mu; before SIGKILL follows
	clients     int            // guarded by mu; readers streaming now
	execClients int            // guarded by mu; Exec streams attached now
}

// ID is the run's id.
func (r *Run) ID() string { return r.info.ID }

// Done is closed when the run has finished and its trailer is final.
func (r *Run) Done() <-chan struct{} { return r.done }

// Info describes the run now. It says finished only once the trailer is
// final (Done).
func (r *Run) Info() Info { return r.snapshot(r.final()) }

// snapshot describes the run now, with the trailer as soon as it is set
// when withTrailer.
func (r *Run) snapshot(withTrailer bool) Info {
	in := r.info
	in.Argv = append([]string(nil), in.Argv...)
	in.State = StateRunning
	if in.StartTicks == 0 {
		in.StartTicks = r.startTicks.Load()
	}
	r.mu.Lock()
	if r.trailer != nil && withTrailer {
		t := *r.trailer
		in.Trailer = &t
		in.State = StateFinished
	}
	in.AttachedClients = r.clients
	r.mu.Unlock()
	in.Released = r.released.Load()
	if in.Trailer != nil && r.orphan {
		in.Trailer.Detail = r.orphanDetail(in.Trailer.Detail)
	}
	_, in.StdoutBytes = r.out[0].bounds()
	_, in.StderrBytes = r.out[1].bounds()
	return in
}

// Trailer returns how the run ended, or nil until that is final (Done).
func (r *Run) Trailer() *Trailer {
	if !r.final() {
		return nil
	}
	r.mu.Lock()
	if r.trailer == nil {
		r.mu.Unlock()
		return nil
	}
	t := *r.trailer
	r.mu.Unlock()
	if r.orphan {
		t.Detail = r.orphanDetail(t.Detail)
	}
	return &t
}

// wait returns a channel closed at the next output or state change.
func (r *Run) wait() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.notify
}

func (r *Run) broadcast() {
	r.mu.Lock()
	close(r.notify)
	r.notify = make(chan struct{})
	r.mu.Unlock()
}

// final reports whether Done is closed: the trailer is final and may be
// reported.
func (r *Run) final() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// persist records the run's metadata as it is now (with the trailer once
// it is set) in the journal; the writer calls it. Once the trailer is
// written, or the run was forgotten, it does nothing.
func (r *Run) persist() error {
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	if r.savedFinal || r.forgotten {
		return nil
	}
	in := r.snapshot(true)
	var output *memOutput
	if in.Trailer != nil {
		output = r.memOutput()
	}
	if err := r.m.journal.put(in, output); err != nil {
		return err
	}
	r.savedFinal = in.Trailer != nil
	return nil
}

// finished reports whether the supervisor has set the trailer (all output
// is spooled by then): the process is gone and may no longer be signalled.
// Done closes a moment later.
func (r *Run) finished() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.trailer != nil
}

// AddClient registers a reader of the run for listings. exec says the
// reader is an Exec stream, the only kind that writes stdin: when the last
// Exec stream goes away, the process's stdin is closed (end-of-file: no
// one can write to it any more), and an attached (not detached) run's
// process group gets SIGHUP, then SIGKILL after the hang-up grace. A
// PTY's input stays open: end-of-file there is a typed ^D, which a
// detached shell would take as "log out". Call the returned function
// exactly once when the stream ends.
func (r *Run) AddClient(exec bool) (release func()) {
	r.mu.Lock()
	r.clients++
	if exec {
		r.execClients++
	}
	r.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			r.clients--
			last, hangup := false, false
			if exec {
				r.execClients--
				last = r.execClients == 0
				hangup = last && !r.info.Detached
			}
			r.mu.Unlock()
			if last && r.ptmx == nil {
				if err := r.CloseStdin(); err != nil {
					r.log.Debug("close stdin after the last client", "error", err)
				}
			}
			if hangup && !r.finished() {
				r.log.Debug("last client went away; hanging up")
				r.terminate(ReasonKilled, "client went away", syscall.SIGHUP, r.m.cfg.HangupGrace)
			}
		})
	}
}

// Signal delivers sig to the run's process group. SIGKILL marks the run
// KILLED, with reason as the trailer's detail (default "killed on
// request"). A run an earlier agent lost in flight is signalled while its
// process group still runs (see orphan.go); it stays AGENT_LOST.
func (r *Run) Signal(sig syscall.Signal, reason string) error {
	if r.handedOver() {
		return fmt.Errorf("signal run %s: %w", r.info.ID, errHandedOver)
	}
	if r.proc == nil && r.orphan {
		return r.signalOrphan(sig)
	}
	if r.finished() || r.proc == nil {
		return fmt.Errorf("signal run %s: %w", r.info.ID, ErrRunFinished)
	}
	if sig == syscall.SIGKILL {
		if reason == "" {
			reason = "killed on request"
		}
		if !r.setKill(ReasonKilled, reason, syscall.SIGKILL, r.m.cfg.KillGrace) {
			return fmt.Errorf("signal run %s: %w", r.info.ID, errHandedOver)
		}
	}
	if err := syscall.Kill(-r.info.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal run %s: %w", r.info.ID, err)
	}
	return nil
}

// Kill ends the run as KILLED: SIGTERM to the group, SIGKILL after the
// kill grace.
func (r *Run) Kill(detail string) {
	r.terminate(ReasonKilled, detail, syscall.SIGTERM, r.m.cfg.KillGrace)
}

// WriteStdin writes to the process's standard input (or its terminal).
// It blocks while the process does not read.
func (r *Run) WriteStdin(p []byte) error {
	r.stdinMu.Lock()
	defer r.stdinMu.Unlock()
	if r.handedOver() {
		return fmt.Errorf("write stdin of run %s: %w", r.info.ID, errHandedOver)
	}
	if r.stdin == nil {
		return fmt.Errorf("write stdin of run %s: %w", r.info.ID, ErrRunFinished)
	}
	if _, err := r.stdin.Write(p); err != nil {
		if r.handedOver() {
			return fmt.Errorf("write stdin of run %s: %w", r.info.ID, errHandedOver)
		}
		if r.finished() || errors.Is(err, os.ErrClosed) || errors.Is(err, syscall.EPIPE) {
			return fmt.Errorf("write stdin of run %s: %w", r.info.ID, ErrRunFinished)
		}
		return fmt.Errorf("write stdin of run %s: %w", r.info.ID, err)
	}
	return nil
}

// CloseStdin gives the process end-of-file on its standard input. On a
// PTY that is the terminal's EOF character (^D).
func (r *Run) CloseStdin() error {
	if r.ptmx != nil {
		return r.WriteStdin([]byte{4})
	}
	r.stdinMu.Lock()
	defer r.stdinMu.Unlock()
	if r.handedOver() {
		return fmt.Errorf("close stdin of run %s: %w", r.info.ID, errHandedOver)
	}
	if r.stdin == nil {
		return nil
	}
	err := r.stdin.Close()
	r.stdin = nil
	return err
}

// Resize sets the PTY's size; without a PTY it does nothing.
func (r *Run) Resize(rows, cols uint16) error {
	if r.handedOver() {
		return fmt.Errorf("resize run %s: %w", r.info.ID, errHandedOver)
	}
	if r.ptmx == nil || r.finished() {
		return nil
	}
	if rows == 0 || cols == 0 {
		return fmt.Errorf("resize run %s to %dx%d: %w", r.info.ID, cols, rows, ErrInvalidSpec)
	}
	return pty.Setsize(r.ptmx, &pty.Winsize{Rows: rows, Cols: cols})
}

// setKill records why the agent ends the run (the first reason wins); it
// reports false, recording nothing, once the run is handed over (the kill
// belongs to the next image then).
func (r *Run) setKill(reason Reason, detail string, sig syscall.Signal, grace time.Duration) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stage.Load() == stageHanded {
		return false
	}
	if r.killReason == ReasonUnknown {
		r.killReason, r.killDetail, r.killSignal, r.killGrace = reason, detail, sig, grace
	}
	return true
}

// terminate records why the agent ends the run (the first reason wins),
// sends sig to the whole group and has the supervisor send SIGKILL after
// grace.
func (r *Run) terminate(reason Reason, detail string, sig syscall.Signal, grace time.Duration) {
	if r.finished() || r.proc == nil || !r.setKill(reason, detail, sig, grace) {
		return
	}
	// The agent is ending the run: its output no longer waits for the
	// owner, or a stalled owner would keep the run alive forever.
	r.disown()
	r.log.Debug("terminating run", "reason", detail, "signal", sig.String())
	_ = syscall.Kill(-r.info.PID, sig)
	select {
	case r.escalate <- struct{}{}:
	default:
	}
}

// supervise owns the process from start to trailer: it enforces the
// deadlines, escalates kills, waits for the leader and the output, then
// writes the trailer. The Manager owns this goroutine.
func (r *Run) supervise() {
	defer close(r.supervised)
	cfg := r.m.cfg
	if r.startTicks.Load() == 0 {
		// Before the leader is reaped, which frees its pid.
		r.startTicks.Store(startTicks(r.info.PID))
	}
	// Learns that the leader has exited without reaping it, so that a
	// handover that wins the race (stage) leaves it to the next image.
	// Ends when the leader does.
	exited := make(chan struct{})
	go func() {
		if r.adopted {
			waitGone(r.info.PID, r.info.StartTicks)
		} else {
			waitExited(r.info.PID)
		}
		close(exited)
	}()

	var timeoutC, idleC, killC <-chan time.Time
	if d := r.timeout; d > 0 {
		if r.timeoutLeft > 0 {
			d = r.timeoutLeft
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timeoutC = t.C
	}
	var idle *time.Timer
	if d := r.idleTimeout; d > 0 {
		idle = time.NewTimer(d)
		defer idle.Stop()
		idleC = idle.C
	}
	// A refused fork ends a run with a pids limit at once: a fork bomb
	// would retry forever. The kernel offers no event for it on v1, so
	// look a few times a second.
	var pidsC <-chan time.Time
	if r.group != nil && r.info.Limits.Pids > 0 {
		t := time.NewTicker(pidsPoll)
		defer t.Stop()
		pidsC = t.C
	}
	var waitErr error
loop:
	for {
		select {
		case <-exited:
			if !r.stage.CompareAndSwap(stageRunning, stageEnding) {
				return // handed over: the next image reaps it
			}
			r.state, waitErr = r.reap()
			break loop
		case <-r.handing:
			return
		case <-timeoutC:
			timeoutC = nil
			r.terminate(ReasonTimedOut, "timeout "+r.timeout.String(), syscall.SIGTERM, cfg.KillGrace)
		case <-pidsC:
			if slices.Contains(r.group.Exceeded(), cgroup.LimitPids) {
				pidsC = nil
				r.terminate(ReasonLimitExceeded, r.pidsDetail(), syscall.SIGKILL, cfg.KillGrace)
			}
		case <-idleC:
			silent := time.Since(time.Unix(0, r.lastOutput.Load()))
			if r.own.waiting.Load() > 0 {
				silent = 0 // the process waits for its owner: not idle
			}
			if silent >= r.idleTimeout {
				idleC = nil
				r.terminate(ReasonTimedOut, "idle timeout "+r.idleTimeout.String(), syscall.SIGTERM, cfg.KillGrace)
			} else {
				idle.Reset(r.idleTimeout - silent)
			}
		case <-r.escalate:
			if killC == nil {
				r.mu.Lock()
				grace := r.killGrace
				r.mu.Unlock()
				kt := time.NewTimer(grace)
				defer kt.Stop()
				killC = kt.C
			}
		case <-killC:
			killC = nil
			r.log.Debug("grace over; killing process group")
			_ = syscall.Kill(-r.info.PID, syscall.SIGKILL)
		}
	}
	r.mu.Lock()
	killing := r.killReason != ReasonUnknown
	r.mu.Unlock()
	if killing {
		// The leader is gone but the group may live on (grandchildren
		// ignoring SIGTERM). Its id cannot be reused while members remain.
		_ = syscall.Kill(-r.info.PID, syscall.SIGKILL)
	}

	// Wait for the output to reach EOF so no tail is lost, but not forever:
	// a grandchild may hold the pipe open after the leader has gone. Time
	// spent waiting for the owner to read does not count.
	drained := make(chan struct{})
	go func() { r.copiers.Wait(); close(drained) }()
	drainT := time.NewTimer(cfg.DrainGrace)
	_, waits := r.heldBack(0)
drain:
	for {
		select {
		case <-drained:
			break drain
		case <-drainT.C:
			var held bool
			if held, waits = r.heldBack(waits); held {
				drainT.Reset(cfg.DrainGrace)
				continue
			}
			r.log.Debug("output still open after the leader exited; closing it")
			r.closeOutputs()
			<-drained
			break drain
		}
	}
	drainT.Stop()
	r.closeOutputs()
	// Whatever still holds the pipes gets SIGPIPE at its next write, as
	// with pipes, rather than block for good.
	r.endKeeper()
	r.removeFIFOs()
	// Readers reopen the spools read-only when they want them.
	for _, s := range r.out {
		s.seal()
	}
	r.stdinMu.Lock()
	if r.stdin != nil && r.stdin != r.ptmx {
		r.stdin.Close()
	}
	r.stdin = nil
	r.stdinMu.Unlock()
	if r.ptmx != nil {
		r.ptmx.Close()
	}

	var exceeded []string
	if r.group != nil {
		exceeded = r.group.Exceeded()
		// Kills what the run left behind, even outside its process group.
		if err := r.group.Close(); err != nil {
			r.log.Warn("close cgroup", "error", err)
		}
	}
	t := r.classify(waitErr, exceeded)
	r.finish(t)
}

// pidsPoll is how often a run with a pids limit is checked for refused
// forks.
const pidsPoll = 100 * time.Millisecond

func (r *Run) pidsDetail() string {
	return fmt.Sprintf("pids limit %d exceeded", r.info.Limits.Pids)
}

// closeOutputs closes the read ends of the output pipes, which ends the
// copiers.
func (r *Run) closeOutputs() {
	for _, f := range r.outputs {
		f.Close()
	}
}

// classify turns the leader's wait status, the agent's own kill reason and
// the cgroup limits the run ran into into a trailer.
func (r *Run) classify(waitErr error, exceeded []string) Trailer {
	t := Trailer{ExitCode: -1, EndedAt: time.Now()}
	t.Duration = t.EndedAt.Sub(r.info.StartedAt)
	_, t.StdoutBytes = r.out[0].bounds()
	_, t.StderrBytes = r.out[1].bounds()

	var ws syscall.WaitStatus
	ok := false
	if r.state != nil {
		ws, ok = r.state.Sys().(syscall.WaitStatus)
	}
	if !ok {
		t.Reason = ReasonAgentLost
		t.Detail = fmt.Sprintf("wait: %v", waitErr)
		if r.adopted {
			r.mu.Lock()
			reason, detail := r.killReason, r.killDetail
			r.mu.Unlock()
			t.Detail = adoptedDetail
			switch {
			case slices.Contains(exceeded, cgroup.LimitMemory):
				t.Reason = ReasonLimitExceeded
				t.Detail = fmt.Sprintf("memory_bytes limit %d exceeded", r.info.Limits.MemoryBytes)
			case reason != ReasonUnknown:
				// Whatever its status, the agent was ending it.
				t.Reason, t.Detail = reason, detail
			case slices.Contains(exceeded, cgroup.LimitPids):
				t.Reason, t.Detail = ReasonLimitExceeded, r.pidsDetail()
			}
			t.Detail = joinDetail(t.Detail, r.adoptedLoss())
		}
		return t
	}
	if ws.Signaled() {
		t.Signal = int(ws.Signal())
	}
	r.mu.Lock()
	reason, detail, killSig := r.killReason, r.killDetail, r.killSignal
	r.mu.Unlock()
	tried := ""
	if reason == ReasonKilled && !(ws.Signaled() && (ws.Signal() == killSig || ws.Signal() == syscall.SIGKILL)) {
		// KILLED means the agent's own teardown signal (or the SIGKILL
		// after its grace) ended the process. One that outlived it and
		// exited by itself, or died of something else, is classified as
		// if the agent had not tried; the detail says what it tried.
		reason, tried = ReasonUnknown, detail
	}
	lim := r.info.Limits
	oom := slices.Contains(exceeded, cgroup.LimitMemory)
	switch {
	case ws.Signaled() && oom:
		// The OOM killer's SIGKILL, also when it races a kill of our own.
		t.Reason = ReasonLimitExceeded
		t.Detail = fmt.Sprintf("memory_bytes limit %d exceeded", lim.MemoryBytes)
	case reason != ReasonUnknown:
		t.Reason, t.Detail = reason, detail
	case slices.Contains(exceeded, cgroup.LimitPids):
		// A refused fork ends the run, also when the leader exited before
		// the supervisor saw it.
		t.Reason = ReasonLimitExceeded
		t.Detail = r.pidsDetail()
	case ws.Signaled() && lim.CPUSeconds > 0 && (ws.Signal() == syscall.SIGXCPU || ws.Signal() == syscall.SIGKILL):
		t.Reason = ReasonLimitExceeded
		t.Detail = fmt.Sprintf("cpu_seconds limit %d exceeded", lim.CPUSeconds)
	case ws.Signaled():
		t.Reason = ReasonSignaled
		if lim.AddressSpaceBytes > 0 && (ws.Signal() == syscall.SIGSEGV || ws.Signal() == syscall.SIGABRT || ws.Signal() == syscall.SIGBUS) {
			t.Detail = fmt.Sprintf("possibly the address_space_bytes limit %d", lim.AddressSpaceBytes)
		} else {
			t.Detail = rlimitsInForce(lim)
		}
	default:
		t.Reason = ReasonExited
		t.ExitCode = ws.ExitStatus()
		switch {
		case oom:
			t.Detail = fmt.Sprintf("a process of the run was killed by the memory_bytes limit %d", lim.MemoryBytes)
		case t.ExitCode != 0:
			t.Detail = rlimitsInForce(lim)
		}
	}
	if tried != "" {
		t.Detail = joinDetail(t.Detail, "ended by itself while the agent was ending it ("+tried+")")
	}
	return t
}

func joinDetail(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}

// rlimitsInForce names the rlimits of a run that failed. A process that
// runs into RLIMIT_NOFILE, RLIMIT_AS or RLIMIT_NPROC only sees an error
// (EMFILE, ENOMEM, EAGAIN) and the agent cannot tell whether that is why
// it failed, so the trailer says which were in force rather than claim
// LIMIT_EXCEEDED.
func rlimitsInForce(l Limits) string {
	var in []string
	for _, x := range []struct {
		name string
		v    uint64
	}{{"open_files", l.OpenFiles}, {"address_space_bytes", l.AddressSpaceBytes}, {"processes", l.Processes}} {
		if x.v > 0 {
			in = append(in, fmt.Sprintf("%s %d", x.name, x.v))
		}
	}
	if len(in) == 0 {
		return ""
	}
	return "rlimits in force: " + strings.Join(in, ", ")
}

// finish makes the trailer final, persists it and wakes every reader.
func (r *Run) finish(t Trailer) {
	r.mu.Lock()
	r.trailer = &t
	r.mu.Unlock()
	r.m.runEnded(r) // before Done, so that a waiter may start the next run
	// Queued for writing (see writer for when, and what that means after
	// a crash) before Done: a Close that waited for Done then writes it
	// too, instead of the write landing after Close returned.
	r.m.writer.add(r)
	close(r.done)
	r.broadcast()
	r.log.Debug("run finished", "reason", int(t.Reason), "exit_code", t.ExitCode, "signal", t.Signal)
}

// copyOutput moves one pipe (stream k) into its spool in large chunks
// until EOF, waiting for the run's owner when it would evict what the
// owner has not read.
func (r *Run) copyOutput(k int, f *os.File, s *spool) {
	defer r.copiers.Done()
	// Most runs print little: start with a small buffer and the default
	// pipe, and switch both to readChunk once a read fills the buffer (the
	// process writes faster than we read), which cuts the syscalls and
	// wake-ups per byte of bulk output by 16.
	buf := make([]byte, firstChunk)
	grown := false
	_, end := s.bounds() // only this goroutine writes
	for {
		n, err := f.Read(buf)
		if n > 0 {
			r.lastOutput.Store(time.Now().UnixNano())
			for p := buf[:n]; len(p) > 0; {
				w := r.room(k, end, s.limit, len(p))
				if werr := s.write(p[:w]); werr != nil {
					r.log.Error("spool output", "error", werr)
					// Keep draining so the process is not blocked on a full pipe.
				}
				p = p[w:]
				_, end = s.bounds()
			}
			if n == len(buf) && !grown {
				growPipe(f, readChunk)
				grown = true
				// A named pipe's reads stay small: a crash loses at most
				// the one read it had not spooled (adopt.go).
				if !r.info.OutputFIFOs {
					buf = make([]byte, readChunk)
				}
			}
		}
		if err != nil {
			// A deadline is a handover stopping the copy (handover.go).
			if err != io.EOF && !errors.Is(err, os.ErrClosed) && !errors.Is(err, syscall.EIO) && !errors.Is(err, os.ErrDeadlineExceeded) {
				r.log.Debug("output read ended", "error", err)
			}
			return
		}
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// memOutput returns what a finished run's streams hold in memory, nil
// when both are in their spool files.
func (r *Run) memOutput() *memOutput {
	var out memOutput
	for i, s := range r.out {
		if b, ok := s.memBytes(); ok {
			out[i] = &b
		}
	}
	if out[0] == nil && out[1] == nil {
		return nil
	}
	return &out
}

// settleSpools keeps a finished run's output in memory while the
// manager's budget allows, and moves it into its spool files otherwise:
// both streams or neither.
func (r *Run) settleSpools() {
	for _, s := range r.out {
		if s.charge(&r.m.memLeft) {
			continue
		}
		for _, s := range r.out {
			if err := s.spill(); err != nil { // gives back what it was charged
				r.log.Warn("move output to disk", "error", err)
			}
		}
		return
	}
}

// forget stops the writer from writing r again: it expired and its
// directory goes.
func (r *Run) forget() {
	r.saveMu.Lock()
	r.forgotten = true
	r.saveMu.Unlock()
}
