package bootstrap

import (
	"bytes"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// stderrLog logs a hop's stderr line by line and keeps the last few KiB
// for error messages.
type stderrLog struct {
	log hclog.Logger

	mu   sync.Mutex
	buf  []byte // partial line; guarded by mu
	last []byte // tail of everything; guarded by mu
}

const stderrTail = 4096

func newStderrLog(log hclog.Logger) *stderrLog { return &stderrLog{log: log} }

func (s *stderrLog) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last = append(s.last, p...)
	if len(s.last) > stderrTail {
		s.last = s.last[len(s.last)-stderrTail:]
	}
	s.buf = append(s.buf, p...)
	for {
		i := bytes.IndexByte(s.buf, '\n')
		if i < 0 {
			break
		}
		if line := strings.TrimRight(string(s.buf[:i]), "\r"); line != "" {
			s.log.Info(line)
		}
		s.buf = s.buf[i+1:]
	}
	if len(s.buf) > stderrTail {
		s.log.Info(string(s.buf))
		s.buf = s.buf[:0]
	}
	return len(p), nil
}

// tail is the last of what the hop printed, or a placeholder.
func (s *stderrLog) tail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := strings.TrimSpace(string(s.last))
	if t == "" {
		return "(no output on stderr)"
	}
	return t
}
