// Package daytona is the provider for Daytona: workspaces of the legacy
// CLI (v0.20–v0.53), reached over `daytona ssh WS -- CMD`, and sandboxes of
// the current CLI (v0.100+), reached over Daytona's SSH gateway with an
// access token minted through the API right before each connect. The
// generation is read from `daytona version`.
package daytona

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/controller/bootstrap"
	"github.com/dtmux/dtmux/controller/provider"
)

// Defaults for Config.
const (
	DefaultWaitTimeout  = 5 * time.Minute
	DefaultPollInterval = 2 * time.Second
	DefaultTokenMinutes = 60
	// DefaultSandboxIdle closes an idle sandbox hop so that the sandbox
	// can auto-stop; it is cut to half the sandbox's own auto-stop
	// interval when that is shorter.
	DefaultSandboxIdle = 5 * time.Minute
	// RemoteAgentLog receives the agent's stderr in a sandbox: the gateway
	// does not carry stderr.
	RemoteAgentLog = "~/.dtmux/agent.log"
)

// ErrNoAPIKey: the sandbox generation needs DAYTONA_API_URL and an API key
// to mint SSH access tokens.
// It wraps provider.ErrPrecondition: only the user can fix it.
var ErrNoAPIKey = fmt.Errorf("%w: daytona: no API key (set DAYTONA_API_URL and DAYTONA_API_KEY, or an API key file)", provider.ErrPrecondition)

// Config configures the provider.
type Config struct {
	// Binary is the daytona CLI (default "daytona" from PATH).
	Binary string
	// Bootstrap configures agent installation (AgentDir, InstallDir,
	// Version); RemoteStderr is set for sandboxes.
	Bootstrap bootstrap.Config
	// APIURL is the Daytona API (default $DAYTONA_API_URL), e.g.
	// https://app.daytona.io/api.
	APIURL string
	// APIKeyFile holds the API key; $DAYTONA_API_KEY is used when empty.
	// The key is a secret: never logged, never on a command line.
	APIKeyFile string
	// SSHArgs are extra arguments for the ssh to the sandbox gateway
	// (identity, ProxyJump, ...); they come first and so win.
	SSHArgs []string
	// SSH is the ssh executable (default "ssh").
	SSH string
	// KnownHostsFile, when set, is a dedicated known_hosts for the
	// gateway (accept-new): its host key may change between releases.
	KnownHostsFile string
	// TokenMinutes is the lifetime of a minted SSH token (default 60); it
	// only has to outlast the connect: an open session survives expiry.
	TokenMinutes int
	// IdleTimeout closes an idle hop (sandboxes: default DefaultSandboxIdle
	// or half the sandbox's auto-stop, whichever is shorter; legacy: the
	// pool default).
	IdleTimeout time.Duration
	// WaitTimeout bounds create/start waits without their own (default
	// DefaultWaitTimeout).
	WaitTimeout time.Duration
	// PollInterval is how often state is polled while waiting.
	PollInterval time.Duration
	// HTTPClient mints tokens (default: a client with a 30 s timeout).
	HTTPClient *http.Client
	// Logger is Named("daytona").
	Logger hclog.Logger
}

// Provider drives the daytona CLI.
type Provider struct {
	cfg  Config
	log  hclog.Logger
	boot *bootstrap.Bootstrapper

	mu      sync.Mutex
	version *Version                // guarded by mu; nil until detected
	sboot   *bootstrap.Bootstrapper // guarded by mu; made on first sandbox dial
}

// New returns the provider; the CLI generation is detected on first use.
func New(c Config) (*Provider, error) {
	if c.Binary == "" {
		c.Binary = "daytona"
	}
	if c.APIURL == "" {
		c.APIURL = os.Getenv("DAYTONA_API_URL")
	}
	c.APIURL = strings.TrimRight(c.APIURL, "/")
	if c.TokenMinutes <= 0 {
		c.TokenMinutes = DefaultTokenMinutes
	}
	if c.WaitTimeout <= 0 {
		c.WaitTimeout = DefaultWaitTimeout
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	log := c.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	p := &Provider{cfg: c, log: log.Named("daytona")}
	bc := c.Bootstrap
	if bc.Logger == nil {
		bc.Logger = p.log
	}
	p.boot = bootstrap.New(bc)
	return p, nil
}

// Name implements provider.Provider.
func (p *Provider) Name() string { return "daytona" }

// Close implements provider.Provider; the pool owns the hops.
func (p *Provider) Close() error { return nil }

// Version detects the CLI generation once (retrying after a failure).
func (p *Provider) Version(ctx context.Context) (Version, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.version != nil {
		return *p.version, nil
	}
	out, err := p.run(ctx, "version")
	if err != nil {
		return Version{}, err
	}
	v, err := ParseVersion(string(out))
	if err != nil {
		return Version{}, err
	}
	p.log.Info("daytona CLI detected", "version", v.String(), "sandboxes", v.Sandboxes())
	p.version = &v
	return v, nil
}

// apiKey reads the key from the file or the environment.
func (p *Provider) apiKey() (string, error) {
	if p.cfg.APIKeyFile != "" {
		b, err := os.ReadFile(p.cfg.APIKeyFile)
		if err != nil {
			return "", fmt.Errorf("%w: daytona API key file: %v", provider.ErrPrecondition, err)
		}
		if k := strings.TrimSpace(string(b)); k != "" {
			return k, nil
		}
		return "", fmt.Errorf("%w: %s is empty", ErrNoAPIKey, p.cfg.APIKeyFile)
	}
	if k := strings.TrimSpace(os.Getenv("DAYTONA_API_KEY")); k != "" {
		return k, nil
	}
	return "", ErrNoAPIKey
}

// env is the CLI's environment: the key from a file travels in the
// environment, never on its command line.
func (p *Provider) env() []string {
	env := os.Environ()
	if p.cfg.APIKeyFile != "" && p.cfg.APIURL != "" {
		if k, err := p.apiKey(); err == nil {
			env = append(env, "DAYTONA_API_URL="+p.cfg.APIURL, "DAYTONA_API_KEY="+k)
		}
	}
	return env
}

// fatalRE finds logrus's message in the CLI's stderr.
var fatalRE = regexp.MustCompile(`msg="((?:[^"\\]|\\.)*)"`)

// run runs the CLI and returns stdout; a failure carries the CLI's own
// message, and "not found" messages wrap provider.ErrNotFound.
func (p *Provider) run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, p.cfg.Binary, args...)
	cmd.Env = p.env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	verb := strings.Join(firstWords(args, 2), " ")
	if p.log.IsTrace() {
		p.log.Trace("daytona", "args", redactUserinfo(strings.Join(args, " ")))
	}
	err := cmd.Run()
	msg := redactUserinfo(cliMessage(stderr.String()))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("daytona %s: %w", verb, ctx.Err())
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return nil, fmt.Errorf("daytona %s: %w", verb, err)
		}
		if msg == "" {
			msg = cliMessage(stdout.String())
		}
		if strings.Contains(strings.ToLower(msg), "not found") {
			return nil, fmt.Errorf("%w: daytona %s: %s", provider.ErrNotFound, verb, msg)
		}
		return nil, fmt.Errorf("daytona %s: %v: %s", verb, err, msg)
	}
	if msg != "" && p.log.IsDebug() {
		p.log.Debug("daytona stderr", "command", verb, "message", msg)
	}
	return stdout.Bytes(), nil
}

// cliMessage is the last meaningful line of the CLI's stderr.
func cliMessage(s string) string {
	if m := fatalRE.FindAllStringSubmatch(s, -1); len(m) > 0 {
		return strings.ReplaceAll(m[len(m)-1][1], `\"`, `"`)
	}
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func firstWords(args []string, n int) []string {
	var out []string
	for _, a := range args {
		if strings.HasPrefix(a, "-") || len(out) == n {
			break
		}
		out = append(out, a)
	}
	return out
}

// List implements provider.Provider.
func (p *Provider) List(ctx context.Context) ([]provider.Workspace, error) {
	v, err := p.Version(ctx)
	if err != nil {
		return nil, err
	}
	if v.Sandboxes() {
		s, err := p.sandboxes(ctx)
		if err != nil {
			return nil, err
		}
		return sandboxWorkspaces(s), nil
	}
	ws, err := p.legacyList(ctx, v)
	if err != nil {
		return nil, err
	}
	return legacyWorkspaces(ws), nil
}

// Get implements provider.Provider.
func (p *Provider) Get(ctx context.Context, name string) (provider.Workspace, error) {
	v, err := p.Version(ctx)
	if err != nil {
		return provider.Workspace{}, err
	}
	if v.Sandboxes() {
		s, err := p.sandboxInfo(ctx, name)
		if err != nil {
			return provider.Workspace{}, err
		}
		return sandboxWorkspace(s), nil
	}
	w, _, err := p.legacyGet(ctx, v, name)
	return w, err
}

// Create implements provider.Provider.
func (p *Provider) Create(ctx context.Context, o provider.CreateOptions) (provider.Workspace, error) {
	v, err := p.Version(ctx)
	if err != nil {
		return provider.Workspace{}, err
	}
	if o.Name != "" {
		if err := provider.ValidateName(o.Name); err != nil {
			return provider.Workspace{}, err
		}
	}
	for k := range o.Labels {
		if strings.ContainsAny(k, "=,\x00") || k == "" {
			return provider.Workspace{}, fmt.Errorf("%w: label key %q", provider.ErrInvalid, k)
		}
	}
	if v.Sandboxes() {
		if err := provider.CheckOptions(o.Options, sandboxOptions...); err != nil {
			return provider.Workspace{}, err
		}
		return p.sandboxCreate(ctx, o)
	}
	if err := provider.CheckOptions(o.Options); err != nil {
		return provider.Workspace{}, err
	}
	return p.legacyCreate(ctx, v, o)
}

// Start implements provider.Provider.
func (p *Provider) Start(ctx context.Context, name string, wait time.Duration) (provider.Workspace, error) {
	v, err := p.Version(ctx)
	if err != nil {
		return provider.Workspace{}, err
	}
	if v.Sandboxes() {
		return p.sandboxStart(ctx, name, wait)
	}
	return p.legacyStart(ctx, v, name, wait)
}

// Stop implements provider.Provider.
func (p *Provider) Stop(ctx context.Context, name string) (provider.Workspace, error) {
	v, err := p.Version(ctx)
	if err != nil {
		return provider.Workspace{}, err
	}
	if v.Sandboxes() {
		return p.sandboxStop(ctx, name)
	}
	return p.legacyStop(ctx, v, name)
}

// Delete implements provider.Provider.
func (p *Provider) Delete(ctx context.Context, name string, force bool) error {
	v, err := p.Version(ctx)
	if err != nil {
		return err
	}
	if v.Sandboxes() {
		return p.sandboxDelete(ctx, name)
	}
	return p.legacyDelete(ctx, v, name, force)
}

// Endpoint implements provider.Provider.
func (p *Provider) Endpoint(ctx context.Context, name string) (provider.Endpoint, error) {
	v, err := p.Version(ctx)
	if err != nil {
		return provider.Endpoint{}, err
	}
	if v.Sandboxes() {
		return p.sandboxEndpoint(ctx, name)
	}
	return p.legacyEndpoint(ctx, v, name)
}

// poll calls get until done says stop, the wait runs out, or ctx ends.
func (p *Provider) poll(ctx context.Context, wait time.Duration, what string, get func(context.Context) (provider.Workspace, bool, error)) (provider.Workspace, error) {
	if wait <= 0 {
		wait = p.cfg.WaitTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var last provider.Workspace
	for {
		w, done, err := get(ctx)
		if err != nil || done {
			return w, err
		}
		last = w
		select {
		case <-ctx.Done():
			detail := last.StateDetail
			if detail == "" {
				detail = "not seen yet"
			}
			return last, fmt.Errorf("%s: gave up after %v (state %s): %w", what, wait, detail, ctx.Err())
		case <-time.After(p.cfg.PollInterval):
		}
	}
}

// reportedState says what Daytona reports for a workspace that cannot be
// reached, with what to do about it where the user can: the detail reads
// "state" or "state: reason".
func reportedState(detail string) string {
	state, _, _ := strings.Cut(detail, ":")
	switch state {
	case "stopped", "archived", "paused":
		return "daytona reports it " + detail + " (start it first)"
	case "":
		return "daytona reports no state"
	}
	return "daytona reports it in state " + detail
}
