package tmux

import (
	"context"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Input is what SendInput types, in this order.
type Input struct {
	// Text is sent literally, byte for byte.
	Text []byte
	// Data is raw bytes (NUL allowed), sent literally.
	Data []byte
	// Keys are key names ("Enter", "C-c", "Up", "F1"...).
	Keys []string
	// Enter presses Enter last.
	Enter bool
}

const (
	// sendChunk bounds the raw bytes of one send-keys line.
	sendChunk = 4 << 10
	// pasteThreshold: larger inputs go through a paste buffer.
	pasteThreshold = 64 << 10
)

// keyNames are the key names tmux knows (key-string.c of 3.3a), lower
// case: tmux matches them without regard to case. The mouse keys, Any,
// None and UserN are left out: they mean nothing to send-keys.
var keyNames = map[string]bool{
	"f1": true, "f2": true, "f3": true, "f4": true, "f5": true, "f6": true,
	"f7": true, "f8": true, "f9": true, "f10": true, "f11": true, "f12": true,
	"ic": true, "insert": true, "dc": true, "delete": true, "home": true, "end": true,
	"npage": true, "pagedown": true, "pgdn": true, "ppage": true, "pageup": true, "pgup": true,
	"tab": true, "btab": true, "space": true, "bspace": true, "enter": true, "escape": true,
	"up": true, "down": true, "left": true, "right": true,
	"kp/": true, "kp*": true, "kp-": true, "kp+": true, "kp.": true, "kpenter": true,
	"kp0": true, "kp1": true, "kp2": true, "kp3": true, "kp4": true,
	"kp5": true, "kp6": true, "kp7": true, "kp8": true, "kp9": true,
}

// ctrlUnknown are the characters tmux 3.3a has no control key for: C-$
// is no key, and send-keys would type the three characters instead.
const ctrlUnknown = "\"$%&*{|}~"

// ValidKey reports whether s is a key name tmux knows, by tmux's own
// grammar: optional modifiers (C-, M-, S-, or a leading ^ for Ctrl), then
// a key name from keyNames or a single printable character. tmux types
// anything else as literal text, so "Entr" would arrive as five letters;
// here it is an error instead.
func ValidKey(s string) error {
	bad := func(why string) error {
		return fmt.Errorf("%w: key %q: %s (want a name such as Enter, Escape, Tab, BSpace, Up, F1, KPEnter, "+
			"or one character, after optional C-, M-, S- modifiers)", ErrInvalidArgument, s, why)
	}
	k, ctrl := s, false
	if len(k) > 1 && k[0] == '^' {
		k, ctrl = k[1:], true
	}
	for len(k) > 1 && k[1] == '-' {
		switch k[0] {
		case 'C', 'c':
			ctrl = true
		case 'M', 'm', 'S', 's':
		default:
			return bad(fmt.Sprintf("unknown modifier %q", k[:2]))
		}
		k = k[2:]
	}
	if k == "" {
		return bad("no key after the modifiers")
	}
	if keyNames[strings.ToLower(k)] {
		return nil
	}
	r, n := utf8.DecodeRuneInString(k)
	if n != len(k) {
		return bad("unknown key name")
	}
	switch {
	case r == utf8.RuneError:
		return bad("not UTF-8")
	case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
		return bad("a control character (use its name, such as C-a or Enter)")
	case r == ' ':
		return bad("a bare space (use Space)")
	case ctrl && r < 0x80 && strings.ContainsRune(ctrlUnknown, r):
		return bad("no control key for this character")
	}
	return nil
}

// SendInput types into a pane. Nothing is parsed as a tmux command or a
// shell word: text goes as send-keys -l with every unsafe byte escaped,
// NUL through send-keys -H, large input through a paste buffer.
func (m *Manager) SendInput(ctx context.Context, t Target, in Input) error {
	for _, k := range in.Keys {
		if err := ValidKey(k); err != nil {
			return err
		}
	}
	c, pane, _, err := m.resolve(ctx, t)
	if err != nil {
		return err
	}
	// tmux drops input to a dead pane without a word: say so instead.
	blocks, err := c.Command(ctx, line("display-message", "-p", "-t", quoteWord(pane),
		quoteWord("#{pane_dead}/#{pane_dead_status}/#{pane_dead_signal}")))
	if err != nil {
		return fmt.Errorf("send input: %w", err)
	}
	if len(blocks) == 1 && len(blocks[0].Body) == 1 {
		if e, dead, known := parseDead(string(blocks[0].Body[0])); dead {
			if !known {
				m.nudge()
			}
			return &PaneDeadError{Pane: pane, Session: t.Session, Exit: e, Known: known}
		}
	}
	for _, part := range [][]byte{in.Text, in.Data} {
		if err := m.sendBytes(ctx, c, pane, part); err != nil {
			return err
		}
	}
	keys := in.Keys
	if in.Enter {
		keys = append(keys[:len(keys):len(keys)], "Enter")
	}
	if len(keys) > 0 {
		words := []string{"send-keys", "-t", quoteWord(pane), "--"}
		for _, k := range keys {
			// A key may be '#', ';' or a quote: one quoted word each.
			words = append(words, quoteWord(k))
		}
		if _, err := c.Command(ctx, line(words...)); err != nil {
			return fmt.Errorf("send keys: %w", err)
		}
	}
	return nil
}

func (m *Manager) sendBytes(ctx context.Context, c *Client, pane string, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	if len(data) > pasteThreshold {
		return m.paste(ctx, c, pane, data)
	}
	for len(data) > 0 {
		if data[0] == 0 {
			// The argument of a command ends at a NUL (TMUX.md §3).
			n := 0
			for n < len(data) && n < 256 && data[n] == 0 {
				n++
			}
			hex := strings.TrimSpace(strings.Repeat("00 ", n))
			if _, err := c.Command(ctx, line("send-keys", "-t", quoteWord(pane), "-H", hex)); err != nil {
				return fmt.Errorf("send input: %w", err)
			}
			data = data[n:]
			continue
		}
		n := 0
		for n < len(data) && n < sendChunk && data[n] != 0 {
			n++
		}
		// Do not cut a UTF-8 sequence between two send-keys.
		if n < len(data) && data[n] != 0 {
			for k := n; k > n-4 && k > 0; k-- {
				if data[k]&0xC0 != 0x80 {
					if k > 0 {
						n = k
					}
					break
				}
			}
		}
		if _, err := c.Command(ctx, line("send-keys", "-l", "-t", quoteWord(pane), "--", quoteWord(string(data[:n])))); err != nil {
			return fmt.Errorf("send input: %w", err)
		}
		data = data[n:]
	}
	return nil
}

// paste loads data into a buffer with an exec'd load-buffer (stdin keeps
// NULs) and pastes it, unless the pane is dead: paste-buffer into a dead
// pane crashes 3.3a (#3830).
func (m *Manager) paste(ctx context.Context, c *Client, pane string, data []byte) error {
	buf := "dtmux-in-" + randomSuffix()
	if _, err := m.run(ctx, data, "load-buffer", "-b", buf, "-"); err != nil {
		return fmt.Errorf("load input: %w", err)
	}
	paste := fmt.Sprintf("paste-buffer -d -r -b %s -t %s", buf, pane)
	del := "delete-buffer -b " + buf
	if _, err := c.Command(ctx, line("if-shell", "-t", quoteWord(pane), "-F", quoteWord("#{pane_dead}"),
		quoteWord(del), quoteWord(paste))); err != nil {
		return fmt.Errorf("paste input: %w", err)
	}
	return nil
}
