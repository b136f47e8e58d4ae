package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Replacing a daemon by re-executing it. A pump that finds a daemon of
// another build (or with other flags) asks it to exec the pump's
// executable and arguments in place, rather than stopping it and starting
// a new one: the pid, the lock on agent.pid and the children stay, so the
// daemon's detached runs go on under the new build (process.Handed). The
// request is a file in the 0700 state dir and SIGUSR2, which only the
// same user can send. A daemon that cannot re-exec (one older than this,
// which says so by lacking FeaturesName) is stopped and started as before.

// Files of the re-exec protocol, in the state directory.
const (
	// ReexecName holds the request: the executable and its arguments.
	ReexecName = "agent.reexec"
	// FeaturesName is written by a daemon that honours the request, with
	// its pid: "reexec pid=N".
	FeaturesName = "agent.features"
	// FailedName records a request the daemon could not carry out (it
	// goes on as it was): pumps then join it rather than ask again.
	FailedName = "agent.reexec.failed"
)

// failure is what FailedName holds.
type failure struct {
	PID    int       `json:"pid"`
	Path   string    `json:"path,omitempty"`
	Args   []string  `json:"args,omitempty"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// RecordFailure records that this daemon could not become req (empty when
// the request itself was unreadable) and goes on as it was.
func RecordFailure(stateDir string, req Request, reason string) {
	b, err := json.Marshal(failure{PID: os.Getpid(), Path: req.Path, Args: req.Args, Reason: reason, At: time.Now()})
	if err == nil {
		_ = os.WriteFile(filepath.Join(stateDir, FailedName), b, 0o600)
	}
}

// lastFailure reads FailedName for daemon pid: ok when that daemon failed
// a request.
func lastFailure(stateDir string, pid int) (failure, bool) {
	b, err := os.ReadFile(filepath.Join(stateDir, FailedName))
	if err != nil {
		return failure{}, false
	}
	var f failure
	if json.Unmarshal(b, &f) != nil || f.PID != pid {
		return failure{}, false
	}
	return f, true
}

// errNoReexec: the daemon answered the request by going on as it was.
var errNoReexec = errors.New("the agent daemon could not re-execute")

// ReexecSignal asks a daemon to re-execute itself.
const ReexecSignal = syscall.SIGUSR2

// Request is what a pump asks a daemon to become.
type Request struct {
	Path string   `json:"path"`
	Args []string `json:"args"`
}

// adopted is what Adopt took over: the lock's descriptor and the socket
// path, which an exec must pass on.
var adopted struct {
	lockFD int
	socket string
}

// Reexecutable reports whether this process is a daemon a pump started,
// the only kind that can re-execute in place.
func Reexecutable() bool { return adopted.socket != "" }

// announce records that this daemon honours re-exec requests.
func announce(sock string) {
	path := filepath.Join(filepath.Dir(sock), FeaturesName)
	_ = os.WriteFile(path, []byte("reexec pid="+strconv.Itoa(os.Getpid())+"\n"), 0o600)
}

// canReexec reports whether daemon pid announced that it honours re-exec
// requests.
func canReexec(stateDir string, pid int) bool {
	b, err := os.ReadFile(filepath.Join(stateDir, FeaturesName))
	return err == nil && strings.TrimSpace(string(b)) == "reexec pid="+strconv.Itoa(pid)
}

// TakeRequest reads and removes the re-exec request in stateDir. The
// executable must be an absolute path to a regular file.
func TakeRequest(stateDir string) (Request, error) {
	path := filepath.Join(stateDir, ReexecName)
	b, err := os.ReadFile(path)
	os.Remove(path)
	if err != nil {
		return Request{}, fmt.Errorf("re-exec request: %w", err)
	}
	var req Request
	if err := json.Unmarshal(b, &req); err != nil {
		return Request{}, fmt.Errorf("re-exec request: %w", err)
	}
	if !filepath.IsAbs(req.Path) {
		return Request{}, fmt.Errorf("re-exec request: executable %q is not an absolute path", req.Path)
	}
	if fi, err := os.Stat(req.Path); err != nil || !fi.Mode().IsRegular() {
		return Request{}, fmt.Errorf("re-exec request: executable %q is not a regular file", req.Path)
	}
	return req, nil
}

// Exec replaces this daemon's image with req, passing on the lock on
// agent.pid, the socket path and extraEnv. It returns only on failure.
// Call it last: deferred work of the caller does not run.
func Exec(req Request, extraEnv ...string) error {
	if adopted.socket == "" {
		return errors.New("re-exec: this agent is not a daemon started by a pump")
	}
	if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(adopted.lockFD), syscall.F_SETFD, 0); errno != 0 {
		return fmt.Errorf("re-exec: keep the lock: %w", errno)
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, envLockFD+"=") || strings.HasPrefix(kv, envSocket+"=")
	})
	env = append(env, envLockFD+"="+strconv.Itoa(adopted.lockFD), envSocket+"="+adopted.socket)
	env = append(env, extraEnv...)
	err := syscall.Exec(req.Path, append([]string{req.Path}, req.Args...), env)
	syscall.CloseOnExec(adopted.lockFD)
	return fmt.Errorf("re-exec %s: %w", req.Path, err)
}

// reexec asks daemon pid to become c.Path with c.Args and waits until it
// serves as that. An error leaves the caller to stop the daemon, if it
// still runs, and start one.
func reexec(ctx context.Context, log hclog.Logger, c Config, pid int) (*net.UnixConn, error) {
	b, err := json.Marshal(Request{Path: c.Path, Args: c.Args})
	if err != nil {
		return nil, err
	}
	tmp := filepath.Join(c.StateDir, ReexecName+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, filepath.Join(c.StateDir, ReexecName)); err != nil {
		return nil, err
	}
	if err := syscall.Kill(pid, ReexecSignal); err != nil {
		return nil, fmt.Errorf("signal the agent daemon: %w", err)
	}
	sock := SocketPath(c.StateDir)
	asked := time.Now()
	// A handover takes the agent's kill and drain graces at most; the
	// rest of the pump's time is for stopping the daemon if it hangs.
	wait := c.StopTimeout + 10*time.Second
	deadline := asked.Add(wait)
	for {
		if f, ok := lastFailure(c.StateDir, pid); ok && !f.At.Before(asked.Add(-time.Second)) {
			return nil, fmt.Errorf("%w as %s: %s", errNoReexec, c.Path, f.Reason)
		}
		if _, alive := running(c.StateDir); !alive {
			return nil, fmt.Errorf("the agent daemon exited instead of re-executing: %s", logTail(filepath.Join(c.StateDir, LogName)))
		}
		// The new image first (its arguments), then its socket: the old
		// image's socket is gone before the exec.
		if differs(pid, c.Args) == "" {
			if conn, err := dial(sock); err == nil {
				if p, err := peerPID(conn); err == nil && p == pid {
					log.Info("the agent daemon re-executed as this build", "pid", pid)
					return conn, nil
				}
				conn.Close()
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("the agent daemon (pid %d) did not re-execute within %v", pid, wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
