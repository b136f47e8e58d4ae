package bootstrap

import (
	"bytes"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// stderrLog logs a hop's stderr line by line and keeps the last few KiB
// for error messages, with secrets (see redactions) replaced.
type stderrLog struct {
	log     hclog.Logger
	secrets []string

	mu   sync.Mutex
	buf  []byte // partial line; guarded by mu
	last []byte // tail of everything; guarded by mu
}

const stderrTail = 4096

func newStderrLog(log hclog.Logger, secrets []string) *stderrLog {
	return &stderrLog{log: log, secrets: secrets}
}

// redactions is what hop's output must not show (SSH.User).
func redactions(hop Hop) []string {
	if r, ok := hop.(interface{ redact() []string }); ok {
		return r.redact()
	}
	return nil
}

// redact replaces each secret in s.
func redact(s string, secrets []string) string {
	for _, x := range secrets {
		s = strings.ReplaceAll(s, x, "[redacted]")
	}
	return s
}

func (s *stderrLog) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last = append(s.last, p...)
	if len(s.last) > stderrTail {
		// Whole lines only: a cut line could show part of a secret.
		cut := s.last[len(s.last)-stderrTail:]
		if i := bytes.IndexByte(cut, '\n'); i >= 0 {
			cut = cut[i+1:]
		}
		s.last = append([]byte(nil), cut...)
	}
	s.buf = append(s.buf, p...)
	for {
		i := bytes.IndexByte(s.buf, '\n')
		if i < 0 {
			break
		}
		if line := strings.TrimRight(string(s.buf[:i]), "\r"); line != "" {
			s.log.Info(redact(line, s.secrets))
		}
		s.buf = s.buf[i+1:]
	}
	if len(s.buf) > stderrTail {
		s.log.Info(redact(string(s.buf), s.secrets))
		s.buf = s.buf[:0]
	}
	return len(p), nil
}

// tail is the last of what the hop printed, on one line (see oneLine),
// or a placeholder.
func (s *stderrLog) tail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := oneLine(redact(string(s.last), s.secrets))
	if t == "" {
		return "(no output on stderr)"
	}
	return t
}

// tailLines is how many of a hop's last lines an error quotes.
const tailLines = 3

// oneLine puts what a hop printed on one line for an error message: its
// last few lines joined with "; ", without carriage returns, and without
// ssh's notices that come with every new host key ("Warning: Permanently
// added ... to the list of known hosts."), which would hide the reason
// (ws ls shows the text after the last ": ") unless there is nothing else,
// and without the usage text a command prints after its complaint.
func oneLine(text string) string {
	// The last few KiB: an upload's output can be megabytes (a tty
	// echoing the binary back).
	if len(text) > stderrTail {
		text = text[len(text)-stderrTail:]
		if i := strings.IndexByte(text, '\n'); i >= 0 {
			text = text[i+1:]
		}
	}
	var lines, notices []string
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(strings.ReplaceAll(l, "\r", ""))
		if strings.HasPrefix(l, "usage: ") && len(lines) > 0 {
			// A command's usage after its complaint ("unknown option
			// -- -"): the complaint is the reason.
			break
		}
		switch {
		case l == "":
		case strings.HasPrefix(l, "Warning: Permanently added "):
			notices = append(notices, l)
		default:
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		lines = notices
	}
	if len(lines) > tailLines {
		lines = lines[len(lines)-tailLines:]
	}
	return strings.Join(lines, "; ")
}
