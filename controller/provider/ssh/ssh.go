// Package ssh is the provider for plain SSH hosts listed in a file: each
// host's agent is reached over one long-lived `ssh HOST dtmux-agent
// --stdio` process, installed on first use.
package ssh

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/controller/bootstrap"
	"github.com/dtmux/dtmux/controller/provider"
)

// Config configures the provider.
type Config struct {
	// HostsFile is the YAML hosts file (see ParseHosts). It is read again
	// on every List/Get/Endpoint when it changed; once it was good, an
	// unusable version keeps the last good hosts (see load).
	HostsFile string
	// Hosts, when set, is used instead of HostsFile (tests, embedding).
	Hosts []Host
	// SSH is the ssh executable (default "ssh" from PATH).
	SSH string
	// Bootstrap installs and starts the agent; required.
	Bootstrap *bootstrap.Bootstrapper
	// IdleTimeout is passed to the pool for every host (0: pool default).
	IdleTimeout time.Duration
	// Logger is Named("ssh").
	Logger hclog.Logger
}

// Provider serves the hosts of a hosts file.
type Provider struct {
	cfg Config
	log hclog.Logger

	mu    sync.Mutex
	hosts []Host      // the last good list; guarded by mu
	good  fileVersion // of HostsFile when hosts were read; guarded by mu
	// bad is the version of HostsFile last found unusable (after a good
	// one), warned about once and not read again; zero when the file is
	// good. Guarded by mu.
	bad fileVersion
}

// fileVersion tells versions of the hosts file apart, as well as a stat
// can: modification time and size, or missing.
type fileVersion struct {
	modTime time.Time
	size    int64
	missing bool
}

func versionOf(st os.FileInfo) fileVersion {
	return fileVersion{modTime: st.ModTime(), size: st.Size()}
}

// New returns the provider, reading the hosts file once to fail early.
func New(c Config) (*Provider, error) {
	if c.Bootstrap == nil {
		return nil, fmt.Errorf("%w: ssh provider: no bootstrapper", provider.ErrInvalid)
	}
	log := c.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	p := &Provider{cfg: c, log: log.Named("ssh")}
	if c.Hosts != nil {
		p.hosts = c.Hosts
		return p, nil
	}
	if c.HostsFile == "" {
		return nil, fmt.Errorf("%w: ssh provider: no hosts file (--hosts)", provider.ErrInvalid)
	}
	if _, err := p.load(); err != nil {
		return nil, err
	}
	return p, nil
}

// load returns the hosts, reading the file again when it changed.
//
// Once a good file was read, an unusable one (a YAML typo, a file missing
// or empty while an editor saves it) does not take the hosts away: every
// call on them would fail, and `ws ls` with it, for what is usually a
// moment. The last good list stays, and each unusable version is warned
// about once, with the reason. Before a good file was read, there is no
// list to keep: the error is returned (and fails startup).
func (p *Provider) load() ([]Host, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg.Hosts != nil {
		return p.hosts, nil
	}
	v, hosts, err := p.read()
	switch {
	case err == nil:
		if p.bad != (fileVersion{}) {
			p.log.Info("hosts file usable again", "file", p.cfg.HostsFile, "hosts", len(hosts))
			p.bad = fileVersion{}
		}
		p.hosts, p.good = hosts, v
		return hosts, nil
	case p.hosts == nil:
		return nil, err
	}
	if v != p.bad {
		p.bad = v
		p.log.Warn("hosts file unusable; keeping the last good host list", "file", p.cfg.HostsFile, "hosts", len(p.hosts), "error", err)
	}
	return p.hosts, nil
}

// read reads and parses the hosts file unless its version is the good or
// the bad one already known: then it returns the good list, or errBad.
// Called with mu held.
func (p *Provider) read() (fileVersion, []Host, error) {
	st, err := os.Stat(p.cfg.HostsFile)
	if err != nil {
		v := fileVersion{missing: true}
		if v == p.bad {
			return v, nil, errBad
		}
		return v, nil, fmt.Errorf("hosts file: %w", err)
	}
	v := versionOf(st)
	switch {
	case p.hosts != nil && v == p.good:
		return v, p.hosts, nil
	case v == p.bad:
		return v, nil, errBad
	case v.size == 0 && p.hosts != nil:
		// Truncated for a rewrite, most likely; an empty list is written
		// "hosts: []".
		return v, nil, errors.New("hosts file is empty (for no hosts, write \"hosts: []\")")
	}
	data, err := os.ReadFile(p.cfg.HostsFile)
	if err != nil {
		return v, nil, fmt.Errorf("hosts file: %w", err)
	}
	hosts, err := ParseHosts(data)
	if err != nil {
		return v, nil, fmt.Errorf("%s: %w", p.cfg.HostsFile, err)
	}
	if hosts == nil {
		hosts = []Host{}
	}
	return v, hosts, nil
}

// errBad says the hosts file is a version already found unusable (and
// warned about).
var errBad = errors.New("hosts file unusable (warned)")

// Name implements provider.Provider.
func (p *Provider) Name() string { return "ssh" }

func workspace(h Host) provider.Workspace {
	labels := map[string]string{}
	for k, v := range h.Labels {
		labels[k] = v
	}
	return provider.Workspace{
		Name:   h.Name,
		Labels: labels,
		// A listed host is taken as up; whether its agent answers is the
		// pool's to say.
		State:      provider.StateStarted,
		Attributes: map[string]string{"destination": h.Destination},
	}
}

// List implements provider.Provider.
func (p *Provider) List(ctx context.Context) ([]provider.Workspace, error) {
	hosts, err := p.load()
	if err != nil {
		return nil, err
	}
	out := make([]provider.Workspace, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, workspace(h))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (p *Provider) host(name string) (Host, error) {
	hosts, err := p.load()
	if err != nil {
		return Host{}, err
	}
	for _, h := range hosts {
		if h.Name == name {
			return h, nil
		}
	}
	return Host{}, fmt.Errorf("%w: %q", provider.ErrNotFound, name)
}

// Get implements provider.Provider.
func (p *Provider) Get(ctx context.Context, name string) (provider.Workspace, error) {
	h, err := p.host(name)
	if err != nil {
		return provider.Workspace{}, err
	}
	return workspace(h), nil
}

// Create is unsupported: hosts come from the file.
func (p *Provider) Create(context.Context, provider.CreateOptions) (provider.Workspace, error) {
	return provider.Workspace{}, fmt.Errorf("%w: ssh hosts are listed in the hosts file", provider.ErrUnsupported)
}

// Delete is unsupported: hosts come from the file. An unknown name is
// not found, as everywhere.
func (p *Provider) Delete(_ context.Context, name string, _ bool) error {
	if _, err := p.host(name); err != nil {
		return err
	}
	return fmt.Errorf("%w: ssh hosts are listed in the hosts file", provider.ErrUnsupported)
}

// Start is unsupported.
func (p *Provider) Start(_ context.Context, name string, _ time.Duration) (provider.Workspace, error) {
	if _, err := p.host(name); err != nil {
		return provider.Workspace{}, err
	}
	return provider.Workspace{}, fmt.Errorf("%w: ssh hosts cannot be started", provider.ErrUnsupported)
}

// Stop is unsupported.
func (p *Provider) Stop(_ context.Context, name string) (provider.Workspace, error) {
	if _, err := p.host(name); err != nil {
		return provider.Workspace{}, err
	}
	return provider.Workspace{}, fmt.Errorf("%w: ssh hosts cannot be stopped", provider.ErrUnsupported)
}

// Endpoint implements provider.Provider: a Dial that starts one ssh
// process (installing the agent first when needed).
func (p *Provider) Endpoint(ctx context.Context, name string) (provider.Endpoint, error) {
	h, err := p.host(name)
	if err != nil {
		return provider.Endpoint{}, err
	}
	hop := bootstrap.SSH{
		Binary:      p.cfg.SSH,
		Args:        h.SSHArgs,
		Destination: h.Destination,
		Label:       fmt.Sprintf("ssh %s (host %s)", h.Destination, h.Name),
	}
	return provider.Endpoint{
		Dial: func(ctx context.Context) (net.Conn, error) {
			return p.cfg.Bootstrap.Dial(ctx, h.Name, hop)
		},
		Key:            endpointKey(h),
		IdleTimeout:    p.cfg.IdleTimeout,
		ConnectTimeout: p.cfg.Bootstrap.AttemptTimeout(),
	}, nil
}

// EndpointKey implements provider.KeyReporter: the hosts file is read
// again only when it changed.
func (p *Provider) EndpointKey(name string) (string, error) {
	h, err := p.host(name)
	if err != nil {
		return "", err
	}
	return endpointKey(h), nil
}

// endpointKey changes with whatever ssh is run with for h.
func endpointKey(h Host) string {
	sum := sha256.Sum256([]byte(h.Destination + "\x00" + strings.Join(h.SSHArgs, "\x00")))
	return "ssh:" + h.Name + ":" + hex.EncodeToString(sum[:8])
}

// Close implements provider.Provider; the pool owns the hops.
func (p *Provider) Close() error { return nil }
