package tmux

import (
	"strings"
	"testing"
)

func TestTrimDeadScreen(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"out\n\n\n\nPane is dead (status 9, Fri Nov 27 23:39:52 2026)\n", "out\n"},
		{"out\nmore  \n\n\n\n\n", "out\nmore\n"},
		{"a\n\nPane is dead (signal 15, Fri Nov 27 23:39:52 2026)\n\n", "a\n"},
		{"\n\n\n", ""},
		{"Pane is dead (status 0, x)\n", ""},
		{"Pane is dead, said the program\n\n", "Pane is dead, said the program\n"},
	} {
		if got := string(trimDeadScreen([]byte(c.in))); got != c.want {
			t.Errorf("trimDeadScreen(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// A dead pane's capture is its command's output: no unused screen lines
// and no "Pane is dead" line, whether tmux draws that line (the option
// reset, as before 3.3) or not (the driver's config).
func TestCaptureDeadPane(t *testing.T) {
	m := newManager(t)
	for _, reset := range []bool{false, true} {
		name := "quiet"
		if reset {
			name = "banner"
			if _, err := m.run(ctx(t), nil, "set-option", "-gu", "remain-on-exit-format"); err != nil {
				t.Fatal(err)
			}
		}
		mustCreate(t, m, name, "/bin/sh", "-c", "echo one; echo; echo two; exit 9")
		waitDead(t, m, name)
		raw, err := m.run(ctx(t), nil, "capture-pane", "-p", "-t", "="+name+":")
		if err != nil {
			t.Fatal(err)
		}
		if drawn := strings.Contains(raw, "Pane is dead ("); drawn != reset {
			t.Fatalf("%s: tmux drew the dead-pane line: %v, want %v:\n%s", name, drawn, reset, raw)
		}
		cp, err := m.Capture(ctx(t), Target{Session: name}, CaptureOptions{AllHistory: true, JoinWrapped: true})
		if err != nil {
			t.Fatal(err)
		}
		if got := string(cp.Content); got != "one\n\ntwo\n" || !cp.Dead {
			t.Errorf("%s: capture of a dead pane = %q (dead %v), want %q", name, got, cp.Dead, "one\n\ntwo\n")
		}
	}
}
