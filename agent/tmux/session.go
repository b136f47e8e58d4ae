package tmux

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dtmux/dtmux/internal/workdir"
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidName reports whether s may name a session, window or service.
func ValidName(s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("%w: %q: use 1 to 64 letters, digits, '-' or '_'", ErrInvalidName, s)
	}
	return nil
}

// Command is what a window runs.
type Command struct {
	// Argv is the program and its arguments; empty means the user's shell.
	Argv []string
	// Shell joins Argv with spaces and runs it with /bin/sh -c.
	Shell bool
	// Env is added to the server's environment.
	Env map[string]string
	// Cwd is the working directory (default Config.WorkDir).
	Cwd string
}

// Size is a terminal size in cells.
type Size struct{ Cols, Rows int }

// SessionSpec describes a new session.
type SessionSpec struct {
	Name       string
	Unique     bool
	Command    Command
	Size       Size
	WindowName string
}

// Pane describes a pane.
type Pane struct {
	ID, Window     string
	PID            int
	Dead           bool
	Exit           PaneExit
	CurrentCommand string
	Size           Size
}

// Window describes a window.
type Window struct {
	Index int
	Name  string
	ID    string
	Panes []Pane
}

// Session describes a session.
type Session struct {
	Name     string
	ID       string
	Created  time.Time
	Windows  []Window
	Attached int // terminal clients, the agent's own control clients not counted
	Size     Size
}

// client returns the control client of a session, attaching one if needed.
func (m *Manager) client(ctx context.Context, session string) (*Client, error) {
	if err := m.Err(); err != nil {
		return nil, err
	}
	if err := ValidName(session); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if c := m.clients[session]; c != nil {
		select {
		case <-c.Done():
			c.Close()
			delete(m.clients, session)
		default:
			return c, nil
		}
	}
	c, err := m.startClient(ctx, session)
	if err != nil {
		return nil, fmt.Errorf("session %q: %w", session, err)
	}
	m.clients[session] = c
	return c, nil
}

// dropClient forgets and closes the client of a session that is gone.
func (m *Manager) dropClient(session string) {
	m.mu.Lock()
	c := m.clients[session]
	delete(m.clients, session)
	m.mu.Unlock()
	if c != nil {
		c.Close()
		// The session is gone: so are its panes and their pipes.
		c.bmu.Lock()
		c.removeLogs("")
		c.bmu.Unlock()
	}
}

func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// placeholder keeps a new pane alive until respawn-pane replaces it with
// the real command, set over the control line (where env values never
// show on a command line). Two words: tmux runs them with execvp.
var placeholder = []string{"sleep", "2147483647"}

// CreateSession creates a session running cmd in its first window.
func (m *Manager) CreateSession(ctx context.Context, spec SessionSpec) (Session, error) {
	if err := m.Err(); err != nil {
		return Session{}, err
	}
	if err := ValidName(spec.Name); err != nil {
		return Session{}, err
	}
	name := spec.Name
	if spec.Unique {
		name = fmt.Sprintf("%.55s-%s", name, randomSuffix())
	}
	win := spec.WindowName
	if win == "" {
		win = "main"
	}
	if err := ValidName(win); err != nil {
		return Session{}, fmt.Errorf("window name: %w", err)
	}
	size := spec.Size
	if size.Cols <= 0 || size.Rows <= 0 {
		size = Size{Cols: 200, Rows: 50}
	}
	argv, err := m.prepare(spec.Command)
	if err != nil {
		return Session{}, err
	}
	out, err := m.run(ctx, nil, "new-session", "-d", "-s", name, "-n", win,
		"-x", strconv.Itoa(size.Cols), "-y", strconv.Itoa(size.Rows),
		"-P", "-F", "#{session_id} #{pane_id}", "--", placeholder[0], placeholder[1])
	if err != nil {
		if errors.Is(err, ErrSessionExists) {
			return Session{}, fmt.Errorf("session %q: %w", name, ErrSessionExists)
		}
		return Session{}, fmt.Errorf("create session %q: %w", name, err)
	}
	ids := strings.Fields(out)
	if len(ids) != 2 {
		return Session{}, fmt.Errorf("create session %q: unexpected reply %q", name, out)
	}
	pane := ids[1]
	// set-option does not take "=name" targets: use the session id.
	_, err = m.run(ctx, nil, "set-option", "-t", ids[0], "default-size", fmt.Sprintf("%dx%d", size.Cols, size.Rows))
	var c *Client
	if err == nil {
		c, err = m.client(ctx, name)
	}
	if err == nil {
		err = c.respawn(ctx, pane, m.respawnLine(pane, spec.Command, argv))
	}
	if err != nil {
		_, _ = m.run(context.Background(), nil, "kill-session", "-t", "="+name)
		m.dropClient(name)
		return Session{}, fmt.Errorf("create session %q: %w", name, err)
	}
	return m.Session(ctx, name)
}

// prepare validates a command and returns the argv tmux should run.
func (m *Manager) prepare(cmd Command) ([]string, error) {
	for k, v := range cmd.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.Contains(v, "\x00") {
			return nil, fmt.Errorf("%w: environment key %q", ErrInvalidArgument, k)
		}
	}
	cwd := m.cwd(cmd)
	if st, err := os.Stat(cwd); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%w: working directory %q does not exist", ErrInvalidArgument, cwd)
	}
	if cmd.Shell {
		return []string{"/bin/sh", "-c", strings.Join(cmd.Argv, " ")}, nil
	}
	argv := cmd.Argv
	if len(argv) == 0 {
		shell := m.envValue("SHELL")
		if shell == "" {
			shell = "/bin/sh"
		}
		argv = []string{shell}
	}
	for _, a := range argv {
		if strings.Contains(a, "\x00") {
			return nil, fmt.Errorf("%w: NUL in argv", ErrInvalidArgument)
		}
	}
	// An execvp failure leaves a pane with status 1, indistinguishable from
	// `exit 1` (TMUX.md §2): look the program up first.
	path := m.envValue("PATH")
	if p, ok := cmd.Env["PATH"]; ok {
		path = p
	}
	if _, err := lookPath(argv[0], path, cwd); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrCommandNotFound, err)
	}
	if len(argv) == 1 {
		// One word would run as `default-shell -c WORD` (TMUX.md §5).
		return []string{"/bin/sh", "-c", `exec "$0" "$@"`, argv[0]}, nil
	}
	return argv, nil
}

func (m *Manager) cwd(cmd Command) string {
	return workdir.Resolve(m.cfg.WorkDir, cmd.Cwd)
}

func lookPath(file, path, cwd string) (string, error) {
	check := func(p string) bool {
		st, err := os.Stat(p)
		return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
	}
	if strings.Contains(file, "/") {
		p := file
		if !filepath.IsAbs(p) {
			p = filepath.Join(cwd, p)
		}
		if check(p) {
			return p, nil
		}
		return "", fmt.Errorf("%q is not an executable file", file)
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(cwd, dir)
		}
		if p := filepath.Join(dir, file); check(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q not found in PATH", file)
}

// windowArgs are the -c and -e options of new-window/respawn-pane, quoted
// for a control line. -c is format-expanded, so '#' is doubled.
func windowArgs(cmd Command, cwd string) []string {
	words := []string{"-c", quoteWord(escapeFormat(cwd))}
	keys := make([]string, 0, len(cmd.Env))
	for k := range cmd.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		words = append(words, "-e", quoteWord(k+"="+cmd.Env[k]))
	}
	return words
}

func quoteArgv(argv []string) []string {
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = quoteWord(a)
	}
	return out
}

// respawnLine is the control line that starts argv, the prepared form of
// cmd, in pane: in cmd's working directory, with the environment
// Config.RunEnv gives now under cmd's own.
func (m *Manager) respawnLine(pane string, cmd Command, argv []string) string {
	if m.cfg.RunEnv != nil {
		if extra := m.cfg.RunEnv(); len(extra) > 0 {
			env := make(map[string]string, len(cmd.Env)+len(extra))
			for _, kv := range extra {
				if k, v, ok := strings.Cut(kv, "="); ok {
					env[k] = v
				}
			}
			maps.Copy(env, cmd.Env)
			cmd.Env = env
		}
	}
	words := append([]string{"respawn-pane", "-k", "-t", quoteWord(pane)}, windowArgs(cmd, m.cwd(cmd))...)
	words = append(words, "--")
	return line(append(words, quoteArgv(argv)...)...)
}

const listFormat = "#{session_name}\t#{session_id}\t#{session_created}\t#{window_index}\t#{window_id}\t" +
	"#{pane_id}\t#{pane_pid}\t#{pane_dead}\t#{pane_dead_status}\t#{pane_dead_signal}\t#{pane_width}\t" +
	"#{pane_height}\t#{window_width}\t#{window_height}\t#{pane_current_command}\t#{window_name}"

// ListSessions lists every session of the server, by name.
func (m *Manager) ListSessions(ctx context.Context) ([]Session, error) {
	if err := m.Err(); err != nil {
		return nil, err
	}
	out, err := m.run(ctx, nil, "list-panes", "-a", "-F", listFormat)
	if err == nil && hasStatuslessDeadPane(out) {
		// 3.3a lost the SIGCHLD of a pane's process (TMUX.md §2): make
		// it reap, then read again, rather than report no exit status.
		m.nudge()
		time.Sleep(30 * time.Millisecond)
		out, err = m.run(ctx, nil, "list-panes", "-a", "-F", listFormat)
	}
	if err != nil {
		if errors.Is(err, ErrSessionNotFound) { // no server: no sessions
			return nil, nil
		}
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	attached := map[string]int{}
	if cl, err := m.run(ctx, nil, "list-clients", "-F", "#{client_session}\t#{client_flags}"); err == nil {
		for _, l := range strings.Split(cl, "\n") {
			s, flags, ok := strings.Cut(l, "\t")
			if ok && !strings.Contains(flags, "control-mode") {
				attached[s]++
			}
		}
	}
	byName := map[string]*Session{}
	var order []string
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		f := strings.SplitN(l, "\t", 16)
		if len(f) != 16 {
			continue
		}
		s := byName[f[0]]
		if s == nil {
			created, _ := strconv.ParseInt(f[2], 10, 64)
			s = &Session{Name: f[0], ID: f[1], Created: time.Unix(created, 0), Attached: attached[f[0]]}
			byName[f[0]] = s
			order = append(order, f[0])
		}
		idx, _ := strconv.Atoi(f[3])
		if n := len(s.Windows); n == 0 || s.Windows[n-1].ID != f[4] {
			s.Windows = append(s.Windows, Window{Index: idx, ID: f[4], Name: f[15]})
			ww, _ := strconv.Atoi(f[12])
			wh, _ := strconv.Atoi(f[13])
			if len(s.Windows) == 1 {
				s.Size = Size{Cols: ww, Rows: wh}
			}
		}
		p := Pane{ID: f[5], Window: f[4], Dead: f[7] == "1", CurrentCommand: f[14], Exit: PaneExit{Code: -1}}
		p.PID, _ = strconv.Atoi(f[6])
		if p.Dead {
			p.Exit, _, _ = parseDead("1/" + f[8] + "/" + f[9])
		}
		p.Size.Cols, _ = strconv.Atoi(f[10])
		p.Size.Rows, _ = strconv.Atoi(f[11])
		w := &s.Windows[len(s.Windows)-1]
		w.Panes = append(w.Panes, p)
	}
	sort.Strings(order)
	res := make([]Session, 0, len(order))
	for _, n := range order {
		res = append(res, *byName[n])
	}
	return res, nil
}

// hasStatuslessDeadPane reports whether a list-panes reply in listFormat
// has a dead pane without an exit status or signal.
func hasStatuslessDeadPane(out string) bool {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.SplitN(l, "\t", 16); len(f) == 16 && f[7] == "1" && f[8] == "" && f[9] == "" {
			return true
		}
	}
	return false
}

// Session describes one session.
func (m *Manager) Session(ctx context.Context, name string) (Session, error) {
	if err := ValidName(name); err != nil {
		return Session{}, err
	}
	all, err := m.ListSessions(ctx)
	if err != nil {
		return Session{}, err
	}
	for _, s := range all {
		if s.Name == name {
			return s, nil
		}
	}
	return Session{}, fmt.Errorf("session %q: %w", name, ErrSessionNotFound)
}

// KillSession kills a session and everything running in it.
func (m *Manager) KillSession(ctx context.Context, name string) error {
	if err := m.Err(); err != nil {
		return err
	}
	if err := ValidName(name); err != nil {
		return err
	}
	// Each pane's process leads its own process session; remember them,
	// since tmux only hangs the panes up.
	sids := map[int]bool{}
	if out, err := m.run(ctx, nil, "list-panes", "-s", "-t", "="+name, "-F", "#{pane_pid}"); err == nil {
		for _, f := range strings.Fields(out) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				sids[pid] = true
			}
		}
	}
	_, err := m.run(ctx, nil, "kill-session", "-t", "="+name)
	m.dropClient(name)
	if err != nil {
		return fmt.Errorf("kill session %q: %w", name, err)
	}
	m.endPaneSessions(ctx, sids)
	return nil
}

// killGrace is how long the processes of a killed session's panes get to
// end after the hang-up before they are killed.
const killGrace = time.Second

// endPaneSessions waits until no process is left in the given process
// sessions (the panes'), and SIGKILLs what ignores the hang-up (a job
// that traps SIGHUP, nohup) once killGrace has passed.
func (m *Manager) endPaneSessions(ctx context.Context, sids map[int]bool) {
	if len(sids) == 0 {
		return
	}
	deadline := time.Now().Add(killGrace)
	killed := false
	for ctx.Err() == nil {
		left := sessionMembers(sids)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			if killed {
				m.log.Warn("processes of a killed session did not end", "processes", len(left))
				return
			}
			m.log.Info("killing what a killed session left running", "processes", len(left))
			for _, pid := range left {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			killed, deadline = true, time.Now().Add(killGrace)
			continue
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ResizeSession sets the size of a session's windows and of windows
// created later.
func (m *Manager) ResizeSession(ctx context.Context, name string, size Size) error {
	if err := m.Err(); err != nil {
		return err
	}
	if err := ValidName(name); err != nil {
		return err
	}
	if size.Cols <= 0 || size.Rows <= 0 || size.Cols > 10000 || size.Rows > 10000 {
		return fmt.Errorf("%w: size %dx%d", ErrInvalidArgument, size.Cols, size.Rows)
	}
	out, err := m.run(ctx, nil, "list-windows", "-t", "="+name, "-F", "#{session_id} #{window_id}")
	if err != nil {
		return fmt.Errorf("resize session %q: %w", name, err)
	}
	f := strings.Fields(out)
	if len(f) < 2 {
		return fmt.Errorf("resize session %q: unexpected reply %q", name, out)
	}
	args := []string{"set-option", "-t", f[0], "default-size", fmt.Sprintf("%dx%d", size.Cols, size.Rows)}
	for i := 1; i < len(f); i += 2 {
		w := f[i]
		args = append(args, ";", "resize-window", "-t", w, "-x", strconv.Itoa(size.Cols), "-y", strconv.Itoa(size.Rows))
	}
	if _, err := m.run(ctx, nil, args...); err != nil {
		return fmt.Errorf("resize session %q: %w", name, err)
	}
	return nil
}

// Target names a pane: a session and optionally a window name or index
// (empty: the session's first window; the window's active pane is
// meant), or a pane id of that session ("%3", as RunInSession reports).
type Target struct {
	Session string
	Window  string
}

// resolve finds the pane of a target. A window missing from a services
// session is a service that does not exist, and is reported as one.
func (m *Manager) resolve(ctx context.Context, t Target) (*Client, string, string, error) {
	c, pane, window, err := m.resolvePane(ctx, t)
	if (errors.Is(err, ErrWindowNotFound) || errors.Is(err, ErrSessionNotFound)) &&
		t.Window != "" && !strings.HasPrefix(t.Window, "%") && m.isServicesSession(t.Session) {
		return nil, "", "", &serviceNotFoundError{name: t.Window}
	}
	return c, pane, window, err
}

func (m *Manager) resolvePane(ctx context.Context, t Target) (*Client, string, string, error) {
	c, err := m.client(ctx, t.Session)
	if err != nil {
		return nil, "", "", err
	}
	blocks, err := c.Command(ctx, line("list-panes", "-s", "-t", quoteWord("="+t.Session), "-F",
		quoteWord("#{window_index}\t#{window_id}\t#{pane_id}\t#{pane_active}\t#{window_name}")))
	if err != nil {
		return nil, "", "", fmt.Errorf("session %q: %w", t.Session, err)
	}
	best := -1
	var pane, window string
	for _, l := range blocks[0].Body {
		f := strings.SplitN(string(l), "\t", 5)
		if len(f) != 5 {
			continue
		}
		idx, _ := strconv.Atoi(f[0])
		match := false
		switch {
		case t.Window == "":
			match = best == -1 || idx < best || (idx == best && f[3] == "1")
		case strings.HasPrefix(t.Window, "%"):
			match = t.Window == f[2]
		case t.Window == f[4] || t.Window == f[0]:
			match = pane == "" || f[3] == "1"
		}
		if match {
			best, window, pane = idx, f[1], f[2]
		}
	}
	if pane == "" {
		return nil, "", "", fmt.Errorf("window %q of session %q: %w", t.Window, t.Session, ErrWindowNotFound)
	}
	c.setWindow(pane, window)
	return c, pane, window, nil
}
