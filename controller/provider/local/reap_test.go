package local

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/dtmux/dtmux/controller/provider"
)

// startWith starts a long sleep with exactly env and returns a channel
// closed once it has ended (and been reaped).
func startWith(t *testing.T, env ...string) <-chan struct{} {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	return done
}

func ended(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// Stopping or deleting a workspace ends what its runs left behind (a
// daemon that left the run's process group keeps DTMUX_WORKSPACE and
// DTMUX_RUN_ID) and whatever runs with its home as HOME, and nothing
// else: not a process naming a run the agent never had, nor another
// workspace's.
func TestStopAndDeleteEndLeftoverProcesses(t *testing.T) {
	for _, op := range []string{"stop", "delete"} {
		t.Run(op, func(t *testing.T) {
			dir := stateDir(t)
			p := newProvider(t, dir, true)
			defer p.Close()
			ctx := ctxT(t)
			if _, err := p.Create(ctx, provider.CreateOptions{Name: "ws"}); err != nil {
				t.Fatal(err)
			}
			wsDir := filepath.Join(dir, "workspaces", "ws")
			if err := os.MkdirAll(filepath.Join(wsDir, "agent", "runs", "r-1"), 0o700); err != nil {
				t.Fatal(err)
			}
			escaped := startWith(t, "HOME=/nonexistent", "DTMUX_WORKSPACE=ws", "DTMUX_RUN_ID=r-1")
			inHome := startWith(t, "HOME="+filepath.Join(wsDir, "home"))
			unknownRun := startWith(t, "HOME=/nonexistent", "DTMUX_WORKSPACE=ws", "DTMUX_RUN_ID=r-2")
			otherWS := startWith(t, "HOME=/nonexistent", "DTMUX_WORKSPACE=other", "DTMUX_RUN_ID=r-1")

			var err error
			if op == "stop" {
				_, err = p.Stop(ctx, "ws")
			} else {
				err = p.Delete(ctx, "ws", true)
			}
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the run's escaped process to end", func() bool { return ended(escaped) })
			waitFor(t, "the process with the workspace's HOME to end", func() bool { return ended(inHome) })
			if ended(unknownRun) || ended(otherWS) {
				t.Errorf("killed a process that was not the workspace's: unknown run ended %v, other workspace's ended %v", ended(unknownRun), ended(otherWS))
			}
		})
	}
}
