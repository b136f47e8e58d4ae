package tmux

import (
	"errors"
	"fmt"
)

// Sentinel errors; the RPC layer maps them to status codes.
var (
	// ErrSessionNotFound: no session with that name.
	ErrSessionNotFound = errors.New("session not found")
	// ErrWindowNotFound: the session has no such window.
	ErrWindowNotFound = errors.New("window not found")
	// ErrSessionExists: a session with that name already exists.
	ErrSessionExists = errors.New("session already exists")
	// ErrInvalidName: a session, window or service name is not
	// [A-Za-z0-9_-]{1,64}.
	ErrInvalidName = errors.New("invalid name")
	// ErrInvalidArgument: some other part of a request is unusable (an
	// env key, a key name, a missing directory).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrCommandNotFound: argv[0] cannot be found or run.
	ErrCommandNotFound = errors.New("command not found")
	// ErrServiceNotFound: no service with that name in the session.
	ErrServiceNotFound = errors.New("service not found")
	// ErrPaneDead: input was sent to a pane whose command has ended
	// (errors of this kind are *PaneDeadError).
	ErrPaneDead = errors.New("pane is dead")
	// ErrClosed: the manager was closed.
	ErrClosed = errors.New("tmux manager closed")
)

// PaneDeadError says which pane was dead and how its command ended. Its
// message is meant for users as is.
type PaneDeadError struct {
	Pane, Session string
	Exit          PaneExit
	// Known is false when tmux has not reported the status yet.
	Known bool
}

func (e *PaneDeadError) Error() string {
	how := "exit status unknown"
	switch {
	case e.Known && e.Exit.Signal != 0:
		how = fmt.Sprintf("killed by signal %d", e.Exit.Signal)
	case e.Known:
		how = fmt.Sprintf("exit status %d", e.Exit.Code)
	}
	return fmt.Sprintf("pane %s of session %s is dead (%s): nothing was sent", e.Pane, e.Session, how)
}

// Is makes errors.Is(err, ErrPaneDead) hold.
func (e *PaneDeadError) Is(target error) bool { return target == ErrPaneDead }

// serviceNotFoundError names the service; its message is for users as is.
type serviceNotFoundError struct{ name string }

func (e *serviceNotFoundError) Error() string        { return fmt.Sprintf("service %q not found", e.name) }
func (e *serviceNotFoundError) Is(target error) bool { return target == ErrServiceNotFound }
