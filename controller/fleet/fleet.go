// Package fleet runs one command across many workspaces over the pooled
// agent connections: selection, bounded parallelism, retries of targets
// that could not be reached (never of a command that started), fail-fast
// and max-failures, per-target timeouts, and attaching to a fleet run by
// its id after a restart. It streams events as they come and holds no
// target's output in memory.
package fleet

import (
	"context"
	"errors"
	"time"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// LabelKey is the run label every fleet target carries; its value is the
// fleet run id. ListRuns on an agent finds fleet runs by it.
const LabelKey = "dtmux.fleet"

// TargetsLabelKey is the run label that carries the fleet run's number of
// targets (skipped and unreachable ones included) on every target. Attach
// finds a run by asking the agents, and the count tells it when it has
// found every target: then the workspaces it could not ask are not
// targets and are left out. It works after a controller restart because
// the agents hold the runs and their labels; the controller keeps nothing
// to lose, prune or move with it. The count, not the names: the names
// would cost up to 64 bytes each, some 64 KB per run with 1000 targets,
// copied to each of the 1000 agents and sent back in every ListRuns; the
// count is a few bytes. What the count cannot say (which of the missing
// targets, if any, are on workspaces that could not be asked) Attach
// reports as such instead of guessing.
const TargetsLabelKey = "dtmux.fleet.targets"

// Sentinel errors; the RPC layer maps them to status codes.
var (
	// ErrInvalid: a bad selector, command or option.
	ErrInvalid = errors.New("invalid fleet request")
	// ErrNoTargets: the selector matched no workspace.
	ErrNoTargets = errors.New("selector matched no workspaces")
	// ErrRunNotFound: no reachable agent has the fleet run.
	ErrRunNotFound = errors.New("fleet run not found")
)

// Selector picks workspaces: a workspace is selected when it is named, or
// matches every label selector ("k=v"), or All is set.
type Selector struct {
	Workspaces []string
	Labels     []string
	All        bool
}

// Empty reports whether the selector selects nothing by itself.
func (s Selector) Empty() bool {
	return len(s.Workspaces) == 0 && len(s.Labels) == 0 && !s.All
}

// Target is one selected workspace.
type Target struct {
	// Name of the workspace.
	Name string
	// Skip, when set, says why the target cannot run (for example the
	// workspace is not started); it is reported skipped.
	Skip string
}

// Targets is where the engine finds workspaces and their agents. The
// controller adapts its provider and connection pool to it.
type Targets interface {
	// Select returns the selected workspaces in a stable order.
	Select(ctx context.Context, sel Selector) ([]Target, error)
	// Client returns a client for the workspace's agent. An error means
	// the agent could not be reached; the engine may retry.
	Client(ctx context.Context, workspace string) (agentv1.AgentServiceClient, error)
}

// Spec is one fleet command.
type Spec struct {
	// Selector picks the targets.
	Selector Selector
	// Command runs on each target.
	Command *agentv1.CommandSpec
	// Limits bound the run on each target.
	Limits *agentv1.RunLimits
	// Timeout is the process wall-clock deadline on each target (0: none).
	Timeout time.Duration
	// IdleTimeout is the idle-output deadline on each target (0: none).
	IdleTimeout time.Duration
	// TargetTimeout bounds one target as a whole, connecting included
	// (0: none). A target past it is killed and reported timed out.
	TargetTimeout time.Duration
	// MaxParallel bounds the targets running at once (0: DefaultParallel).
	MaxParallel int
	// Retries is the number of extra attempts to reach a target.
	Retries int
	// RetryBackoff is the wait before the first retry; it doubles after
	// each (0: DefaultBackoff).
	RetryBackoff time.Duration
	// MaxFailures stops starting new targets once this many targets
	// failed or were unreachable (0: no limit; fail-fast is 1).
	MaxFailures int
	// CancelRunning kills the targets still running when the run stops
	// early.
	CancelRunning bool
	// RunID is used on every target; empty means NewRunID.
	RunID string
}

// Defaults for zero Spec fields.
const (
	DefaultParallel = 32
	DefaultBackoff  = 500 * time.Millisecond
	// killGrace is how long a killed target may take to send its trailer
	// before the engine stops waiting and reports it anyway.
	killGrace = 5 * time.Second
)

// Kind says what an Event is.
type Kind int

// Event kinds, in the order a target goes through them.
const (
	KindStarted     Kind = iota + 1 // the fleet run started: RunID, Workspaces
	KindQueued                      // the target waits for a slot
	KindTarget                      // the command started on the target: PID, Attempt
	KindOutput                      // Output
	KindGap                         // Gap
	KindExited                      // Trailer (final for the target)
	KindUnreachable                 // Reason, Attempts (final)
	KindSkipped                     // Reason (final)
	// KindNotAsked comes only from Attach when the run's targets are not
	// all known: the workspace could not be asked whether it has the run
	// (Reason). It is not counted in the summary.
	KindNotAsked
)

// Event is one event of a fleet run. Workspace is empty for KindStarted.
type Event struct {
	Kind      Kind
	Workspace string

	RunID      string   // KindStarted
	Workspaces []string // KindStarted

	PID     int32  // KindTarget
	Attempt uint32 // KindTarget

	Output  *agentv1.RunOutput  // KindOutput
	Gap     *agentv1.RunGap     // KindGap
	Trailer *agentv1.RunTrailer // KindExited

	Reason   string // KindUnreachable, KindSkipped, KindNotAsked
	Attempts uint32 // KindUnreachable
}

// Summary closes a fleet run.
type Summary struct {
	RunID       string
	Total       int
	Succeeded   int
	Failed      int
	Unreachable int
	Skipped     int
	Cancelled   int
	Duration    time.Duration
	// WorstExitCode is the highest exit code among failed targets (as
	// ExitCode: 124 for a timeout, 128+N for a signal), 0 when none failed.
	WorstExitCode int
	// FailedWorkspaces, UnreachableWorkspaces and CancelledWorkspaces
	// name the targets Failed, Unreachable and Cancelled count, each in
	// selection order.
	FailedWorkspaces      []string
	UnreachableWorkspaces []string
	CancelledWorkspaces   []string
	// NotFound (Attach) is the number of the run's targets that no asked
	// agent has: the run never started there (skipped, unreachable), the
	// agent no longer holds it, or it is on a workspace that could not be
	// asked. They are counted in Total.
	NotFound int
	// NotAsked (Attach) are the workspaces that could not be asked while
	// the run's targets were not all found; they may or may not be
	// targets and are counted nowhere else.
	NotAsked []string
}

// Emit receives events. The engine calls it from one goroutine at a time;
// an error (the client went away) stops the fleet call. Blocking in Emit
// slows the targets down (flow control) instead of buffering output.
type Emit func(Event) error

// ExitCode maps a trailer to a process-style exit code: the exit status,
// 124 for a timeout whatever signal ended the command (as timeout(1), and
// as dtmux exec --timeout), 128+N for another signal, 255 when the agent
// was lost (as ssh), otherwise 1.
func ExitCode(t *agentv1.RunTrailer) int {
	switch {
	case t == nil:
		return 1
	case t.GetReason() == agentv1.ExitReason_EXIT_REASON_EXITED:
		return int(t.GetExitCode())
	case t.GetReason() == agentv1.ExitReason_EXIT_REASON_TIMED_OUT:
		return 124
	case t.GetSignal() > 0:
		return 128 + int(t.GetSignal())
	case t.GetReason() == agentv1.ExitReason_EXIT_REASON_AGENT_LOST:
		return 255
	default:
		return 1
	}
}

// Succeeded reports whether a trailer is a success: exited with status 0.
func Succeeded(t *agentv1.RunTrailer) bool {
	return t.GetReason() == agentv1.ExitReason_EXIT_REASON_EXITED && t.GetExitCode() == 0
}
