package agent

import (
	"errors"
	"fmt"
	"io"

	"github.com/creack/pty"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// AttachSession runs `tmux attach` for the session on a PTY and passes
// raw bytes both ways. When the client goes away the tmux client is
// killed, which detaches it: the session keeps running.
func (s *Server) AttachSession(stream agentv1.AgentService_AttachSessionServer) error {
	ctx := stream.Context()
	m, err := s.sessions()
	if err != nil {
		return toStatus(s.log, err)
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return toStatus(s.log, fmt.Errorf("%w: the first AttachSession message must be start", errInvalid))
	}
	cmd, err := m.AttachCommand(ctx, start.GetSession(), start.GetTerm())
	if err != nil {
		return toStatus(s.log, err)
	}
	ws := &pty.Winsize{Rows: uint16(max(min(start.GetSize().GetRows(), 10000), 1)), Cols: uint16(max(min(start.GetSize().GetCols(), 10000), 1))}
	if start.GetSize() == nil {
		ws.Rows, ws.Cols = 24, 80
	}
	ptmx, err := pty.StartWithSize(cmd, ws)
	if err != nil {
		return toStatus(s.log, fmt.Errorf("start tmux attach: %w", err))
	}
	defer ptmx.Close()
	exited := make(chan struct{})
	go func() { // owned: ends when the tmux client exits, which the defers below ensure
		_ = cmd.Wait()
		close(exited)
	}()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
	}()
	// Client → PTY. Recv unblocks when the handler returns (the stream's
	// context ends), so this goroutine ends with the call.
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				_ = cmd.Process.Kill()
				return
			}
			switch msg := req.GetMsg().(type) {
			case *agentv1.AttachSessionRequest_Input:
				if _, err := ptmx.Write(msg.Input); err != nil {
					return
				}
			case *agentv1.AttachSessionRequest_Resize:
				_ = pty.Setsize(ptmx, &pty.Winsize{Rows: uint16(max(min(msg.Resize.GetRows(), 10000), 1)), Cols: uint16(max(min(msg.Resize.GetCols(), 10000), 1))})
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := ptmx.Read(buf)
		if n > 0 {
			if serr := stream.Send(&agentv1.AttachSessionResponse{Event: &agentv1.AttachSessionResponse_Output{Output: append([]byte(nil), buf[:n]...)}}); serr != nil {
				return serr
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() != nil {
				return toStatus(s.log, ctx.Err())
			}
			return stream.Send(&agentv1.AttachSessionResponse{Event: &agentv1.AttachSessionResponse_Detached{Detached: "detached"}})
		}
	}
}
