package local

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dtmux/dtmux/internal/tmuxserver"
)

// reapTimeout bounds how long a stop or delete spends ending what the
// workspace left running once its agent is gone.
const reapTimeout = 10 * time.Second

// endWorkspace ends everything a stopped workspace still runs, as
// stopping a VM or container would: its tmux server (which outlives an
// agent restart on purpose, but not a stop), then every process of ours
// that came from it (see reap). Callers hold w.op and have stopped the
// agent.
func (p *Provider) endWorkspace(w *workspace) {
	ctx, cancel := context.WithTimeout(context.Background(), reapTimeout)
	defer cancel()
	if err := tmuxserver.KillUnder(ctx, filepath.Join(w.dir, "agent")); err != nil {
		p.log.Warn("stop the workspace's tmux server", "workspace", w.meta.Name, "error", err)
	}
	n, err := reap(ctx, w.meta.Name, w.dir)
	if err != nil {
		p.log.Warn("end the workspace's processes", "workspace", w.meta.Name, "error", err)
	}
	if n > 0 {
		p.log.Info("ended processes left by the workspace", "workspace", w.meta.Name, "processes", n)
	}
}

// reap SIGKILLs, until none is left or ctx ends, every process of this
// user that came from the workspace in dir although its agent is gone:
// those started by one of its runs (DTMUX_WORKSPACE is the workspace and
// DTMUX_RUN_ID one of the runs the agent recorded), which catches
// children that left the run's process group (setsid, nohup, a daemon),
// and those whose HOME is the workspace's home, as the agent gives it to
// every run, tmux pane and their children. It returns how many processes
// it signalled.
func reap(ctx context.Context, name, dir string) (int, error) {
	runs := map[string]bool{}
	ents, err := os.ReadDir(filepath.Join(dir, "agent", "runs"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	for _, e := range ents {
		if e.IsDir() {
			runs[e.Name()] = true
		}
	}
	m := matcher{workspace: name, runs: runs, home: homeDir(dir), uid: uint32(os.Getuid()), self: os.Getpid()}
	killed := map[int]bool{}
	for {
		// A process may fork between the scan and its kill: scan again
		// until one finds nothing alive.
		left := 0
		for _, pid := range m.scan() {
			left++
			if kill(pid, &m) {
				killed[pid] = true
			}
		}
		if left == 0 {
			return len(killed), nil
		}
		select {
		case <-ctx.Done():
			return len(killed), ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// matcher says whether a process came from one workspace.
type matcher struct {
	workspace string
	runs      map[string]bool
	home      string
	uid       uint32
	self      int
}

// scan lists the live processes that match.
func (m *matcher) scan() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == m.self {
			continue
		}
		if m.match(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// match reads pid's owner and environment. A zombie, or a process that
// is exiting, has no environment left and never matches.
func (m *matcher) match(pid int) bool {
	proc := "/proc/" + strconv.Itoa(pid)
	fi, err := os.Stat(proc)
	if err != nil {
		return false
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != m.uid {
		return false
	}
	env, err := os.ReadFile(proc + "/environ")
	if err != nil {
		return false
	}
	var ws, run, home string
	var haveWS, haveRun bool
	for kv := range bytes.SplitSeq(env, []byte{0}) {
		k, v, ok := bytes.Cut(kv, []byte{'='})
		if !ok {
			continue
		}
		// The last of duplicate keys wins, as in exec.
		switch string(k) {
		case "DTMUX_WORKSPACE":
			ws, haveWS = string(v), true
		case "DTMUX_RUN_ID":
			run, haveRun = string(v), true
		case "HOME":
			home = string(v)
		}
	}
	if haveWS && haveRun && ws == m.workspace && m.runs[run] {
		return true
	}
	return home == m.home
}

// kill SIGKILLs pid through a pidfd, checking after opening it that the
// process still matches, so that a pid reused meanwhile is never hit.
// Without pidfds (old kernels) it falls back to kill(2).
func kill(pid int, m *matcher) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return syscall.Kill(pid, syscall.SIGKILL) == nil
		}
		return false // gone
	}
	defer unix.Close(fd)
	if !m.match(pid) {
		return false
	}
	return unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) == nil
}
