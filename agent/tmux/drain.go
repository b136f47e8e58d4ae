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

func drainLine(pane string) string {
	return line("pipe-pane", "-O", "-t", quoteWord(pane), quoteWord(drainPipe))
}

// respawn sends respawn, a respawn-pane line for pane, and gives the pane
// the drain pipe unless it has a pipe already: a Follow's log, a session
// run's, or a pipe of the user's own, which is left alone. The pipe is
// opened on the same control line, right after the respawn: tmux runs a
// line's commands before it handles any event, so the new command cannot
// be reaped before its pipe is open, and pipe-pane refuses a dead pane, as
// the pane may be before the respawn.
func (c *Client) respawn(ctx context.Context, pane, respawn string) error {
	c.logMu.Lock() // ensureLog opens pipes too
	defer c.logMu.Unlock()
	c.bmu.Lock()
	_, logged := c.logs[pane]
	owned := c.runPanes[pane]
	c.bmu.Unlock()
	piped := logged || owned
	if !piped {
		blocks, err := c.Command(ctx, line("display-message", "-p", "-t", quoteWord(pane), quoteWord("#{pane_pipe}")))
		if err != nil {
			return fmt.Errorf("pane %s: %w", pane, err)
		}
		piped = len(blocks[0].Body) == 1 && string(blocks[0].Body[0]) == "1"
	}
	defer c.m.nudgeSoon()
	if piped {
		_, err := c.Command(ctx, respawn)
		return err
	}
	_, err := c.CommandN(ctx, respawn+" ; "+drainLine(pane), 2, nil)
	return err
}
