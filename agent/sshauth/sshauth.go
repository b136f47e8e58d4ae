// Package sshauth lets a workspace's runs use the ssh agent that the
// newest hop forwards (ssh -A), as tmux's update-environment does for its
// clients. A run inherits SSH_AUTH_SOCK from the agent daemon, and the
// daemon from the hop that started it, whose socket sshd removes when that
// hop ends: after a redial, `git pull` over ssh in a run failed with
// "Error connecting to agent". Instead, each hop's pump points a link in
// the state directory at its own session's socket, and runs get the link.
package sshauth

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// LinkName is the link in the agent's state directory.
const LinkName = "ssh-auth.sock"

// maxSocketPath is what a unix socket's path may hold (sun_path, less the
// terminating NUL): a longer link could not be connected to.
const maxSocketPath = 107

// LinkPath is the link of the agent whose state directory is stateDir,
// absolute (runs start in other directories).
func LinkPath(stateDir string) string {
	if abs, err := filepath.Abs(stateDir); err == nil {
		stateDir = abs
	}
	return filepath.Join(stateDir, LinkName)
}

// Update points the link of stateDir at sock, the SSH_AUTH_SOCK of the
// hop being set up, replacing the previous hop's. A hop without a
// forwarded agent (sock empty) leaves the link as it is: another hop may
// still forward one.
func Update(stateDir, sock string) error {
	link := LinkPath(stateDir)
	if sock == "" {
		return nil
	}
	if len(link) > maxSocketPath {
		return fmt.Errorf("forwarded ssh agent: %s is longer than a unix socket's path may be (%d bytes)", link, maxSocketPath)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("forwarded ssh agent: %w", err)
	}
	tmp := link + ".new." + strconv.Itoa(os.Getpid())
	os.Remove(tmp)
	if err := os.Symlink(sock, tmp); err != nil {
		return fmt.Errorf("forwarded ssh agent: %w", err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("forwarded ssh agent: %w", err)
	}
	return nil
}

// Env is the environment entry that gives a run the forwarded agent of
// stateDir's newest hop: SSH_AUTH_SOCK=<link> while the link leads to a
// socket of this user, else nothing (no hop forwarded one, or its session
// is over). The owner check matters once sshd has removed a session's
// socket: another user could make one at the same path.
func Env(stateDir string) []string {
	link := LinkPath(stateDir)
	st, err := os.Stat(link)
	if err != nil || st.Mode().Type() != os.ModeSocket || len(link) > maxSocketPath {
		return nil
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); !ok || int(sys.Uid) != os.Getuid() {
		return nil
	}
	return []string{"SSH_AUTH_SOCK=" + link}
}

// Managed reports whether a hop of stateDir ever forwarded an agent (the
// link exists): then runs get the agent through Env only, never the
// SSH_AUTH_SOCK the agent itself was started with (the socket of the hop
// that started it, gone with that hop).
func Managed(stateDir string) bool {
	_, err := os.Lstat(LinkPath(stateDir))
	return err == nil
}
