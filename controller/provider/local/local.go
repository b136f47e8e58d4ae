// Package local is the embedded default provider: each workspace is a
// directory under the state dir with its own real dtmux-agent on a unix
// socket, started and supervised by the controller and adopted again by a
// restarted controller.
package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/controller/provider"
	"github.com/dtmux/dtmux/internal/transport"
)

// MaxSocketPath is the longest unix socket path accepted (the kernel's
// limit is 107 bytes; keep a margin).
const MaxSocketPath = 100

// Config configures the provider.
type Config struct {
	// StateDir holds workspaces/NAME/ for every workspace.
	StateDir string
	// AgentBinary is the dtmux-agent executable to start.
	AgentBinary string
	// AgentArgs are extra arguments for every agent.
	AgentArgs []string
	// Logger is named "local" by New.
	Logger hclog.Logger
	// StopAgentsOnClose ends, on Close, everything the started workspaces
	// run: agents, their runs and tmux servers (as Stop, but the
	// workspaces stay started). By default agents keep running so that the
	// next controller adopts them.
	StopAgentsOnClose bool
	// CheckInterval is how often the supervisor looks at the agents
	// (default 250ms).
	CheckInterval time.Duration
	// StopGrace is how long a stopping agent gets between SIGTERM and
	// SIGKILL (default 10s).
	StopGrace time.Duration
}

// Provider is the local provider.
type Provider struct {
	cfg  Config
	log  hclog.Logger
	root string // StateDir/workspaces

	stop chan struct{}
	done chan struct{}

	mu  sync.Mutex
	wss map[string]*workspace // guarded by mu
}

// meta is what workspace.json holds.
type meta struct {
	Name    string            `json:"name"`
	Labels  map[string]string `json:"labels,omitempty"`
	Stopped bool              `json:"stopped,omitempty"`
	Created time.Time         `json:"created"`
}

// workspace is one workspace's live state. Fields are guarded by
// Provider.mu; op serializes lifecycle operations on it.
type workspace struct {
	op  sync.Mutex
	dir string

	meta     meta
	pid      int       // agent process, 0 when none
	ours     bool      // pid is our child (reap it)
	since    time.Time // when pid was started or adopted
	failures int       // consecutive quick deaths, for backoff
	next     time.Time // earliest restart
	lastErr  string
	deleting bool
}

// New loads the workspaces under cfg.StateDir, adopts the agents that still
// answer, restarts the others, and starts the supervisor.
func New(cfg Config) (*Provider, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = 250 * time.Millisecond
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 10 * time.Second
	}
	if cfg.AgentBinary == "" {
		return nil, errors.New("local provider: no agent binary")
	}
	p := &Provider{
		cfg:  cfg,
		log:  cfg.Logger.Named("local"),
		root: filepath.Join(cfg.StateDir, "workspaces"),
		stop: make(chan struct{}),
		done: make(chan struct{}),
		wss:  make(map[string]*workspace),
	}
	if err := os.MkdirAll(p.root, 0o700); err != nil {
		return nil, fmt.Errorf("local provider: %w", err)
	}
	ents, err := os.ReadDir(p.root)
	if err != nil {
		return nil, fmt.Errorf("local provider: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() || !provider.ValidName(e.Name()) {
			continue
		}
		w, err := p.load(e.Name())
		if err != nil {
			p.log.Warn("skipping workspace", "workspace", e.Name(), "error", err)
			continue
		}
		p.wss[w.meta.Name] = w
		if !w.meta.Stopped {
			p.adopt(w)
		}
	}
	go p.supervise()
	return p, nil
}

func (p *Provider) load(name string) (*workspace, error) {
	dir := filepath.Join(p.root, name)
	b, err := os.ReadFile(filepath.Join(dir, "workspace.json"))
	if err != nil {
		return nil, err
	}
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("workspace.json: %w", err)
	}
	m.Name = name
	return &workspace{dir: dir, meta: m}, nil
}

// adopt takes over a running agent that still answers, or (re)starts it.
// Called before the supervisor runs.
func (p *Provider) adopt(w *workspace) {
	pid := readPID(pidFile(w.dir))
	if pid > 0 && isAgent(pid, w.dir) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := checkHealth(ctx, socketPath(w.dir))
		cancel()
		if err == nil {
			w.pid, w.since = pid, time.Now()
			p.log.Info("adopted running agent", "workspace", w.meta.Name, "pid", pid)
			return
		}
		p.log.Warn("agent does not answer; restarting it", "workspace", w.meta.Name, "pid", pid, "error", err)
		terminate(pid, false, p.cfg.StopGrace)
	}
	if err := p.startAgent(w); err != nil {
		p.log.Error("start agent", "workspace", w.meta.Name, "error", err)
	}
}

// Name implements provider.Provider.
func (p *Provider) Name() string { return "local" }

// List implements provider.Provider.
func (p *Provider) List(context.Context) ([]provider.Workspace, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]provider.Workspace, 0, len(p.wss))
	for _, name := range slices.Sorted(maps.Keys(p.wss)) {
		if w := p.wss[name]; !w.deleting {
			out = append(out, p.describe(w))
		}
	}
	return out, nil
}

// Get implements provider.Provider.
func (p *Provider) Get(_ context.Context, name string) (provider.Workspace, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	w, err := p.lookup(name)
	if err != nil {
		return provider.Workspace{}, err
	}
	return p.describe(w), nil
}

// lookup finds a workspace. Callers hold p.mu.
func (p *Provider) lookup(name string) (*workspace, error) {
	w, ok := p.wss[name]
	if !ok || w.deleting {
		return nil, fmt.Errorf("workspace %q: %w", name, provider.ErrNotFound)
	}
	return w, nil
}

// describe converts w. Callers hold p.mu.
func (p *Provider) describe(w *workspace) provider.Workspace {
	out := provider.Workspace{
		Name:       w.meta.Name,
		Labels:     maps.Clone(w.meta.Labels),
		Attributes: map[string]string{"home": homeDir(w.dir), "socket": socketPath(w.dir)},
	}
	switch {
	case w.meta.Stopped:
		out.State, out.StateDetail = provider.StateStopped, "stopped"
	case w.pid > 0:
		out.State, out.StateDetail = provider.StateStarted, "running"
		out.Attributes["agent_pid"] = strconv.Itoa(w.pid)
	default:
		out.State, out.StateDetail = provider.StatePending, "agent restarting"
		if w.lastErr != "" {
			out.StateDetail += ": " + w.lastErr
		}
	}
	return out
}

// Create implements provider.Provider: it makes the directory, starts the
// agent and waits until it answers.
func (p *Provider) Create(ctx context.Context, o provider.CreateOptions) (provider.Workspace, error) {
	if err := provider.ValidateName(o.Name); err != nil {
		return provider.Workspace{}, err
	}
	if o.Repository != "" || o.Image != "" {
		return provider.Workspace{}, fmt.Errorf("%w: the local provider takes no repository or image", provider.ErrInvalid)
	}
	if err := provider.CheckOptions(o.Options); err != nil {
		return provider.Workspace{}, err
	}
	if err := provider.ValidateLabels(o.Labels); err != nil {
		return provider.Workspace{}, err
	}
	dir := filepath.Join(p.root, o.Name)
	if n := len(socketPath(dir)); n > MaxSocketPath {
		return provider.Workspace{}, fmt.Errorf("%w: agent socket path %q would be %d bytes, over the %d-byte limit of unix sockets: use a shorter --state-dir or workspace name", provider.ErrInvalid, socketPath(dir), n, MaxSocketPath)
	}
	w := &workspace{dir: dir, meta: meta{Name: o.Name, Labels: maps.Clone(o.Labels), Created: time.Now().UTC()}}
	w.op.Lock()
	defer w.op.Unlock()
	p.mu.Lock()
	if _, ok := p.wss[o.Name]; ok {
		p.mu.Unlock()
		return provider.Workspace{}, fmt.Errorf("workspace %q: %w", o.Name, provider.ErrAlreadyExists)
	}
	p.wss[o.Name] = w
	p.mu.Unlock()

	fail := func(err error) (provider.Workspace, error) {
		p.mu.Lock()
		pid := w.pid
		w.pid = 0
		delete(p.wss, o.Name)
		p.mu.Unlock()
		if pid > 0 {
			terminate(pid, w.ours, p.cfg.StopGrace)
		}
		os.RemoveAll(dir)
		return provider.Workspace{}, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			p.mu.Lock()
			delete(p.wss, o.Name)
			p.mu.Unlock()
			return provider.Workspace{}, fmt.Errorf("workspace %q: directory exists: %w", o.Name, provider.ErrAlreadyExists)
		}
		return fail(fmt.Errorf("create workspace %q: %w", o.Name, err))
	}
	for _, d := range []string{homeDir(dir), filepath.Join(dir, "agent")} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return fail(fmt.Errorf("create workspace %q: %w", o.Name, err))
		}
	}
	if err := writeMeta(dir, w.meta); err != nil {
		return fail(err)
	}
	if err := p.startAndWait(ctx, w, o.WaitTimeout); err != nil {
		return fail(err)
	}
	p.log.Info("workspace created", "workspace", o.Name)
	return p.Get(ctx, o.Name)
}

// Start implements provider.Provider.
func (p *Provider) Start(ctx context.Context, name string, wait time.Duration) (provider.Workspace, error) {
	p.mu.Lock()
	w, err := p.lookup(name)
	p.mu.Unlock()
	if err != nil {
		return provider.Workspace{}, err
	}
	w.op.Lock()
	defer w.op.Unlock()
	p.mu.Lock()
	m := w.meta
	m.Stopped = false
	p.mu.Unlock()
	if err := writeMeta(w.dir, m); err != nil {
		return provider.Workspace{}, err
	}
	p.mu.Lock()
	w.meta.Stopped = false
	w.failures, w.next = 0, time.Time{}
	p.mu.Unlock()
	if err := p.startAndWait(ctx, w, wait); err != nil {
		return provider.Workspace{}, err
	}
	return p.Get(ctx, name)
}

// startAndWait starts the agent unless it runs, then waits for its
// socket to answer health checks. The supervisor restarts it if it dies
// meanwhile.
func (p *Provider) startAndWait(ctx context.Context, w *workspace, wait time.Duration) error {
	p.mu.Lock()
	running := w.pid > 0
	var err error
	if !running {
		err = p.startAgent(w)
	}
	p.mu.Unlock()
	if err != nil {
		return err
	}
	if wait <= 0 {
		wait = time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	sock := socketPath(w.dir)
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		err := checkHealth(cctx, sock)
		ccancel()
		if err == nil {
			return nil
		}
		p.mu.Lock()
		lastErr := w.lastErr
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			detail := err.Error()
			if lastErr != "" {
				detail = lastErr
			}
			return fmt.Errorf("workspace %q: agent did not come up: %s (see %s)", w.meta.Name, detail, logPath(w.dir))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop implements provider.Provider: SIGTERM to the agent, SIGKILL after
// the grace period, then its tmux server and whatever its runs left
// running end too (see endWorkspace). Start brings up a fresh agent with
// no sessions.
func (p *Provider) Stop(ctx context.Context, name string) (provider.Workspace, error) {
	p.mu.Lock()
	w, err := p.lookup(name)
	p.mu.Unlock()
	if err != nil {
		return provider.Workspace{}, err
	}
	w.op.Lock()
	defer w.op.Unlock()
	if err := p.stopLocked(w); err != nil {
		return provider.Workspace{}, err
	}
	return p.Get(ctx, name)
}

// stopLocked records the stop, ends the agent, then everything the
// workspace still runs. Callers hold w.op.
func (p *Provider) stopLocked(w *workspace) error {
	p.mu.Lock()
	m := w.meta
	m.Stopped = true
	w.meta.Stopped = true // the supervisor leaves it alone from now on
	pid, ours := w.pid, w.ours
	w.pid = 0
	p.mu.Unlock()
	if err := writeMeta(w.dir, m); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if pid > 0 {
		terminate(pid, ours, p.cfg.StopGrace)
		p.log.Info("agent stopped", "workspace", w.meta.Name, "pid", pid)
	}
	os.Remove(pidFile(w.dir))
	p.endWorkspace(w)
	return nil
}

// Delete implements provider.Provider: stop the agent, its tmux server
// and what its runs left running, then remove the directory. A started
// workspace is deleted only with force.
func (p *Provider) Delete(_ context.Context, name string, force bool) error {
	p.mu.Lock()
	w, err := p.lookup(name)
	if err == nil && !force && !w.meta.Stopped {
		// Like docker rm: deleting ends everything that runs there.
		p.mu.Unlock()
		return fmt.Errorf("delete workspace %q: %w: it is running; stop it first (dtmux ws stop %s) or delete it with --force", name, provider.ErrPrecondition, name)
	}
	if err == nil {
		w.deleting = true
	}
	p.mu.Unlock()
	if err != nil {
		return err
	}
	w.op.Lock()
	defer w.op.Unlock()
	if err := p.stopLocked(w); err != nil {
		return err
	}
	if err := os.RemoveAll(w.dir); err != nil {
		return fmt.Errorf("delete workspace %q: %w", name, err)
	}
	p.mu.Lock()
	delete(p.wss, name)
	p.mu.Unlock()
	p.log.Info("workspace deleted", "workspace", name)
	return nil
}

// Endpoint implements provider.Provider. A started workspace whose agent is
// restarting still gets its address: the pool reports why it cannot
// connect.
func (p *Provider) Endpoint(_ context.Context, name string) (provider.Endpoint, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	w, err := p.lookup(name)
	if err != nil {
		return provider.Endpoint{}, err
	}
	if w.meta.Stopped {
		return provider.Endpoint{}, fmt.Errorf("workspace %q: %w", name, provider.ErrNotStarted)
	}
	sock := socketPath(w.dir)
	return provider.Endpoint{Address: transport.Address{Network: "unix", Addr: sock}, Key: sock}, nil
}

// Close stops the supervisor. Agents keep running (to be adopted) unless
// StopAgentsOnClose, which ends them and everything their workspaces run.
func (p *Provider) Close() error {
	select {
	case <-p.stop:
		return nil
	default:
	}
	close(p.stop)
	<-p.done
	if !p.cfg.StopAgentsOnClose {
		return nil
	}
	p.mu.Lock()
	type victim struct {
		w    *workspace
		pid  int
		ours bool
	}
	var vs []victim
	for _, w := range p.wss {
		if w.meta.Stopped {
			continue
		}
		vs = append(vs, victim{w, w.pid, w.ours})
		w.pid = 0
		os.Remove(pidFile(w.dir))
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, v := range vs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if v.pid > 0 {
				// Every run ends as killed, saying why, before the
				// leftovers are reaped.
				terminateWith(syscall.SIGUSR1, v.pid, v.ours, p.cfg.StopGrace)
				p.log.Debug("agent stopped", "workspace", v.w.meta.Name, "pid", v.pid)
			}
			// Nothing may be left that no agent can reach: as ws stop,
			// but the workspace stays started for the next controller.
			p.endWorkspace(v.w)
		}()
	}
	wg.Wait()
	return nil
}

// supervise restarts agents that died, with backoff. It is the only
// goroutine the provider runs.
func (p *Provider) supervise() {
	defer close(p.done)
	t := time.NewTicker(p.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		p.mu.Lock()
		now := time.Now()
		for _, w := range p.wss {
			if w.meta.Stopped || w.deleting {
				continue
			}
			if w.pid > 0 {
				if alive(w.pid, w.ours) {
					continue
				}
				lived := now.Sub(w.since)
				w.lastErr = fmt.Sprintf("agent (pid %d) exited after %s", w.pid, lived.Round(time.Millisecond))
				p.log.Warn("agent exited; restarting", "workspace", w.meta.Name, "pid", w.pid, "uptime", lived)
				w.pid = 0
				if lived > 30*time.Second {
					w.failures = 0
				}
				w.failures++
				w.next = now.Add(backoff(w.failures))
			}
			if now.Before(w.next) {
				continue
			}
			if err := p.startAgent(w); err != nil {
				w.failures++
				w.next = now.Add(backoff(w.failures))
				p.log.Error("restart agent", "workspace", w.meta.Name, "error", err)
			}
		}
		p.mu.Unlock()
	}
}

// backoff is the delay before the n-th restart in a row: immediate first,
// then doubling from 100ms up to 10s.
func backoff(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	d := 100 * time.Millisecond << min(n-2, 7)
	return min(d, 10*time.Second)
}

func writeMeta(dir string, m meta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "workspace.json.tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write workspace meta: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "workspace.json")); err != nil {
		return fmt.Errorf("write workspace meta: %w", err)
	}
	return nil
}

func socketPath(dir string) string { return filepath.Join(dir, "agent.sock") }
func pidFile(dir string) string    { return filepath.Join(dir, "agent.pid") }
func logPath(dir string) string    { return filepath.Join(dir, "agent.log") }
func homeDir(dir string) string    { return filepath.Join(dir, "home") }
