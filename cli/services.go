package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"gopkg.in/yaml.v3"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// DefaultServicesSession is the session that holds services by default
// (the agent's default too).
const DefaultServicesSession = "services"

// servicesFile is the services.yaml format:
//
//	session: services          # optional
//	services:
//	  - name: backend
//	    command: [go, run, ./cmd/api]   # argv; a string runs under /bin/sh -c
//	    cwd: backend
//	    env: {PORT: "8080"}
type servicesFile struct {
	Session  string        `yaml:"session"`
	Services []serviceYAML `yaml:"services"`
}

type serviceYAML struct {
	Name    string            `yaml:"name"`
	Command yaml.Node         `yaml:"command"`
	Cwd     string            `yaml:"cwd"`
	Env     map[string]string `yaml:"env"`
}

// ParseServices reads a services.yaml document. Unknown keys are errors
// (a typo must not silently drop a setting).
func ParseServices(data []byte) (session string, specs []*agentv1.ServiceSpec, err error) {
	var f servicesFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return "", nil, errors.New("empty services file")
		}
		return "", nil, yamlError(err)
	}
	if f.Session != "" && !validName(f.Session) {
		return "", nil, fmt.Errorf("session %q: use letters, digits, '-' and '_'", f.Session)
	}
	if len(f.Services) == 0 {
		return "", nil, errors.New("no services (want a top-level `services:` list)")
	}
	seen := map[string]bool{}
	for i, s := range f.Services {
		where := fmt.Sprintf("services[%d]", i)
		if s.Name != "" {
			where = fmt.Sprintf("service %q", s.Name)
		}
		switch {
		case s.Name == "":
			return "", nil, fmt.Errorf("%s: missing name", where)
		case !validName(s.Name):
			return "", nil, fmt.Errorf("%s: name must be letters, digits, '-' and '_'", where)
		case seen[s.Name]:
			return "", nil, fmt.Errorf("%s: defined twice", where)
		}
		seen[s.Name] = true
		spec := &agentv1.CommandSpec{Cwd: s.Cwd}
		switch s.Command.Kind {
		case yaml.ScalarNode:
			if strings.TrimSpace(s.Command.Value) == "" {
				return "", nil, fmt.Errorf("%s: empty command", where)
			}
			spec.Argv, spec.Shell = []string{s.Command.Value}, true
		case yaml.SequenceNode:
			for _, n := range s.Command.Content {
				if n.Kind != yaml.ScalarNode {
					return "", nil, fmt.Errorf("%s: line %d: command words must be strings", where, n.Line)
				}
				spec.Argv = append(spec.Argv, n.Value)
			}
			if len(spec.Argv) == 0 || spec.Argv[0] == "" {
				return "", nil, fmt.Errorf("%s: empty command", where)
			}
		case 0:
			return "", nil, fmt.Errorf("%s: missing command", where)
		default:
			return "", nil, fmt.Errorf("%s: command must be a list of words or a shell string", where)
		}
		for k, v := range s.Env {
			if _, _, err := ParseEnvEntry(k + "=" + v); err != nil || strings.Contains(k, "=") {
				return "", nil, fmt.Errorf("%s: env %q: want a non-empty name without '='", where, clip(k))
			}
		}
		if len(s.Env) > 0 {
			spec.Env = s.Env
		}
		specs = append(specs, &agentv1.ServiceSpec{Name: s.Name, Command: spec})
	}
	return f.Session, specs, nil
}

var (
	yamlUnknownField = regexp.MustCompile(`^line (\d+): field (.+) not found in type \S+$`)
	yamlWrongType    = regexp.MustCompile(`^line (\d+): cannot unmarshal !!(\w+)(?: (.*))? into \S+$`)
)

// yamlError rewrites yaml.v3's messages, which name Go types ("field
// servics not found in type cli.servicesFile"), in the file's terms:
// `line 2: unknown field "servics"`. Several errors are joined with "; ".
func yamlError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return errors.New(strings.TrimPrefix(err.Error(), "yaml: "))
	}
	kinds := map[string]string{"str": "a string", "map": "a mapping", "seq": "a list", "int": "a number", "float": "a number", "bool": "a boolean"}
	msgs := make([]string, 0, len(te.Errors))
	for _, e := range te.Errors {
		if m := yamlUnknownField.FindStringSubmatch(e); m != nil {
			e = fmt.Sprintf("line %s: unknown field %q", m[1], m[2])
		} else if m := yamlWrongType.FindStringSubmatch(e); m != nil {
			what := kinds[m[2]]
			if what == "" {
				what = m[2]
			}
			e = fmt.Sprintf("line %s: cannot use %s here", m[1], what)
			if m[3] != "" {
				e = fmt.Sprintf("line %s: cannot use %s (%s) here", m[1], what, clip(m[3]))
			}
		}
		msgs = append(msgs, e)
	}
	return errors.New(strings.Join(msgs, "; "))
}

// validName is the agent's rule for session and service names.
func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func newUpCmd(app *App) *cobra.Command {
	var file, session string
	cmd := &cobra.Command{
		Use:   "up WS -f services.yaml",
		Short: "Start services, each in its own window; re-running changes only what changed",
		Args:  exactArgs(1, "WS"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return usageErrorf("up: give the services file with -f")
			}
			data, err := os.ReadFile(file)
			if err != nil {
				return usageErrorf("%v", err)
			}
			fileSession, specs, err := ParseServices(data)
			if err != nil {
				if strings.HasPrefix(err.Error(), "line ") {
					return usageErrorf("%s %v", file, err) // services.yaml line 3: ...
				}
				return usageErrorf("%s: %v", file, err)
			}
			if session == "" {
				session = fileSession
			}
			asJSON, err := app.JSON()
			if err != nil {
				return err
			}
			agent, ctx, err := app.Agent(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			resp, err := agent.ApplyServices(ctx, &agentv1.ApplyServicesRequest{Session: session, Services: specs})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(app.Stdout, resp)
			}
			return renderServices(app, resp.GetServices(), true)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "services file (YAML)")
	cmd.Flags().StringVar(&session, "session", "", "session holding the services (default: the file's, else services)")
	return cmd
}

func renderServices(a *App, ss []*agentv1.ServiceStatus, withAction bool) error {
	header := []string{"SERVICE", "STATE", "PID", "EXIT", "COMMAND"}
	if withAction {
		header = append(header, "ACTION")
	}
	t := newTable(a.Stdout, header...)
	for _, s := range ss {
		state := strings.ToLower(strings.TrimPrefix(s.GetState().String(), "SERVICE_STATE_"))
		exit := ""
		if s.GetState() == agentv1.ServiceState_SERVICE_STATE_EXITED {
			if s.GetSignal() != 0 {
				exit = signalName(s.GetSignal())
			} else {
				exit = strconv.Itoa(int(s.GetExitCode()))
			}
		}
		row := []string{s.GetName(), state, strconv.Itoa(int(s.GetPid())), exit, clip(formatArgv(s.GetArgv()))}
		if withAction {
			row = append(row, s.GetAction())
		}
		t.row(row...)
	}
	return t.flush()
}

func newPsCmd(app *App) *cobra.Command {
	var session string
	cmd := &cobra.Command{
		Use:   "ps WS",
		Short: "List services and their state",
		Args:  exactArgs(1, "WS"),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON, err := app.JSON()
			if err != nil {
				return err
			}
			agent, ctx, err := app.Agent(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			resp, err := agent.ListServices(ctx, &agentv1.ListServicesRequest{Session: session})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(app.Stdout, resp)
			}
			return renderServices(app, resp.GetServices(), false)
		},
	}
	cmd.Flags().StringVar(&session, "session", "", "session holding the services (default services)")
	return cmd
}

func newLogsCmd(app *App) *cobra.Command {
	var (
		session string
		follow  bool
	)
	cmd := &cobra.Command{
		Use:   "logs WS SERVICE",
		Short: "Print a service's output; with -f, follow it",
		Args:  exactArgs(2, "WS SERVICE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if session == "" {
				session = DefaultServicesSession
			}
			return app.runSessionLogs(cmd.Context(), args[0], &agentv1.PaneTarget{Session: session, Window: args[1]}, follow)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the output live")
	cmd.Flags().StringVar(&session, "session", "", "session holding the services (default services)")
	return cmd
}

func newRestartCmd(app *App) *cobra.Command {
	var session string
	cmd := &cobra.Command{
		Use:   "restart WS SERVICE",
		Short: "Restart one service with its last spec",
		Args:  exactArgs(2, "WS SERVICE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			agent, ctx, err := app.Agent(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			resp, err := agent.RestartService(ctx, &agentv1.RestartServiceRequest{Session: session, Name: args[1]})
			if err != nil {
				return err
			}
			return renderServices(app, []*agentv1.ServiceStatus{resp.GetService()}, false)
		},
	}
	cmd.Flags().StringVar(&session, "session", "", "session holding the services (default services)")
	return cmd
}

func newDownCmd(app *App) *cobra.Command {
	var (
		session string
		grace   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "down WS",
		Short: "Stop every service and remove their session (stopping twice is fine)",
		Args:  exactArgs(1, "WS"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return app.runDown(cmd.Context(), args[0], session, grace)
		},
	}
	cmd.Flags().StringVar(&session, "session", "", "session holding the services (default services)")
	cmd.Flags().DurationVar(&grace, "grace", 0, "time between SIGTERM and SIGKILL (default: the agent's, 5s)")
	return cmd
}

func (a *App) runDown(ctx context.Context, ws, session string, grace time.Duration) error {
	agent, ctx, err := a.Agent(ctx, ws)
	if err != nil {
		return err
	}
	req := &agentv1.StopServicesRequest{Session: session}
	if grace > 0 {
		req.Grace = durationpb.New(grace)
	}
	_, err = agent.StopServices(ctx, req)
	return err
}
