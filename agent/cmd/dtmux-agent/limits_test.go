package main

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// TestCgroupLimitsStopRuns: the real agent detects the host's cgroups,
// the re-exec helper joins them before the program runs, and a fork bomb
// and a memory hog are each stopped with a trailer naming the limit while
// the agent serves other runs.
func TestCgroupLimitsStopRuns(t *testing.T) {
	a := startAgent(t, t.TempDir())
	t.Cleanup(func() {
		// A graceful stop, so that the agent removes its cgroups.
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		<-a.exited
	})
	info, err := a.client.GetAgentInfo(ctxT(t), &agentv1.GetAgentInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	iso := strings.Join(info.GetIsolation(), "; ")
	if !strings.Contains(iso, "pids") || !strings.Contains(iso, "memory") {
		t.Skipf("host offers no memory and pids cgroups: %s", iso)
	}
	tests := []struct {
		name   string
		script string
		limits *agentv1.RunLimits
		detail string
	}{
		{"fork bomb", `f() { f | f & }; f; wait; sleep 600`, &agentv1.RunLimits{Pids: 40}, "pids limit 40"},
		{"memory hog", `x=$(head -c 400000000 /dev/zero | tr '\0' a); echo survived`, &agentv1.RunLimits{MemoryBytes: 64 << 20}, "memory_bytes limit 67108864"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream, _ := execStart(t, a.client, ctxT(t), &agentv1.ExecStart{
				Command: cmdSpec("sh", "-c", tt.script),
				Limits:  tt.limits,
				Timeout: durationpb.New(2 * time.Minute),
			})
			other, _ := execStart(t, a.client, ctxT(t), &agentv1.ExecStart{Command: cmdSpec("echo", "serving")})
			if out, tr := rest(t, other); out != "serving\n" || tr.GetExitCode() != 0 {
				t.Errorf("another run meanwhile: %q %v", out, tr)
			}
			out, tr := rest(t, stream)
			if tr.GetReason() != agentv1.ExitReason_EXIT_REASON_LIMIT_EXCEEDED || !strings.Contains(tr.GetDetail(), tt.detail) {
				t.Errorf("trailer %v (output %q), want LIMIT_EXCEEDED with %q", tr, out, tt.detail)
			}
		})
	}
}
