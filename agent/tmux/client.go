package tmux

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// deadSubscription is the name of the control-mode subscription that
// reports pane death; it is the safety net behind the pane-died hook and
// the trigger for the SIGCHLD nudge.
const deadSubscription = "dtmux-dead"

// Block is one command's reply.
type Block struct {
	Body [][]byte
	Err  bool
}

type pending struct {
	blocks  int    // blocks expected
	onBegin func() // called in the reader at the first %begin
	begun   bool
	got     []Block
	done    chan []Block // buffered 1
}

// Client is one control-mode client (tmux -C attach) of a session. Its
// reader never blocks on consumers: pane output goes into bounded
// Buffers, command replies into buffered channels.
type Client struct {
	m       *Manager
	session string
	log     hclog.Logger
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	stderr  bytes.Buffer // written by exec until Wait returns
	// attachErr is the attach command's error reply; written by the
	// reader before done is closed.
	attachErr string

	wmu     sync.Mutex // serialises writes with their pending entries
	pmu     sync.Mutex
	pending []*pending // guarded by pmu; in the order the lines were written

	bmu      sync.Mutex
	buffers  map[string]*Buffer  // guarded by bmu; by pane id
	windows  map[string]string   // guarded by bmu; pane id -> window id
	logs     map[string]*paneLog // guarded by bmu; by pane id
	runPanes map[string]bool     // guarded by bmu; panes whose pipe a session run owns
	logMu    sync.Mutex          // serialises ensureLog

	ready   chan struct{}
	done    chan struct{} // closed when the reader has ended
	waited  chan struct{} // closed when the process has been reaped
	wg      sync.WaitGroup
	closeMu sync.Once
}

// startClient attaches a control client to session and waits until it
// may send commands: in 3.3a a command written before the attach
// completes fails with "no current client" (TMUX.md §1).
func (m *Manager) startClient(ctx context.Context, session string) (*Client, error) {
	c := &Client{
		m:        m,
		session:  session,
		log:      m.log.Named("control").With("session", session),
		buffers:  map[string]*Buffer{},
		windows:  map[string]string{},
		logs:     map[string]*paneLog{},
		runPanes: map[string]bool{},
		ready:    make(chan struct{}),
		done:     make(chan struct{}),
		waited:   make(chan struct{}),
	}
	// Not CommandContext: the client outlives the request that started it.
	c.cmd = exec.Command(m.bin, "-u", "-S", m.sock, "-C", "attach-session", "-t", "="+session)
	c.cmd.Env = m.env
	c.cmd.Dir = "/"
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c.cmd.Stderr = &c.stderr
	var err error
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start control client: %w", err)
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.read(stdout)
	}()
	go func() {
		// Owned by the client: ends when the process exits, which Close
		// guarantees.
		<-c.done
		_ = c.cmd.Wait()
		close(c.waited)
	}()
	select {
	case <-c.ready:
	case <-c.done:
		<-c.waited
		msg := c.attachErr
		if msg == "" {
			msg = strings.TrimSpace(c.stderr.String())
		}
		if msg == "" {
			msg = "control client exited"
		}
		return nil, classify(&tmuxError{Msg: msg})
	case <-ctx.Done():
		c.Close()
		return nil, ctx.Err()
	}
	secs := max(int(c.m.cfg.PauseAfter/time.Second), 1)
	if _, err := c.Command(ctx, fmt.Sprintf("refresh-client -f pause-after=%d", secs)); err != nil {
		c.Close()
		return nil, err
	}
	sub := quoteWord(deadSubscription + ":%*:#{pane_dead}/#{pane_dead_status}/#{pane_dead_signal}")
	if _, err := c.Command(ctx, "refresh-client -B "+sub); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Done is closed when the client has ended (detached, or its session is
// gone).
func (c *Client) Done() <-chan struct{} { return c.done }

// Close detaches, drains to EOF and then kills the child: a client that
// is not read but still lives freezes its panes (TMUX.md §1).
func (c *Client) Close() {
	c.closeMu.Do(func() {
		c.wmu.Lock()
		_, _ = io.WriteString(c.stdin, "detach-client\n")
		_ = c.stdin.Close()
		c.wmu.Unlock()
		select {
		case <-c.done:
		case <-time.After(2 * time.Second):
		}
		_ = c.cmd.Process.Kill()
		c.wg.Wait()
		<-c.waited
	})
}

// Command sends one control line and waits for its blocks. A line with
// n ';'-separated commands needs CommandN.
func (c *Client) Command(ctx context.Context, line string) ([]Block, error) {
	return c.CommandN(ctx, line, 1, nil)
}

// CommandN sends a control line that yields n blocks and waits for them.
// onBegin, when set, runs in the reader when the first block begins:
// output seen before it is part of what the command saw. The first
// failing block ends the line (tmux skips the rest of the group).
func (c *Client) CommandN(ctx context.Context, line string, n int, onBegin func()) ([]Block, error) {
	if strings.ContainsAny(line, "\n\r") {
		return nil, fmt.Errorf("%w: control line with a newline", ErrInvalidArgument)
	}
	p := &pending{blocks: n, onBegin: onBegin, done: make(chan []Block, 1)}
	c.wmu.Lock()
	select {
	case <-c.done:
		c.wmu.Unlock()
		return nil, fmt.Errorf("session %q: %w", c.session, errNoClient)
	default:
	}
	c.pmu.Lock()
	c.pending = append(c.pending, p)
	c.pmu.Unlock()
	_, err := io.WriteString(c.stdin, line+"\n")
	c.wmu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("session %q: write control line: %w", c.session, err)
	}
	if c.log.IsTrace() {
		c.log.Trace("command", "line", line)
	}
	select {
	case blocks := <-p.done:
		for _, b := range blocks {
			if b.Err {
				msg := string(bytes.Join(b.Body, []byte("; ")))
				return blocks, classify(&tmuxError{Msg: msg})
			}
		}
		return blocks, nil
	case <-c.done:
		// The reply may have raced with the end.
		select {
		case blocks := <-p.done:
			return blocks, nil
		default:
		}
		return nil, fmt.Errorf("session %q: %w", c.session, ErrSessionNotFound)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Buffer returns the output buffer of a pane, creating it.
func (c *Client) Buffer(pane string) *Buffer {
	c.bmu.Lock()
	defer c.bmu.Unlock()
	b := c.buffers[pane]
	if b == nil {
		b = newBuffer(c.m.cfg.BufferBytes)
		c.buffers[pane] = b
		select {
		case <-c.done:
			b.close()
		default:
		}
	}
	return b
}

// ownPipe marks a pane whose pipe-pane a session run owns (or no longer).
func (c *Client) ownPipe(pane string, owned bool) {
	c.bmu.Lock()
	defer c.bmu.Unlock()
	if owned {
		c.runPanes[pane] = true
	} else {
		delete(c.runPanes, pane)
	}
}

// setWindow records which window a pane is in, so that closing the
// window closes the pane's buffer.
func (c *Client) setWindow(pane, window string) {
	c.bmu.Lock()
	defer c.bmu.Unlock()
	c.windows[pane] = window
}

func (c *Client) read(r io.Reader) {
	defer func() {
		close(c.done)
		c.pmu.Lock()
		c.pending = nil
		c.pmu.Unlock()
		c.bmu.Lock()
		for _, b := range c.buffers {
			b.close()
		}
		c.bmu.Unlock()
	}()
	br := bufio.NewReaderSize(r, 64<<10)
	var p Parser
	attached := false // saw the flags-0 attach block
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			line = bytes.TrimSuffix(line, []byte{'\n'})
			ev := p.Line(line)
			switch ev.Kind {
			case EventBegin:
				if ev.Flags&1 == 1 {
					c.begin()
				}
			case EventBlock:
				if ev.Flags&1 == 1 {
					c.block(Block{Body: ev.Body, Err: ev.Err})
				} else if !attached {
					attached = true
					if ev.Err {
						c.attachErr = string(bytes.Join(ev.Body, []byte("; ")))
					}
				}
			case EventOutput:
				b := c.Buffer(ev.Pane)
				b.append(ev.Data)
				c.bmu.Lock()
				c.trimLog(ev.Pane, b)
				c.bmu.Unlock()
			case EventNotification:
				if ev.Name == "session-changed" && attached {
					select {
					case <-c.ready:
					default:
						close(c.ready)
					}
				}
				c.notification(ev.Name, ev.Args)
			case EventHookLine:
				if c.log.IsTrace() {
					c.log.Trace("hook line", "line", string(ev.Line))
				}
			}
		}
		if err != nil {
			return
		}
	}
}

func (c *Client) begin() {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	if len(c.pending) == 0 {
		return
	}
	p := c.pending[0]
	if !p.begun {
		p.begun = true
		if p.onBegin != nil {
			p.onBegin()
		}
	}
}

func (c *Client) block(b Block) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	if len(c.pending) == 0 {
		c.log.Debug("reply without a command")
		return
	}
	p := c.pending[0]
	p.got = append(p.got, b)
	if b.Err || len(p.got) >= p.blocks {
		c.pending = c.pending[1:]
		p.done <- p.got
	}
}

func (c *Client) notification(name, args string) {
	switch name {
	case "pause":
		pane := strings.TrimSpace(args)
		c.Buffer(pane).pause()
		c.log.Debug("pane paused by flow control", "pane", pane)
		// Resume at once; followers resync by snapshot. Never from the
		// reader itself: the reply must be read by it.
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, _ = c.Command(ctx, "refresh-client -A "+quoteWord(pane+":continue"))
		}()
	case "subscription-changed":
		// dtmux-dead $S @W IDX %P : VALUE
		head, value, ok := strings.Cut(args, " : ")
		f := strings.Fields(head)
		if !ok || len(f) < 5 || f[0] != deadSubscription {
			return
		}
		c.paneState(f[4], value)
	case "window-close", "unlinked-window-close":
		w := strings.TrimSpace(args)
		c.bmu.Lock()
		c.removeLogs(w)
		for pane, win := range c.windows {
			if win == w {
				if b := c.buffers[pane]; b != nil {
					b.close()
				}
				delete(c.buffers, pane)
				delete(c.windows, pane)
			}
		}
		c.bmu.Unlock()
	case "exit":
		c.log.Debug("control client exit", "reason", args)
	}
}

// paneState applies a "dead/status/signal" value.
func (c *Client) paneState(pane, value string) {
	e, dead, known := parseDead(value)
	switch {
	case !dead:
		c.Buffer(pane).clearExit()
	case !known:
		// 3.3a lost SIGCHLD: dead with neither status nor signal.
		c.m.nudge()
	default:
		c.Buffer(pane).setExit(e)
	}
}

// parseDead parses "#{pane_dead}/#{pane_dead_status}/#{pane_dead_signal}".
func parseDead(value string) (e PaneExit, dead, known bool) {
	f := strings.Split(strings.TrimSpace(value), "/")
	if len(f) != 3 || f[0] != "1" {
		return e, false, false
	}
	e.Code, e.Signal = -1, 0
	if f[1] != "" {
		if _, err := fmt.Sscanf(f[1], "%d", &e.Code); err == nil {
			return e, true, true
		}
	}
	if f[2] != "" {
		if _, err := fmt.Sscanf(f[2], "%d", &e.Signal); err == nil {
			return e, true, true
		}
	}
	return e, true, false
}
