package tmux

import (
	"sync"
)

// Gap reasons.
const (
	GapEvicted = "evicted"
	GapPaused  = "paused"
)

// Gap says that output was lost before Offset. Bytes is 0 when the loss
// cannot be counted (tmux discarded output while a pane was paused).
type Gap struct {
	Offset uint64
	Bytes  uint64
	Reason string
}

// PaneExit is how a pane's command ended.
type PaneExit struct {
	// Code is the exit status, or -1 after a signal.
	Code int
	// Signal is the fatal signal, or 0.
	Signal int
}

// Buffer keeps the most recent output of one pane, addressed by byte
// offset since the driver began following the pane. It is bounded: old
// bytes are evicted and readers that fall behind get a Gap. Appending
// never blocks, so the control-mode reader never waits for a consumer.
type Buffer struct {
	max int

	mu     sync.Mutex
	data   []byte        // guarded by mu; bytes [start, end)
	start  uint64        // guarded by mu
	pauses []uint64      // guarded by mu; offsets where paused output was lost
	nPause int           // guarded by mu; pauses ever recorded
	exit   *PaneExit     // guarded by mu
	closed bool          // guarded by mu; the pane is gone
	notify chan struct{} // guarded by mu; closed and replaced on change
}

func newBuffer(max int) *Buffer {
	if max <= 0 {
		max = 1 << 20
	}
	return &Buffer{max: max, notify: make(chan struct{})}
}

func (b *Buffer) changed() { // callers hold mu
	close(b.notify)
	b.notify = make(chan struct{})
}

func (b *Buffer) append(p []byte) {
	if len(p) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.data = append(b.data, p...)
	if over := len(b.data) - b.max; over > b.max/4 || len(p) > b.max {
		// Compact rarely: drop down to max, amortising the copy.
		over = max(over, 0)
		b.start += uint64(over)
		b.data = append(b.data[:0:0], b.data[over:]...)
	}
	b.changed()
}

func (b *Buffer) pause() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pauses = append(b.pauses, b.start+uint64(len(b.data)))
	b.nPause++
	for len(b.pauses) > 0 && b.pauses[0] < b.start {
		b.pauses = b.pauses[1:]
	}
	if len(b.pauses) > 64 {
		b.pauses = b.pauses[len(b.pauses)-64:]
	}
	b.changed()
}

func (b *Buffer) setExit(e PaneExit) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.exit == nil {
		b.exit = &e
		b.changed()
	}
}

func (b *Buffer) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		b.changed()
	}
}

// End is the offset after the last byte received.
func (b *Buffer) End() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.start + uint64(len(b.data))
}

// Buffered is how many bytes are held.
func (b *Buffer) Buffered() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.data)
}

// Exit returns the pane's exit status once known.
func (b *Buffer) Exit() (PaneExit, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.exit == nil {
		return PaneExit{}, false
	}
	return *b.exit, true
}

// Cursor is a reader's position in a Buffer.
type Cursor struct {
	Offset uint64
	pauses int // pauses already reported
}

// NewCursor starts reading at offset, with pauses before it already
// accounted for.
func (b *Buffer) NewCursor(offset uint64) *Cursor {
	b.mu.Lock()
	defer b.mu.Unlock()
	return &Cursor{Offset: offset, pauses: b.nPause - b.pausesAfter(offset)}
}

func (b *Buffer) pausesAfter(off uint64) int { // callers hold mu
	n := 0
	for _, p := range b.pauses {
		if p >= off {
			n++
		}
	}
	return n
}

// Chunk is what Next returns: data, a gap, or neither (then wait on Wait,
// or stop when Done).
type Chunk struct {
	Offset uint64
	Data   []byte
	Gap    *Gap
	// Exit is set once the pane has died and every byte was read.
	Exit *PaneExit
	// Closed is set once the pane is gone and every byte was read.
	Closed bool
	// Wait is closed when something changes.
	Wait <-chan struct{}
}

// Next returns up to max bytes at c, or a gap, advancing c. It never
// blocks.
func (b *Buffer) Next(c *Cursor, maxBytes int) Chunk {
	b.mu.Lock()
	defer b.mu.Unlock()
	end := b.start + uint64(len(b.data))
	if c.Offset < b.start {
		g := &Gap{Offset: c.Offset, Bytes: b.start - c.Offset, Reason: GapEvicted}
		c.Offset = b.start
		return Chunk{Offset: g.Offset, Gap: g}
	}
	if c.Offset > end {
		// A stale offset (for example from before an agent restart).
		g := &Gap{Offset: c.Offset, Reason: GapEvicted}
		c.Offset = end
		return Chunk{Offset: g.Offset, Gap: g}
	}
	// Report pauses in order; stop the data at the next unreported one.
	limit := end
	if unreported := b.nPause - c.pauses; unreported > 0 {
		idx := len(b.pauses) - unreported
		if idx < 0 {
			idx = 0
			c.pauses = b.nPause - len(b.pauses)
		}
		p := b.pauses[idx]
		if p <= c.Offset {
			c.pauses++
			return Chunk{Offset: c.Offset, Gap: &Gap{Offset: c.Offset, Reason: GapPaused}}
		}
		limit = p
	}
	if c.Offset < limit {
		n := min(limit-c.Offset, uint64(maxBytes))
		i := c.Offset - b.start
		ch := Chunk{Offset: c.Offset, Data: append([]byte(nil), b.data[i:i+n]...)}
		c.Offset += n
		return ch
	}
	ch := Chunk{Offset: c.Offset, Wait: b.notify}
	if limit == end {
		ch.Exit = b.exit
		ch.Closed = b.closed
	}
	return ch
}

// clearExit forgets an exit status: the pane was respawned.
func (b *Buffer) clearExit() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.exit != nil {
		b.exit = nil
		b.changed()
	}
}

// over reports whether the pane's command has ended or the pane is gone,
// and a channel closed at the next change.
func (b *Buffer) over() (bool, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.exit != nil || b.closed, b.notify
}
