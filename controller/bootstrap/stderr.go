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

// tail is the last of what the hop printed, or a placeholder.
func (s *stderrLog) tail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := strings.TrimSpace(redact(string(s.last), s.secrets))
	if t == "" {
		return "(no output on stderr)"
	}
	return t
}
