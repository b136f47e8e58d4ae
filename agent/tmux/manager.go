package tmux

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Config configures a Manager.
type Config struct {
	// StateDir holds the server socket, its config and run logs. Keep it
	// short: the socket path must fit in 108 bytes.
	StateDir string
	// Bin is the tmux executable (default: "tmux" from PATH).
	Bin string
	// HistoryLimit is tmux's history-limit for new panes (default 50000).
	HistoryLimit int
	// BufferBytes bounds the output kept per pane for followers
	// (default 1 MiB).
	BufferBytes int
	// PauseAfter is the control-mode pause-after age: a pane whose output
	// is that far behind is paused by tmux instead of queued (default 10s,
	// whole seconds).
	PauseAfter time.Duration
	// WorkDir is the default working directory of new windows (default:
	// the home directory).
	WorkDir string
	// Env is the environment the server starts with (default: HOME, PATH,
	// SHELL, USER, LOGNAME of the agent, and LANG=C.UTF-8). Panes inherit
	// it.
	Env []string
	// RunEnv, when set, gives entries (KEY=VALUE) that every command a
	// pane starts gets at its start, under the command's own: the
	// forwarded ssh agent (package sshauth).
	RunEnv func() []string
	// PaneHelper is the command prefix that runs a session run's command
	// and keeps the pane's process until tmux has read all the command
	// wrote (the agent's own executable and PaneExecCommand; see there).
	// Empty: the command is the pane's process, and under load tmux 3.3a
	// may lose the last kilobytes of its output.
	PaneHelper []string
	// Logger is the parent logger; the manager names its own.
	Logger hclog.Logger
}

// Manager owns the agent's private tmux server and one control-mode
// client per session it serves. A restarted agent with the same StateDir
// finds the same server and sessions.
type Manager struct {
	cfg  Config
	log  hclog.Logger
	bin  string
	sock string
	conf string
	env  []string

	version  Version
	startErr error

	mu        sync.Mutex
	clients   map[string]*Client // guarded by mu; by session name
	serverPID int                // guarded by mu
	closed    bool               // guarded by mu

	// watchers are the timeouts of session runs whose caller has gone;
	// quit, closed by Close, stops them.
	watchers  sync.WaitGroup
	quit      chan struct{}
	closeOnce sync.Once
}

// New makes a Manager; call Start before use.
func New(cfg Config) *Manager {
	if cfg.HistoryLimit <= 0 {
		cfg.HistoryLimit = 50000
	}
	if cfg.BufferBytes <= 0 {
		cfg.BufferBytes = 1 << 20
	}
	if cfg.PauseAfter <= 0 {
		cfg.PauseAfter = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.WorkDir == "" {
		cfg.WorkDir, _ = os.UserHomeDir()
	}
	env := cfg.Env
	if env == nil {
		env = defaultEnv()
	}
	return &Manager{
		cfg:     cfg,
		log:     cfg.Logger.Named("tmux"),
		sock:    filepath.Join(cfg.StateDir, "tmux.sock"),
		conf:    filepath.Join(cfg.StateDir, "tmux.conf"),
		env:     env,
		clients: map[string]*Client{},
		quit:    make(chan struct{}),
	}
}

func defaultEnv() []string {
	env := []string{"LANG=C.UTF-8"}
	for _, k := range []string{"HOME", "USER", "LOGNAME", "SHELL"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/bin:/usr/bin:/bin"
	}
	return append(env, "PATH="+path)
}

func (m *Manager) envValue(key string) string {
	for i := len(m.env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(m.env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// Start finds tmux, checks its version, writes the server config and
// starts the server (or adopts the one already on the socket). When it
// fails, Err reports why for every later call.
func (m *Manager) Start(ctx context.Context) error {
	m.startErr = m.start(ctx)
	if m.startErr != nil {
		m.log.Warn("tmux sessions unavailable", "error", m.startErr)
	} else {
		m.log.Info("tmux ready", "version", m.version.Raw, "socket", m.sock)
	}
	return m.startErr
}

func (m *Manager) start(ctx context.Context) error {
	bin := m.cfg.Bin
	if bin == "" {
		bin = "tmux"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return fmt.Errorf("%w: tmux %s or later is required and %q was not found in PATH", ErrUnsupported, MinVersion, bin)
	}
	if path, err = filepath.Abs(path); err != nil {
		return fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	m.bin = path
	out, err := exec.CommandContext(ctx, m.bin, "-V").Output()
	if err != nil {
		return fmt.Errorf("%w: %s -V: %v", ErrUnsupported, m.bin, err)
	}
	v, err := ParseVersion(strings.TrimSpace(string(out)))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	m.version = v
	if !v.AtLeast(3, 2) {
		return fmt.Errorf("%w: %s is too old, tmux %s or later is required", ErrUnsupported, v.Raw, MinVersion)
	}
	if len(m.sock) > 100 {
		return fmt.Errorf("%w: socket path %q is too long", ErrUnsupported, m.sock)
	}
	if err := os.MkdirAll(filepath.Join(m.cfg.StateDir, "logs"), 0o700); err != nil {
		return fmt.Errorf("%w: state dir: %v", ErrUnsupported, err)
	}
	if err := os.WriteFile(m.conf, []byte(m.configText()), 0o600); err != nil {
		return fmt.Errorf("%w: write tmux config: %v", ErrUnsupported, err)
	}
	// start-server loads the config only when it starts a server; an
	// existing server (a restarted agent) gets it sourced again so it has
	// the current options and hooks.
	if _, err := m.run(ctx, nil, "-f", m.conf, "start-server", ";", "source-file", m.conf); err != nil {
		return fmt.Errorf("%w: start tmux server: %v", ErrUnsupported, err)
	}
	out2, err := m.run(ctx, nil, "display-message", "-p", "#{pid}")
	if err != nil {
		return fmt.Errorf("%w: tmux server: %v", ErrUnsupported, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out2))
	if err != nil {
		return fmt.Errorf("%w: tmux server pid %q", ErrUnsupported, out2)
	}
	m.mu.Lock()
	m.serverPID = pid
	m.mu.Unlock()
	return nil
}

// configText is the server config. A config error leaves control clients
// unresponsive in 3.3a (#3193), so it holds only options known to 3.2.
//
// No global "window-size manual": in 3.3a it makes the server segfault
// as soon as a window is created with no terminal client attached
// (new-session -d, new-window -d; found while building this driver, see
// TestGlobalWindowSizeManualCrashes). Sizes come from the session's
// default-size instead, which control clients without refresh-client -C
// leave alone, and resize-window pins one window.
func (m *Manager) configText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "set-option -s exit-empty off\n")
	fmt.Fprintf(&b, "set-option -s escape-time 0\n")
	fmt.Fprintf(&b, "set-option -g remain-on-exit on\n")
	if m.version.AtLeast(3, 3) {
		// No "Pane is dead (status 9, ...)" line under a dead pane's
		// output: captures (dtmux logs) show the command's output only.
		// The option is new in 3.3; Capture strips the line 3.2 prints.
		fmt.Fprintf(&b, "set-option -g remain-on-exit-format ''\n")
	}
	fmt.Fprintf(&b, "set-option -g automatic-rename off\n")
	fmt.Fprintf(&b, "set-option -g allow-rename off\n")
	fmt.Fprintf(&b, "set-option -g history-limit %d\n", m.cfg.HistoryLimit)
	fmt.Fprintf(&b, "set-option -g default-size 200x50\n")
	// A dead pane signals a wait-for channel named after it; the waiter
	// may come before or after (an early -S is remembered). run-shell -C
	// expands the format before running the command; wait-for alone
	// would not.
	fmt.Fprintf(&b, "set-hook -g pane-died 'run-shell -C \"wait-for -S dtmux-died-#{hook_pane}\"'\n")
	return b.String()
}

// Err is nil when sessions are usable, or why they are not (wrapping
// ErrUnsupported).
func (m *Manager) Err() error {
	if m.startErr == nil && m.bin == "" {
		return fmt.Errorf("%w: not started", ErrUnsupported)
	}
	return m.startErr
}

// Version is the tmux version, empty when unknown.
func (m *Manager) Version() string { return m.version.Raw }

// Socket is the server's socket path.
func (m *Manager) Socket() string { return m.sock }

// Bin is the tmux executable in use.
func (m *Manager) Bin() string { return m.bin }

// Env is the environment tmux clients and the server run with.
func (m *Manager) Env() []string { return append([]string(nil), m.env...) }

// Close detaches every control client and stops the timeouts of session
// runs whose caller left; the server and its sessions keep running for
// the next agent.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	clients := m.clients
	m.clients = map[string]*Client{}
	m.mu.Unlock()
	m.closeOnce.Do(func() { close(m.quit) })
	m.watchers.Wait()
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(c.Close)
	}
	wg.Wait()
}

// KillServer kills the tmux server and waits for it to exit. Tests use it
// to clean up.
func (m *Manager) KillServer() {
	m.Close()
	m.mu.Lock()
	pid := m.serverPID
	m.mu.Unlock()
	if m.bin == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = m.run(ctx, nil, "kill-server")
	if pid > 0 {
		// kill-server returns before the server is gone (TMUX.md §5).
		for ctx.Err() == nil && syscall.Kill(pid, 0) == nil {
			time.Sleep(10 * time.Millisecond)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	_ = os.Remove(m.sock)
}

// nudgeSoon sends the nudge a few times over the next half second, from
// a goroutine the Manager owns: a command that exits right after a
// respawn is the one whose SIGCHLD 3.3a tends to lose, leaving a dead pane
// without status (and its service without logs) until the next nudge.
func (m *Manager) nudgeSoon() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.watchers.Go(func() {
		for _, d := range []time.Duration{20 * time.Millisecond, 100 * time.Millisecond, 400 * time.Millisecond} {
			select {
			case <-m.quit:
				return
			case <-time.After(d):
				m.nudge()
			}
		}
	})
}

// nudge sends SIGCHLD to the server: tmux 3.3a can lose one and leave a
// dead pane without status and without its pane-died hook (#311, #4559).
func (m *Manager) nudge() {
	m.mu.Lock()
	pid := m.serverPID
	m.mu.Unlock()
	if pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGCHLD)
	}
}

// command builds an exec'd tmux client on the private socket, from the
// clean environment. Every argument is protected against the trailing ';'
// separator rule.
func (m *Manager) command(ctx context.Context, args ...string) *exec.Cmd {
	full := []string{"-S", m.sock}
	for _, a := range args {
		if a == ";" { // a deliberate separator
			full = append(full, a)
			continue
		}
		full = append(full, escapeArgvWord(a))
	}
	cmd := exec.CommandContext(ctx, m.bin, full...)
	cmd.Env = m.env
	cmd.Dir = "/"
	return cmd
}

// run runs an exec'd tmux client and returns its stdout.
func (m *Manager) run(ctx context.Context, stdin []byte, args ...string) (string, error) {
	cmd := m.command(ctx, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return stdout.String(), classify(&tmuxError{Msg: msg})
	}
	return stdout.String(), nil
}

// tmuxError is an error message from tmux.
type tmuxError struct {
	Msg    string
	target error
}

func (e *tmuxError) Error() string { return "tmux: " + e.Msg }
func (e *tmuxError) Unwrap() error { return e.target }

// classify attaches a sentinel to tmux's own messages.
func classify(e *tmuxError) error {
	switch {
	case strings.Contains(e.Msg, "can't find session"), strings.Contains(e.Msg, "no server running"),
		strings.Contains(e.Msg, "session not found"), strings.Contains(e.Msg, "no sessions"),
		strings.Contains(e.Msg, "no current target"):
		e.target = ErrSessionNotFound
	case strings.Contains(e.Msg, "can't find window"), strings.Contains(e.Msg, "can't find pane"):
		e.target = ErrWindowNotFound
	case strings.Contains(e.Msg, "duplicate session"):
		e.target = ErrSessionExists
	}
	return e
}

var errNoClient = errors.New("no control client")
