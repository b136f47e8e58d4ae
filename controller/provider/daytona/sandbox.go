package daytona

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"time"

	"github.com/dtmux/dtmux/controller/bootstrap"
	"github.com/dtmux/dtmux/controller/provider"
)

// The sandbox CLI, v0.100+: `daytona sandbox <verb>` on every release;
// list pages by cursor (v0.180+) or page number (v0.108–v0.179).

// maxPages bounds paging, in case a cursor never ends.
const maxPages = 1000

func (p *Provider) sandboxes(ctx context.Context) ([]sandbox, error) {
	var all []sandbox
	cursor, page := "", 1
	for i := 0; i < maxPages; i++ {
		args := []string{"sandbox", "list", "-f", "json"}
		if cursor != "" {
			args = append(args, "-c", cursor)
		} else if page > 1 {
			args = append(args, "--page", strconv.Itoa(page))
		}
		out, err := p.run(ctx, args...)
		if err != nil {
			return nil, err
		}
		pg, err := parseSandboxPage(out)
		if err != nil {
			return nil, err
		}
		all = append(all, pg.Items...)
		total, _ := pg.TotalPages.Int64()
		switch {
		case pg.NextCursor != nil && *pg.NextCursor != "":
			cursor = *pg.NextCursor
		case cursor == "" && int64(page) < total:
			page++
		default:
			return all, nil
		}
	}
	return all, nil
}

func (p *Provider) sandboxInfo(ctx context.Context, name string) (sandbox, error) {
	if !provider.ValidName(name) {
		return sandbox{}, fmt.Errorf("%w: %q", provider.ErrNotFound, name)
	}
	out, err := p.run(ctx, "sandbox", "info", name, "-f", "json")
	if err != nil {
		return sandbox{}, err
	}
	s, err := parseSandbox(out)
	if err != nil {
		return sandbox{}, err
	}
	if s.State == "destroyed" {
		return sandbox{}, fmt.Errorf("%w: %q (destroyed)", provider.ErrNotFound, name)
	}
	return s, nil
}

func (p *Provider) sandboxWait(ctx context.Context, name string, wait time.Duration, verb string, want provider.State) (provider.Workspace, error) {
	return p.poll(ctx, wait, fmt.Sprintf("%s sandbox %q", verb, name), func(ctx context.Context) (provider.Workspace, bool, error) {
		s, err := p.sandboxInfo(ctx, name)
		if errors.Is(err, provider.ErrNotFound) && verb == "create" {
			return provider.Workspace{}, false, nil
		}
		if err != nil {
			return provider.Workspace{}, true, err
		}
		w := sandboxWorkspace(s)
		switch {
		case w.State == want:
			return w, true, nil
		case w.State == provider.StateError:
			return w, true, fmt.Errorf("%w: %s: daytona reports the sandbox in state %s", provider.ErrPrecondition, verb, w.StateDetail)
		}
		return w, false, nil
	})
}

// sandboxOptions are the ws create --opt keys passed on to daytona create.
var sandboxOptions = []string{"auto-stop", "auto-archive", "auto-delete", "target", "user", "cpu", "memory", "disk"}

func (p *Provider) sandboxCreate(ctx context.Context, o provider.CreateOptions) (provider.Workspace, error) {
	if o.Name == "" {
		return provider.Workspace{}, fmt.Errorf("%w: a sandbox needs a name", provider.ErrInvalid)
	}
	if o.Repository != "" {
		return provider.Workspace{}, fmt.Errorf("%w: sandboxes are created from a snapshot (image), not a repository", provider.ErrInvalid)
	}
	if _, err := p.sandboxInfo(ctx, o.Name); err == nil {
		return provider.Workspace{}, fmt.Errorf("%w: %q", provider.ErrAlreadyExists, o.Name)
	} else if !errors.Is(err, provider.ErrNotFound) {
		return provider.Workspace{}, err
	}
	args := []string{"sandbox", "create", "--name", o.Name}
	keys := make([]string, 0, len(o.Labels))
	for k := range o.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "--label", k+"="+o.Labels[k])
	}
	if o.Image != "" {
		args = append(args, "--snapshot", o.Image)
	}
	// Options the CLI takes as they are.
	for _, opt := range sandboxOptions {
		if v, ok := o.Options[opt]; ok {
			args = append(args, "--"+opt, v)
		}
	}
	wait := o.WaitTimeout
	if wait <= 0 {
		wait = p.cfg.WaitTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if _, err := p.run(cctx, args...); err != nil {
		return provider.Workspace{}, err
	}
	return p.sandboxWait(ctx, o.Name, wait, "create", provider.StateStarted)
}

func (p *Provider) sandboxStart(ctx context.Context, name string, wait time.Duration) (provider.Workspace, error) {
	if _, err := p.sandboxInfo(ctx, name); err != nil {
		return provider.Workspace{}, err
	}
	if _, err := p.run(ctx, "sandbox", "start", name); err != nil {
		return provider.Workspace{}, err
	}
	// start may return before the sandbox is started (always, when it
	// restores from archived).
	return p.sandboxWait(ctx, name, wait, "start", provider.StateStarted)
}

func (p *Provider) sandboxStop(ctx context.Context, name string) (provider.Workspace, error) {
	if _, err := p.sandboxInfo(ctx, name); err != nil {
		return provider.Workspace{}, err
	}
	if _, err := p.run(ctx, "sandbox", "stop", name); err != nil {
		return provider.Workspace{}, err
	}
	return p.sandboxWait(ctx, name, 0, "stop", provider.StateStopped)
}

func (p *Provider) sandboxDelete(ctx context.Context, name string) error {
	if _, err := p.sandboxInfo(ctx, name); err != nil {
		return err
	}
	if _, err := p.run(ctx, "sandbox", "delete", name); err != nil {
		return err
	}
	_, err := p.poll(ctx, 0, fmt.Sprintf("delete sandbox %q", name), func(ctx context.Context) (provider.Workspace, bool, error) {
		_, err := p.sandboxInfo(ctx, name)
		if errors.Is(err, provider.ErrNotFound) {
			return provider.Workspace{}, true, nil
		}
		return provider.Workspace{}, false, err
	})
	return err
}

// sandboxEndpoint checks the sandbox is started, then returns a Dial that
// mints a fresh token (revoking older ones: the pool holds one connection
// per sandbox) and runs ssh to the gateway.
func (p *Provider) sandboxEndpoint(ctx context.Context, name string) (provider.Endpoint, error) {
	s, err := p.sandboxInfo(ctx, name)
	if err != nil {
		return provider.Endpoint{}, err
	}
	w := sandboxWorkspace(s)
	switch w.State {
	case provider.StateStarted:
	default:
		return provider.Endpoint{}, fmt.Errorf("%w: %s", provider.ErrNotStarted, reportedState(w.StateDetail))
	}
	if _, err := p.apiKey(); err != nil {
		return provider.Endpoint{}, err
	}
	if p.cfg.APIURL == "" {
		return provider.Endpoint{}, ErrNoAPIKey
	}
	idle := p.cfg.IdleTimeout
	if idle <= 0 {
		idle = DefaultSandboxIdle
		if s.AutoStopInterval != nil {
			if m, err := s.AutoStopInterval.Int64(); err == nil && m > 0 && time.Duration(m)*time.Minute/2 < idle {
				idle = time.Duration(m) * time.Minute / 2
			}
		}
	}
	id := s.ID
	return provider.Endpoint{
		Dial: func(ctx context.Context) (net.Conn, error) {
			user, host, port, err := p.mint(ctx, id, name)
			if err != nil {
				return nil, err
			}
			args := append([]string{}, p.cfg.SSHArgs...)
			if port != "" {
				args = append(args, "-p", port)
			}
			args = append(args, "-o", "StrictHostKeyChecking=accept-new", "-o", "ServerAliveInterval=30")
			if p.cfg.KnownHostsFile != "" {
				args = append(args, "-o", "UserKnownHostsFile="+p.cfg.KnownHostsFile)
			}
			// The login name is the access token: off the command line.
			hop := bootstrap.SSH{Binary: p.cfg.SSH, Args: args, Destination: host, User: user,
				Label: fmt.Sprintf("daytona gateway %s for sandbox %s", host, name)}
			return p.sandboxBoot().Dial(ctx, name, hop)
		},
		Key:            "daytona-sandbox:" + id,
		IdleTimeout:    idle,
		ConnectTimeout: p.cfg.Bootstrap.AttemptTimeout(),
	}, nil
}

// sandboxBoot is the bootstrapper for sandboxes: the agent's stderr goes
// to a file in the sandbox, since the gateway drops it (and unread stderr
// could stall the channel).
func (p *Provider) sandboxBoot() *bootstrap.Bootstrapper {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sboot == nil {
		c := p.cfg.Bootstrap
		if c.RemoteStderr == "" {
			c.RemoteStderr = RemoteAgentLog
		}
		if c.Logger == nil {
			c.Logger = p.log
		}
		p.sboot = bootstrap.New(c)
	}
	return p.sboot
}

// mint asks the API for an SSH access token and returns where to connect.
func (p *Provider) mint(ctx context.Context, id, name string) (user, host, port string, err error) {
	key, err := p.apiKey()
	if err != nil {
		return "", "", "", err
	}
	if p.cfg.APIURL == "" {
		return "", "", "", ErrNoAPIKey
	}
	u := p.cfg.APIURL + "/sandbox/" + url.PathEscape(id) + "/ssh-access?expiresInMinutes=" + strconv.Itoa(p.cfg.TokenMinutes)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return "", "", "", fmt.Errorf("daytona API: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Accept", "application/json")
	resp, err := p.cfg.HTTPClient.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", "", "", fmt.Errorf("sandbox %q: daytona API unreachable at %s: %v", name, p.cfg.APIURL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return "", "", "", fmt.Errorf("%w: sandbox %q (daytona API: %s)", provider.ErrNotFound, name, apiMessage(body))
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return "", "", "", fmt.Errorf("%w: sandbox %q: the daytona API refused the API key (%s); check DAYTONA_API_KEY or the API key file", provider.ErrPrecondition, name, resp.Status)
	case resp.StatusCode/100 != 2:
		return "", "", "", fmt.Errorf("sandbox %q: mint SSH access: daytona API: %s: %s", name, resp.Status, apiMessage(body))
	}
	var r struct {
		SSHCommand string `json:"sshCommand"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return "", "", "", fmt.Errorf("sandbox %q: mint SSH access: bad response: %v", name, err)
	}
	user, host, port, err = parseSSHCommand(r.SSHCommand)
	if err != nil {
		return "", "", "", fmt.Errorf("sandbox %q: mint SSH access: %v", name, err)
	}
	p.log.Debug("minted SSH access", "sandbox", name, "gateway", host, "port", port)
	return user, host, port, nil
}

// apiMessage is the API's error text, without echoing large bodies.
func apiMessage(body []byte) string {
	var e struct {
		Message any    `json:"message"`
		Error   string `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil {
		if e.Message != nil {
			return fmt.Sprint(e.Message)
		}
		if e.Error != "" {
			return e.Error
		}
	}
	if len(body) > 200 {
		body = body[:200]
	}
	return string(body)
}
