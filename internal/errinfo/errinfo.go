// Package errinfo attaches machine-readable reasons to gRPC status errors
// (google.rpc.ErrorInfo), so that clients can act on a failure — the CLI
// exits 127 for a program that does not exist, like a shell — without
// parsing messages. Servers attach; clients read; the proxy in between
// forwards details untouched.
package errinfo

import (
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Domain is the ErrorInfo domain of every dtmux reason.
const Domain = "dtmux.dev"

// Reasons, UPPER_SNAKE_CASE as google.rpc.ErrorInfo asks.
const (
	// ProgramNotFound: argv[0] is not in PATH (a shell says 127).
	ProgramNotFound = "PROGRAM_NOT_FOUND"
	// ProgramNotExecutable: argv[0] exists but cannot be executed (126).
	ProgramNotExecutable = "PROGRAM_NOT_EXECUTABLE"
	// RunIDConflict: a run with this id exists with a different command.
	RunIDConflict = "RUN_ID_CONFLICT"
	// PaneDead: input was sent to a pane whose command has ended.
	PaneDead = "PANE_DEAD"
)

// New returns a status error with code, message and reason.
func New(code codes.Code, msg, reason string) error {
	st := status.New(code, msg)
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: Domain}); err == nil {
		st = withInfo
	}
	return st.Err()
}

// Reason returns the dtmux reason carried by err, or "".
func Reason(err error) string {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return ""
	}
	for _, d := range se.GRPCStatus().Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain {
			return info.GetReason()
		}
	}
	return ""
}
