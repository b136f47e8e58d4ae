// Package sshauth lets a workspace's runs use the ssh agent that the
// newest hop forwards (ssh -A), as tmux's update-environment does for its
// clients. A run inherits SSH_AUTH_SOCK from the agent daemon, and the
// daemon from the hop that started it, whose socket sshd removes when that
// hop ends: after a redial, `git pull` over ssh in a run failed with
// "Error connecting to agent". Instead, each hop's pump points a link in
// the state directory at its own session's socket, and runs get the link.
package sshauth

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
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

// hopsDir holds a link per hop that forwards an agent (named after its
// socket), so that when the newest hop ends while an older one is
// still up, runs get the older one's agent (Env).
const hopsDir = "ssh-auth.d"

// Update points the link of stateDir at sock, the SSH_AUTH_SOCK of the
// hop being set up, replacing the previous hop's, and records the hop's
// own link; call the returned func when the hop ends. A hop without a
// forwarded agent (sock empty) leaves the links as they are: another hop
// may still forward one.
func Update(stateDir, sock string) (done func(), err error) {
	done = func() {}
	link := LinkPath(stateDir)
	if sock == "" {
		return done, nil
	}
	if len(link) > maxSocketPath {
		return done, fmt.Errorf("forwarded ssh agent: %s is longer than a unix socket's path may be (%d bytes)", link, maxSocketPath)
	}
	hops := filepath.Join(filepath.Dir(link), hopsDir)
	if err := os.MkdirAll(hops, 0o700); err != nil {
		return done, fmt.Errorf("forwarded ssh agent: %w", err)
	}
	sum := sha256.Sum256([]byte(sock))
	own := filepath.Join(hops, hex.EncodeToString(sum[:8]))
	if err := point(own, sock); err != nil {
		return done, err
	}
	if err := point(link, sock); err != nil {
		os.Remove(own)
		return done, err
	}
	return func() { os.Remove(own) }, nil
}

// tmpSeq tells apart the temporary links of runs starting at once.
var tmpSeq atomic.Uint64

// point makes link lead to target, replacing what it led to at once.
func point(link, target string) error {
	tmp := fmt.Sprintf("%s.new.%d.%d", link, os.Getpid(), tmpSeq.Add(1))
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("forwarded ssh agent: %w", err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("forwarded ssh agent: %w", err)
	}
	return nil
}

// usable reports whether path leads to a unix socket of this user's own.
// The owner check matters once sshd has removed a session's socket:
// another user could make one at the same path.
func usable(path string) bool {
	st, err := os.Stat(path)
	if err != nil || st.Mode().Type() != os.ModeSocket {
		return false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && int(sys.Uid) == os.Getuid()
}

// Env is the environment entry that gives a run the forwarded agent of
// stateDir's newest hop that is still up: SSH_AUTH_SOCK=<link> while the
// link leads to a usable socket (after pointing it at another hop's when
// the newest one ended), else nothing (no hop forwards one now).
func Env(stateDir string) []string {
	link := LinkPath(stateDir)
	if len(link) > maxSocketPath {
		return nil
	}
	if usable(link) || takeOver(link) {
		return []string{"SSH_AUTH_SOCK=" + link}
	}
	return nil
}

// takeOver points link at a hop whose agent is still up, newest first,
// removing the links of hops that are over; false when none is up.
func takeOver(link string) bool {
	hops := filepath.Join(filepath.Dir(link), hopsDir)
	entries, err := os.ReadDir(hops)
	if err != nil {
		return false
	}
	type hop struct {
		path string
		at   int64
	}
	var live []hop
	for _, e := range entries {
		p := filepath.Join(hops, e.Name())
		if strings.Contains(e.Name(), ".new.") {
			continue
		}
		if !usable(p) {
			os.Remove(p)
			continue
		}
		if fi, err := os.Lstat(p); err == nil {
			live = append(live, hop{p, fi.ModTime().UnixNano()})
		}
	}
	sort.Slice(live, func(i, j int) bool { return live[i].at > live[j].at })
	for _, h := range live {
		if target, err := os.Readlink(h.path); err == nil && point(link, target) == nil {
			return true
		}
	}
	return false
}

// Managed reports whether a hop of stateDir ever forwarded an agent (the
// link exists): then runs get the agent through Env only, never the
// SSH_AUTH_SOCK the agent itself was started with (the socket of the hop
// that started it, gone with that hop).
func Managed(stateDir string) bool {
	_, err := os.Lstat(LinkPath(stateDir))
	return err == nil
}
