package fleet

import (
	"context"
	"slices"
	"strings"
	"time"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// RunInfo summarises one fleet run across the agents that have it.
type RunInfo struct {
	RunID     string
	Argv      []string
	StartedAt time.Time // earliest start among targets
	Targets   int
	Running   int
	Succeeded int
	Failed    int
}

// List asks every selected agent (all when the selector is empty) for its
// fleet runs and merges them by run id, newest first. Workspaces that
// could not be asked are returned apart, in selection order.
func (e *Engine) List(ctx context.Context, sel Selector, maxParallel int) ([]RunInfo, []string, error) {
	if sel.Empty() {
		sel.All = true
	}
	if maxParallel <= 0 {
		maxParallel = DefaultParallel
	}
	targets, err := e.targets.Select(ctx, sel)
	if err != nil {
		return nil, nil, err
	}
	targets = dedupe(targets)
	var names []string
	for _, t := range targets {
		if t.Skip == "" {
			names = append(names, t.Name)
		}
	}
	runs := make([][]*agentv1.RunInfo, len(names))
	failed := make([]bool, len(names))
	parallel(ctx, len(names), maxParallel, func(i int) {
		c, err := e.targets.Client(ctx, names[i])
		if err == nil {
			var r *agentv1.ListRunsResponse
			if r, err = c.ListRuns(ctx, &agentv1.ListRunsRequest{}); err == nil {
				runs[i] = r.GetRuns()
				return
			}
		}
		e.log.Debug("list fleet runs: agent not asked", "workspace", names[i], "error", err)
		failed[i] = true
	})
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	byID := map[string]*RunInfo{}
	var unreachable []string
	for i, rs := range runs {
		if failed[i] {
			unreachable = append(unreachable, names[i])
			continue
		}
		for _, r := range rs {
			id := r.GetLabels()[LabelKey]
			if id == "" {
				continue
			}
			info := byID[id]
			if info == nil {
				info = &RunInfo{RunID: id, Argv: r.GetArgv()}
				byID[id] = info
			}
			info.Targets++
			if st := r.GetStartedAt().AsTime(); r.GetStartedAt() != nil && (info.StartedAt.IsZero() || st.Before(info.StartedAt)) {
				info.StartedAt = st
			}
			switch {
			case r.GetState() != agentv1.RunState_RUN_STATE_FINISHED:
				info.Running++
			case Succeeded(r.GetTrailer()):
				info.Succeeded++
			default:
				info.Failed++
			}
		}
	}
	out := make([]RunInfo, 0, len(byID))
	for _, info := range byID {
		out = append(out, *info)
	}
	slices.SortFunc(out, func(a, b RunInfo) int {
		if c := b.StartedAt.Compare(a.StartedAt); c != 0 {
			return c
		}
		return strings.Compare(a.RunID, b.RunID)
	})
	return out, unreachable, nil
}
