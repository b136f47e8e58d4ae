// Package process runs commands for the agent: process groups, PTYs,
// deadlines, rlimits, a bounded on-disk output spool per stream that any
// number of readers follow by offset, and run metadata that outlives an
// agent restart. It knows nothing of gRPC.
package process

import (
	"fmt"
	"time"
)

// Stream names an output stream.
type Stream int

// The output streams. With a PTY everything is Stdout.
const (
	Stdout Stream = 1
	Stderr Stream = 2
)

func (s Stream) String() string {
	switch s {
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	}
	return fmt.Sprintf("stream(%d)", int(s))
}

// Reason says why a run ended.
type Reason int

// Exit reasons; the numbers match the API's ExitReason.
const (
	ReasonUnknown       Reason = 0
	ReasonExited        Reason = 1
	ReasonSignaled      Reason = 2
	ReasonTimedOut      Reason = 3
	ReasonKilled        Reason = 4
	ReasonAgentLost     Reason = 5
	ReasonLimitExceeded Reason = 6
)

// State is where a run is in its life.
type State int

// Run states; the numbers match the API's RunState.
const (
	StateRunning  State = 1
	StateFinished State = 2
)

// Limits bound what one run may consume. Zero means the agent default
// (MaxOutputBytes) or unlimited (the rlimits).
type Limits struct {
	// MaxOutputBytes is how much output is kept per stream.
	MaxOutputBytes uint64 `json:"max_output_bytes,omitempty"`
	// CPUSeconds is RLIMIT_CPU.
	CPUSeconds uint64 `json:"cpu_seconds,omitempty"`
	// AddressSpaceBytes is RLIMIT_AS.
	AddressSpaceBytes uint64 `json:"address_space_bytes,omitempty"`
	// OpenFiles is RLIMIT_NOFILE.
	OpenFiles uint64 `json:"open_files,omitempty"`
	// Processes is RLIMIT_NPROC.
	Processes uint64 `json:"processes,omitempty"`
	// MemoryBytes is the cgroup memory limit: the kernel's OOM killer
	// stops the run (LIMIT_EXCEEDED) when it is exceeded.
	MemoryBytes uint64 `json:"memory_bytes,omitempty"`
	// Pids is the cgroup pids limit: the first fork it refuses ends the
	// run (LIMIT_EXCEEDED), since a fork bomb would retry forever.
	Pids uint64 `json:"pids,omitempty"`
	// CPUMillis is the cgroup CPU quota in thousandths of a CPU.
	CPUMillis uint64 `json:"cpu_millis,omitempty"`
}

func (l Limits) hasRlimits() bool {
	return l.CPUSeconds > 0 || l.AddressSpaceBytes > 0 || l.OpenFiles > 0 || l.Processes > 0
}

func (l Limits) hasCgroupLimits() bool {
	return l.MemoryBytes > 0 || l.Pids > 0 || l.CPUMillis > 0
}

// PTY asks for a pseudo-terminal.
type PTY struct {
	Rows, Cols uint16
	// Term is TERM for the process (default xterm-256color).
	Term string
}

// Spec says what to run.
type Spec struct {
	// ID is the client-chosen run id; empty means the manager picks one.
	ID string
	// Argv is the program and its arguments; with Shell the words are
	// joined with spaces and run by /bin/sh -c.
	Argv  []string
	Shell bool
	// Env is added to the agent's environment.
	Env map[string]string
	// SecretEnv is added too, but its values are never persisted, logged,
	// put on a command line or returned in an Info.
	SecretEnv map[string]string
	// Cwd is the working directory; empty or relative is resolved against
	// the manager's Workdir.
	Cwd string
	// PTY, when set, runs the process on a pseudo-terminal.
	PTY *PTY
	// Detach keeps the run going when its last Exec client goes away.
	Detach bool
	// NoStdin gives the process /dev/null as its standard input (as ssh
	// -n) instead of a pipe the client writes; ignored with a PTY.
	NoStdin bool
	// Owner says the caller will read the output from the start through
	// Run.OwnerReader and that the output must reach it byte-exact, as
	// ssh's does: when the owner falls a whole spool behind, the process
	// waits (blocked on its write) instead of losing bytes. Only for
	// attached runs: ignored with Detach, and when the start attaches to
	// an existing run. A caller that sets it must take the OwnerReader
	// and Close it.
	Owner bool
	// Timeout is the wall-clock deadline; IdleTimeout the deadline for
	// silence. Zero means none.
	Timeout     time.Duration
	IdleTimeout time.Duration
	Limits      Limits
	Labels      map[string]string
}

// Trailer says how a run ended.
type Trailer struct {
	Reason Reason `json:"reason"`
	// ExitCode is the exit status when Reason is ReasonExited, else -1.
	ExitCode int `json:"exit_code"`
	// Signal is the fatal signal's number, or 0.
	Signal      int           `json:"signal,omitempty"`
	StdoutBytes uint64        `json:"stdout_bytes"`
	StderrBytes uint64        `json:"stderr_bytes"`
	Duration    time.Duration `json:"duration"`
	// Detail names the deadline or limit that fired. Never secrets.
	Detail  string    `json:"detail,omitempty"`
	EndedAt time.Time `json:"ended_at"`
}

// Info describes a run. It never holds secret values.
type Info struct {
	ID            string            `json:"id"`
	Argv          []string          `json:"argv"`
	Shell         bool              `json:"shell,omitempty"`
	Cwd           string            `json:"cwd"`
	Env           map[string]string `json:"env,omitempty"`
	SecretEnvKeys []string          `json:"secret_env_keys,omitempty"`
	State         State             `json:"state"`
	PID           int               `json:"pid"`
	// StartTicks is the leader's start time (clock ticks after boot, from
	// /proc/PID/stat), which tells the run's process from a later one
	// with the same pid; 0 when unknown.
	StartTicks uint64    `json:"start_ticks,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	Trailer    *Trailer  `json:"trailer,omitempty"`
	Detached   bool      `json:"detached,omitempty"`
	PTY        bool      `json:"pty,omitempty"`
	// OutputFIFOs says that the run's stdout and stderr are named pipes
	// in its directory, which a later agent opens again (see adopt.go).
	OutputFIFOs bool              `json:"output_fifos,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Limits      Limits            `json:"limits"`
	// KeeperPID and KeeperTicks (its start time) are the process that
	// holds the named pipes open (see adopt.go); 0 when none.
	KeeperPID   int    `json:"keeper_pid,omitempty"`
	KeeperTicks uint64 `json:"keeper_ticks,omitempty"`
	// Released says an agent let go of the run in flight with every byte
	// it had read spooled (a stop or an upgrade, not a crash).
	Released bool `json:"released,omitempty"`
	// Losses are the stdout and stderr offsets at which agents that
	// crashed while the run was in flight may have lost a read each.
	Losses [][2]uint64 `json:"losses,omitempty"`
	// Timeout and IdleTimeout are the run's deadlines as given (0: none);
	// an agent that adopts the run enforces them too.
	Timeout     time.Duration `json:"timeout,omitempty"`
	IdleTimeout time.Duration `json:"idle_timeout,omitempty"`
	// StdoutBytes and StderrBytes count output so far.
	StdoutBytes uint64 `json:"stdout_bytes"`
	StderrBytes uint64 `json:"stderr_bytes"`
	// AttachedClients counts readers streaming this run now.
	AttachedClients int `json:"-"`
}
