package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/dtmux/dtmux/internal/version"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// VersionHeader is the response header in which a dtmux server may report
// its version.
const VersionHeader = "dtmux-version"

func newVersionCmd(app *App) *cobra.Command {
	var ws string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print dtmux's version, and the controller's (and a workspace agent's) when reachable",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return app.runVersion(cmd.Context(), ws)
		},
	}
	cmd.Flags().StringVar(&ws, "workspace", "", "also print the version of this workspace's agent")
	return cmd
}

func (a *App) runVersion(ctx context.Context, ws string) error {
	fmt.Fprintf(a.Stdout, "dtmux %s\n", version.Version)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addr, err := a.ControllerAddress()
	if err != nil {
		return err
	}
	c, err := a.Workspaces()
	if err != nil {
		fmt.Fprintf(a.Stdout, "controller: not reachable (%s)\n", errorLine(err, addr.String())[len("dtmux: "):])
		return nil
	}
	var header metadata.MD
	if _, err := c.ListWorkspaces(ctx, &controllerv1.ListWorkspacesRequest{}, grpc.Header(&header)); err != nil {
		fmt.Fprintf(a.Stdout, "controller: not reachable (%s)\n", errorLine(err, addr.String())[len("dtmux: "):])
		return nil
	}
	if h := header.Get(VersionHeader); len(h) > 0 {
		fmt.Fprintf(a.Stdout, "controller %s at %s\n", h[0], addr)
	} else {
		fmt.Fprintf(a.Stdout, "controller at %s (version not reported)\n", addr)
	}
	if ws != "" {
		agent, actx, err := a.Agent(ctx, ws)
		if err != nil {
			return err
		}
		info, err := agent.GetAgentInfo(actx, &agentv1.GetAgentInfoRequest{})
		if err != nil {
			return err
		}
		tmux := info.GetTmuxVersion()
		if tmux == "" {
			tmux = "unavailable: " + info.GetTmuxError()
		}
		fmt.Fprintf(a.Stdout, "agent %s in %s (%s/%s, tmux %s)\n", info.GetVersion(), ws, info.GetOs(), info.GetArch(), tmux)
	}
	return nil
}
