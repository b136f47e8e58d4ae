package tmux

import (
	"context"
	"fmt"
	"regexp"
	"strings"
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

var keyRE = regexp.MustCompile(`^(?:[CMS]-)*(?:[A-Za-z][A-Za-z0-9]{0,15}|[A-Za-z0-9])$`)

// ValidKey reports whether s is an acceptable key name: modifiers and a
// plain word, never anything tmux could parse as syntax.
func ValidKey(s string) error {
	if !keyRE.MatchString(s) {
		return fmt.Errorf("%w: key name %q", ErrInvalidArgument, s)
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
		if _, err := c.Command(ctx, line("send-keys", "-t", quoteWord(pane), strings.Join(keys, " "))); err != nil {
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
