package cli

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// completeTimeout bounds the controller calls made while the shell
// waits for completions.
const completeTimeout = 2 * time.Second

// Commands whose second argument names an existing session or run, by
// path without the program name.
var (
	sessionArgCommands = map[string]bool{"attach": true, "session kill": true, "session send": true, "session capture": true, "session logs": true}
	runArgCommands     = map[string]bool{"runs logs": true, "runs kill": true}
)

// addWorkspaceCompletion makes the shell complete workspace names for
// every command whose first argument is WS, and then session names or
// run ids for the commands that take one (asking the controller, with a
// short deadline); other later arguments complete as files.
func addWorkspaceCompletion(a *App, cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		addWorkspaceCompletion(a, c)
	}
	f := strings.Fields(cmd.Use)
	if len(f) < 2 || f[1] != "WS" || cmd.ValidArgsFunction != nil {
		return
	}
	switch name := commandName(cmd); {
	case sessionArgCommands[name]:
		cmd.ValidArgsFunction = a.completeWorkspaceThen(a.completeSessions)
	case runArgCommands[name]:
		cmd.ValidArgsFunction = a.completeWorkspaceThen(a.completeRuns)
	default:
		cmd.ValidArgsFunction = a.completeWorkspace
	}
}

// completeWorkspaceThen completes WS, then the second argument with
// second(ws), then nothing.
func (a *App) completeWorkspaceThen(second func(ctx context.Context, ws string) []string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		switch len(args) {
		case 0:
			return a.completeWorkspace(cmd, args, toComplete)
		case 1:
			ctx, cancel := context.WithTimeout(cmd.Context(), completeTimeout)
			defer cancel()
			return second(ctx, args[0]), cobra.ShellCompDirectiveNoFileComp
		default:
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
	}
}

// completeSessions lists ws's session names (nil on any failure).
func (a *App) completeSessions(ctx context.Context, ws string) []string {
	agent, ctx, err := a.Agent(ctx, ws)
	if err != nil {
		return nil
	}
	resp, err := agent.ListSessions(ctx, &agentv1.ListSessionsRequest{})
	if err != nil {
		return nil
	}
	names := make([]string, 0, len(resp.GetSessions()))
	for _, s := range resp.GetSessions() {
		names = append(names, s.GetName())
	}
	return names
}

// completeRuns lists ws's run ids, each described by its state and
// command (nil on any failure).
func (a *App) completeRuns(ctx context.Context, ws string) []string {
	agent, ctx, err := a.Agent(ctx, ws)
	if err != nil {
		return nil
	}
	resp, err := agent.ListRuns(ctx, &agentv1.ListRunsRequest{})
	if err != nil {
		return nil
	}
	ids := make([]string, 0, len(resp.GetRuns()))
	for _, r := range resp.GetRuns() {
		desc := strings.NewReplacer("\t", " ", "\n", " ").Replace(runState(r) + ": " + clip(formatArgv(r.GetArgv())))
		ids = append(ids, r.GetRunId()+"\t"+desc)
	}
	return ids
}

func (a *App) completeWorkspace(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveDefault
	}
	c, err := a.Workspaces()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), completeTimeout)
	defer cancel()
	resp, err := c.ListWorkspaces(ctx, &controllerv1.ListWorkspacesRequest{})
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	names := make([]string, 0, len(resp.GetWorkspaces()))
	for _, w := range resp.GetWorkspaces() {
		names = append(names, w.GetName())
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}
