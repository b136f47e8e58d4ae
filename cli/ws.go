package cli

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

func newWsCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "ws",
		Aliases: []string{"workspace", "workspaces"},
		Short:   "List, create, start, stop and remove workspaces",
	}
	cmd.AddCommand(newWsLsCmd(app), newWsCreateCmd(app), newWsRmCmd(app), newWsStartCmd(app), newWsStopCmd(app))
	return cmd
}

func newWsLsCmd(app *App) *cobra.Command {
	var labels []string
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List workspaces",
		Args:    exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return app.runWsLs(cmd.Context(), labels)
		},
	}
	cmd.Flags().StringArrayVarP(&labels, "label", "l", nil, "only workspaces with this label key=value (repeatable)")
	return cmd
}

func (a *App) runWsLs(ctx context.Context, labels []string) error {
	asJSON, err := a.JSON()
	if err != nil {
		return err
	}
	for _, l := range labels {
		if _, _, err := ParseLabel(l); err != nil {
			return usageErrorf("--label %v", err)
		}
	}
	c, err := a.Workspaces()
	if err != nil {
		return err
	}
	resp, err := c.ListWorkspaces(ctx, &controllerv1.ListWorkspacesRequest{LabelSelectors: labels})
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(a.Stdout, resp)
	}
	return renderWorkspaces(a, resp.GetWorkspaces())
}

func renderWorkspaces(a *App, wss []*controllerv1.Workspace) error {
	t := newTable(a.Stdout, "NAME", "STATE", "AGENT", "LABELS")
	for _, w := range wss {
		t.row(w.GetName(), workspaceState(w), agentStatus(w.GetAgent()), formatLabels(w.GetLabels()))
	}
	return t.flush()
}

// workspaceState is the state word, with the provider's detail for errors.
func workspaceState(w *controllerv1.Workspace) string {
	s := strings.ToLower(strings.TrimPrefix(w.GetState().String(), "WORKSPACE_STATE_"))
	if w.GetState() == controllerv1.WorkspaceState_WORKSPACE_STATE_ERROR && w.GetStateDetail() != "" {
		// The provider's detail may start with its own state word, the
		// same one ("error: devcontainer build failed").
		d := strings.TrimPrefix(w.GetStateDetail(), s+": ")
		s += " (" + clip(d) + ")"
	}
	return s
}

// agentStatus summarises the controller's view of an agent: connected
// (with its version when known); idle when the controller holds no
// connection and none failed (it dials on first use and drops idle ones,
// so this is not "down"); or the last failure's reason, shortened.
func agentStatus(s *controllerv1.AgentStatus) string {
	switch {
	case s.GetConnected() && s.GetVersion() != "":
		return "connected " + s.GetVersion()
	case s.GetConnected():
		return "connected"
	case s.GetLastError() != "":
		return "error: " + shortReason(s.GetLastError())
	default:
		return "idle"
	}
}

// shortReason keeps a table cell readable: the cause at the end of the
// error's first line (what follows its last ": ", which is what ssh or
// the kernel said), at most 48 bytes (cut at a rune boundary). -o json
// has it all.
func shortReason(s string) string {
	const max = 48
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	// The cause is the last ": "-separated part; one word is what the
	// part before it is about ("Bad configuration option: nosuchoption",
	// not "nosuchoption").
	if i := strings.LastIndex(s, ": "); i >= 0 && len(s)-i-2 >= 8 {
		last := s[i+2:]
		if !strings.Contains(last, " ") {
			from := 0
			if j := strings.LastIndex(s[:i], ": "); j >= 0 {
				from = j + 2
			}
			if len(s)-from <= max {
				last = s[from:]
			}
		}
		s = last
	}
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

func newWsCreateCmd(app *App) *cobra.Command {
	var (
		labels, opts []string
		repo, image  string
		wait         time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a workspace and wait until it is started",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			lm, err := ParseLabels(labels)
			if err != nil {
				return usageErrorf("--label %v", err)
			}
			om, err := parseOptions(opts)
			if err != nil {
				return usageErrorf("--opt %v", err)
			}
			req := &controllerv1.CreateWorkspaceRequest{
				Name: args[0], Labels: lm, Repository: repo, Image: image, Options: om,
			}
			if wait > 0 {
				req.WaitTimeout = durationpb.New(wait)
			}
			return app.runWsCreate(cmd.Context(), req)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&labels, "label", "l", nil, "label key=value (repeatable)")
	f.StringArrayVar(&opts, "opt", nil, "provider option key=value, such as auto_stop=15 (repeatable)")
	f.StringVar(&repo, "repo", "", "repository URL to clone (daytona)")
	f.StringVar(&image, "image", "", "image or snapshot to create from (provider-specific)")
	f.DurationVar(&wait, "wait", 0, "how long to wait until it is started (default: the controller's, 10m)")
	return cmd
}

func (a *App) runWsCreate(ctx context.Context, req *controllerv1.CreateWorkspaceRequest) error {
	asJSON, err := a.JSON()
	if err != nil {
		return err
	}
	c, err := a.Workspaces()
	if err != nil {
		return err
	}
	resp, err := c.CreateWorkspace(ctx, req)
	if err != nil {
		return err
	}
	return a.printWorkspace(resp.GetWorkspace(), asJSON)
}

func (a *App) printWorkspace(w *controllerv1.Workspace, asJSON bool) error {
	if asJSON {
		return printJSON(a.Stdout, w)
	}
	return renderWorkspaces(a, []*controllerv1.Workspace{w})
}

func newWsRmCmd(app *App) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "rm NAME",
		Aliases: []string{"delete"},
		Short:   "Delete a workspace and everything in it",
		Args:    exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := app.Workspaces()
			if err != nil {
				return err
			}
			if _, err := c.DeleteWorkspace(cmd.Context(), &controllerv1.DeleteWorkspaceRequest{Name: args[0], Force: force}); err != nil {
				return err
			}
			fmt.Fprintf(app.Stderr, "workspace %s deleted\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "delete even when running or in error")
	return cmd
}

func newWsStartCmd(app *App) *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "start NAME",
		Short: "Start a stopped workspace and wait until it is started",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON, err := app.JSON()
			if err != nil {
				return err
			}
			c, err := app.Workspaces()
			if err != nil {
				return err
			}
			req := &controllerv1.StartWorkspaceRequest{Name: args[0]}
			if wait > 0 {
				req.WaitTimeout = durationpb.New(wait)
			}
			resp, err := c.StartWorkspace(cmd.Context(), req)
			if err != nil {
				return err
			}
			return app.printWorkspace(resp.GetWorkspace(), asJSON)
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 0, "how long to wait until it is started (default: the controller's, 10m)")
	return cmd
}

func newWsStopCmd(app *App) *cobra.Command {
	return &cobra.Command{
		Use:   "stop NAME",
		Short: "Stop a workspace (its agent goes away with it)",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON, err := app.JSON()
			if err != nil {
				return err
			}
			c, err := app.Workspaces()
			if err != nil {
				return err
			}
			resp, err := c.StopWorkspace(cmd.Context(), &controllerv1.StopWorkspaceRequest{Name: args[0]})
			if err != nil {
				return err
			}
			return app.printWorkspace(resp.GetWorkspace(), asJSON)
		},
	}
}
