package tmuxserver

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dtmux/dtmux/internal/testbin"
)

// startServer starts a tmux server on sock with a session running sleep
// and returns the sleep's pid.
func startServer(t *testing.T, sock string) int {
	t.Helper()
	tmux := testbin.RequireTool(t, "tmux")
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tmux, "-S", sock, "-f", "/dev/null", "new-session", "-d", "-P", "-F", "#{pane_pid}", "sleep", "600").CombinedOutput()
	if err != nil {
		t.Fatalf("start tmux: %v: %s", err, out)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("pane pid %q", out)
	}
	t.Cleanup(func() { _ = exec.Command(tmux, "-S", sock, "kill-server").Run() })
	return pid
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func gone(t *testing.T, what string, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil && !zombie(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("%s (pid %d) still runs", what, pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestKill(t *testing.T) {
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, SocketName)
	pane := startServer(t, sock)
	if len(processesUsing(func(s string) bool { return s == sock })) == 0 {
		t.Fatal("the server is not found by its socket")
	}
	if err := Kill(ctx(t), sock); err != nil {
		t.Fatal(err)
	}
	if p := processesUsing(func(s string) bool { return s == sock }); len(p) != 0 {
		t.Errorf("still running: %v", p)
	}
	gone(t, "the pane's program", pane)
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left: %v", err)
	}
	// No server (and no socket) is not an error.
	if err := Kill(ctx(t), sock); err != nil {
		t.Errorf("second Kill: %v", err)
	}
}

func TestKillUnder(t *testing.T) {
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	a := startServer(t, filepath.Join(dir, "workspaces", "a", "agent", "tmux", SocketName))
	b := startServer(t, filepath.Join(dir, "workspaces", "b", "agent", "tmux", SocketName))
	// A server whose socket file is already gone is found by its argv.
	c := startServer(t, filepath.Join(dir, "x", "other.sock"))
	other := filepath.Join(t.TempDir(), SocketName)
	keep := startServer(t, other)
	if err := KillUnder(ctx(t), dir); err != nil {
		t.Fatal(err)
	}
	gone(t, "a", a)
	gone(t, "b", b)
	gone(t, "c", c)
	prefix := dir + "/"
	if p := processesUsing(func(s string) bool { return strings.HasPrefix(s, prefix) }); len(p) != 0 {
		t.Errorf("still running under %s: %v", dir, p)
	}
	if syscall.Kill(keep, 0) != nil {
		t.Error("a server outside the directory was killed")
	}
}
