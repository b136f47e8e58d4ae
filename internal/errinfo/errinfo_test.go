package errinfo

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestReasonRoundTrip(t *testing.T) {
	err := New(codes.InvalidArgument, `program "nosuch" not found`, ProgramNotFound)
	if got := status.Code(err); got != codes.InvalidArgument {
		t.Fatalf("code %v", got)
	}
	if got := Reason(err); got != ProgramNotFound {
		t.Fatalf("reason %q, want %q", got, ProgramNotFound)
	}
	if got := Reason(fmt.Errorf("wrapped: %w", err)); got != ProgramNotFound {
		t.Fatalf("wrapped reason %q", got)
	}
	if got := Reason(status.Error(codes.NotFound, "plain")); got != "" {
		t.Fatalf("plain status has reason %q", got)
	}
	if got := Reason(fmt.Errorf("not a status")); got != "" {
		t.Fatalf("plain error has reason %q", got)
	}
}
