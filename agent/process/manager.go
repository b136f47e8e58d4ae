package process

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/creack/pty"
	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/agent/cgroup"
	"github.com/dtmux/dtmux/internal/workdir"
)

// Defaults for Config's zero fields.
const (
	DefaultSpoolLimit = 64 << 20
	DefaultRetention  = time.Hour
	DefaultMaxRuns    = 256
	// DefaultKillGrace is how long a process group has between SIGTERM
	// (deadlines, kills, shutdown) and SIGKILL.
	DefaultKillGrace = 2 * time.Second
	// DefaultHangupGrace is how long an attached run has between SIGHUP
	// (its last client went away) and SIGKILL.
	DefaultHangupGrace = 2 * time.Second
	// DefaultDrainGrace bounds the wait for output EOF after the leader has
	// exited (a grandchild may hold the pipe open).
	DefaultDrainGrace = 2 * time.Second
)

// memSpool is how much output of each stream of an attached run stays in
// memory before its spool file is made (see spool).
const memSpool = 64 << 10

// DefaultOutputMemory is Config.OutputMemory's default.
const DefaultOutputMemory = 16 << 20

// Config configures a Manager.
type Config struct {
	// StateDir holds the runs: StateDir/runs/journal (their metadata) and
	// StateDir/runs/ID (the spools of a run that printed something).
	StateDir string
	// Workspace is set as DTMUX_WORKSPACE in every run.
	Workspace string
	// Workdir is the default working directory (and the base of relative
	// ones). Default: the home directory.
	Workdir string
	// SpoolLimit is the default output kept per stream (64 MiB).
	SpoolLimit uint64
	// Retention is how long finished runs stay queryable (1h).
	Retention time.Duration
	// OutputMemory bounds what finished runs keep of their output in
	// memory, in all (DefaultOutputMemory); the rest is in their spool
	// files. Output of attached runs stays in memory up to 64 KiB per
	// stream, and is recorded with the run when it ends.
	OutputMemory int64
	// Env, when set, gives entries (KEY=VALUE) every run's environment
	// gets at its start, after the agent's own and before the run's
	// (Spec.Env wins): the forwarded ssh agent (package sshauth).
	Env func() []string
	// MaxRuns caps the runs running at once (256).
	MaxRuns int
	// KillGrace, HangupGrace and DrainGrace: see the Default constants.
	KillGrace   time.Duration
	HangupGrace time.Duration
	DrainGrace  time.Duration
	// LimitHelper is the command prefix that applies rlimits and then
	// execs the program (default: this executable and ExecLimitedCommand).
	LimitHelper []string
	// Cgroups puts runs with memory, pids or CPU limits in control groups.
	// Nil (or a Manager without cgroups) refuses such limits.
	Cgroups *cgroup.Manager
	// Handover are the runs the previous image of this process handed over
	// (Manager.HandOver): they go on as runs of this manager. The
	// descriptors of those not resumed are closed.
	Handover []Handed
	// Logger is named "runs" by the manager.
	Logger hclog.Logger
}

// Manager starts, tracks and remembers runs.
type Manager struct {
	cfg     Config
	log     hclog.Logger
	journal *journal // run metadata; set by loadAll
	runsDir string

	stop     chan struct{}
	sweeping sync.WaitGroup
	writer   *writer // persists run metadata off the start path
	// memLeft is what finished runs may still keep of their output in
	// memory (Config.OutputMemory less what they keep).
	memLeft atomic.Int64

	// sleep is the keeper of runs' named pipes (adopt.go); "" when there
	// is none, and detached runs use pipes.
	sleep string

	// reapers wait for children the previous image could not hand over
	// (Handed.ReapOnly, or a resume that failed); each ends when its child
	// does, and nothing waits for them.
	reapers sync.WaitGroup

	mu   sync.Mutex
	runs map[string]*Run // guarded by mu
	// reapOnly are those children while they run: a handover passes them
	// on again.
	reapOnly map[int]string // guarded by mu; pid → run id
	running  int            // guarded by mu; runs not yet finished
	closed   bool           // guarded by mu
}

// NewManager opens the state directory, loads the runs of earlier agents
// (those in flight then are finished as AGENT_LOST) and starts the
// retention sweeper.
func NewManager(cfg Config) (*Manager, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("run manager: no state directory")
	}
	if cfg.Workdir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, fmt.Errorf("run manager: default workdir: %w", err)
		}
		cfg.Workdir = home
	}
	if cfg.SpoolLimit == 0 {
		cfg.SpoolLimit = DefaultSpoolLimit
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.OutputMemory <= 0 {
		cfg.OutputMemory = DefaultOutputMemory
	}
	if cfg.MaxRuns <= 0 {
		cfg.MaxRuns = DefaultMaxRuns
	}
	if cfg.KillGrace <= 0 {
		cfg.KillGrace = DefaultKillGrace
	}
	if cfg.HangupGrace <= 0 {
		cfg.HangupGrace = DefaultHangupGrace
	}
	if cfg.DrainGrace <= 0 {
		cfg.DrainGrace = DefaultDrainGrace
	}
	if len(cfg.LimitHelper) == 0 {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("run manager: find own executable: %w", err)
		}
		cfg.LimitHelper = []string{self, ExecLimitedCommand}
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		sleep = ""
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	m := &Manager{
		cfg:     cfg,
		log:     cfg.Logger.Named("runs"),
		runsDir: filepath.Join(cfg.StateDir, "runs"),
		stop:    make(chan struct{}),
		runs:    map[string]*Run{},
		writer:  newWriter(),
		sleep:   sleep,
	}
	if sleep == "" {
		m.log.Warn("no sleep command on PATH: detached runs will not outlive this agent", "error", err)
	}
	m.memLeft.Store(cfg.OutputMemory)
	if err := os.MkdirAll(m.runsDir, 0o700); err != nil {
		return nil, fmt.Errorf("run manager: %w", err)
	}
	if err := m.loadAll(); err != nil {
		return nil, err
	}
	m.hangUpOrphans()
	m.sweeping.Add(1)
	go m.sweep()
	go m.writer.loop()
	return m, nil
}

var runIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ValidateRunID checks a run id's syntax.
func ValidateRunID(id string) error {
	if !runIDPattern.MatchString(id) || id == "." || id == ".." {
		return fmt.Errorf("run id %q: want 1 to 64 letters, digits, '.', '_' or '-': %w", id, ErrInvalidSpec)
	}
	return nil
}

func validate(s Spec) error {
	if s.ID != "" {
		if err := ValidateRunID(s.ID); err != nil {
			return err
		}
	}
	if len(s.Argv) == 0 || (len(s.Argv) == 1 && s.Argv[0] == "") {
		return fmt.Errorf("empty argv: %w", ErrInvalidSpec)
	}
	for i, a := range s.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("argv[%d] contains a NUL byte: %w", i, ErrInvalidSpec)
		}
	}
	if s.Argv[0] == "" {
		return fmt.Errorf("argv[0] is empty: %w", ErrInvalidSpec)
	}
	for _, env := range []struct {
		m      map[string]string
		secret bool
	}{{s.Env, false}, {s.SecretEnv, true}} {
		for k, v := range env.m {
			if k == "" || strings.ContainsAny(k, "=\x00") {
				return fmt.Errorf("env key %q: must be non-empty without '=' or NUL: %w", k, ErrInvalidSpec)
			}
			if strings.IndexByte(v, 0) >= 0 {
				// Never quote the value: it may be a secret.
				return fmt.Errorf("env %q: value contains a NUL byte: %w", k, ErrInvalidSpec)
			}
		}
	}
	if strings.IndexByte(s.Cwd, 0) >= 0 {
		return fmt.Errorf("cwd contains a NUL byte: %w", ErrInvalidSpec)
	}
	for k, v := range s.Labels {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("label %q: not valid UTF-8: %w", k, ErrInvalidSpec)
		}
	}
	if s.Timeout < 0 || s.IdleTimeout < 0 {
		return fmt.Errorf("negative timeout: %w", ErrInvalidSpec)
	}
	return checkRlimits(s.Limits)
}

// Start starts a run, or returns the existing run with spec.ID (existing
// true) without running anything again.
//
// The process's lifetime is deliberately not tied to any request context:
// a run outlives the call that started it (detached runs, reattach after a
// reconnect); only deadlines, kills, and hang-ups end it.
func (m *Manager) Start(spec Spec) (run *Run, existing bool, err error) {
	if err := validate(spec); err != nil {
		return nil, false, err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, false, ErrClosed
	}
	if spec.ID != "" {
		if r, ok := m.runs[spec.ID]; ok {
			m.mu.Unlock()
			<-r.ready
			if r.startErr != nil {
				return nil, false, r.startErr
			}
			// A retried start (a fleet retry, a reconnect) attaches; an
			// id reused for another command must not silently show the
			// old one's output and status.
			if !r.sameCommand(spec, m.resolveCwd(spec.Cwd)) {
				return nil, false, fmt.Errorf("run id %s already exists with a different command: %w", spec.ID, ErrRunIDConflict)
			}
			return r, true, nil
		}
	}
	if m.running >= m.cfg.MaxRuns {
		m.mu.Unlock()
		return nil, false, fmt.Errorf("%w: the agent runs at most %d at once (--max-runs)", ErrTooManyRuns, m.cfg.MaxRuns)
	}
	id := spec.ID
	for id == "" || m.runs[id] != nil {
		id = newRunID()
	}
	r := m.newRun(id, filepath.Join(m.runsDir, id))
	r.info.ID = id
	m.runs[id] = r
	m.running++
	m.mu.Unlock()

	if err := m.spawn(r, spec); err != nil {
		m.mu.Lock()
		delete(m.runs, id)
		m.running--
		m.mu.Unlock()
		r.startErr = err
		close(r.ready)
		os.RemoveAll(r.dir)
		return nil, false, err
	}
	close(r.ready)
	return r, false, nil
}

// newRun makes the Run value. Its directory (dir) is made when a spool
// needs it.
func (m *Manager) newRun(id, dir string) *Run {
	r := &Run{
		m:          m,
		log:        m.log.With("run_id", id),
		dir:        dir,
		ready:      make(chan struct{}),
		handing:    make(chan struct{}),
		supervised: make(chan struct{}),
		escalate:   make(chan struct{}, 1),
		done:       make(chan struct{}),
		notify:     make(chan struct{}),
		own:        newOwner(),
	}
	r.prepareDir = sync.OnceValue(func() error {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("run directory: %w", err)
		}
		return nil
	})
	return r
}

// streamNames name a run's output streams (and their spool files), in
// the order of Run.out.
var streamNames = [2]string{"stdout", "stderr"}

// spoolLimit is how much of each stream a run with limits l keeps.
func (m *Manager) spoolLimit(l Limits) uint64 {
	if l.MaxOutputBytes == 0 {
		return m.cfg.SpoolLimit
	}
	return l.MaxOutputBytes
}

// resolveCwd is the working directory a run with cwd gets.
func (m *Manager) resolveCwd(cwd string) string { return workdir.Resolve(m.cfg.Workdir, cwd) }

// sameCommand reports whether spec (whose working directory resolves to
// cwd) asks for the command r runs: the same argv, shell and working
// directory.
func (r *Run) sameCommand(spec Spec, cwd string) bool {
	return slices.Equal(r.info.Argv, spec.Argv) && r.info.Shell == spec.Shell &&
		filepath.Clean(r.info.Cwd) == filepath.Clean(cwd)
}

func newRunID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return time.Now().UTC().Format("20060102-150405-") + hex.EncodeToString(b[:])
}

// spawn prepares and starts the process of r. Callers own r exclusively
// until ready is closed.
func (m *Manager) spawn(r *Run, spec Spec) error {
	cwd := m.resolveCwd(spec.Cwd)
	if fi, err := os.Stat(cwd); err != nil {
		return fmt.Errorf("cwd %q: %w: %w", cwd, ErrBadCwd, err)
	} else if !fi.IsDir() {
		return fmt.Errorf("cwd %q is not a directory: %w", cwd, ErrBadCwd)
	}

	argv := spec.Argv
	if spec.Shell {
		argv = []string{"/bin/sh", "-c", strings.Join(spec.Argv, " ")}
	}
	pathEnv, ok := spec.Env["PATH"]
	if !ok {
		pathEnv = os.Getenv("PATH")
	}
	prog, err := lookPath(argv[0], cwd, pathEnv)
	if err != nil {
		return err
	}

	limits := spec.Limits
	limits.MaxOutputBytes = m.spoolLimit(limits)
	r.info.Argv = slices.Clone(spec.Argv)
	r.info.Shell = spec.Shell
	r.info.Cwd = cwd
	r.info.Env = maps.Clone(spec.Env)
	r.info.SecretEnvKeys = sortedKeys(spec.SecretEnv)
	r.info.Detached = spec.Detach
	r.info.PTY = spec.PTY != nil
	r.info.OutputFIFOs = spec.Detach && spec.PTY == nil
	r.info.Labels = maps.Clone(spec.Labels)
	r.info.Limits = limits
	r.timeout, r.idleTimeout = spec.Timeout, spec.IdleTimeout
	r.info.Timeout, r.info.IdleTimeout = spec.Timeout, spec.IdleTimeout
	if spec.Owner && !spec.Detach {
		r.own.active.Store(true)
	}

	// Nothing touches the disk before the process starts: the metadata is
	// recorded by the manager's writer in the background (see writer); an
	// attached run's output starts in memory (see spool).
	memMax := memSpool
	if spec.Detach {
		memMax = 0
	}
	for i, name := range streamNames {
		r.out[i] = newSpool(filepath.Join(r.dir, name), limits.MaxOutputBytes, memMax, r.broadcast, r.prepareDir)
	}

	env := os.Environ()
	if m.cfg.Env != nil {
		env = append(env, m.cfg.Env()...)
	}
	for _, k := range sortedKeys(spec.Env) {
		env = append(env, k+"="+spec.Env[k])
	}
	for _, k := range r.info.SecretEnvKeys {
		env = append(env, k+"="+spec.SecretEnv[k])
	}
	env = append(env, "DTMUX_WORKSPACE="+m.cfg.Workspace, "DTMUX_RUN_ID="+r.info.ID)
	if spec.PTY != nil {
		term := spec.PTY.Term
		if term == "" {
			term = "xterm-256color"
		}
		env = append(env, "TERM="+term)
	}

	var cgroupDirs []string
	if limits.hasCgroupLimits() {
		g, err := m.createGroup(r.info.ID, limits)
		if err != nil {
			r.closeSpools()
			return err
		}
		r.group = g
		cgroupDirs = g.Dirs()
	}

	var cmd *exec.Cmd
	if limits.hasRlimits() || len(cgroupDirs) > 0 {
		// Secrets stay in the environment; only limits and argv are
		// on the helper's command line.
		helper := m.cfg.LimitHelper
		cmd = exec.Command(helper[0], append(slices.Clone(helper[1:]), limitArgs(limits, cgroupDirs, prog, argv)...)...)
	} else {
		cmd = exec.Command(prog)
		cmd.Args = argv
	}
	cmd.Env = env
	cmd.Dir = cwd

	if err := m.startProcess(r, cmd, spec.PTY, spec.NoStdin); err != nil {
		r.closeSpools()
		if r.group != nil {
			_ = r.group.Close()
		}
		return err
	}
	r.proc, r.reap = cmd.Process, func() (*os.ProcessState, error) { err := cmd.Wait(); return cmd.ProcessState, err }
	r.info.PID = cmd.Process.Pid
	if r.info.Detached {
		// Recorded below, before the start is reported; an attached
		// run's supervisor reads it off this path (see supervise).
		r.startTicks.Store(startTicks(r.info.PID))
	}
	r.info.StartedAt = time.Now()
	r.lastOutput.Store(r.info.StartedAt.UnixNano())
	r.log.Debug("run started", "pid", r.info.PID, "argc", len(argv), "pty", r.info.PTY, "detached", r.info.Detached)

	r.watch()
	if r.info.Detached {
		// A detached run is the one a client comes back for, possibly
		// after an agent crash: record it before its start is reported.
		// Attached runs are recorded in the background; their client's
		// stream ends with the agent anyway.
		if err := r.persist(); err != nil {
			r.log.Warn("persist detached run", "error", err)
		}
	}
	m.writer.add(r)
	return nil
}

// startProcess starts cmd in its own process group (or session, with a
// PTY) and wires its stdio.
func (m *Manager) startProcess(r *Run, cmd *exec.Cmd, p *PTY, noStdin bool) error {
	if p != nil {
		rows, cols := p.Rows, p.Cols
		if rows == 0 {
			rows = 24
		}
		if cols == 0 {
			cols = 80
		}
		ptmx, err := pty.StartWithAttrs(cmd, &pty.Winsize{Rows: rows, Cols: cols}, &syscall.SysProcAttr{Setsid: true, Setctty: true})
		if err != nil {
			return execError(cmd.Path, err)
		}
		// In Go's poller, so that a handover (handover.go) can stop a read
		// in progress with a deadline, as on the pipes of other runs.
		if polled, err := pollable(ptmx); err == nil {
			ptmx = polled
		}
		r.ptmx, r.stdin, r.input = ptmx, ptmx, ptmx
		r.outputs = []*os.File{ptmx}
		return nil
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var files []*os.File // every end, for cleanup on failure
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	pipe := func(childReads bool) (*os.File, *os.File, error) {
		rd, wr, err := childPipe(childReads)
		if err == nil {
			files = append(files, rd, wr)
		}
		return rd, wr, err
	}
	var inR, inW *os.File // nil with noStdin: exec gives the child /dev/null
	var err1 error
	if !noStdin {
		inR, inW, err1 = pipe(true)
	}
	var outR, outW, errR, errW *os.File
	var err2, err3 error
	if r.info.OutputFIFOs {
		fifos, err := r.makeFIFOs()
		if err != nil {
			r.log.Warn("output through pipes: its named pipes could not be made, so it will not outlive the agent", "error", err)
			r.info.OutputFIFOs = false
		} else {
			files = append(files, fifos[:]...)
			outR, outW, errR, errW = fifos[0], fifos[1], fifos[2], fifos[3]
			closeAll = func() {
				for _, f := range files {
					f.Close()
				}
				r.endKeeper()
				r.removeFIFOs()
			}
		}
	}
	if !r.info.OutputFIFOs {
		outR, outW, err2 = pipe(false)
		errR, errW, err3 = pipe(false)
	}
	if err := errors.Join(err1, err2, err3); err != nil {
		closeAll()
		return fmt.Errorf("start run: %w", err)
	}
	if inR != nil {
		cmd.Stdin = inR
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	if err := cmd.Start(); err != nil {
		closeAll()
		return execError(cmd.Path, err)
	}
	// The child holds its ends now.
	if inR != nil {
		inR.Close()
		r.stdin, r.input = inW, inW
	}
	outW.Close()
	errW.Close()
	r.outputs = []*os.File{outR, errR}
	return nil
}

// lookPath finds the program the way a shell would, with the run's PATH
// and working directory: a name with a slash is used as it is; a PATH
// search skips directories and, when it finds only files it may not
// execute, says so (a shell's 126) rather than "not found" (127).
func lookPath(name, cwd, pathEnv string) (string, error) {
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(cwd, p)
		}
		fi, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
			return "", fmt.Errorf("%q: no such file or directory: %w", name, ErrProgramNotFound)
		case err != nil:
			return "", fmt.Errorf("%q: %w: %w", name, ErrProgramNotExecutable, err)
		case fi.IsDir():
			return "", fmt.Errorf("%q: is a directory: %w", name, ErrProgramNotExecutable)
		case fi.Mode().Perm()&0o111 == 0:
			return "", fmt.Errorf("%q: permission denied (not executable): %w", name, ErrProgramNotExecutable)
		}
		return p, nil
	}
	denied := ""
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(cwd, dir)
		}
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p)
		switch {
		case err != nil || fi.IsDir():
		case fi.Mode().Perm()&0o111 != 0:
			return p, nil
		case denied == "":
			denied = p
		}
	}
	if denied != "" {
		return "", fmt.Errorf("%q: permission denied (%s is not executable): %w", name, denied, ErrProgramNotExecutable)
	}
	return "", fmt.Errorf("%q: %w in PATH", name, ErrProgramNotFound)
}

// execError classifies a failed exec of prog like a shell does: a file
// the kernel will not execute (no permission, a directory, an unknown
// format, a script whose interpreter is missing) is ErrProgramNotExecutable.
func execError(prog string, err error) error {
	switch {
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("start %s: permission denied (not executable): %w", prog, ErrProgramNotExecutable)
	case errors.Is(err, syscall.ENOEXEC):
		return fmt.Errorf("start %s: exec format error: %w", prog, ErrProgramNotExecutable)
	case errors.Is(err, syscall.ENOENT):
		// The program was found, so it is its interpreter that is not.
		return fmt.Errorf("start %s: bad interpreter: no such file or directory: %w", prog, ErrProgramNotExecutable)
	case errors.Is(err, syscall.EISDIR):
		return fmt.Errorf("start %s: is a directory: %w", prog, ErrProgramNotExecutable)
	case errors.Is(err, syscall.E2BIG):
		return fmt.Errorf("start %s: argument list and environment too long for the kernel (E2BIG; one argument or variable may hold at most 128 KiB): %w", prog, ErrInvalidSpec)
	}
	return fmt.Errorf("start %s: %w", prog, err)
}

// closeSpools forgets the run's output: readers get ErrRunNotFound.
func (r *Run) closeSpools() {
	for _, s := range r.out {
		if s != nil {
			s.remove()
		}
	}
}

// createGroup puts a run with memory, pids or CPU limits in a cgroup.
func (m *Manager) createGroup(id string, l Limits) (*cgroup.Group, error) {
	cg := m.cfg.Cgroups
	if cg == nil {
		return nil, fmt.Errorf("limits memory_bytes, pids and cpu_millis need cgroups, which this agent was not given: %w", ErrLimitUnavailable)
	}
	g, err := cg.Create(id, cgroup.Limits{MemoryBytes: l.MemoryBytes, Pids: l.Pids, CPUMillis: l.CPUMillis})
	switch {
	case errors.Is(err, cgroup.ErrUnavailable):
		return nil, fmt.Errorf("limits memory_bytes, pids and cpu_millis need cgroups, which this host does not offer (%s): %w", cg.Reason(), ErrLimitUnavailable)
	case errors.Is(err, cgroup.ErrUnsupportedLimit):
		return nil, fmt.Errorf("%v (usable controllers: %s): %w", err, strings.Join(cg.Controllers(), ", "), ErrLimitUnavailable)
	case err != nil:
		return nil, fmt.Errorf("start run: %w", err)
	}
	return g, nil
}

// runEnded is called once by each run's supervisor.
func (m *Manager) runEnded(*Run) {
	m.mu.Lock()
	m.running--
	m.mu.Unlock()
}

// Get returns the run with id.
func (m *Manager) Get(id string) (*Run, error) {
	if err := ValidateRunID(id); err != nil {
		return nil, err
	}
	m.mu.Lock()
	r, ok := m.runs[id]
	m.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("run %q: %w", id, ErrRunNotFound)
	}
	<-r.ready
	if r.startErr != nil {
		return nil, fmt.Errorf("run %q: %w", id, ErrRunNotFound)
	}
	return r, nil
}

// List describes the runs carrying all of labels, oldest first.
func (m *Manager) List(labels map[string]string) []Info {
	m.mu.Lock()
	runs := make([]*Run, 0, len(m.runs))
	for _, r := range m.runs {
		runs = append(runs, r)
	}
	m.mu.Unlock()
	var out []Info
	for _, r := range runs {
		<-r.ready
		if r.startErr != nil {
			continue
		}
		in := r.Info()
		match := true
		for k, v := range labels {
			if got, ok := in.Labels[k]; !ok || got != v {
				match = false
				break
			}
		}
		if match {
			out = append(out, in)
		}
	}
	slices.SortFunc(out, func(a, b Info) int {
		if c := a.StartedAt.Compare(b.StartedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// Close stops the manager: attached runs are killed (KILLED, "agent
// shutting down") and waited for; detached runs keep running and will be
// found as AGENT_LOST by the next agent. New starts fail with ErrClosed.
func (m *Manager) Close() error { return m.close(closeLeave, nil) }

// CloseAll stops the manager like Close, but ends every run: detached runs
// are killed and waited for too ("agent stopped with every run"), and the
// process groups that runs of an earlier agent left running (see
// orphan.go) get SIGKILL. For a workspace that is stopped or deleted.
func (m *Manager) CloseAll() error { return m.close(closeAll, nil) }

// What close does with detached runs still going.
type closeMode int

const (
	closeLeave    closeMode = iota // they keep going (Close)
	closeAll                       // they are killed (CloseAll)
	closeHandOver                  // they go to the next image (HandOver)
)

func (m *Manager) close(mode closeMode, handed *[]Handed) error {
	all := mode == closeAll
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	var kill []*Run
	for _, r := range m.runs {
		kill = append(kill, r)
	}
	m.mu.Unlock()
	close(m.stop)
	m.sweeping.Wait()
	// After the runs below have ended: writes what is queued, trailers and
	// detached runs the next agent must find; later writes happen in the
	// caller.
	defer m.journal.close()
	defer m.writer.close()

	detail := "agent shutting down"
	if all {
		detail = "agent stopped with every run"
	}
	var waitFor []*Run
	for _, r := range kill {
		<-r.ready
		if r.startErr != nil || (r.info.Detached && !r.finished() && !all) {
			switch {
			case r.startErr != nil:
			case mode == closeHandOver && !r.adopted:
				if h, ok := r.handOver(); ok {
					*handed = append(*handed, h)
				} else if r.stage.Load() != stageHanded {
					// It exited as the handover began, or is being
					// killed: its trailer is recorded before the exec.
					waitFor = append(waitFor, r)
				}
			case r.info.OutputFIFOs:
				// The next agent (or image) adopts it (adopt.go): what
				// was read from its pipes is spooled before this one
				// goes, so that nothing is lost in between.
				if r.unwatch() {
					r.release()
				} else if r.stage.Load() != stageHanded {
					waitFor = append(waitFor, r)
				}
			}
			continue
		}
		if all && r.proc == nil && r.orphan {
			if err := r.signalOrphan(syscall.SIGKILL); err == nil {
				m.log.Info("killed the process group an earlier agent left running", "run_id", r.info.ID, "pid", r.info.PID)
			}
			continue
		}
		// Finished runs may still be persisting their trailer: wait.
		if !r.finished() {
			r.Kill(detail)
		}
		waitFor = append(waitFor, r)
	}
	if mode == closeHandOver {
		// Whatever still runs here and was not handed over stays a child
		// of this process across the exec: the next image reaps it.
		defer func() {
			for _, r := range kill {
				// A run whose supervisor got to reap it (stageEnding) is
				// no child any more.
				if r.proc != nil && !r.adopted && !r.finished() && r.stage.Load() != stageEnding && !slices.ContainsFunc(*handed, func(h Handed) bool { return h.ID == r.info.ID }) {
					*handed = append(*handed, Handed{ID: r.info.ID, PID: r.info.PID, Outputs: [2]int{-1, -1}, Stdin: -1, ReapOnly: true})
				}
			}
			m.mu.Lock()
			for pid, id := range m.reapOnly {
				*handed = append(*handed, Handed{ID: id, PID: pid, Outputs: [2]int{-1, -1}, Stdin: -1, ReapOnly: true})
			}
			m.mu.Unlock()
		}()
	}
	deadline := time.NewTimer(m.cfg.KillGrace + m.cfg.DrainGrace + time.Second)
	defer deadline.Stop()
	for _, r := range waitFor {
		select {
		case <-r.done:
		case <-deadline.C:
			return fmt.Errorf("close run manager: run %s did not end", r.info.ID)
		}
	}
	return nil
}

// sweep forgets finished runs older than the retention.
func (m *Manager) sweep() {
	defer m.sweeping.Done()
	every := min(max(m.cfg.Retention/4, 10*time.Millisecond), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case now := <-t.C:
			m.sweepOnce(now)
		}
	}
}

func (m *Manager) sweepOnce(now time.Time) {
	var expired []*Run
	m.mu.Lock()
	for _, r := range m.runs {
		if !r.finished() {
			continue
		}
		if t := r.Trailer(); t != nil && now.Sub(t.EndedAt) > m.cfg.Retention {
			expired = append(expired, r)
		}
	}
	m.mu.Unlock()
	for _, r := range expired {
		r.forget()
		if err := m.journal.gone(r.info.ID); err != nil {
			m.log.Warn("forget expired run", "run_id", r.info.ID, "error", err)
		}
		r.closeSpools()
		if err := os.RemoveAll(r.dir); err != nil {
			m.log.Warn("remove expired run", "run_id", r.info.ID, "error", err)
		}
		// Only now, so that its id is not reused (and its new directory
		// removed here) while the old one goes, and so that a run that is
		// not found has no directory left.
		m.mu.Lock()
		if m.runs[r.info.ID] == r {
			delete(m.runs, r.info.ID)
		}
		m.mu.Unlock()
		m.log.Debug("run expired", "run_id", r.info.ID)
	}
}

// loadAll brings back the runs recorded by earlier agents: those in the
// journal, and those in the per-run metadata files that agents before the
// journal wrote (moved into it). A run directory nobody recorded is a
// leftover of a run that was never recorded, and goes.
func (m *Manager) loadAll() error {
	j, infos, bad, err := openJournal(m.runsDir)
	if err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	m.journal = j
	if bad > 0 {
		m.log.Warn("skipped unreadable lines of the run journal", "lines", bad)
	}
	entries, err := os.ReadDir(m.runsDir)
	if err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	recorded := map[string]bool{}
	for _, l := range infos {
		recorded[l.ID] = true
	}
	for _, e := range entries {
		id := e.Name()
		if !e.IsDir() || ValidateRunID(id) != nil || recorded[id] {
			continue
		}
		dir := filepath.Join(m.runsDir, id)
		info, err := loadLegacyMeta(dir)
		if err == nil && info.ID == id {
			infos = append(infos, loaded{Info: info})
			os.Remove(filepath.Join(dir, legacyMeta))
			continue
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			m.log.Warn("forgetting unreadable run", "dir", dir, "error", err)
		}
		os.RemoveAll(dir)
	}
	now := time.Now()
	handed := handedByID(m.cfg.Handover)
	for id, h := range handed {
		if h.ReapOnly {
			delete(handed, id)
			m.reapChild(h.PID, h.ID)
		}
	}
	for _, l := range infos {
		if h, ok := handed[l.ID]; ok && l.State != StateFinished && l.Detached && l.PID == h.PID {
			delete(handed, l.ID)
			r, err := m.resume(l.Info, h)
			if err == nil {
				m.runs[r.info.ID] = r
				continue
			}
			m.log.Warn("resume handed-over run", "error", err)
			h.Close()
			m.reapChild(h.PID, h.ID)
		}
		if l.OutputFIFOs && l.Detached && (l.State != StateFinished || l.Trailer == nil) {
			r, err := m.adopt(l.Info)
			if err == nil {
				m.runs[r.info.ID] = r
				continue
			}
			m.log.Info("not adopting a run of an earlier agent", "error", err)
		}
		if r := m.load(l, now); r != nil {
			m.runs[r.info.ID] = r
		}
	}
	for _, h := range handed {
		m.log.Warn("a handed-over run is not in the journal", "run_id", h.ID)
		h.Close()
		m.reapChild(h.PID, h.ID)
	}
	// Drops the history of the runs above, and of the expired ones.
	if err := j.compact(); err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	return nil
}

// load makes the Run of info, recorded by an earlier agent: finished as
// AGENT_LOST when it was in flight then, nil (and gone from disk) when it
// has expired or its spools are unreadable.
func (m *Manager) load(l loaded, now time.Time) *Run {
	info := l.Info
	id := info.ID
	dir := filepath.Join(m.runsDir, id)
	inFlight := info.State != StateFinished || info.Trailer == nil
	r := m.newRun(id, dir)
	close(r.ready)
	close(r.done)
	limit := m.spoolLimit(info.Limits)
	for i, name := range streamNames {
		recorded := info.StdoutBytes
		if i == 1 {
			recorded = info.StderrBytes
		}
		path := filepath.Join(dir, name)
		if l.output != nil && l.output[i] != nil {
			r.out[i] = loadMemSpool(path, limit, *l.output[i], recorded, r.broadcast, r.prepareDir)
			if !r.out[i].charge(&m.memLeft) {
				if err := r.out[i].spill(); err != nil {
					m.log.Warn("move output to disk", "run_id", id, "error", err)
				}
			}
			continue
		}
		s, err := loadSpool(path, limit, inFlight, recorded)
		if err != nil {
			m.log.Warn("forgetting run with an unreadable spool", "run_id", id, "error", err)
			r.closeSpools()
			m.discard(id, dir)
			return nil
		}
		r.out[i] = s
	}
	t := info.Trailer
	if inFlight {
		// Not adopted: what holds its pipes open goes, so that what it
		// left behind gets SIGPIPE at its next write, as with pipes.
		stopKeeper(info.KeeperPID, info.KeeperTicks)
		info.KeeperPID = 0
		for _, name := range streamNames {
			os.Remove(filepath.Join(dir, name+".fifo"))
		}
		detail := "the agent stopped while the run was in flight"
		if !info.Detached {
			detail += "; the run was attached and its client went with the agent, so its process group is hung up"
			if _, err := os.Stat(filepath.Join(dir, "stdout")); err != nil {
				// Its output had not outgrown memory (see spool).
				detail += "; its output was in the agent's memory and went with it"
			}
		}
		t = &Trailer{
			Reason:   ReasonAgentLost,
			ExitCode: -1,
			Detail:   detail,
			EndedAt:  now,
			Duration: now.Sub(info.StartedAt),
		}
		_, t.StdoutBytes = r.out[0].bounds()
		_, t.StderrBytes = r.out[1].bounds()
		info.State = StateFinished
		info.Trailer = t
	}
	if now.Sub(t.EndedAt) > m.cfg.Retention {
		r.closeSpools()
		m.discard(id, dir)
		return nil
	}
	if err := m.journal.set(info, r.memOutput()); err != nil {
		m.log.Warn("persist loaded run", "run_id", id, "error", err)
	}
	r.savedFinal = true
	info.Trailer = nil
	r.info = info
	r.trailer = t
	// An orphan's group may run on; one gone already at load never ran on
	// after the restart (a PTY's hangup, a run that ended meanwhile).
	r.orphan = t.Reason == ReasonAgentLost && info.PID > 0 && (!inFlight || m.groupAlive(info))
	return r
}

// discard forgets a run of an earlier agent (loadAll rewrites the journal
// afterwards).
func (m *Manager) discard(id, dir string) {
	m.journal.unset(id)
	os.RemoveAll(dir)
}

// Sync returns once the metadata of every run started or finished before
// the call is written (see writer for when that happens by itself).
func (m *Manager) Sync() { m.writer.flush() }

// StateDir is where the runs are kept.
func (m *Manager) StateDir() string { return m.cfg.StateDir }
