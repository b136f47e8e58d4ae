package tmux

import (
	"context"
)

// Follow is a position in a pane's live output, optionally after a
// snapshot. Read it with Buffer.Next(Cursor, n); after a paused gap call
// Resync for a fresh snapshot.
type Follow struct {
	Buffer       *Buffer
	Cursor       *Cursor
	Snapshot     *Capture
	Pane, Window string
	c            *Client
}

// Follow starts following a pane. With snapshot, the live stream resumes
// exactly after the snapshot (no gap, no duplicate). Without it, the
// stream starts at from, or now when from is 0.
func (m *Manager) Follow(ctx context.Context, t Target, snapshot bool, from uint64) (*Follow, error) {
	c, pane, window, err := m.resolve(ctx, t)
	if err != nil {
		return nil, err
	}
	// A log of the pane fills in the tail tmux drops at exit (Tail).
	c.ensureLog(ctx, pane)
	f := &Follow{Buffer: c.Buffer(pane), Pane: pane, Window: window, c: c}
	switch {
	case snapshot:
		if _, err := f.Resync(ctx); err != nil {
			return nil, err
		}
	case from == 0:
		f.Cursor = f.Buffer.NewCursor(f.Buffer.End())
	default:
		if end := f.Buffer.End(); from > end {
			// Past what this agent has seen of the pane: an offset from
			// an agent before it (offsets start again at a restart).
			// From now, rather than wait for the stream to get there.
			from = end
		}
		f.Cursor = f.Buffer.NewCursor(from)
	}
	return f, nil
}

// Resync takes a new snapshot and moves the cursor right after it.
func (f *Follow) Resync(ctx context.Context) (Capture, error) {
	cp, err := f.c.capture(ctx, f.Pane, CaptureOptions{AllHistory: true, JoinWrapped: true, Escapes: true})
	if err != nil {
		return Capture{}, err
	}
	cp.Window = f.Window
	f.Snapshot = &cp
	f.Cursor = f.Buffer.NewCursor(cp.Offset)
	return cp, nil
}

// Done is closed when the control client serving the pane has ended.
func (f *Follow) Done() <-chan struct{} { return f.c.Done() }
