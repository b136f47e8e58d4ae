package daytona

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/dtmux/dtmux/controller/bootstrap"
	"github.com/dtmux/dtmux/controller/provider"
)

// The legacy workspace CLI, v0.20–v0.53. Facts from its source: JSON via
// `-o json` up to v0.26, `-f json` after; `ssh WS CMD` from v0.52 (v0.28–
// v0.51 need the project name first); start/stop/delete of an unknown
// workspace may exit 0, so results are confirmed by listing.

func (p *Provider) legacyList(ctx context.Context, v Version) ([]legacyWorkspace, error) {
	args := []string{"list", "-f", "json"}
	if !v.AtLeast(27) {
		args = []string{"list", "-o", "json"}
	}
	out, err := p.run(ctx, args...)
	if err != nil {
		return nil, err
	}
	return parseLegacy(out)
}

func (p *Provider) legacyGet(ctx context.Context, v Version, name string) (provider.Workspace, legacyWorkspace, error) {
	raw, err := p.legacyList(ctx, v)
	if err != nil {
		return provider.Workspace{}, legacyWorkspace{}, err
	}
	for _, w := range raw {
		if w.Name == name {
			ws := legacyWorkspaces([]legacyWorkspace{w})
			if len(ws) == 1 {
				return ws[0], w, nil
			}
		}
	}
	return provider.Workspace{}, legacyWorkspace{}, fmt.Errorf("%w: %q", provider.ErrNotFound, name)
}

// repoName is the name Daytona v0.52+ gives a workspace for a repository.
func repoName(url string) string {
	return strings.TrimSuffix(path.Base(strings.TrimRight(url, "/")), ".git")
}

func (p *Provider) legacyCreate(ctx context.Context, v Version, o provider.CreateOptions) (provider.Workspace, error) {
	if o.Repository == "" {
		return provider.Workspace{}, fmt.Errorf("%w: daytona %s creates workspaces from a repository URL", provider.ErrInvalid, v)
	}
	if strings.HasPrefix(o.Repository, "-") {
		return provider.Workspace{}, fmt.Errorf("%w: repository %q", provider.ErrInvalid, o.Repository)
	}
	name := o.Name
	args := []string{"create"}
	if v.AtLeast(52) {
		// No --name: the repository names the workspace.
		if name == "" {
			name = repoName(o.Repository)
		} else if name != repoName(o.Repository) {
			return provider.Workspace{}, fmt.Errorf("%w: daytona %s names the workspace after the repository (%q), not %q",
				provider.ErrInvalid, v, repoName(o.Repository), name)
		}
		keys := make([]string, 0, len(o.Labels))
		for k := range o.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			args = append(args, "--label", k+"="+o.Labels[k])
		}
	} else {
		if name == "" {
			name = repoName(o.Repository)
		}
		args = append(args, "--name", name)
		if v.AtLeast(30) {
			args = append(args, "-y")
		}
	}
	if v.AtLeast(38) {
		args = append(args, "--no-ide")
	}
	if _, _, err := p.legacyGet(ctx, v, name); err == nil {
		return provider.Workspace{}, fmt.Errorf("%w: %q", provider.ErrAlreadyExists, name)
	}
	args = append(args, "--", o.Repository)
	wait := o.WaitTimeout
	if wait <= 0 {
		wait = p.cfg.WaitTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if _, err := p.run(cctx, args...); err != nil {
		return provider.Workspace{}, err
	}
	return p.legacyWaitStarted(ctx, v, name, wait, "create")
}

func (p *Provider) legacyWaitStarted(ctx context.Context, v Version, name string, wait time.Duration, verb string) (provider.Workspace, error) {
	return p.poll(ctx, wait, fmt.Sprintf("%s workspace %q", verb, name), func(ctx context.Context) (provider.Workspace, bool, error) {
		w, _, err := p.legacyGet(ctx, v, name)
		switch {
		case errors.Is(err, provider.ErrNotFound):
			return w, false, nil
		case err != nil:
			return w, true, err
		case w.State == provider.StateStarted:
			return w, true, nil
		case w.State == provider.StateError:
			return w, true, fmt.Errorf("%w: %s: daytona reports the workspace in state %s", provider.ErrPrecondition, verb, w.StateDetail)
		}
		return w, false, nil
	})
}

func (p *Provider) legacyStart(ctx context.Context, v Version, name string, wait time.Duration) (provider.Workspace, error) {
	if _, _, err := p.legacyGet(ctx, v, name); err != nil {
		return provider.Workspace{}, err
	}
	args := []string{"start", name}
	if v.AtLeast(30) {
		args = append(args, "-y")
	}
	if _, err := p.run(ctx, args...); err != nil {
		return provider.Workspace{}, err
	}
	return p.legacyWaitStarted(ctx, v, name, wait, "start")
}

func (p *Provider) legacyStop(ctx context.Context, v Version, name string) (provider.Workspace, error) {
	if _, _, err := p.legacyGet(ctx, v, name); err != nil {
		return provider.Workspace{}, err
	}
	args := []string{"stop", name}
	if v.AtLeast(52) {
		args = append(args, "-y")
	}
	if _, err := p.run(ctx, args...); err != nil {
		return provider.Workspace{}, err
	}
	return p.poll(ctx, 0, fmt.Sprintf("stop workspace %q", name), func(ctx context.Context) (provider.Workspace, bool, error) {
		w, _, err := p.legacyGet(ctx, v, name)
		if err != nil {
			return w, true, err
		}
		return w, w.State == provider.StateStopped || w.State == provider.StateError, nil
	})
}

func (p *Provider) legacyDelete(ctx context.Context, v Version, name string, force bool) error {
	if _, _, err := p.legacyGet(ctx, v, name); err != nil {
		return err
	}
	args := []string{"delete", name, "-y"}
	if force {
		args = append(args, "-f")
	}
	if _, err := p.run(ctx, args...); err != nil {
		return err
	}
	_, err := p.poll(ctx, 0, fmt.Sprintf("delete workspace %q", name), func(ctx context.Context) (provider.Workspace, bool, error) {
		w, _, err := p.legacyGet(ctx, v, name)
		if errors.Is(err, provider.ErrNotFound) {
			return w, true, nil
		}
		return w, false, err
	})
	return err
}

func (p *Provider) legacyEndpoint(ctx context.Context, v Version, name string) (provider.Endpoint, error) {
	w, raw, err := p.legacyGet(ctx, v, name)
	if err != nil {
		return provider.Endpoint{}, err
	}
	if w.State != provider.StateStarted && w.State != provider.StateUnknown {
		return provider.Endpoint{}, fmt.Errorf("%w: %s", provider.ErrNotStarted, reportedState(w.StateDetail))
	}
	argv := []string{p.cfg.Binary, "ssh", name}
	switch {
	case v.AtLeast(52):
		argv = append(argv, "--")
	case v.AtLeast(28) && len(raw.Projects) > 0:
		argv = append(argv, raw.Projects[0].Name)
	default:
		return provider.Endpoint{}, fmt.Errorf("%w: daytona %s cannot run a command over ssh (v0.28 or later needed)", provider.ErrUnsupported, v)
	}
	hop := bootstrap.Exec{Argv: argv, Env: p.env(), Label: "daytona ssh " + name}
	id := raw.ID
	return provider.Endpoint{
		Dial: func(ctx context.Context) (net.Conn, error) {
			return p.boot.Dial(ctx, name, hop)
		},
		Key:            "daytona:" + name + ":" + id,
		IdleTimeout:    p.cfg.IdleTimeout,
		ConnectTimeout: p.cfg.Bootstrap.AttemptTimeout(),
	}, nil
}
