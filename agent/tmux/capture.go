package tmux

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// CaptureOptions select what Capture reads.
type CaptureOptions struct {
	// HistoryLines of scrollback above the screen.
	HistoryLines int
	// AllHistory takes the whole scrollback.
	AllHistory bool
	// Escapes keeps colour and attribute escape sequences.
	Escapes bool
	// JoinWrapped joins lines tmux wrapped.
	JoinWrapped bool
}

// Capture is a rendered copy of a pane and its state at that moment.
type Capture struct {
	Content         []byte
	CursorX         int
	CursorY         int
	HistorySize     int
	AlternateScreen bool
	Size            Size
	Dead            bool
	// Offset is where the pane's live output continues after the capture.
	Offset uint64
	// Pane and Window are tmux ids.
	Pane, Window string
}

const stateFormat = "#{cursor_x} #{cursor_y} #{history_size} #{alternate_on} #{pane_width} #{pane_height} #{pane_dead}"

// Capture reads a pane's screen and scrollback.
func (m *Manager) Capture(ctx context.Context, t Target, o CaptureOptions) (Capture, error) {
	c, pane, window, err := m.resolve(ctx, t)
	if err != nil {
		return Capture{}, err
	}
	cp, err := c.capture(ctx, pane, o)
	cp.Window = window
	return cp, err
}

// capture runs capture-pane and display on ONE control line: output that
// arrived before the capture's %begin is in the snapshot, output after it
// is new (TMUX.md §4), so Offset is taken at that %begin.
func (c *Client) capture(ctx context.Context, pane string, o CaptureOptions) (Capture, error) {
	buf := c.Buffer(pane)
	words := []string{"capture-pane", "-p"}
	if o.Escapes {
		words = append(words, "-e")
	}
	if o.JoinWrapped {
		words = append(words, "-J")
	}
	switch {
	case o.AllHistory:
		words = append(words, "-S", "-")
	case o.HistoryLines > 0:
		words = append(words, "-S", strconv.Itoa(-o.HistoryLines))
	}
	words = append(words, "-E", "-", "-t", quoteWord(pane), ";",
		"display-message", "-p", "-t", quoteWord(pane), quoteWord(stateFormat))
	var offset uint64
	blocks, err := c.CommandN(ctx, line(words...), 2, func() { offset = buf.End() })
	if err != nil {
		return Capture{}, fmt.Errorf("capture %s: %w", pane, err)
	}
	if len(blocks) != 2 || len(blocks[1].Body) != 1 {
		return Capture{}, fmt.Errorf("capture %s: unexpected reply", pane)
	}
	cp := Capture{Offset: offset, Pane: pane}
	var content bytes.Buffer
	for _, l := range blocks[0].Body {
		content.Write(l)
		content.WriteByte('\n')
	}
	cp.Content = content.Bytes()
	f := strings.Fields(string(blocks[1].Body[0]))
	if len(f) != 7 {
		return Capture{}, fmt.Errorf("capture %s: unexpected state %q", pane, blocks[1].Body[0])
	}
	n := make([]int, 7)
	for i, s := range f {
		n[i], _ = strconv.Atoi(s)
	}
	cp.CursorX, cp.CursorY, cp.HistorySize = n[0], n[1], n[2]
	cp.AlternateScreen = n[3] == 1
	cp.Size = Size{Cols: n[4], Rows: n[5]}
	cp.Dead = n[6] == 1
	if cp.Dead {
		cp.Content = trimDeadScreen(cp.Content)
	}
	return cp, nil
}

// deadBanner is the line tmux writes under a dead pane's output when
// remain-on-exit-format is not empty (always before 3.3), such as "Pane is
// dead (status 9, Fri Nov 27 23:39:52 2026)".
var deadBanner = regexp.MustCompile(`^Pane is dead \(.*\)$`)

// trimDeadScreen drops what follows a dead pane's last output: the
// screen's unused lines and tmux's "Pane is dead" line. The command
// cannot write any more, so nothing of its own is lost.
func trimDeadScreen(b []byte) []byte {
	trim := func(b []byte) []byte {
		end := len(b)
		for end > 0 && (b[end-1] == '\n' || b[end-1] == ' ') {
			end--
		}
		return b[:end]
	}
	b = trim(b)
	if i := bytes.LastIndexByte(b, '\n') + 1; deadBanner.Match(b[i:]) {
		b = trim(b[:i])
	}
	if len(b) == 0 {
		return nil
	}
	return append(b[:len(b):len(b)], '\n')
}
