package tmux

import "errors"

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
	// ErrClosed: the manager was closed.
	ErrClosed = errors.New("tmux manager closed")
)
