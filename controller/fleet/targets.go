package fleet

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc"

	"github.com/dtmux/dtmux/controller/provider"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// ProviderTargets adapts a provider and the controller's connection pool
// to Targets.
type ProviderTargets struct {
	// Provider lists the workspaces.
	Provider provider.Provider
	// Conn returns the (pooled) connection to a workspace's agent; an
	// error means the agent could not be reached.
	Conn func(ctx context.Context, workspace string) (grpc.ClientConnInterface, error)
}

// Select implements Targets.
func (p ProviderTargets) Select(ctx context.Context, sel Selector) ([]Target, error) {
	list, err := p.Provider.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list workspaces: %w", err)
	}
	return SelectFrom(list, sel)
}

// Client implements Targets.
func (p ProviderTargets) Client(ctx context.Context, workspace string) (agentv1.AgentServiceClient, error) {
	cc, err := p.Conn(ctx, workspace)
	if err != nil {
		return nil, err
	}
	return agentv1.NewAgentServiceClient(cc), nil
}

// SelectFrom applies a selector to a provider's list, keeping the list's
// order. Named workspaces must exist. Workspaces that are named or match
// the labels but are not started come back with Skip set; All selects
// started workspaces only.
func SelectFrom(list []provider.Workspace, sel Selector) ([]Target, error) {
	labels := make(map[string]string, len(sel.Labels))
	for _, l := range sel.Labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%w: label selector %q: want key=value", ErrInvalid, l)
		}
		labels[k] = v
	}
	for _, n := range sel.Workspaces {
		if err := provider.ValidateName(n); err != nil {
			return nil, err
		}
		if !slices.ContainsFunc(list, func(w provider.Workspace) bool { return w.Name == n }) {
			return nil, unknownWorkspace(n)
		}
	}
	var out []Target
	for _, w := range list {
		started := w.State == provider.StateStarted
		named := slices.Contains(sel.Workspaces, w.Name)
		matched := len(labels) > 0 && matchLabels(w.Labels, labels)
		if !(named || matched || (sel.All && started)) {
			continue
		}
		t := Target{Name: w.Name}
		if !started {
			t.Skip = "workspace is " + w.State.String()
		}
		out = append(out, t)
	}
	return out, nil
}

func matchLabels(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

// unknownWorkspace is provider.ErrNotFound for a named workspace, worded
// as every other call says it.
type unknownWorkspace string

func (u unknownWorkspace) Error() string { return fmt.Sprintf("workspace %q not found", string(u)) }

// Is makes errors.Is(err, provider.ErrNotFound) hold.
func (unknownWorkspace) Is(target error) bool { return target == provider.ErrNotFound }
