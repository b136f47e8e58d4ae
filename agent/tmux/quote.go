package tmux

import (
	"strings"
)

// quoteWord makes s one literal word on a control-mode command line.
// tmux's command language expands $VAR, ~, #comments, ';' and quotes, so
// every byte outside a small safe set is written as a \ooo escape inside
// double quotes (TMUX.md §3). The result is never split, expanded or
// taken as a command separator.
func quoteWord(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if safeByte(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('\\')
		b.WriteByte('0' + c>>6)
		b.WriteByte('0' + (c>>3)&7)
		b.WriteByte('0' + c&7)
	}
	b.WriteByte('"')
	return b.String()
}

func safeByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte(" ,./_:=+@%-", c) >= 0
}

// escapeArgvWord protects one word passed to an exec'd tmux: an argument
// ending in ';' is taken as a command separator there (TMUX.md §3), so a
// backslash goes before the final ';'. tmux removes exactly that one.
func escapeArgvWord(s string) string {
	if strings.HasSuffix(s, ";") {
		return s[:len(s)-1] + `\;`
	}
	return s
}

// escapeFormat protects a value that tmux format-expands (-c DIR): '#'
// becomes "##".
func escapeFormat(s string) string {
	return strings.ReplaceAll(s, "#", "##")
}

// shellQuote single-quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// line joins already-quoted words into one control line.
func line(words ...string) string {
	return strings.Join(words, " ")
}
