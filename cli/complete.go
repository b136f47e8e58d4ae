package cli

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"

	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// addWorkspaceCompletion makes the shell complete workspace names for
// every command whose first argument is WS (asking the controller, with a
// short deadline); later arguments complete as files.
func addWorkspaceCompletion(a *App, cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		addWorkspaceCompletion(a, c)
	}
	if f := strings.Fields(cmd.Use); len(f) > 1 && f[1] == "WS" && cmd.ValidArgsFunction == nil {
		cmd.ValidArgsFunction = a.completeWorkspace
	}
}

func (a *App) completeWorkspace(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveDefault
	}
	c, err := a.Workspaces()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
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
