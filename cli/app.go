// Package cli is the dtmux command line: cobra commands that parse flags,
// call the controller over gRPC and render what comes back. It holds no
// business logic; the agent and the controller do the work.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/term"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/dtmux/dtmux/internal/auth"
	"github.com/dtmux/dtmux/internal/transport"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// WorkspaceMetadataKey is the request metadata key the controller routes
// AgentService calls by.
const WorkspaceMetadataKey = "dtmux-workspace"

// App is what every command shares: the standard streams, the global
// flags and a controller connection dialled on first use. Commands get it
// from their constructor (func(*App) *cobra.Command).
type App struct {
	// Stdin, Stdout and Stderr are the process's streams (replaceable in
	// tests). When Stdin is an *os.File on a terminal, exec and attach
	// treat it as one.
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads the environment (os.Getenv unless a test sets it).
	Getenv func(string) string

	// Global flags.
	controller string // --controller
	tokenFile  string // --token-file
	output     string // -o/--output

	mu   sync.Mutex        // guards the fields below
	addr transport.Address // resolved controller address, once dialled
	cc   *grpc.ClientConn
}

// NewApp returns an App on the process's own streams and environment.
func NewApp() *App {
	return &App{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
}

// ControllerAddress resolves where the controller is: --controller, else
// $DTMUX_CONTROLLER, else the socket in $DTMUX_STATE_DIR, else in
// $XDG_STATE_HOME/dtmux, else in ~/.local/state/dtmux.
func (a *App) ControllerAddress() (transport.Address, error) {
	s := a.controller
	if s == "" {
		s = a.Getenv("DTMUX_CONTROLLER")
	}
	if s == "" {
		s = "unix://" + filepath.Join(a.stateDir(), "controller.sock")
	}
	addr, err := transport.ParseAddress(s)
	if err != nil {
		return transport.Address{}, usageErrorf("controller: %v", err)
	}
	return addr, nil
}

// stateDir is the controller's default state directory, as the
// controller computes it.
func (a *App) stateDir() string {
	if d := a.Getenv("DTMUX_STATE_DIR"); d != "" {
		return d
	}
	if d := a.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "dtmux")
	}
	home := a.Getenv("HOME")
	if home == "" {
		home, _ = os.UserHomeDir()
	}
	return filepath.Join(home, ".local", "state", "dtmux")
}

// Conn returns the controller connection, dialling it on first use. A unix
// socket that does not exist is reported plainly, before any call.
func (a *App) Conn() (*grpc.ClientConn, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cc != nil {
		return a.cc, nil
	}
	addr, err := a.ControllerAddress()
	if err != nil {
		return nil, err
	}
	if addr.Network == "unix" {
		if _, err := os.Stat(addr.Addr); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no controller at %s: start one with `dtmux-controller`", addr)
		}
	}
	var dc transport.DialConfig
	tf := a.tokenFile
	if tf == "" {
		tf = a.Getenv("DTMUX_TOKEN_FILE")
	}
	if tf != "" {
		tok, err := auth.LoadTokenFile(tf)
		if err != nil {
			return nil, usageErrorf("%v", err)
		}
		dc.Token = tok
	}
	cc, err := transport.Dial(addr, dc)
	if err != nil {
		return nil, err
	}
	a.addr, a.cc = addr, cc
	return cc, nil
}

// Close closes the controller connection if one was dialled.
func (a *App) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cc != nil {
		a.cc.Close()
		a.cc = nil
	}
}

// Workspaces is the controller's WorkspaceService.
func (a *App) Workspaces() (controllerv1.WorkspaceServiceClient, error) {
	cc, err := a.Conn()
	if err != nil {
		return nil, err
	}
	return controllerv1.NewWorkspaceServiceClient(cc), nil
}

// Fleet is the controller's FleetService.
func (a *App) Fleet() (controllerv1.FleetServiceClient, error) {
	cc, err := a.Conn()
	if err != nil {
		return nil, err
	}
	return controllerv1.NewFleetServiceClient(cc), nil
}

// Agent returns the AgentService of workspace ws (through the controller)
// and a context whose calls are routed to it.
func (a *App) Agent(ctx context.Context, ws string) (agentv1.AgentServiceClient, context.Context, error) {
	if ws == "" {
		return nil, ctx, usageErrorf("empty workspace name")
	}
	cc, err := a.Conn()
	if err != nil {
		return nil, ctx, err
	}
	return agentv1.NewAgentServiceClient(cc), WithWorkspace(ctx, ws), nil
}

// WithWorkspace routes the AgentService calls made with ctx to workspace
// ws.
func WithWorkspace(ctx context.Context, ws string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, WorkspaceMetadataKey, ws)
}

// JSON reports whether -o json was asked for; any value but text and json
// is a usage error.
func (a *App) JSON() (bool, error) {
	switch a.output {
	case "", "text":
		return false, nil
	case "json":
		return true, nil
	default:
		return false, usageErrorf("unknown output format %q (want text or json)", a.output)
	}
}

// stdinTerminal reports whether stdin is a terminal, and its descriptor.
func (a *App) stdinTerminal() (int, bool) {
	f, ok := a.Stdin.(*os.File)
	if !ok {
		return -1, false
	}
	fd := int(f.Fd())
	return fd, term.IsTerminal(fd)
}

// stdinPiped reports whether stdin holds input that a command reading
// none would drop unread: bytes waiting in a pipe or socket, a non-empty
// file, or a reader that is not a file and holds bytes (tests). A
// terminal, /dev/null, or a pipe with nothing in it (cron, CI runners,
// ssh without input) does not count.
func (a *App) stdinPiped() bool {
	f, ok := a.Stdin.(*os.File)
	if !ok {
		if l, ok := a.Stdin.(interface{ Len() int }); ok {
			return l.Len() > 0
		}
		return a.Stdin != nil
	}
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	switch m := fi.Mode(); {
	case m&os.ModeCharDevice != 0:
		return false
	case m.IsRegular():
		return fi.Size() > 0
	default:
		return bytesWaiting(f)
	}
}

// stderrTerminal reports whether stderr is a terminal.
func (a *App) stderrTerminal() bool {
	f, ok := a.Stderr.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
