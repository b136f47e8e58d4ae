package main

import (
	"fmt"
	"os"
	"strconv"
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
		fields := strings.Fields(out)
		if tr.GetExitCode() != 0 || len(fields) != 2 {
			t.Fatalf("pty %v: %q (exit %d)", pty, out, tr.GetExitCode())
		}
		mask, err := strconv.ParseUint(fields[1], 16, 64)
		if err != nil {
			t.Fatalf("pty %v: SigIgn %q: %v", pty, fields[1], err)
		}
		// Only the signals the wrapper ignored are ours to check: the
		// test's own environment may ignore others (a realtime signal,
		// say) that the agent rightly leaves alone.
		for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTSTP} {
			if mask&(1<<(uint(sig)-1)) != 0 {
				t.Errorf("pty %v: a run inherits %v as ignored (SigIgn %s)", pty, sig, fields[1])
			}
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

// TestSIGUSR1KillsEveryRun: SIGUSR1 (a workspace stop) shuts the agent
// down with every run: detached runs are killed and recorded as such, so
// are those adopted from a crashed earlier agent, and a process group left
// running by a run that could not be adopted (a PTY) ends too. SIGTERM
// keeps detached runs (TestRestartAdoptsDetachedRuns).
func TestSIGUSR1KillsEveryRun(t *testing.T) {
	state := t.TempDir()
	a := startAgent(t, state)
	_, lost := execStart(t, a.client, ctxT(t), &agentv1.ExecStart{
		Command: cmdSpec("sh", "-c", "trap '' HUP; exec sleep 1000"), RunId: "orphan-1", Detach: true, Pty: &agentv1.PtySpec{},
	})
	t.Cleanup(func() { syscall.Kill(int(lost.GetPid()), syscall.SIGKILL) })
	_, adopted := execStart(t, a.client, ctxT(t), &agentv1.ExecStart{Command: cmdSpec("sleep", "1002"), RunId: "adopted-1", Detach: true})
	t.Cleanup(func() { syscall.Kill(int(adopted.GetPid()), syscall.SIGKILL) })
	a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.exited

	b := startAgent(t, state)
	_, det := execStart(t, b.client, ctxT(t), &agentv1.ExecStart{Command: cmdSpec("sleep", "1001"), RunId: "det-1", Detach: true})
	t.Cleanup(func() { syscall.Kill(int(det.GetPid()), syscall.SIGKILL) })
	b.cmd.Process.Signal(syscall.SIGUSR1)
	select {
	case <-b.exited:
		if b.waitErr != nil {
			t.Errorf("agent exit after SIGUSR1: %v", b.waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not exit after SIGUSR1")
	}
	for _, pid := range []int32{lost.GetPid(), det.GetPid(), adopted.GetPid()} {
		// Reaped by now or about to be: the agent waited for det-1; the
		// orphan's parent is init.
		waitProcGone(t, int(pid))
	}

	c := startAgent(t, state)
	for id, want := range map[string]string{"det-1": "agent stopped with every run", "adopted-1": "agent stopped with every run", "orphan-1": "has ended since"} {
		r, err := c.client.GetRun(ctxT(t), &agentv1.GetRunRequest{RunId: id})
		if err != nil {
			t.Fatal(err)
		}
		if tr := r.GetRun().GetTrailer(); !strings.Contains(tr.GetDetail(), want) {
			t.Errorf("%s after SIGUSR1: %v, want a detail with %q", id, tr, want)
		}
	}
}

// waitProcGone waits until pid has exited (gone or a zombie).
func waitProcGone(t *testing.T, pid int) {
	t.Helper()
	for range 1000 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if i := strings.LastIndexByte(string(b), ')'); i > 0 && len(b) > i+2 && b[i+2] == 'Z' {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("process %d still running", pid)
}
