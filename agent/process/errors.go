package process

import (
	"errors"
	"fmt"
)

// Sentinel errors. They are wrapped with context; test with errors.Is.
var (
	// ErrRunNotFound: no run with that id (or it has been swept after its
	// retention).
	ErrRunNotFound = errors.New("run not found")
	// ErrInvalidSpec: the command spec or run id is malformed (empty
	// argv, bad env key, NUL bytes, bad run id, bad size).
	ErrInvalidSpec = errors.New("invalid run spec")
	// ErrProgramNotFound: argv[0] is not in PATH, or the path it names
	// does not exist (a shell says 127).
	ErrProgramNotFound = errors.New("program not found")
	// ErrProgramNotExecutable: argv[0] names a file that cannot be
	// executed: no execute permission, a directory, an unknown format or a
	// missing interpreter (a shell says 126).
	ErrProgramNotExecutable = errors.New("program not executable")
	// ErrRunIDConflict: a run with the requested id exists with a
	// different command (argv, shell or working directory).
	ErrRunIDConflict = errors.New("run id conflict")
	// ErrBadCwd: the working directory does not exist or is not a
	// directory.
	ErrBadCwd = errors.New("working directory unusable")
	// ErrTooManyRuns: the agent's cap on concurrent runs is reached.
	ErrTooManyRuns = errors.New("too many concurrent runs")
	// ErrRunFinished: the run has ended, so it takes no input or signals.
	ErrRunFinished = errors.New("run has finished")
	// ErrLimitUnavailable: a requested limit needs something the host
	// does not offer (cgroups, or one of their controllers). It wraps
	// ErrInvalidSpec, so that callers that map that keep working.
	ErrLimitUnavailable = fmt.Errorf("limit unavailable on this host: %w", ErrInvalidSpec)
	// ErrClosed: the manager is shutting down.
	ErrClosed = errors.New("agent is shutting down")
)
