package tmux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dtmux/dtmux/internal/procfs"
)

// paneLog is a pipe-pane copy of a followed pane's output. tmux 3.3a
// drops the last output of a pane that exits (#4807: the pty is not
// drained, and %output queued for a dead pane is discarded), so a Follow
// that reports an exit first takes the tail %output lost from the log.
// An active pipe also makes tmux drain the pty before the pane dies, as
// far as FIONREAD tells: bytes the kernel has not yet pushed to the line
// discipline when tmux reaps the command (seen under heavy load) are
// read by nobody, and are missing from the log as from %output.
type paneLog struct {
	path, pidFile string
	// base is the Buffer offset of the log's first byte: the pipe was
	// opened between the %begin and %end of its command, so output seen
	// before that %begin is not in the log and output after it is.
	base uint64
	// pauses is the Buffer's pause count when the pipe opened: after a
	// pause (tmux discarded output) the offsets no longer line up.
	pauses int
	// punched is how much of the log's head was freed (below the
	// Buffer's start nobody reads it again).
	punched uint64
}

// logSettleTimeout bounds the wait for a pipe's cat to write what tmux
// gave it once the pane is dead. It is normally a few milliseconds; the
// bound is generous because giving up early loses the tail, and a
// loaded machine can keep cat off the CPU for seconds.
const logSettleTimeout = 10 * time.Second

// punchEvery is how much evicted output a log keeps on disk before its
// head is freed.
const punchEvery = 4 << 20

// ensureLog starts a log for pane unless one runs, the pane is dead, or a
// session run owns its pipe. A log left by an earlier agent is replaced.
func (c *Client) ensureLog(ctx context.Context, pane string) {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	c.bmu.Lock()
	_, have := c.logs[pane]
	owned := c.runPanes[pane]
	c.bmu.Unlock()
	if have || owned {
		return
	}
	blocks, err := c.Command(ctx, line("display-message", "-p", "-t", quoteWord(pane), quoteWord("#{pane_dead}")))
	if err != nil || len(blocks[0].Body) != 1 || string(blocks[0].Body[0]) != "0" {
		return
	}
	prefix := filepath.Join(c.m.cfg.StateDir, "logs", "pane-"+strings.TrimPrefix(pane, "%")+"-")
	l := &paneLog{path: prefix + randomSuffix() + ".log"}
	l.pidFile = l.path + ".pid"
	pipe := fmt.Sprintf("echo $$ > %s; exec cat > %s", shellQuote(l.pidFile), shellQuote(l.path))
	pipe = strings.ReplaceAll(escapeFormat(pipe), "%", "%%")
	buf := c.Buffer(pane)
	_, err = c.CommandN(ctx, line("pipe-pane", "-O", "-t", quoteWord(pane), quoteWord(pipe)), 1, func() {
		buf.mu.Lock()
		l.base, l.pauses = buf.start+uint64(len(buf.data)), buf.nPause
		l.punched = l.base
		buf.mu.Unlock()
	})
	if err != nil {
		c.log.Debug("pipe-pane for the output tail", "pane", pane, "error", err)
		return
	}
	// Logs of earlier pipes of this pane (an earlier agent's) are done.
	if old, _ := filepath.Glob(prefix + "*"); len(old) > 0 {
		for _, f := range old {
			if f != l.path && f != l.pidFile {
				_ = os.Remove(f)
			}
		}
	}
	c.bmu.Lock()
	c.logs[pane] = l
	c.bmu.Unlock()
}

// trimLog frees the log's head below the Buffer's start, so that a long
// followed pane does not fill the disk. Callers hold bmu; it runs in the
// reader, so it only acts every punchEvery bytes.
func (c *Client) trimLog(pane string, b *Buffer) {
	l := c.logs[pane]
	if l == nil {
		return
	}
	b.mu.Lock()
	start := b.start
	b.mu.Unlock()
	if start < l.punched+punchEvery {
		return
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	// PUNCH_HOLE keeps offsets (and the file size) and frees the blocks.
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, int64(start-l.base)); err == nil {
		l.punched = start
	}
}

// removeLogs deletes the logs of panes in window (every pane when window
// is empty). Callers hold bmu.
func (c *Client) removeLogs(window string) {
	for pane, l := range c.logs {
		if window == "" || c.windows[pane] == window {
			_ = os.Remove(l.path)
			_ = os.Remove(l.pidFile)
			delete(c.logs, pane)
		}
	}
}

// Tail returns, once the pane has died, the output that its log holds
// beyond the cursor (what tmux dropped from %output at exit), and moves
// the cursor past it. It returns nothing when the pane has no log that
// lines up with the stream.
func (f *Follow) Tail(ctx context.Context) []byte {
	f.c.bmu.Lock()
	l := f.c.logs[f.Pane]
	f.c.bmu.Unlock()
	if l == nil {
		return nil
	}
	f.Buffer.mu.Lock()
	aligned := f.Buffer.nPause == l.pauses
	f.Buffer.mu.Unlock()
	if !aligned || f.Cursor.Offset < l.base {
		return nil
	}
	// The pane is dead, so tmux drained its pty into the pipe; wait until
	// cat has written it all.
	deadline := time.Now().Add(logSettleTimeout)
	for settled := 0; settled < 2 && time.Now().Before(deadline) && ctx.Err() == nil; {
		if pipeDrained(l.pidFile) {
			settled++
		} else {
			settled = 0
		}
		time.Sleep(2 * time.Millisecond)
	}
	file, err := os.Open(l.path)
	if err != nil {
		return nil
	}
	defer file.Close()
	if _, err := file.Seek(int64(f.Cursor.Offset-l.base), io.SeekStart); err != nil {
		return nil
	}
	tail, _ := io.ReadAll(io.LimitReader(file, int64(f.c.m.cfg.BufferBytes)))
	f.Cursor.Offset += uint64(len(tail))
	return tail
}

// pipeDrained reports whether the pipe-pane cat whose pid is in pidFile
// has written everything tmux gave it. The pane is dead, so tmux has
// already pushed all of its output into the pipe (a socket pair: its
// queue cannot be read through /proc); cat has written all it read once it
// sleeps in read on that empty socket again, or has exited. A kernel that
// hides wait channels falls back to /proc/PID/syscall (read on fd 0).
func pipeDrained(pidFile string) bool {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return false
	}
	st, err := procfs.ReadStat(pid)
	if errors.Is(err, procfs.ErrMalformed) {
		return false
	}
	if err != nil {
		return true // cat is gone: it wrote all it could
	}
	switch st.State {
	case 'Z', 'X':
		return true
	case 'S':
	default:
		return false // running or writing
	}
	proc := "/proc/" + strconv.Itoa(pid)
	if w, err := os.ReadFile(proc + "/wchan"); err == nil {
		switch string(w) {
		case "unix_stream_read_generic", "unix_stream_data_wait", "pipe_read", "pipe_wait", "pipe_wait_readable":
			return true
		case "", "0":
		default:
			return false
		}
	}
	sc, err := os.ReadFile(proc + "/syscall")
	return err == nil && strings.HasPrefix(string(sc), "0 0x0 ")
}
