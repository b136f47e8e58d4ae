package main

import (
	"strings"
	"syscall"
	"testing"
	"time"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// TestRunsDoNotInheritIgnoredSignals: an agent started with SIGHUP, SIGINT,
// SIGQUIT and SIGTSTP ignored (nohup, a background job of a script) gives
// its runs the default disposition of every signal, as sshd does, while
// the agent itself still ignores SIGHUP and still shuts down on SIGTERM.
func TestRunsDoNotInheritIgnoredSignals(t *testing.T) {
	wrapper := []string{"sh", "-c", `trap "" HUP INT QUIT TSTP; exec "$@"`, "sh"}
	a := startAgentVia(t, t.TempDir(), wrapper)
	for _, pty := range []bool{false, true} {
		st := &agentv1.ExecStart{Command: cmdSpec("grep", "^SigIgn:", "/proc/self/status")}
		if pty {
			st.Pty = &agentv1.PtySpec{Rows: 24, Cols: 80}
		}
		stream, _ := execStart(t, a.client, ctxT(t), st)
		out, tr := rest(t, stream)
		if tr.GetExitCode() != 0 || strings.Fields(out)[1] != "0000000000000000" {
			t.Errorf("pty %v: a run's ignored signals: %q (exit %d), want none", pty, out, tr.GetExitCode())
		}
	}

	// SIGHUP is still ignored by the agent (a fatal one would be delivered
	// before the SIGTERM behind it); SIGTERM still shuts it down cleanly.
	a.cmd.Process.Signal(syscall.SIGHUP)
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
		if a.waitErr != nil {
			t.Errorf("agent exit after SIGHUP and SIGTERM: %v", a.waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not exit after SIGTERM")
	}
}
