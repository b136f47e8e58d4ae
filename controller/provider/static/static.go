// Package static is a provider over a fixed list of agent addresses
// ("name=unix:///path" or "name=tcp://host:port"), given on the command
// line or in a file. Workspaces cannot be created, deleted, started or
// stopped through it.
package static

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/dtmux/dtmux/controller/provider"
	"github.com/dtmux/dtmux/internal/transport"
)

// Agent is one listed agent.
type Agent struct {
	// Name of the workspace.
	Name string
	// Address of its agent.
	Address transport.Address
	// Labels for selectors.
	Labels map[string]string
}

// Provider serves a fixed list.
type Provider struct {
	agents map[string]Agent
	names  []string
	dial   transport.DialConfig
}

// New returns a provider over agents; dial holds the token and TLS for
// TCP agents.
func New(agents []Agent, dial transport.DialConfig) (*Provider, error) {
	p := &Provider{agents: make(map[string]Agent, len(agents)), dial: dial}
	for _, a := range agents {
		if err := provider.ValidateName(a.Name); err != nil {
			return nil, err
		}
		if _, dup := p.agents[a.Name]; dup {
			return nil, fmt.Errorf("%w: workspace %q listed twice", provider.ErrInvalid, a.Name)
		}
		p.agents[a.Name] = a
		p.names = append(p.names, a.Name)
	}
	sort.Strings(p.names)
	return p, nil
}

// Parse reads one entry: "name=ADDRESS" optionally followed by labels
// "k=v" separated by spaces or commas: "web1=tcp://10.0.0.5:7070 team=web".
func Parse(entry string) (Agent, error) {
	fields := strings.FieldsFunc(entry, func(r rune) bool { return r == ' ' || r == '\t' || r == ',' })
	if len(fields) == 0 {
		return Agent{}, fmt.Errorf("empty agent entry")
	}
	name, addr, ok := strings.Cut(fields[0], "=")
	if !ok || name == "" || addr == "" {
		return Agent{}, fmt.Errorf("agent entry %q: want name=unix:///path or name=tcp://host:port", entry)
	}
	a, err := transport.ParseAddress(addr)
	if err != nil {
		return Agent{}, fmt.Errorf("agent entry %q: %w", entry, err)
	}
	out := Agent{Name: name, Address: a, Labels: map[string]string{}}
	for _, l := range fields[1:] {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return Agent{}, fmt.Errorf("agent entry %q: label %q: want key=value", entry, l)
		}
		out.Labels[k] = v
	}
	return out, nil
}

// ParseFile reads entries, one a line; blank lines and lines starting with
// '#' are skipped.
func ParseFile(path string) ([]Agent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Agent
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		a, err := Parse(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		out = append(out, a)
	}
	return out, sc.Err()
}

func (p *Provider) get(name string) (Agent, error) {
	a, ok := p.agents[name]
	if !ok {
		return Agent{}, fmt.Errorf("workspace %q: %w", name, provider.ErrNotFound)
	}
	return a, nil
}

func (p *Provider) describe(a Agent) provider.Workspace {
	labels := make(map[string]string, len(a.Labels))
	for k, v := range a.Labels {
		labels[k] = v
	}
	return provider.Workspace{
		Name:        a.Name,
		Labels:      labels,
		State:       provider.StateStarted,
		StateDetail: "listed",
		Attributes:  map[string]string{"address": a.Address.String()},
	}
}

// Name implements provider.Provider.
func (p *Provider) Name() string { return "static" }

// List implements provider.Provider.
func (p *Provider) List(context.Context) ([]provider.Workspace, error) {
	out := make([]provider.Workspace, 0, len(p.names))
	for _, n := range p.names {
		out = append(out, p.describe(p.agents[n]))
	}
	return out, nil
}

// Get implements provider.Provider.
func (p *Provider) Get(_ context.Context, name string) (provider.Workspace, error) {
	a, err := p.get(name)
	if err != nil {
		return provider.Workspace{}, err
	}
	return p.describe(a), nil
}

// Create is unsupported.
func (p *Provider) Create(context.Context, provider.CreateOptions) (provider.Workspace, error) {
	return provider.Workspace{}, fmt.Errorf("static provider cannot create workspaces: %w", provider.ErrUnsupported)
}

// Delete is unsupported.
func (p *Provider) Delete(context.Context, string, bool) error {
	return fmt.Errorf("static provider cannot delete workspaces: %w", provider.ErrUnsupported)
}

// Start is unsupported.
func (p *Provider) Start(context.Context, string, time.Duration) (provider.Workspace, error) {
	return provider.Workspace{}, fmt.Errorf("static provider cannot start workspaces: %w", provider.ErrUnsupported)
}

// Stop is unsupported.
func (p *Provider) Stop(context.Context, string) (provider.Workspace, error) {
	return provider.Workspace{}, fmt.Errorf("static provider cannot stop workspaces: %w", provider.ErrUnsupported)
}

// Endpoint implements provider.Provider.
func (p *Provider) Endpoint(_ context.Context, name string) (provider.Endpoint, error) {
	a, err := p.get(name)
	if err != nil {
		return provider.Endpoint{}, err
	}
	return provider.Endpoint{Address: a.Address, DialConfig: p.dial, Key: a.Address.String()}, nil
}

// Close implements provider.Provider.
func (p *Provider) Close() error { return nil }
