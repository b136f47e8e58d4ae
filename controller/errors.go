package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/controller/pool"
	"github.com/dtmux/dtmux/controller/provider"
)

// detail is err's text after sentinel's ("sentinel: detail"), or "" when
// the sentinel comes last or carries nothing more.
func detail(err, sentinel error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, sentinel.Error()+": "); i >= 0 {
		return msg[i+len(sentinel.Error())+2:]
	}
	return ""
}

// toStatus maps domain errors about workspace ws to gRPC status errors.
// Unknown errors become Internal with a generic message; their detail goes
// to the log.
func toStatus(log hclog.Logger, ws string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, provider.ErrNotFound):
		return status.Errorf(codes.NotFound, "workspace %q not found", ws)
	case errors.Is(err, provider.ErrNotStarted):
		// The provider's detail says why (stopped, archived, in error and
		// the reason), which "start it first" alone would hide.
		reason := detail(err, provider.ErrNotStarted)
		if reason == "" {
			reason = "start it first"
		}
		return status.Errorf(codes.FailedPrecondition, "workspace %q is not started: %s", ws, reason)
	case errors.Is(err, provider.ErrPrecondition):
		reason := detail(err, provider.ErrPrecondition)
		if reason == "" {
			reason = err.Error()
		}
		return status.Errorf(codes.FailedPrecondition, "workspace %q: %s", ws, reason)
	case errors.Is(err, provider.ErrAlreadyExists):
		return status.Errorf(codes.AlreadyExists, "workspace %q already exists", ws)
	case errors.Is(err, provider.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, provider.ErrUnsupported):
		return status.Error(codes.Unimplemented, err.Error())
	case errors.Is(err, pool.ErrUnreachable):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, pool.ErrClosed):
		return status.Error(codes.Unavailable, "controller is shutting down")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	log.Error("internal error", "workspace", ws, "error", err)
	return status.Error(codes.Internal, fmt.Sprintf("internal error (workspace %q); see the controller log", ws))
}
