package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/spf13/cobra"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

func newAttachCmd(app *App) *cobra.Command {
	return &cobra.Command{
		Use:   "attach WS NAME",
		Short: "Attach this terminal to a tmux session (detach with tmux's key, C-b d)",
		Long: `Attach this terminal to a session on the workspace's tmux server. Every byte
passes through unchanged, so tmux's own keys work, including detach (C-b d);
detaching leaves the session running. The local terminal is in raw mode
while attached and is restored on every way out.`,
		Args: exactArgs(2, "WS NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return app.runAttach(cmd.Context(), args[0], args[1])
		},
	}
}

// terminalReset undoes what a tmux client sets up on the outer terminal,
// for when it could not do so itself: normal attributes, the whole screen
// as scroll region, mouse and focus reporting, bracketed paste and
// application keypad/cursor keys off, the cursor shown, and the main
// screen back from the alternate one.
const terminalReset = "\x1b[0m\x1b[r" +
	"\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1004l\x1b[?2004l" +
	"\x1b[?1l\x1b>\x1b[?25h\x1b[?1049l"

func (a *App) runAttach(ctx context.Context, ws, name string) error {
	inFD, inTTY := a.stdinTerminal()
	outFD := fdOf(a.Stdout)
	if !inTTY {
		return usageErrorf("attach needs a terminal on stdin")
	}
	start := &agentv1.AttachSessionStart{Session: name, Term: a.termName(), Size: &agentv1.TerminalSize{Rows: 24, Cols: 80}}
	if rows, cols, ok := terminalSize(inFD, outFD); ok {
		start.Size = &agentv1.TerminalSize{Rows: rows, Cols: cols}
	}
	agent, ctx, err := a.Agent(ctx, ws)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := agent.AttachSession(ctx)
	if err != nil {
		return err
	}
	var mu sync.Mutex // serialises Send
	send := func(req *agentv1.AttachSessionRequest) error {
		mu.Lock()
		defer mu.Unlock()
		return stream.Send(req)
	}
	if err := send(&agentv1.AttachSessionRequest{Msg: &agentv1.AttachSessionRequest_Start{Start: start}}); err != nil {
		return recvError(stream, err)
	}
	// The first event tells a failed attach (unknown session) from a good
	// one before the terminal is touched.
	first, err := stream.Recv()
	if err != nil {
		return err
	}

	restore, err := rawMode(inFD)
	if err != nil {
		return fmt.Errorf("terminal raw mode: %w", err)
	}
	defer restore()

	// Keys: the reader goroutine may stay blocked in Read after detach; it
	// is owned by the process, which exits right after.
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := a.Stdin.Read(buf)
			if n > 0 {
				if send(&agentv1.AttachSessionRequest{Msg: &agentv1.AttachSessionRequest_Input{Input: append([]byte(nil), buf[:n]...)}}) != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGWINCH, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case s := <-sigs:
				if s != syscall.SIGWINCH {
					// Going away: the session keeps running.
					cancel()
					continue
				}
				if rows, cols, ok := terminalSize(inFD, outFD); ok {
					_ = send(&agentv1.AttachSessionRequest{Msg: &agentv1.AttachSessionRequest_Resize{Resize: &agentv1.TerminalSize{Rows: rows, Cols: cols}}})
				}
			}
		}
	}()
	defer func() {
		signal.Stop(sigs)
		close(done)
		wg.Wait()
	}()

	// On any end but a detach, tmux had no chance to put the terminal
	// back: leave its alternate screen, scroll region, modes and
	// attributes behind us before the mode is restored.
	ended := false
	defer func() {
		if !ended {
			_, _ = io.WriteString(a.Stdout, terminalReset)
		}
		restore()
	}()

	detached := ""
	ev := first
loop:
	for {
		switch e := ev.GetEvent().(type) {
		case *agentv1.AttachSessionResponse_Output:
			if _, err := a.Stdout.Write(e.Output); err != nil {
				return err
			}
		case *agentv1.AttachSessionResponse_Detached:
			detached = e.Detached
			ended = true
			break loop
		}
		ev, err = stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			_, _ = io.WriteString(a.Stdout, terminalReset)
			ended = true
			restore()
			if ctx.Err() != nil {
				return &ExitError{Code: ExitFailure, Msg: "attach ended by a signal; the session keeps running"}
			}
			return a.lostError(err, ws, lostHints{
				during:     "while attached to session " + name,
				controller: fmt.Sprintf("the session keeps running; reattach with: dtmux attach %s %s", ws, name),
				agent:      fmt.Sprintf("tmux sessions outlive the agent; reattach once it is back: dtmux attach %s %s", ws, name),
				removed:    "its sessions ended with it",
			})
		}
	}
	if !ended {
		// The stream ended without a detach.
		_, _ = io.WriteString(a.Stdout, terminalReset)
		ended = true
	}
	restore()
	if detached != "" && detached != "detached" {
		fmt.Fprintf(a.Stderr, "[%s]\n", detached)
	}
	return nil
}
