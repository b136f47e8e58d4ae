package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
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

// versionInfo is what dtmux version -o json prints: every field, empty
// ones too, as every -o json does; agent only with --workspace.
type versionInfo struct {
	Client     string             `json:"client"`
	Controller *controllerVersion `json:"controller"`
	Agent      *agentVersion      `json:"agent,omitempty"`
}

type controllerVersion struct {
	Address string `json:"address"`
	// Version is empty when the controller did not report one.
	Version string `json:"version"`
	// Error says why the controller could not be reached.
	Error string `json:"error"`
}

type agentVersion struct {
	Workspace   string `json:"workspace"`
	Version     string `json:"version"`
	OS          string `json:"os"`
	Arch        string `json:"arch"`
	TmuxVersion string `json:"tmux_version"`
	TmuxError   string `json:"tmux_error"`
}

func (a *App) runVersion(ctx context.Context, ws string) error {
	asJSON, err := a.JSON()
	if err != nil {
		return err
	}
	v, err := a.versions(ctx, ws)
	if err != nil {
		return err
	}
	if asJSON {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.Stdout, "%s\n", b)
		return err
	}
	fmt.Fprintf(a.Stdout, "dtmux %s\n", v.Client)
	switch c := v.Controller; {
	case c.Error != "":
		fmt.Fprintf(a.Stdout, "controller: not reachable (%s)\n", c.Error)
	case c.Version != "":
		fmt.Fprintf(a.Stdout, "controller %s at %s\n", c.Version, c.Address)
	default:
		fmt.Fprintf(a.Stdout, "controller at %s (version not reported)\n", c.Address)
	}
	if ag := v.Agent; ag != nil {
		tmux := strings.TrimPrefix(ag.TmuxVersion, "tmux ") // as tmux -V says it
		if tmux == "" {
			tmux = "unavailable: " + ag.TmuxError
		}
		fmt.Fprintf(a.Stdout, "agent %s in %s (%s/%s, tmux %s)\n", ag.Version, ag.Workspace, ag.OS, ag.Arch, tmux)
	}
	return nil
}

// versions asks the controller (and ws's agent, when given) for their
// versions. An unreachable controller is reported in the result, not as
// an error; an agent that cannot be asked is an error.
func (a *App) versions(ctx context.Context, ws string) (*versionInfo, error) {
	v := &versionInfo{Client: version.Version}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addr, err := a.ControllerAddress()
	if err != nil {
		return nil, err
	}
	v.Controller = &controllerVersion{Address: addr.String()}
	c, err := a.Workspaces()
	if err != nil {
		v.Controller.Error = errorLine(err, addr.String())[len("dtmux: "):]
		return v, nil
	}
	var header metadata.MD
	if _, err := c.ListWorkspaces(ctx, &controllerv1.ListWorkspacesRequest{}, grpc.Header(&header)); err != nil {
		v.Controller.Error = errorLine(err, addr.String())[len("dtmux: "):]
		return v, nil
	}
	if h := header.Get(VersionHeader); len(h) > 0 {
		v.Controller.Version = h[0]
	}
	if ws != "" {
		agent, actx, err := a.Agent(ctx, ws)
		if err != nil {
			return nil, err
		}
		info, err := agent.GetAgentInfo(actx, &agentv1.GetAgentInfoRequest{})
		if err != nil {
			return nil, err
		}
		v.Agent = &agentVersion{Workspace: ws, Version: info.GetVersion(), OS: info.GetOs(), Arch: info.GetArch(),
			TmuxVersion: info.GetTmuxVersion(), TmuxError: info.GetTmuxError()}
	}
	return v, nil
}
