// Package daemon keeps one long-lived agent per state directory, listening
// on a unix socket inside it, and joins the short-lived `dtmux-agent
// --stdio` process at the end of an ssh hop (the pump) to it.
//
// Why: a workspace is reached through one hop (ssh, daytona ssh), and hops
// die (network, sshd restart, the controller's idle close). Runs and tmux
// sessions must outlive them. So the process at the end of the hop owns
// nothing: it finds or starts the daemon and hands it the hop's pipes
// (handoff.go), or copies bytes when it cannot (Pump), and when the hop
// dies only the pump exits; the controller redials, a new pump joins the
// same daemon, and clients reattach to their runs.
//
// Files in the state directory:
//
//	agent.sock        the daemon's socket (0600 in the 0700 state dir)
//	agent.hop.sock    where pumps hand the daemon their hops (0600)
//	agent.pid         the daemon's pid; the daemon holds a flock on it for
//	                  its whole life, so "is a daemon alive" never depends
//	                  on pids that may be reused or zombies never reaped
//	agent.start.lock  held by a pump while it checks, stops or starts the
//	                  daemon, so two hops opening at once start one daemon
//	agent.log         the daemon's stderr (and its logs unless --log-file)
//	agent.features    written by a daemon that can re-execute in place
//	agent.reexec      a pump's request that it do so (reexec.go)
//	agent.reexec.failed  why it could not, when it went on as it was
//	agent.handover    the runs an exec passes on (read by the new image)
package daemon

import (
	"context"
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

	"github.com/dtmux/dtmux/internal/auth"
)

// Names of the files in the state directory.
const (
	SocketName    = "agent.sock"
	PIDName       = "agent.pid"
	StartLockName = "agent.start.lock"
	LogName       = "agent.log"
)

// maxSocketPath is the longest unix socket path Linux accepts, less the
// terminating NUL.
const maxSocketPath = 107

// maxLog is the size above which agent.log is rotated to agent.log.1 when
// a daemon starts.
const maxLog = 16 << 20

// Environment variables a pump sets for the daemon it starts; Adopt reads
// and removes them.
const (
	envLockFD = "DTMUX_AGENT_DAEMON_LOCK_FD"
	envSocket = "DTMUX_AGENT_DAEMON_SOCKET"
)

// Defaults for Config's zero durations.
const (
	DefaultStartTimeout = 30 * time.Second
	// DefaultStopTimeout covers the agent's own shutdown: kill grace of
	// attached runs plus the drain of in-flight calls.
	DefaultStopTimeout = 20 * time.Second
)

// ErrSocketPath: the state directory is too deep for a unix socket path.
var ErrSocketPath = errors.New("unix socket path too long")

// Config says which daemon to find or start.
type Config struct {
	// StateDir is the daemon's state directory (absolute); it is created
	// 0700 when missing.
	StateDir string
	// Path is the executable to start (normally this one).
	Path string
	// Args are the daemon's arguments (without argv[0]); they must make it
	// listen on SocketPath(StateDir). A running daemon started from a
	// different build, or with different arguments, is replaced.
	Args []string
	// StartTimeout bounds the wait for a new daemon's socket
	// (DefaultStartTimeout).
	StartTimeout time.Duration
	// StopTimeout is how long a daemon being replaced has after SIGTERM
	// before SIGKILL (DefaultStopTimeout).
	StopTimeout time.Duration
	// Logger receives what the pump does (named "daemon").
	Logger hclog.Logger
}

// SocketPath is where the daemon of stateDir listens.
func SocketPath(stateDir string) string { return filepath.Join(stateDir, SocketName) }

// Connect returns a connection to the daemon of c.StateDir, starting it
// first when none is running, or replacing it when it runs another build
// or other arguments (a re-bootstrapped agent must take over). ctx bounds
// the whole operation.
func Connect(ctx context.Context, c Config) (*net.UnixConn, error) {
	if c.StartTimeout == 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	log := c.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	log = log.Named("daemon")
	sock := SocketPath(c.StateDir)
	if len(sock) > maxSocketPath {
		return nil, fmt.Errorf("%w: %s is %d bytes (at most %d): use a shorter --state-dir", ErrSocketPath, sock, len(sock), maxSocketPath)
	}
	if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	unlock, err := lockWait(ctx, filepath.Join(c.StateDir, StartLockName))
	if err != nil {
		return nil, fmt.Errorf("take the start lock: %w", err)
	}
	defer unlock()

	conn, err := dial(sock)
	if err == nil {
		if _, alive := running(c.StateDir); !alive {
			// A daemon that has released its lock is exiting; its socket
			// may accept for a moment longer.
			conn.Close()
			err = errors.New("the daemon is exiting")
		}
	}
	if err == nil {
		pid, err := peerPID(conn)
		if err != nil {
			conn.Close()
			return nil, err
		}
		why := differs(pid, c.Args)
		if why == "" {
			log.Debug("joining agent daemon", "pid", pid)
			return conn, nil
		}
		conn.Close()
		log.Info("replacing the agent daemon", "pid", pid, "reason", why)
		if canReexec(c.StateDir, pid) {
			// A daemon that could not become this build before goes on
			// as it was: join it rather than ask again (each attempt ends
			// its attached runs and connections).
			if f, ok := lastFailure(c.StateDir, pid); ok && f.Path == c.Path && slices.Equal(f.Args, c.Args) {
				log.Warn("joining the agent daemon of another build: it could not become this one", "pid", pid, "reason", f.Reason)
				return dial(sock)
			}
			conn, err := reexec(ctx, log, c, pid)
			if err == nil {
				return conn, nil
			}
			if _, alive := running(c.StateDir); alive && errors.Is(err, errNoReexec) {
				log.Warn("joining the agent daemon of another build", "pid", pid, "error", err)
				return dial(sock)
			}
			log.Warn("the agent daemon did not re-execute; stopping it", "pid", pid, "error", err)
		}
		if err := stop(ctx, c.StateDir, pid, c.StopTimeout); err != nil {
			return nil, err
		}
	} else if pid, alive := running(c.StateDir); alive {
		// Alive but not accepting: shutting down, or wedged. It holds the
		// state dir, so it must be gone before another starts.
		log.Info("the agent daemon does not accept connections; stopping it", "pid", pid, "error", err)
		if err := stop(ctx, c.StateDir, pid, c.StopTimeout); err != nil {
			return nil, err
		}
	}
	return start(ctx, log, c)
}

// start starts a daemon (callers hold the start lock and know that none
// runs) and waits until its socket accepts.
func start(ctx context.Context, log hclog.Logger, c Config) (*net.UnixConn, error) {
	sock := SocketPath(c.StateDir)
	lf, err := os.OpenFile(filepath.Join(c.StateDir, PIDName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return nil, fmt.Errorf("an agent daemon still holds %s: %w", lf.Name(), err)
	}
	// Nothing listens (the lock is ours): a socket file left by a killed
	// daemon goes, so that the new daemon's watch sees only its own.
	os.Remove(sock)

	logPath := filepath.Join(c.StateDir, LogName)
	if st, err := os.Stat(logPath); err == nil && st.Size() > maxLog {
		os.Rename(logPath, logPath+".1")
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer null.Close()

	// Detached: its own session (no hangup from the hop's end), no pipe of
	// the hop's (sshd waits for those to close), and the lock on agent.pid
	// handed over as fd 3: the lock lives as long as any copy of that open
	// file, so it is held exactly as long as the daemon lives.
	attr := &os.ProcAttr{
		Files: []*os.File{null, null, logf, lf},
		Env: append(slices.DeleteFunc(os.Environ(), func(kv string) bool {
			return strings.HasPrefix(kv, envLockFD+"=") || strings.HasPrefix(kv, envSocket+"=")
		}), envLockFD+"=3", envSocket+"="+sock),
		Sys: &syscall.SysProcAttr{Setsid: true},
	}
	p, err := os.StartProcess(c.Path, append([]string{c.Path}, c.Args...), attr)
	if err != nil {
		return nil, fmt.Errorf("start the agent daemon: %w", err)
	}
	pid := p.Pid
	if err := lf.Truncate(0); err == nil {
		lf.WriteAt([]byte(strconv.Itoa(pid)+"\n"), 0)
	}
	fmt.Fprintf(logf, "%s dtmux-agent daemon started, pid %d\n", time.Now().Format(time.RFC3339), pid)
	log.Info("started the agent daemon", "pid", pid, "state_dir", c.StateDir)

	deadline := time.Now().Add(c.StartTimeout)
	for wait := time.Millisecond; ; wait = min(wait*2, 50*time.Millisecond) {
		if conn, err := dial(sock); err == nil {
			// The daemon stays our child until this pump exits; it is
			// reaped by whoever adopts it then.
			p.Release()
			return conn, nil
		}
		var ws syscall.WaitStatus
		if n, _ := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); n == pid {
			return nil, fmt.Errorf("the agent daemon exited at start (%s): %s", exitString(ws), logTail(logPath))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			syscall.Kill(pid, syscall.SIGKILL)
			p.Wait()
			return nil, fmt.Errorf("the agent daemon did not listen on %s within %v: %s", sock, c.StartTimeout, logTail(logPath))
		}
		time.Sleep(wait)
	}
}

// Stop stops the daemon of stateDir, if one runs: SIGTERM, then SIGKILL
// after timeout. Tests and uninstallers use it.
func Stop(stateDir string, timeout time.Duration) error {
	pid, alive := running(stateDir)
	if !alive {
		return nil
	}
	return stop(context.Background(), stateDir, pid, timeout)
}

// stop ends daemon pid and waits until its lock on agent.pid is gone.
func stop(ctx context.Context, stateDir string, pid int, timeout time.Duration) error {
	if pid > 0 {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	if waitGone(ctx, stateDir, timeout) {
		return nil
	}
	if pid > 0 {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if waitGone(ctx, stateDir, 5*time.Second) {
		return nil
	}
	return fmt.Errorf("the agent daemon (pid %d) of %s does not exit", pid, stateDir)
}

func waitGone(ctx context.Context, stateDir string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if _, alive := running(stateDir); !alive {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// running reports whether a daemon holds the lock on agent.pid, and the
// pid written there.
func running(stateDir string) (int, bool) {
	f, err := os.Open(filepath.Join(stateDir, PIDName))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	b := make([]byte, 32)
	n, _ := f.Read(b)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		return pid, true
	}
	// Closing f drops the probe's lock.
	return pid, false
}

// lockWait takes an exclusive flock on path, polling so that ctx bounds
// the wait.
func lockWait(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for wait := time.Millisecond; ; wait = min(wait*2, 50*time.Millisecond) {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

func dial(sock string) (*net.UnixConn, error) {
	return net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
}

// peerPID is the pid of the process listening at the other end
// (SO_PEERCRED), refused unless it runs as this user.
func peerPID(c *net.UnixConn) (int, error) {
	cred, err := auth.PeerCred(c)
	if err != nil {
		return 0, fmt.Errorf("peer credentials: %w", err)
	}
	if int(cred.Uid) != os.Getuid() {
		return 0, fmt.Errorf("the agent socket is served by uid %d, not this user", cred.Uid)
	}
	return int(cred.Pid), nil
}

func exitString(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return "exit status " + strconv.Itoa(ws.ExitStatus())
}

// logTail is the end of the daemon's log, for errors.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log)"
	}
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return strings.TrimSpace(string(b))
}
