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
	root.SetFlagErrorFunc(flagError)
	for _, c := range commands {
		root.AddCommand(c(app))
	}
	// Added now rather than by Execute, so that the walk below covers it.
	root.InitDefaultCompletionCmd()
	rejectUnknownSubcommands(root)
	addWorkspaceCompletion(app, root)
	return root
}

// rejectUnknownSubcommands makes every command that only groups others
// (dtmux, ws, session, fleet, completion...) print its help when called
// alone and fail with a one-line usage error on an unknown subcommand;
// cobra would print the help and exit 0 for "dtmux ws bogus".
func rejectUnknownSubcommands(cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		rejectUnknownSubcommands(c)
	}
	if !cmd.HasSubCommands() || cmd.Run != nil || cmd.RunE != nil {
		return
	}
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		return unknownCommand(cmd, args[0])
	}
}

// unknownCommand is the usage error for an unknown subcommand name of
// cmd, with cobra's suggestions.
func unknownCommand(cmd *cobra.Command, name string) error {
	where := ""
	if cmd.HasParent() {
		where = fmt.Sprintf(" for %q", cmd.CommandPath())
	}
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's own default
	}
	hint := fmt.Sprintf("see %s --help", cmd.CommandPath())
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		hint = fmt.Sprintf("did you mean %q?", s[0])
	}
	return usageErrorf("unknown command %q%s (%s)", clip(name), where, hint)
}

// flagError is a one-line usage error for a bad flag. A flag that
// belongs to the remote command (dtmux exec WS ls -la) says how to pass
// it.
func flagError(cmd *cobra.Command, err error) error {
	msg := err.Error()
	if strings.Contains(cmd.Use, "-- CMD") && (strings.HasPrefix(msg, "unknown flag") || strings.HasPrefix(msg, "unknown shorthand flag")) {
		msg += fmt.Sprintf(" (put -- before the command: %s -- CMD ARGS...)", commandSynopsis(cmd))
	}
	if strings.Contains(cmd.Use, "SCRIPT [ARGS...]") && (strings.HasPrefix(msg, "unknown flag") || strings.HasPrefix(msg, "unknown shorthand flag")) {
		msg += fmt.Sprintf(" (put -- before the script's arguments: %s SCRIPT -- ARGS...)", commandSynopsis(cmd))
	}
	return &ExitError{Code: ExitUsage, Msg: msg}
}

// commandSynopsis is cmd's path and its leading positional arguments
// ("dtmux exec WS"), as far as the first flag or separator in its Use.
func commandSynopsis(cmd *cobra.Command) string {
	parts := []string{cmd.CommandPath()}
	for _, w := range strings.Fields(cmd.Use)[1:] {
		if strings.HasPrefix(w, "[") || strings.HasPrefix(w, "(") || w == "--" || w == "SCRIPT" {
			break
		}
		parts = append(parts, w)
	}
	return strings.Join(parts, " ")
}

// commandName is cmd's path without the program name ("ws rm"), for
// messages that dtmux already prefixes with "dtmux: ".
func commandName(cmd *cobra.Command) string {
	p := cmd.CommandPath()
	if cmd.HasParent() {
		if _, rest, ok := strings.Cut(p, " "); ok {
			return rest
		}
	}
	return p
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
			return usageErrorf("%s: want %s, got %d argument(s)", commandName(cmd), names, len(args))
		}
		return nil
	}
}

// minArgs is cobra.MinimumNArgs with a usage error naming the arguments.
func minArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return usageErrorf("%s: want %s", commandName(cmd), names)
		}
		return nil
	}
}
