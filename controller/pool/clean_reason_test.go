package pool

import "testing"

// A dial error that quotes a name reads as it was written, not as grpc's
// %q left it.
func TestCleanReasonUnquotes(t *testing.T) {
	got := cleanReason(`connection error: desc = "transport: Error while dialing: sandbox \"sb1\": daytona API unreachable"`)
	if want := `sandbox "sb1": daytona API unreachable`; got != want {
		t.Errorf("cleanReason = %q, want %q", got, want)
	}
}
