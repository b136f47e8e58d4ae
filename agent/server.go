// Package agent serves dtmux.agent.v1.AgentService: a thin gRPC layer
// over the run manager (agent/process) and the tmux driver (agent/tmux).
// It converts proto messages and maps domain errors to status codes in
// toStatus; the domain packages know nothing of gRPC.
package agent

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/agent/process"
	"github.com/dtmux/dtmux/agent/tmux"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// Options configure a Server.
type Options struct {
	// Logger is named "agent" by the server.
	Logger hclog.Logger
	// Runs executes and remembers the workspace's runs.
	Runs *process.Manager
	// Workspace is the name the agent serves (DTMUX_WORKSPACE).
	Workspace string
	// Workdir is the workspace directory: relative PutFile paths are
	// resolved against it.
	Workdir string
	// StartedAt is when the agent started (default: New's time).
	StartedAt time.Time
	// TmuxVersion, when set, reports the tmux version for GetAgentInfo,
	// or why tmux is unavailable.
	TmuxVersion func(ctx context.Context) (string, error)
	// Tmux serves the session and service RPCs; nil or failed to start
	// means they answer FailedPrecondition with the reason.
	Tmux *tmux.Manager
	// Isolation lists the resource isolation the host allows, for
	// GetAgentInfo (default: "rlimit").
	Isolation []string
}

// Server implements agentv1.AgentServiceServer. Methods it does not
// override answer Unimplemented.
type Server struct {
	agentv1.UnimplementedAgentServiceServer

	log  hclog.Logger
	runs *process.Manager
	tmux *tmux.Manager
	opts Options

	// stopping ends at Shutdown: streams that follow output end with it.
	stopping context.Context
	stop     context.CancelFunc
}

// Shutdown ends the streams that would otherwise keep a stopping agent
// waiting (session followers, runs followed to their end): they fail with
// Unavailable, "the agent is shutting down". Call it before the server's
// graceful stop.
func (s *Server) Shutdown() { s.stop() }

// streamContext is ctx, cancelled with errShuttingDown at Shutdown. Call
// the cancel function when the stream ends.
func (s *Server) streamContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	unhook := context.AfterFunc(s.stopping, func() { cancel(errShuttingDown) })
	return ctx, func() {
		unhook()
		cancel(nil)
	}
}

// ended is err, or why ctx ended when it did (errShuttingDown).
func ended(ctx context.Context, err error) error {
	if err != nil && errors.Is(context.Cause(ctx), errShuttingDown) {
		return errShuttingDown
	}
	return err
}

// New returns a server. Register it with agentv1.RegisterAgentServiceServer.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.StartedAt.IsZero() {
		o.StartedAt = time.Now()
	}
	if o.Workdir == "" {
		o.Workdir, _ = os.UserHomeDir()
	}
	if len(o.Isolation) == 0 {
		o.Isolation = []string{"rlimit"}
	}
	if o.TmuxVersion == nil && o.Tmux != nil {
		t := o.Tmux
		o.TmuxVersion = func(context.Context) (string, error) { return t.Version(), t.Err() }
	}
	stopping, stop := context.WithCancel(context.Background())
	return &Server{log: o.Logger.Named("agent"), runs: o.Runs, tmux: o.Tmux, opts: o, stopping: stopping, stop: stop}
}
