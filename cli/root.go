package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// commands builds every top-level subcommand. Each constructor gets the
// shared App. Engineers adding a command group add one line here (the
// fleet group: newFleetCmd, in fleet*.go).
var commands = []func(*App) *cobra.Command{
	newWsCmd,
	newExecCmd,
	newRunsCmd,
	newSessionCmd,
	newAttachCmd,
	newRunCmd,
	newUpCmd,
	newPsCmd,
	newLogsCmd,
	newRestartCmd,
	newDownCmd,
	newFleetCmd,
	newVersionCmd,
}

// NewRootCmd builds the dtmux command tree on app.
func NewRootCmd(app *App) *cobra.Command {
	root := &cobra.Command{
		Use:   "dtmux",
		Short: "Run commands and tmux sessions in remote dev workspaces",
		Long: `dtmux runs commands and tmux sessions in remote development workspaces
through a dtmux-controller, which keeps one connection to each workspace's agent.

Exit codes: commands that run something remotely exit with its status
(128+N for signal N); a command that does not exist exits 127 and one that
cannot be executed 126, as in a shell. Invalid input exits 254, whether
dtmux caught it or the server rejected it; dtmux's other failures exit 255;
a run killed by --timeout/--idle-timeout exits 124.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&app.controller, "controller", "", "controller address: unix:///path.sock or tcp://host:port (default $DTMUX_CONTROLLER, else the socket in the state dir)")
	pf.StringVar(&app.tokenFile, "token-file", "", "bearer token file for a tcp controller (default $DTMUX_TOKEN_FILE)")
	pf.StringVarP(&app.output, "output", "o", "text", "output format where supported: text or json")
	root.SetIn(app.Stdin)
	root.SetOut(app.Stdout)
	root.SetErr(app.Stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &ExitError{Code: ExitUsage, Msg: err.Error()}
	})
	for _, c := range commands {
		root.AddCommand(c(app))
	}
	addWorkspaceCompletion(app, root)
	return root
}

// Main runs dtmux with args (without the program name) and returns the
// process exit code. Errors are printed on one line of stderr.
func Main(ctx context.Context, app *App, args []string) int {
	defer app.Close()
	root := NewRootCmd(app)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) && ee.Msg == "" {
		return ee.Code
	}
	code := ErrorCode(err)
	if code == ExitFailure && isCobraUsage(err) {
		code = ExitUsage
	}
	addr := ""
	if a, aerr := app.ControllerAddress(); aerr == nil {
		addr = a.String()
	}
	fmt.Fprintln(app.Stderr, errorLine(err, addr))
	return code
}

// isCobraUsage recognises cobra's own argument errors (unknown command,
// wrong number of arguments), which it returns as plain errors.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "accepts ", "requires at least", "requires at most", "unknown flag", "unknown shorthand", "invalid argument", "flag needs"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

// exactArgs is cobra.ExactArgs with a usage error naming the arguments.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErrorf("%s: want %s, got %d argument(s)", cmd.CommandPath(), names, len(args))
		}
		return nil
	}
}

// minArgs is cobra.MinimumNArgs with a usage error naming the arguments.
func minArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return usageErrorf("%s: want %s", cmd.CommandPath(), names)
		}
		return nil
	}
}
