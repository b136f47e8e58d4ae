package agent

import (
	"context"
	"errors"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/agent/process"
	"github.com/dtmux/dtmux/agent/tmux"
	"github.com/dtmux/dtmux/internal/errinfo"
)

// errInvalid marks a malformed request found by the RPC layer itself.
var errInvalid = errors.New("invalid request")

// errShuttingDown ends the streams still open when the agent stops.
var errShuttingDown = errors.New("the agent is shutting down")

// codeOf maps domain sentinels to status codes, and to an errinfo reason
// where a client acts on the failure (the CLI's 126 and 127); the first
// match wins. Add a row per sentinel; the message is the error's own
// text, which domain packages keep free of secrets.
var codeOf = []struct {
	err    error
	code   codes.Code
	reason string
}{
	{errInvalid, codes.InvalidArgument, ""},
	{process.ErrRunNotFound, codes.NotFound, ""},
	{process.ErrInvalidSpec, codes.InvalidArgument, ""},
	{process.ErrProgramNotFound, codes.InvalidArgument, errinfo.ProgramNotFound},
	{process.ErrProgramNotExecutable, codes.InvalidArgument, errinfo.ProgramNotExecutable},
	{process.ErrRunIDConflict, codes.AlreadyExists, errinfo.RunIDConflict},
	{process.ErrBadCwd, codes.InvalidArgument, ""},
	{process.ErrTooManyRuns, codes.ResourceExhausted, ""},
	{process.ErrRunFinished, codes.FailedPrecondition, ""},
	{process.ErrClosed, codes.Unavailable, ""},
	{errPutFile, codes.InvalidArgument, ""},
	{errPutFileMismatch, codes.FailedPrecondition, ""},
	{tmux.ErrSessionNotFound, codes.NotFound, ""},
	{tmux.ErrWindowNotFound, codes.NotFound, ""},
	{tmux.ErrServiceNotFound, codes.NotFound, ""},
	{tmux.ErrSessionExists, codes.AlreadyExists, ""},
	{tmux.ErrInvalidName, codes.InvalidArgument, ""},
	{tmux.ErrInvalidArgument, codes.InvalidArgument, ""},
	{tmux.ErrPaneDead, codes.FailedPrecondition, errinfo.PaneDead},
	{tmux.ErrCommandNotFound, codes.InvalidArgument, errinfo.ProgramNotFound},
	{tmux.ErrUnsupported, codes.FailedPrecondition, ""},
	{tmux.ErrClosed, codes.Unavailable, ""},
	{errShuttingDown, codes.Unavailable, ""},
	{context.Canceled, codes.Canceled, ""},
	{context.DeadlineExceeded, codes.DeadlineExceeded, ""},
}

// toStatus is the one place where errors become gRPC statuses. Unknown
// errors become Internal with a generic message; their detail goes to the
// log only.
func toStatus(log hclog.Logger, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, c := range codeOf {
		if errors.Is(err, c.err) {
			if c.reason != "" {
				return errinfo.New(c.code, err.Error(), c.reason)
			}
			return status.Error(c.code, err.Error())
		}
	}
	log.Error("internal error", "error", err)
	return status.Error(codes.Internal, "internal error in the agent (details in its log)")
}
