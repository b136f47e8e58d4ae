package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// lostProbeTimeout bounds the call that finds out what a broken stream
// lost: the controller answers it at once when it is up.
const lostProbeTimeout = 3 * time.Second

// lostHints says, for a stream that broke after it started, what the
// user should know and do, depending on what went away.
type lostHints struct {
	// during names the activity: "during run r1", "while attached to
	// session dbg".
	during string
	// controller is the advice when the controller went away; agent when
	// the workspace's agent did (the controller is still up); removed
	// when the workspace was removed or stopped.
	controller, agent, removed string
}

// isLostStream reports whether err, which ended a stream that had
// started, means a connection on the way went away (the controller, the
// agent, or the workspace) rather than a failure of the request itself.
func isLostStream(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.Unavailable, codes.Canceled, codes.Aborted:
		return true
	case codes.Internal, codes.Unknown:
		m := st.Message()
		return strings.Contains(m, "EOF") || strings.Contains(m, "RST_STREAM") || strings.Contains(m, "stream terminated") || strings.Contains(m, "transport")
	}
	return false
}

// lostError turns err, which broke a started stream on workspace ws, into
// one line saying what was lost and what to do, exit 255. It asks the
// controller about ws to tell a lost controller from a lost agent and a
// removed or stopped workspace. Other errors are returned as they are.
func (a *App) lostError(err error, ws string, h lostHints) error {
	if !isLostStream(err) {
		return err
	}
	what, advice := "lost the connection to the controller", h.controller
	during := h.during + " on " + ws
	if c, cerr := a.Workspaces(); cerr == nil {
		ctx, cancel := context.WithTimeout(context.Background(), lostProbeTimeout)
		resp, gerr := c.GetWorkspace(ctx, &controllerv1.GetWorkspaceRequest{Name: ws})
		cancel()
		switch {
		case status.Code(gerr) == codes.NotFound:
			what, advice = fmt.Sprintf("workspace %s was removed", ws), h.removed
		case gerr != nil:
			// The controller itself is gone (or not answering).
		case resp.GetWorkspace().GetState() != controllerv1.WorkspaceState_WORKSPACE_STATE_STARTED:
			state := strings.ToLower(strings.TrimPrefix(resp.GetWorkspace().GetState().String(), "WORKSPACE_STATE_"))
			what, advice = fmt.Sprintf("workspace %s went away (%s)", ws, state), h.removed
		default:
			what, advice = fmt.Sprintf("lost the connection to workspace %s's agent", ws), h.agent
		}
		if gerr == nil || status.Code(gerr) == codes.NotFound {
			during = h.during // the workspace is named already
		}
	}
	msg := what + " " + during
	if advice != "" {
		msg += " (" + advice + ")"
	}
	return &ExitError{Code: ExitFailure, Msg: msg}
}

// agentAway reports whether the controller answers and says ws is
// started or coming back (a local workspace whose agent died is being
// restarted), so that a follower that cannot reach its agent yet waits
// for it, as tail -F waits for its file, rather than give up at once.
func (a *App) agentAway(ws string) bool {
	c, err := a.Workspaces()
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), lostProbeTimeout)
	defer cancel()
	resp, err := c.GetWorkspace(ctx, &controllerv1.GetWorkspaceRequest{Name: ws})
	st := resp.GetWorkspace().GetState()
	return err == nil && (st == controllerv1.WorkspaceState_WORKSPACE_STATE_PENDING || st == controllerv1.WorkspaceState_WORKSPACE_STATE_STARTED)
}

// waitingNote is what a follower says when it waits for an agent it could
// not reach yet.
func waitingNote(ws string, err error) string {
	return fmt.Sprintf("dtmux: cannot reach the agent of workspace %s yet (%s); waiting for it for up to %s\n", ws, status.Convert(err).Message(), reattachFor)
}
