package agent

import (
	"context"
	"fmt"
	"maps"
	"syscall"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/dtmux/dtmux/agent/process"
	"github.com/dtmux/dtmux/agent/tmux"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// sessions returns the tmux driver, or why sessions are unavailable.
func (s *Server) sessions() (*tmux.Manager, error) {
	if s.tmux == nil {
		return nil, fmt.Errorf("%w: sessions are not served by this agent", tmux.ErrUnsupported)
	}
	if err := s.tmux.Err(); err != nil {
		return nil, err
	}
	return s.tmux, nil
}

func commandFromProto(c *agentv1.CommandSpec) tmux.Command {
	if c == nil {
		return tmux.Command{}
	}
	env := maps.Clone(c.GetEnv())
	if len(c.GetSecretEnv()) > 0 {
		if env == nil {
			env = map[string]string{}
		}
		maps.Copy(env, c.GetSecretEnv())
	}
	return tmux.Command{Argv: c.GetArgv(), Shell: c.GetShell(), Env: env, Cwd: c.GetCwd()}
}

func sizeToProto(z tmux.Size) *agentv1.TerminalSize {
	return &agentv1.TerminalSize{Rows: uint32(z.Rows), Cols: uint32(z.Cols)}
}

func sizeFromProto(z *agentv1.TerminalSize) tmux.Size {
	return tmux.Size{Rows: int(z.GetRows()), Cols: int(z.GetCols())}
}

func targetFromProto(t *agentv1.PaneTarget) tmux.Target {
	return tmux.Target{Session: t.GetSession(), Window: t.GetWindow()}
}

func sessionToProto(in tmux.Session) *agentv1.SessionInfo {
	out := &agentv1.SessionInfo{
		Name:            in.Name,
		Id:              in.ID,
		CreatedAt:       timestamppb.New(in.Created),
		AttachedClients: uint32(in.Attached),
		Size:            sizeToProto(in.Size),
	}
	for _, w := range in.Windows {
		wi := &agentv1.WindowInfo{Index: int32(w.Index), Name: w.Name, Id: w.ID}
		for _, p := range w.Panes {
			pi := &agentv1.PaneInfo{Id: p.ID, Pid: int32(p.PID), Dead: p.Dead, ExitCode: -1,
				CurrentCommand: p.CurrentCommand, Size: sizeToProto(p.Size)}
			if p.Dead {
				pi.ExitCode, pi.Signal = int32(p.Exit.Code), int32(p.Exit.Signal)
			}
			wi.Panes = append(wi.Panes, pi)
		}
		out.Windows = append(out.Windows, wi)
	}
	return out
}

// CreateSession creates a tmux session.
func (s *Server) CreateSession(ctx context.Context, req *agentv1.CreateSessionRequest) (*agentv1.CreateSessionResponse, error) {
	m, err := s.sessions()
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	sess, err := m.CreateSession(ctx, tmux.SessionSpec{
		Name:       req.GetName(),
		Unique:     req.GetUnique(),
		Command:    commandFromProto(req.GetCommand()),
		Size:       sizeFromProto(req.GetSize()),
		WindowName: req.GetWindowName(),
	})
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	return &agentv1.CreateSessionResponse{Session: sessionToProto(sess)}, nil
}

// ListSessions lists sessions with their windows and panes.
func (s *Server) ListSessions(ctx context.Context, req *agentv1.ListSessionsRequest) (*agentv1.ListSessionsResponse, error) {
	m, err := s.sessions()
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	resp := &agentv1.ListSessionsResponse{}
	if req.GetName() != "" {
		sess, err := m.Session(ctx, req.GetName())
		if err != nil {
			return nil, toStatus(s.log, err)
		}
		resp.Sessions = append(resp.Sessions, sessionToProto(sess))
		return resp, nil
	}
	all, err := m.ListSessions(ctx)
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	for _, sess := range all {
		resp.Sessions = append(resp.Sessions, sessionToProto(sess))
	}
	return resp, nil
}

// KillSession kills a session and its processes.
func (s *Server) KillSession(ctx context.Context, req *agentv1.KillSessionRequest) (*agentv1.KillSessionResponse, error) {
	m, err := s.sessions()
	if err == nil {
		err = m.KillSession(ctx, req.GetName())
	}
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	return &agentv1.KillSessionResponse{}, nil
}

// SendInput types text and keys into a pane, literally.
func (s *Server) SendInput(ctx context.Context, req *agentv1.SendInputRequest) (*agentv1.SendInputResponse, error) {
	m, err := s.sessions()
	if err == nil {
		err = m.SendInput(ctx, targetFromProto(req.GetTarget()), tmux.Input{
			Text: []byte(req.GetText()), Data: req.GetData(), Keys: req.GetKeys(), Enter: req.GetEnter(),
		})
	}
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	return &agentv1.SendInputResponse{}, nil
}

// CapturePane reads a pane's screen and scrollback.
func (s *Server) CapturePane(ctx context.Context, req *agentv1.CapturePaneRequest) (*agentv1.CapturePaneResponse, error) {
	m, err := s.sessions()
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	cp, err := m.Capture(ctx, targetFromProto(req.GetTarget()), tmux.CaptureOptions{
		HistoryLines: int(min(req.GetHistoryLines(), 1<<30)), AllHistory: req.GetAllHistory(),
		Escapes: req.GetEscapes(), JoinWrapped: req.GetJoinWrapped(),
	})
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	return &agentv1.CapturePaneResponse{
		Content: cp.Content, CursorX: uint32(cp.CursorX), CursorY: uint32(cp.CursorY),
		HistorySize: uint32(cp.HistorySize), AlternateScreen: cp.AlternateScreen, Size: sizeToProto(cp.Size),
	}, nil
}

func snapshotToProto(cp tmux.Capture) *agentv1.FollowSessionResponse {
	return &agentv1.FollowSessionResponse{Event: &agentv1.FollowSessionResponse_Snapshot{Snapshot: &agentv1.PaneSnapshot{
		Content: cp.Content, CursorX: uint32(cp.CursorX), CursorY: uint32(cp.CursorY),
		Size: sizeToProto(cp.Size), AlternateScreen: cp.AlternateScreen, Offset: cp.Offset,
	}}}
}

// followChunk bounds one PaneOutput message.
const followChunk = 64 << 10

// FollowSession streams a pane's output. The stream reads the pane's
// bounded buffer at its own pace: a slow client gets a gap, never makes
// the agent or tmux hold more.
func (s *Server) FollowSession(req *agentv1.FollowSessionRequest, stream agentv1.AgentService_FollowSessionServer) error {
	ctx, cancel := s.streamContext(stream.Context())
	defer cancel()
	m, err := s.sessions()
	if err != nil {
		return toStatus(s.log, err)
	}
	f, err := m.Follow(ctx, targetFromProto(req.GetTarget()), req.GetSnapshot(), req.GetFromOffset())
	if err != nil {
		return toStatus(s.log, err)
	}
	if f.Snapshot != nil {
		if err := stream.Send(snapshotToProto(*f.Snapshot)); err != nil {
			return err
		}
	}
	for {
		ch := f.Buffer.Next(f.Cursor, followChunk)
		switch {
		case ch.Data != nil:
			err = stream.Send(&agentv1.FollowSessionResponse{Event: &agentv1.FollowSessionResponse_Output{
				Output: &agentv1.PaneOutput{Offset: ch.Offset, Data: ch.Data}}})
		case ch.Gap != nil:
			err = stream.Send(&agentv1.FollowSessionResponse{Event: &agentv1.FollowSessionResponse_Gap{
				Gap: &agentv1.PaneGap{Offset: ch.Gap.Offset, Bytes: ch.Gap.Bytes, Reason: ch.Gap.Reason}}})
			if err == nil && ch.Gap.Reason == tmux.GapPaused {
				// The loss cannot be counted: a new snapshot follows.
				var cp tmux.Capture
				if cp, err = f.Resync(ctx); err != nil {
					return toStatus(s.log, err)
				}
				err = stream.Send(snapshotToProto(cp))
			}
		case ch.Exit != nil:
			// tmux 3.3a can drop a pane's last output at exit: what the
			// pane's log holds beyond the stream comes first.
			if tail := f.Tail(ctx); len(tail) > 0 {
				if err := stream.Send(&agentv1.FollowSessionResponse{Event: &agentv1.FollowSessionResponse_Output{
					Output: &agentv1.PaneOutput{Offset: ch.Offset, Data: tail}}}); err != nil {
					return err
				}
			}
			return stream.Send(&agentv1.FollowSessionResponse{Event: &agentv1.FollowSessionResponse_Exited{
				Exited: &agentv1.PaneExited{ExitCode: int32(ch.Exit.Code), Signal: int32(ch.Exit.Signal)}}})
		case ch.Closed:
			return toStatus(s.log, fmt.Errorf("pane %s closed: %w", f.Pane, tmux.ErrWindowNotFound))
		default:
			select {
			case <-ch.Wait:
			case <-ctx.Done():
				return toStatus(s.log, ended(ctx, ctx.Err()))
			}
		}
		if err != nil {
			return err
		}
	}
}

// RunInSession runs a command in a new window and streams its output and
// the exit status tmux reports. The command lives in its window, not in
// the stream: a client that cancels (dtmux run --wait-for does once its
// pattern shows) or disconnects leaves it running, like a detached run;
// only the timeout (still enforced by the agent) or an explicit kill ends
// it.
func (s *Server) RunInSession(req *agentv1.RunInSessionRequest, stream agentv1.AgentService_RunInSessionServer) error {
	// At Shutdown the command stays in its window, as when the client
	// goes.
	ctx, cancel := s.streamContext(stream.Context())
	defer cancel()
	m, err := s.sessions()
	if err != nil {
		return toStatus(s.log, err)
	}
	// rlimits go through the run manager's limit helper, between tmux's
	// pane helper and the command.
	var wrap func([]string) ([]string, error)
	limits := limitsFromProto(req.GetLimits())
	if limits != (process.Limits{MaxOutputBytes: limits.MaxOutputBytes}) {
		if s.runs == nil {
			return toStatus(s.log, fmt.Errorf("%w: resource limits need the agent's run manager", errInvalid))
		}
		// Applied before any session or window is made, so a refused
		// limit leaves nothing behind.
		wrap = func(argv []string) ([]string, error) { return s.runs.LimitedArgv(limits, argv) }
	}
	timeout, err := duration("timeout", req.GetTimeout())
	if err != nil {
		return toStatus(s.log, err)
	}
	res, err := m.RunInSession(ctx, tmux.RunSpec{
		Session: req.GetSession(), WindowName: req.GetWindowName(), Command: commandFromProto(req.GetCommand()),
		Timeout: timeout, CreateSession: req.GetCreateSession(), CloseWindow: req.GetCloseWindow(), Wrap: wrap,
	}, func(st tmux.RunStarted) error {
		return stream.Send(&agentv1.RunInSessionResponse{Event: &agentv1.RunInSessionResponse_Started{Started: &agentv1.WindowStarted{
			Session: st.Session, Window: st.Window, PaneId: st.Pane, Pid: int32(st.PID)}}})
	}, func(off uint64, data []byte) error {
		for len(data) > 0 {
			n := min(len(data), followChunk)
			if err := stream.Send(&agentv1.RunInSessionResponse{Event: &agentv1.RunInSessionResponse_Output{Output: &agentv1.RunOutput{
				Stream: agentv1.Stream_STREAM_STDOUT, Offset: off, Data: data[:n]}}}); err != nil {
				return err
			}
			off += uint64(n)
			data = data[n:]
		}
		return nil
	})
	if err != nil {
		return toStatus(s.log, ended(ctx, err))
	}
	tr := &agentv1.RunTrailer{
		Reason: agentv1.ExitReason_EXIT_REASON_EXITED, ExitCode: int32(res.Exit.Code), Signal: int32(res.Exit.Signal),
		StdoutBytes: res.Bytes, Duration: durationpb.New(res.Ended.Sub(res.Started)), EndedAt: timestamppb.New(res.Ended),
	}
	switch {
	case res.TimedOut:
		tr.Reason, tr.Detail = agentv1.ExitReason_EXIT_REASON_TIMED_OUT, "wall-clock timeout "+timeout.String()
	case limits.CPUSeconds > 0 && (res.Exit.Signal == int(syscall.SIGXCPU) || res.Exit.Signal == int(syscall.SIGKILL)):
		tr.Reason = agentv1.ExitReason_EXIT_REASON_LIMIT_EXCEEDED
		tr.Detail = fmt.Sprintf("cpu-time limit %ds exceeded", limits.CPUSeconds)
	case res.Exit.Signal != 0:
		tr.Reason = agentv1.ExitReason_EXIT_REASON_SIGNALED
	}
	if res.Exit.Signal != 0 {
		tr.ExitCode = -1
	}
	return stream.Send(&agentv1.RunInSessionResponse{Event: &agentv1.RunInSessionResponse_Trailer{Trailer: tr}})
}

// ResizeSession sets a session's size.
func (s *Server) ResizeSession(ctx context.Context, req *agentv1.ResizeSessionRequest) (*agentv1.ResizeSessionResponse, error) {
	m, err := s.sessions()
	if err == nil {
		err = m.ResizeSession(ctx, req.GetName(), sizeFromProto(req.GetSize()))
	}
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	return &agentv1.ResizeSessionResponse{}, nil
}
