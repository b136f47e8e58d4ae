package tmux

import (
	"syscall"
	"time"
)

// watchdog enforces the timeout of a RunInSession command whose caller
// has gone: the command lives on in its window, and its deadline with it.
// It ends when the pane dies or goes, when the command has been killed,
// or when the Manager closes (a restarted agent does not enforce it).
type watchdog struct {
	m     *Manager
	pid   int
	pane  string
	buf   *Buffer
	term  time.Time // when to send SIGTERM; zero once sent
	kill  time.Time // when to send SIGKILL
	grace time.Duration
}

// watch starts w, owned by the Manager: Close stops it and waits.
func (m *Manager) watch(w *watchdog) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.watchers.Go(func() { w.run(m.quit) })
}

func (w *watchdog) run(quit <-chan struct{}) {
	for {
		over, changed := w.buf.over()
		if over {
			return
		}
		next := w.kill
		if !w.term.IsZero() {
			next = w.term
		}
		t := time.NewTimer(time.Until(next))
		select {
		case <-quit:
			t.Stop()
			return
		case <-changed:
			t.Stop()
			continue
		case <-t.C:
		}
		if over, _ := w.buf.over(); over {
			return
		}
		sig := syscall.SIGKILL
		if !w.term.IsZero() {
			sig = syscall.SIGTERM
			w.term = time.Time{}
		}
		w.m.log.Info("session run timed out after its caller left", "pane", w.pane, "pid", w.pid, "signal", sig.String())
		killPane(w.pid, sig)
		if sig == syscall.SIGKILL {
			return
		}
	}
}
