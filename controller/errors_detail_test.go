package controller

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/controller/provider"
)

// A provider's reason travels with FailedPrecondition: "not started"
// alone hides a workspace in error, and a missing API key is no internal
// error.
func TestToStatusKeepsProviderReason(t *testing.T) {
	for _, tt := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{fmt.Errorf("%w: daytona reports it in state error: disk full", provider.ErrNotStarted), codes.FailedPrecondition,
			`workspace "w" is not started: daytona reports it in state error: disk full`},
		{fmt.Errorf("workspace %q: %w", "w", provider.ErrNotStarted), codes.FailedPrecondition,
			`workspace "w" is not started: start it first`},
		{fmt.Errorf("%w: no API key (set DAYTONA_API_KEY)", provider.ErrPrecondition), codes.FailedPrecondition,
			`workspace "w": no API key (set DAYTONA_API_KEY)`},
		{provider.ErrPrecondition, codes.FailedPrecondition, `workspace "w": failed precondition`},
	} {
		st := status.Convert(toStatus(hclog.NewNullLogger(), "w", tt.err))
		if st.Code() != tt.code || st.Message() != tt.msg {
			t.Errorf("toStatus(%v) = %v %q, want %v %q", tt.err, st.Code(), st.Message(), tt.code, tt.msg)
		}
	}
}

// A call the pool's connection closes under (a workspace stopped, the
// controller stopping) is Unavailable naming the workspace, not Canceled,
// which the client would take for its own cancellation and not retry.
func TestAgentErrClosedUnderTheCall(t *testing.T) {
	r := &Router{log: hclog.NewNullLogger()}
	closing := status.Error(codes.Canceled, "grpc: the client connection is closing")
	err := r.agentErr(context.Background(), "w1", closing, true)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `workspace "w1"`) {
		t.Errorf("closed under a waiting client: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.agentErr(ctx, "w1", status.Error(codes.Canceled, "context canceled"), true); status.Code(err) != codes.Canceled {
		t.Errorf("the client's own cancellation: %v", err)
	}
}
