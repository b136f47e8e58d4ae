package cli

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes of dtmux itself. Commands that run something remotely (exec,
// run, runs logs) otherwise exit with the remote status, as ssh does: the
// exit code, or 128+N when the process died from signal N.
const (
	// ExitFailure: dtmux could not do what was asked (controller or agent
	// unreachable, workspace not found, a call failed). Like ssh's 255.
	ExitFailure = 255
	// ExitUsage: bad flags or arguments, found before any call was made.
	ExitUsage = 254
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
	return "dtmux: " + msg
}

// statusLine turns a gRPC status into a sentence.
func statusLine(st *status.Status, addr string) string {
	msg := st.Message()
	switch st.Code() {
	case codes.Unavailable:
		// The client library's own failures to connect read "connection
		// error: desc = ..."; anything else is the controller saying a
		// workspace's agent is unreachable.
		if strings.Contains(msg, "connection error") || strings.Contains(msg, "connection closed") {
			if addr == "" {
				addr = "the controller"
			}
			return fmt.Sprintf("cannot reach controller at %s: %s", addr, trimDesc(msg))
		}
		return "unavailable: " + msg
	case codes.ResourceExhausted:
		if strings.Contains(msg, "larger than max") {
			return "message too large: " + msg
		}
	case codes.Unauthenticated:
		return "not authenticated (check --token-file): " + msg
	case codes.PermissionDenied:
		return "permission denied: " + msg
	case codes.Unimplemented:
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

// ErrorCode is the process exit code for an error returned by a command.
func ErrorCode(err error) int {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return ExitFailure
}
