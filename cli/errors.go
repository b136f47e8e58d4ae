package cli

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/internal/errinfo"
)

// Exit codes of dtmux itself. Commands that run something remotely (exec,
// run, runs logs) otherwise exit with the remote status, as ssh does: the
// exit code, or 128+N when the process died from signal N.
const (
	// ExitFailure: dtmux could not do what was asked (controller or agent
	// unreachable, workspace not found, a call failed). Like ssh's 255.
	ExitFailure = 255
	// ExitUsage: invalid input (flags, arguments, names, ids), whether
	// dtmux caught it before any call or the server rejected it
	// (InvalidArgument).
	ExitUsage = 254
	// ExitCommandNotFound: the remote command does not exist, as a shell
	// reports it.
	ExitCommandNotFound = 127
	// ExitCannotExecute: the remote command exists but cannot be
	// executed, as a shell reports it.
	ExitCannotExecute = 126
	// ExitTimedOut: the run was killed because a deadline (--timeout or
	// --idle-timeout) passed, as timeout(1) reports it.
	ExitTimedOut = 124
)

// ExitError makes dtmux exit with Code, after printing Msg (if any) on one
// line of stderr.
type ExitError struct {
	Code int
	Msg  string
}

func (e *ExitError) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Msg
}

// exitCode is a silent exit with a remote status.
func exitCode(code int) error {
	if code == 0 {
		return nil
	}
	return &ExitError{Code: code}
}

// usageErrorf is a usage error: bad flags or arguments.
func usageErrorf(format string, args ...any) error {
	return &ExitError{Code: ExitUsage, Msg: fmt.Sprintf(format, args...)}
}

// errorLine renders err for the user: one line, no stack, gRPC statuses as
// their message. addr names the controller for connection failures.
func errorLine(err error, addr string) string {
	msg := err.Error()
	var ee *ExitError
	if errors.As(err, &ee) {
		msg = ee.Msg
	} else if st, ok := status.FromError(err); ok {
		msg = statusLine(st, addr)
	}
	msg = strings.Join(strings.Fields(strings.ReplaceAll(msg, "\n", "; ")), " ")
	// One prefix, even when a message already carries it.
	for strings.HasPrefix(msg, "dtmux: ") {
		msg = strings.TrimPrefix(msg, "dtmux: ")
	}
	return "dtmux: " + msg
}

// statusLine turns a gRPC status into a sentence.
func statusLine(st *status.Status, addr string) string {
	msg := st.Message()
	switch st.Code() {
	case codes.Unavailable:
		// The client library's own failures to connect start "connection
		// error: desc = ..."; anything else is the controller saying a
		// workspace's agent is unreachable (naming the workspace).
		if strings.HasPrefix(msg, "connection error") || strings.HasPrefix(msg, "connection closed") {
			if addr == "" {
				addr = "the controller"
			}
			return fmt.Sprintf("cannot reach controller at %s: %s", addr, trimDesc(msg))
		}
		return "unavailable: " + msg
	case codes.ResourceExhausted:
		if requestTooLarge(st) {
			// gRPC says "trying to send message larger than max (N vs. M)".
			sizes := ""
			if _, after, ok := strings.Cut(msg, "("); ok {
				if n, m, ok := strings.Cut(strings.TrimSuffix(after, ")"), " vs. "); ok {
					sizes = fmt.Sprintf(" (%s bytes; at most %s in one message)", n, m)
				}
			}
			return "the request is too large" + sizes + ": pass big inputs on stdin or as a file, not in arguments or the environment"
		}
		if strings.Contains(msg, "larger than max") {
			return "message too large: " + msg
		}
	case codes.Unauthenticated:
		return "not authenticated (check --token-file): " + msg
	case codes.PermissionDenied:
		return "permission denied: " + msg
	case codes.Unimplemented:
		// A provider that cannot do something (create an ssh host) says
		// so itself.
		if strings.HasPrefix(msg, "not supported") {
			return msg
		}
		return "not implemented by the server: " + msg
	case codes.DeadlineExceeded:
		return "deadline exceeded: " + msg
	case codes.Canceled:
		return "canceled"
	}
	return msg
}

// trimDesc keeps the useful tail of a gRPC connection error.
func trimDesc(msg string) string {
	if _, after, ok := strings.Cut(msg, "desc = "); ok {
		return strings.Trim(after, `"`)
	}
	return msg
}

// ErrorCode is the process exit code for an error returned by a command:
// an ExitError's code; 127 and 126 for a program that is missing or not
// executable (as a shell); 254 for input the server rejected (invalid,
// or naming something that already exists); else 255.
func ErrorCode(err error) int {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	switch errinfo.Reason(err) {
	case errinfo.ProgramNotFound:
		return ExitCommandNotFound
	case errinfo.ProgramNotExecutable:
		return ExitCannotExecute
	case errinfo.RunIDConflict:
		return ExitUsage
	}
	if st, ok := status.FromError(err); ok && (st.Code() == codes.InvalidArgument || st.Code() == codes.AlreadyExists || requestTooLarge(st)) {
		return ExitUsage // the request, not dtmux, is what to fix
	}
	return ExitFailure
}

// startError explains why the agent refused to start argv (as run runID,
// if one was given): a missing or non-executable program reads as a
// shell says it, with its exit code; a run id taken by another command
// says what to do. Anything else is returned as is.
func startError(err error, argv []string, runID string) error {
	name := ""
	if len(argv) > 0 {
		name = clip(argv[0])
	}
	msg := ""
	if st, ok := status.FromError(err); ok {
		msg = st.Message()
	}
	switch errinfo.Reason(err) {
	case errinfo.ProgramNotFound:
		return &ExitError{Code: ExitCommandNotFound, Msg: name + ": command not found"}
	case errinfo.ProgramNotExecutable:
		return &ExitError{Code: ExitCannotExecute, Msg: fmt.Sprintf("%s: cannot execute (%s)", name, msg)}
	case errinfo.RunIDConflict:
		return &ExitError{Code: ExitUsage, Msg: fmt.Sprintf("run id %q is already used by a different command: choose another --run-id, or leave it out", clip(runID))}
	}
	return err
}

// requestTooLarge reports whether st is the client library refusing to
// send a message over the size limit: the user's input is what to fix.
func requestTooLarge(st *status.Status) bool {
	return st.Code() == codes.ResourceExhausted && strings.Contains(st.Message(), "trying to send message larger than max")
}
