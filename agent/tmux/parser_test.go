package tmux

import (
	"bytes"
	"strings"
	"testing"
)

func parseAll(lines ...string) []Event {
	var p Parser
	var evs []Event
	for _, l := range lines {
		if ev := p.Line([]byte(l)); ev.Kind != EventNone {
			evs = append(evs, ev)
		}
	}
	return evs
}

func TestParserBlocks(t *testing.T) {
	evs := parseAll(
		"%begin 1795815756 268 0", "%end 1795815756 268 0",
		"%session-changed $0 main",
		"%begin 1795815757 278 1",
		"%1",                    // a body line starting with %
		"%end 1795815757 999 1", // another number: still body
		"%output %1 not output", // body, not output
		"%continue %0",          // 3.3a: a notification inside the block
		"%end 1795815757 278 1",
		"%begin 1795815758 305 1", "parse error: unknown command: bad", "%error 1795815758 305 1",
		"%output %3 caf\303\251\\011tab\\134\\015\\012",
		"%extended-output %4 12 : a\\033[1mb",
		"%extended-output %4 12 :",
		"hook output line",
		"%subscription-changed dtmux-dead $1 @1 0 %1 : 1/3/",
	)
	kinds := []EventKind{EventBegin, EventBlock, EventNotification, EventBegin, EventNotification, EventBlock,
		EventBegin, EventBlock, EventOutput, EventOutput, EventOutput, EventHookLine, EventNotification}
	if len(evs) != len(kinds) {
		t.Fatalf("%d events: %+v", len(evs), evs)
	}
	for i, k := range kinds {
		if evs[i].Kind != k {
			t.Errorf("event %d: kind %d, want %d (%+v)", i, evs[i].Kind, k, evs[i])
		}
	}
	if b := evs[5]; len(b.Body) != 3 || string(b.Body[0]) != "%1" || b.Err || b.Flags != 1 {
		t.Errorf("block = %+v", b)
	}
	if evs[4].Name != "continue" || evs[4].Args != "%0" {
		t.Errorf("in-block notification %+v", evs[4])
	}
	if !evs[7].Err || string(evs[7].Body[0]) != "parse error: unknown command: bad" {
		t.Errorf("error block %+v", evs[7])
	}
	if o := evs[8]; o.Pane != "%3" || string(o.Data) != "caf\303\251\ttab\\\r\n" {
		t.Errorf("output %+v %q", o, o.Data)
	}
	if o := evs[9]; o.Pane != "%4" || string(o.Data) != "a\x1b[1mb" {
		t.Errorf("extended output %q", o.Data)
	}
	if o := evs[10]; len(o.Data) != 0 {
		t.Errorf("empty extended output %q", o.Data)
	}
}

func TestUnescapeRoundTrip(t *testing.T) {
	var raw []byte
	for i := range 256 {
		raw = append(raw, byte(i))
	}
	if got := unescapeOutput(escapeOutput(raw)); !bytes.Equal(got, raw) {
		t.Fatalf("round trip: %q", got)
	}
	// A truncated escape is kept verbatim.
	if got := string(unescapeOutput([]byte(`a\01`))); got != `a\01` {
		t.Errorf("truncated: %q", got)
	}
}

// escapeOutput is what tmux does to %output data.
func escapeOutput(b []byte) []byte {
	var out []byte
	for _, c := range b {
		if c < ' ' || c == '\\' {
			out = append(out, '\\', '0'+c>>6, '0'+(c>>3)&7, '0'+c&7)
		} else {
			out = append(out, c)
		}
	}
	return out
}

func TestQuoteWord(t *testing.T) {
	for in, want := range map[string]string{
		"abc":  `"abc"`,
		"a;b":  `"a\073b"`,
		"$H~#": `"\044H\176\043"`,
		"é":    `"\303\251"`,
		"":     `""`,
	} {
		if got := quoteWord(in); got != want {
			t.Errorf("quoteWord(%q) = %s, want %s", in, got, want)
		}
	}
	if got := escapeArgvWord("x;"); got != `x\;` {
		t.Errorf("escapeArgvWord = %q", got)
	}
}

// An argv word ending in ';' passed to an exec'd tmux would split the
// command (TMUX.md §3); the driver escapes it.
func TestArgvTrailingSemicolon(t *testing.T) {
	m := newManager(t)
	mustCreate(t, m, "semi", "sleep", "600")
	out, err := m.run(ctx(t), nil, "display-message", "-p", "-t", "=semi", "x;", ";", "display-message", "-p", "second")
	if err != nil {
		t.Fatal(err)
	}
	if out != "x;\nsecond\n" {
		t.Errorf("out = %q", out)
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string][2]int{"tmux 3.3a": {3, 3}, "tmux 3.2": {3, 2}, "tmux next-3.5": {3, 5}, "tmux 2.9a": {2, 9}} {
		v, err := ParseVersion(in)
		if err != nil || v.Major != want[0] || v.Minor != want[1] {
			t.Errorf("%s: %+v %v", in, v, err)
		}
	}
	if _, err := ParseVersion("screen 4"); err == nil {
		t.Error("screen parsed")
	}
	if v, _ := ParseVersion("tmux 3.1c"); v.AtLeast(3, 2) {
		t.Error("3.1c accepted")
	}
}

func FuzzParse(f *testing.F) {
	f.Add("%begin 1 2 1\n%1\n%end 1 2 1\n%output %1 a\\015\\012\n")
	f.Add("%extended-output %2 5 : x\\134y\n%pause %2\n%continue %2\n")
	f.Add("%begin 1 2 1\n%continue %0\n%end 1 2 1\nbare\n%exit\n")
	f.Add("%subscription-changed dtmux-dead $1 @1 0 %1 : 1//9\n%window-close @3\n")
	f.Fuzz(func(t *testing.T, s string) {
		var p Parser
		depth := 0
		for _, l := range strings.Split(s, "\n") {
			ev := p.Line([]byte(l))
			switch ev.Kind {
			case EventBegin:
				depth++
			case EventBlock:
				depth--
			case EventOutput:
				if ev.Pane == "" || len(ev.Data) > len(l) {
					t.Fatalf("bad output event %+v from %q", ev, l)
				}
			}
			if depth < 0 || depth > 1 {
				t.Fatalf("depth %d", depth)
			}
		}
	})
}
