package tmux

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultServicesSession holds services when no session is named.
const DefaultServicesSession = "services"

// ServiceSpec is one long-running service, kept in its own window.
type ServiceSpec struct {
	Name    string  `json:"name"`
	Command Command `json:"command"`
}

// ServiceStatus describes a service.
type ServiceStatus struct {
	Name    string
	Running bool
	PID     int
	Exit    PaneExit
	Argv    []string
	// Action is what the last Apply did: "started", "unchanged",
	// "restarted"; empty from List.
	Action string
}

// The specs of a session's services live in a 0600 file in the state
// dir (they may hold secret env values, which must not go into tmux
// options), so Restart works after an agent restart too.
func (m *Manager) specFile(session string) string {
	return filepath.Join(m.cfg.StateDir, "services", session+".json")
}

func (m *Manager) loadSpecs(session string) (map[string]ServiceSpec, error) {
	specs := map[string]ServiceSpec{}
	b, err := os.ReadFile(m.specFile(session))
	if errors.Is(err, os.ErrNotExist) {
		return specs, nil
	}
	if err != nil {
		return nil, err
	}
	return specs, json.Unmarshal(b, &specs)
}

func (m *Manager) saveSpecs(session string, specs map[string]ServiceSpec) error {
	if err := os.MkdirAll(filepath.Dir(m.specFile(session)), 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(specs)
	if err != nil {
		return err
	}
	tmp := m.specFile(session) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, m.specFile(session))
}

// servicePanes maps window names of a session to their first pane.
func (m *Manager) servicePanes(ctx context.Context, c *Client, session string) (map[string]Pane, error) {
	for attempt := 0; ; attempt++ {
		panes, unknown, err := m.readServicePanes(ctx, c, session)
		if err != nil || !unknown || attempt > 0 {
			return panes, err
		}
		// A dead pane without status: 3.3a lost its SIGCHLD. Nudge
		// (readServicePanes did), then read once more.
		time.Sleep(30 * time.Millisecond)
	}
}

func (m *Manager) readServicePanes(ctx context.Context, c *Client, session string) (panes map[string]Pane, unknown bool, err error) {
	blocks, err := c.Command(ctx, line("list-panes", "-s", "-t", quoteWord("="+session), "-F",
		quoteWord("#{window_name}\t#{window_id}\t#{pane_id}\t#{pane_pid}\t#{pane_dead}/#{pane_dead_status}/#{pane_dead_signal}")))
	if err != nil {
		return nil, false, err
	}
	panes = map[string]Pane{}
	for _, l := range blocks[0].Body {
		f := strings.Split(string(l), "\t")
		if len(f) != 5 {
			continue
		}
		if _, ok := panes[f[0]]; ok {
			continue
		}
		p := Pane{ID: f[2], Window: f[1], Exit: PaneExit{Code: -1}}
		p.PID, _ = strconv.Atoi(f[3])
		var known bool
		p.Exit, p.Dead, known = parseDead(f[4])
		if p.Dead && !known {
			m.nudge()
			unknown = true
		}
		if !p.Dead {
			p.Exit = PaneExit{Code: -1}
		}
		panes[f[0]] = p
	}
	return panes, unknown, nil
}

// isServicesSession reports whether a session holds services: the
// default one, or one with service specs on file.
func (m *Manager) isServicesSession(session string) bool {
	if session == DefaultServicesSession {
		return true
	}
	if ValidName(session) != nil {
		return false
	}
	_, err := os.Stat(m.specFile(session))
	return err == nil
}

func serviceSession(s string) string {
	if s == "" {
		return DefaultServicesSession
	}
	return s
}

// ApplyServices makes the services of a session match specs: missing ones
// are started, changed or exited ones restarted, running unchanged ones
// left alone. Services not in specs are left as they are.
func (m *Manager) ApplyServices(ctx context.Context, session string, specs []ServiceSpec) ([]ServiceStatus, error) {
	session = serviceSession(session)
	if err := ValidName(session); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	argvs := make([][]string, len(specs))
	for i, s := range specs {
		if err := ValidName(s.Name); err != nil {
			return nil, fmt.Errorf("service name: %w", err)
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("%w: service %q twice", ErrInvalidArgument, s.Name)
		}
		seen[s.Name] = true
		if len(s.Command.Argv) == 0 {
			return nil, fmt.Errorf("%w: service %q has no command", ErrInvalidArgument, s.Name)
		}
		argv, err := m.prepare(s.Command)
		if err != nil {
			return nil, fmt.Errorf("service %q: %w", s.Name, err)
		}
		argvs[i] = argv
	}
	c, err := m.client(ctx, session)
	if errors.Is(err, ErrSessionNotFound) {
		_, err = m.CreateSession(ctx, SessionSpec{Name: session, WindowName: "_", Command: Command{Argv: placeholder}})
		if err == nil || errors.Is(err, ErrSessionExists) {
			c, err = m.client(ctx, session)
		}
	}
	if err != nil {
		return nil, err
	}
	stored, err := m.loadSpecs(session)
	if err != nil {
		return nil, fmt.Errorf("service specs: %w", err)
	}
	panes, err := m.servicePanes(ctx, c, session)
	if err != nil {
		return nil, err
	}
	res := make([]ServiceStatus, len(specs))
	for i, s := range specs {
		p, exists := panes[s.Name]
		old, had := stored[s.Name]
		switch {
		case !exists:
			res[i].Action = "started"
			blocks, err := c.Command(ctx, line("new-window", "-d", "-t", quoteWord("="+session+":"), "-n", quoteWord(s.Name),
				"-P", "-F", quoteWord("#{pane_id}"), "--", placeholder[0], placeholder[1]))
			if err != nil {
				return nil, fmt.Errorf("service %q: %w", s.Name, err)
			}
			p.ID = string(blocks[0].Body[0])
		case p.Dead || !had || !reflect.DeepEqual(old, s):
			res[i].Action = "restarted"
		default:
			res[i].Action = "unchanged"
		}
		if res[i].Action != "unchanged" {
			if err := c.respawn(ctx, p.ID, m.respawnLine(p.ID, s.Command, argvs[i])); err != nil {
				return nil, fmt.Errorf("service %q: %w", s.Name, err)
			}
		}
		stored[s.Name] = s
	}
	if err := m.saveSpecs(session, stored); err != nil {
		return nil, fmt.Errorf("service specs: %w", err)
	}
	all, err := m.listServices(ctx, c, session, stored)
	if err != nil {
		return nil, err
	}
	for i, s := range specs {
		for _, st := range all {
			if st.Name == s.Name {
				st.Action = res[i].Action
				res[i] = st
			}
		}
	}
	return res, nil
}

// ListServices lists the services of a session, by name.
func (m *Manager) ListServices(ctx context.Context, session string) ([]ServiceStatus, error) {
	session = serviceSession(session)
	c, err := m.client(ctx, session)
	if errors.Is(err, ErrSessionNotFound) {
		// Before the first apply or after a stop: no services.
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	stored, err := m.loadSpecs(session)
	if err != nil {
		return nil, err
	}
	return m.listServices(ctx, c, session, stored)
}

func (m *Manager) listServices(ctx context.Context, c *Client, session string, stored map[string]ServiceSpec) ([]ServiceStatus, error) {
	panes, err := m.servicePanes(ctx, c, session)
	if err != nil {
		return nil, err
	}
	var res []ServiceStatus
	for name, spec := range stored {
		p, ok := panes[name]
		if !ok {
			continue
		}
		res = append(res, ServiceStatus{Name: name, Running: !p.Dead, PID: p.PID, Exit: p.Exit, Argv: spec.Command.Argv})
	}
	sortServices(res)
	return res, nil
}

func sortServices(s []ServiceStatus) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j].Name < s[j-1].Name; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// RestartService restarts one service with its last spec.
func (m *Manager) RestartService(ctx context.Context, session, name string) (ServiceStatus, error) {
	session = serviceSession(session)
	if err := ValidName(name); err != nil {
		return ServiceStatus{}, err
	}
	c, err := m.client(ctx, session)
	if errors.Is(err, ErrSessionNotFound) {
		return ServiceStatus{}, &serviceNotFoundError{name: name}
	}
	if err != nil {
		return ServiceStatus{}, err
	}
	stored, err := m.loadSpecs(session)
	if err != nil {
		return ServiceStatus{}, err
	}
	spec, ok := stored[name]
	if !ok {
		return ServiceStatus{}, fmt.Errorf("service %q in %q: %w", name, session, ErrServiceNotFound)
	}
	panes, err := m.servicePanes(ctx, c, session)
	if err != nil {
		return ServiceStatus{}, err
	}
	p, ok := panes[name]
	if !ok {
		return ServiceStatus{}, fmt.Errorf("service %q in %q: %w", name, session, ErrServiceNotFound)
	}
	argv, err := m.prepare(spec.Command)
	if err != nil {
		return ServiceStatus{}, err
	}
	if err := c.respawn(ctx, p.ID, m.respawnLine(p.ID, spec.Command, argv)); err != nil {
		return ServiceStatus{}, fmt.Errorf("restart %q: %w", name, err)
	}
	all, err := m.listServices(ctx, c, session, stored)
	if err != nil {
		return ServiceStatus{}, err
	}
	for _, st := range all {
		if st.Name == name {
			st.Action = "restarted"
			return st, nil
		}
	}
	return ServiceStatus{}, fmt.Errorf("service %q in %q: %w", name, session, ErrServiceNotFound)
}

// StopServices sends SIGTERM to every service's process group, SIGKILL
// after grace, and removes the session. Stopping twice is not an error.
func (m *Manager) StopServices(ctx context.Context, session string, grace time.Duration) error {
	session = serviceSession(session)
	if grace <= 0 {
		grace = 5 * time.Second
	}
	c, err := m.client(ctx, session)
	if errors.Is(err, ErrSessionNotFound) {
		_ = os.Remove(m.specFile(session))
		return nil
	}
	if err != nil {
		return err
	}
	panes, err := m.servicePanes(ctx, c, session)
	if err != nil {
		return err
	}
	signal := func(sig syscall.Signal) (alive int) {
		for _, p := range panes {
			if !p.Dead && p.PID > 0 && syscall.Kill(p.PID, 0) == nil {
				_ = syscall.Kill(-p.PID, sig)
				_ = syscall.Kill(p.PID, sig)
				alive++
			}
		}
		return alive
	}
	signal(syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if panes, err = m.servicePanes(ctx, c, session); err != nil {
			break
		}
		running := 0
		for _, p := range panes {
			if !p.Dead {
				running++
			}
		}
		if running == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	signal(syscall.SIGKILL)
	if err := m.KillSession(ctx, session); err != nil && !errors.Is(err, ErrSessionNotFound) {
		return err
	}
	_ = os.Remove(m.specFile(session))
	return nil
}
