// Package tmuxserver stops the private tmux servers of dtmux agents. An
// agent leaves its server running on purpose (sessions outlive agent
// restarts), so whoever removes the workspace (the local provider's
// Delete, a test's cleanup) must end the server too.
package tmuxserver

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// SocketName is the file name of an agent's tmux socket (in its state
// dir's tmux/ directory).
const SocketName = "tmux.sock"

// Grace is how long Kill lets a server exit on its own before SIGKILL.
const Grace = 2 * time.Second

// Kill ends the tmux server listening on sock, if any, and waits until
// its processes are gone. It asks tmux first (kill-server hangs up every
// pane, so their programs end too); whatever still runs with that socket
// when ctx is nearly done, or when no tmux binary can be found, is
// SIGKILLed. A missing socket or server is not an error.
func Kill(ctx context.Context, sock string) error {
	if bin, err := exec.LookPath("tmux"); err == nil {
		if _, err := os.Stat(sock); err == nil {
			cmd := exec.CommandContext(ctx, bin, "-S", sock, "kill-server")
			cmd.Env = append(os.Environ(), "TMUX=")
			_ = cmd.Run() // "no server running" is fine
		}
	}
	// kill-server returns before the server has exited: wait for it, for
	// Grace at most (less when ctx ends sooner), then SIGKILL.
	force := time.Now().Add(Grace)
	if dl, ok := ctx.Deadline(); ok && dl.Add(-time.Second).Before(force) {
		force = dl.Add(-time.Second)
	}
	for {
		pids := processesUsing(func(s string) bool { return s == sock })
		if len(pids) == 0 {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(force) {
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// KillUnder ends every tmux server whose socket is under dir: the ones
// found as SocketName files, and any process still running tmux with a
// socket under dir (even when the file is already gone).
func KillUnder(ctx context.Context, dir string) error {
	var errs []error
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == SocketName && d.Type()&fs.ModeSocket != 0 {
			errs = append(errs, Kill(ctx, p))
		}
		return nil
	})
	prefix := filepath.Clean(dir) + string(filepath.Separator)
	for _, pid := range processesUsing(func(s string) bool { return strings.HasPrefix(s, prefix) }) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return errors.Join(errs...)
}

// processesUsing lists the live (not zombie) tmux processes whose -S
// socket argument matches.
func processesUsing(match func(sock string) bool) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := bytes.Split(bytes.TrimSuffix(b, []byte{0}), []byte{0})
		if len(args) < 3 || !strings.HasPrefix(filepath.Base(string(args[0])), "tmux") {
			continue
		}
		for i := 1; i+1 < len(args); i++ {
			if string(args[i]) == "-S" && match(string(args[i+1])) {
				if !zombie(pid) {
					pids = append(pids, pid)
				}
				break
			}
		}
	}
	return pids
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true // gone
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}
