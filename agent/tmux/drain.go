package tmux

import (
	"context"
	"fmt"
)

// drainPipe is a pipe-pane command that reads and discards a pane's
// output. tmux 3.3a destroys a pane whose command exited as soon as it
// reaps the command, without reading what is left in the pty, unless a
// pipe-pane is open (window_pane_destroy_ready, #4807): then it reads the
// pty until FIONREAD is 0 first. Without a pipe, a command that writes
// and exits at once (a failing build, "echo hi") often left a blank
// screen under load: nothing in captures, nothing for followers.
const drainPipe = "exec cat >/dev/null"

// drain gives pane a pipe so that tmux reads all of its output before it
// marks it dead, unless the pane already has one: a Follow's log, a
// session run's log, or a pipe of the user's own, which is left alone.
// Callers start the pane's real command after it.
func (c *Client) drain(ctx context.Context, pane string) error {
	c.logMu.Lock() // ensureLog opens pipes too
	defer c.logMu.Unlock()
	c.bmu.Lock()
	_, logged := c.logs[pane]
	owned := c.runPanes[pane]
	c.bmu.Unlock()
	if logged || owned {
		return nil
	}
	blocks, err := c.Command(ctx, line("display-message", "-p", "-t", quoteWord(pane), quoteWord("#{pane_pipe}")))
	if err != nil {
		return fmt.Errorf("pane %s: %w", pane, err)
	}
	if len(blocks[0].Body) == 1 && string(blocks[0].Body[0]) == "1" {
		return nil
	}
	if _, err := c.Command(ctx, drainLine(pane)); err != nil {
		return fmt.Errorf("pipe pane %s: %w", pane, err)
	}
	return nil
}

func drainLine(pane string) string {
	return line("pipe-pane", "-O", "-t", quoteWord(pane), quoteWord(drainPipe))
}
