package tmux

import (
	"bytes"
	"strconv"
)

// EventKind says what a control-mode line meant.
type EventKind int

const (
	// EventNone: the line was consumed inside a block; nothing to report.
	EventNone EventKind = iota
	// EventBegin: a %begin line opened a block.
	EventBegin
	// EventBlock: a block ended with %end or %error; Body holds its lines.
	EventBlock
	// EventOutput: %output or %extended-output; Pane and Data are set.
	EventOutput
	// EventNotification: any other %name line; Name and Args are set.
	EventNotification
	// EventHookLine: a bare line outside any block (output of a hook).
	EventHookLine
)

// Event is one parsed control-mode item.
type Event struct {
	Kind EventKind
	// Block fields (EventBegin, EventBlock).
	Time, Number int64
	Flags        int
	Err          bool
	Body         [][]byte
	// Output fields.
	Pane string
	Data []byte
	// Notification fields: Name without '%', Args is the rest of the line.
	Name string
	Args string
	// Line is the raw line for hook lines.
	Line []byte
}

// Parser turns control-mode lines into events. It is a small state
// machine: outside a block every '%' line is a notification; inside a
// block every line is body until the %end/%error with the same time and
// number, since bodies may themselves start with '%' (TMUX.md §1). The one
// exception is the 3.3a bug that lets a command's own %pause/%continue
// land inside its block: lines that are exactly "%pause %N" or
// "%continue %N" are reported as notifications even there.
// A Parser is not safe for concurrent use.
type Parser struct {
	inBlock bool
	time    int64
	number  int64
	flags   int
	body    [][]byte
}

// Line parses one line without its trailing newline. The returned slices
// do not alias line.
func (p *Parser) Line(line []byte) Event {
	line = bytes.TrimSuffix(line, []byte{'\r'})
	if p.inBlock {
		if t, n, _, kind, ok := parseGuard(line); ok && t == p.time && n == p.number && kind != "begin" {
			ev := Event{Kind: EventBlock, Time: t, Number: n, Flags: p.flags, Err: kind == "error", Body: p.body}
			p.inBlock, p.body = false, nil
			return ev
		}
		if name, args, ok := inBlockNotification(line); ok {
			return Event{Kind: EventNotification, Name: name, Args: args}
		}
		p.body = append(p.body, bytes.Clone(line))
		return Event{Kind: EventNone}
	}
	if len(line) == 0 || line[0] != '%' {
		return Event{Kind: EventHookLine, Line: bytes.Clone(line)}
	}
	if t, n, f, kind, ok := parseGuard(line); ok {
		if kind == "begin" {
			p.inBlock, p.time, p.number, p.flags, p.body = true, t, n, f, nil
			return Event{Kind: EventBegin, Time: t, Number: n, Flags: f}
		}
		// A stray %end/%error outside a block: report it as a notification.
	}
	name, rest, _ := bytes.Cut(line[1:], []byte{' '})
	switch string(name) {
	case "output":
		pane, data, ok := bytes.Cut(rest, []byte{' '})
		if !ok || len(pane) == 0 {
			break
		}
		return Event{Kind: EventOutput, Pane: string(pane), Data: unescapeOutput(data)}
	case "extended-output":
		// %extended-output %N AGE ... : DATA
		pane, after, ok := bytes.Cut(rest, []byte{' '})
		if !ok || len(pane) == 0 {
			break
		}
		_, data, ok := bytes.Cut(after, []byte(" : "))
		if !ok {
			if bytes.HasSuffix(after, []byte(" :")) {
				data = nil
			} else {
				break
			}
		}
		return Event{Kind: EventOutput, Pane: string(pane), Data: unescapeOutput(data)}
	}
	return Event{Kind: EventNotification, Name: string(name), Args: string(rest)}
}

// parseGuard parses "%begin|%end|%error TIME NUMBER FLAGS".
func parseGuard(line []byte) (t, n int64, flags int, kind string, ok bool) {
	var rest []byte
	switch {
	case bytes.HasPrefix(line, []byte("%begin ")):
		kind, rest = "begin", line[7:]
	case bytes.HasPrefix(line, []byte("%end ")):
		kind, rest = "end", line[5:]
	case bytes.HasPrefix(line, []byte("%error ")):
		kind, rest = "error", line[7:]
	default:
		return 0, 0, 0, "", false
	}
	f := bytes.Fields(rest)
	if len(f) != 3 {
		return 0, 0, 0, "", false
	}
	var err error
	if t, err = strconv.ParseInt(string(f[0]), 10, 64); err != nil {
		return 0, 0, 0, "", false
	}
	if n, err = strconv.ParseInt(string(f[1]), 10, 64); err != nil {
		return 0, 0, 0, "", false
	}
	fl, err := strconv.Atoi(string(f[2]))
	if err != nil {
		return 0, 0, 0, "", false
	}
	return t, n, fl, kind, true
}

func inBlockNotification(line []byte) (name, args string, ok bool) {
	for _, n := range []string{"pause", "continue"} {
		prefix := "%" + n + " %"
		if bytes.HasPrefix(line, []byte(prefix)) && len(line) > len(prefix) && allDigits(line[len(prefix):]) {
			return n, string(line[len(prefix)-1:]), true
		}
	}
	return "", "", false
}

func allDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(b) > 0
}

// unescapeOutput decodes %output data: "\ooo" is one byte, everything
// else is raw. A malformed escape is kept as it is.
func unescapeOutput(data []byte) []byte {
	out := make([]byte, 0, len(data))
	for i := 0; i < len(data); i++ {
		c := data[i]
		if c == '\\' && i+3 < len(data) && isOctal(data[i+1]) && isOctal(data[i+2]) && isOctal(data[i+3]) {
			out = append(out, (data[i+1]-'0')<<6|(data[i+2]-'0')<<3|(data[i+3]-'0'))
			i += 3
			continue
		}
		out = append(out, c)
	}
	return out
}

func isOctal(c byte) bool { return '0' <= c && c <= '7' }
