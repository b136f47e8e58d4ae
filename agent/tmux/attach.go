package tmux

import (
	"context"
	"os/exec"
)

// AttachCommand returns a tmux client command attached to a session, to
// be run on a PTY by the caller. The session must exist. Detaching (or
// killing this client) leaves the session running.
func (m *Manager) AttachCommand(ctx context.Context, session, term string) (*exec.Cmd, error) {
	if _, err := m.Session(ctx, session); err != nil {
		return nil, err
	}
	if term == "" {
		term = "xterm-256color"
	}
	// Not CommandContext: the caller owns the process and ends it.
	cmd := exec.Command(m.bin, "-u", "-S", m.sock, "attach-session", "-t", "="+session)
	cmd.Env = append(m.Env(), "TERM="+term)
	cmd.Dir = "/"
	return cmd, nil
}
