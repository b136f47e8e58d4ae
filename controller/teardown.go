package controller

import (
	"context"
	"time"

	"github.com/dtmux/dtmux/controller/provider"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// TeardownTimeout bounds how long StopWorkspace and DeleteWorkspace spend
// killing a workspace's runs through its agent before the provider stops
// it. It is best effort: an agent that cannot be reached in time is left
// to the provider.
const TeardownTimeout = 5 * time.Second

// killRuns SIGKILLs, through the workspace's agent, every run still
// running (detached runs outlive an agent that is stopped, and would
// outlive the workspace too) and every run an earlier agent lost, whose
// processes may still be alive; then it waits, within TeardownTimeout,
// for the running ones to finish, so that their trailers say KILLED
// rather than AGENT_LOST. Nothing here fails the stop or delete: errors
// are logged. Providers that never stop or delete (provider.Lifecycle)
// are left alone.
func (s *WorkspaceService) killRuns(ctx context.Context, name, reason string) {
	if !provider.ManagesLifecycle(s.prov) {
		return // the stop or delete will fail: leave the runs alone
	}
	ctx, cancel := context.WithTimeout(ctx, TeardownTimeout)
	defer cancel()
	log := s.log.With("workspace", name)
	cc, err := s.pool.Conn(ctx, name)
	if err != nil {
		log.Debug("not ending runs: agent not reached", "error", err)
		return
	}
	agent := agentv1.NewAgentServiceClient(cc)
	list, err := agent.ListRuns(ctx, &agentv1.ListRunsRequest{})
	if err != nil {
		log.Warn("not ending runs: list runs", "error", err)
		return
	}
	var running []string
	for _, r := range list.GetRuns() {
		live := r.GetState() == agentv1.RunState_RUN_STATE_RUNNING
		lost := r.GetTrailer().GetReason() == agentv1.ExitReason_EXIT_REASON_AGENT_LOST
		if !live && !lost {
			continue
		}
		_, err := agent.SignalRun(ctx, &agentv1.SignalRunRequest{RunId: r.GetRunId(), Signal: agentv1.Signal_SIGNAL_KILL, Reason: reason})
		if err != nil {
			// A run that ended meanwhile, or a lost one the agent cannot
			// signal: the provider's teardown is the backstop.
			log.Debug("kill run", "run_id", r.GetRunId(), "error", err)
			continue
		}
		if live {
			running = append(running, r.GetRunId())
		}
	}
	if len(running) == 0 {
		return
	}
	log.Info("killed the workspace's runs", "runs", len(running))
	for len(running) > 0 {
		left := running[:0]
		for _, id := range running {
			g, err := agent.GetRun(ctx, &agentv1.GetRunRequest{RunId: id})
			if err == nil && g.GetRun().GetState() == agentv1.RunState_RUN_STATE_RUNNING {
				left = append(left, id)
			}
		}
		running = left
		if len(running) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			log.Warn("runs still running after SIGKILL", "runs", len(running))
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}
