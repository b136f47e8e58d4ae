package process

import (
	"sync"
	"time"
)

// writer records the metadata of runs in the journal in the background,
// off the path that starts a process and the one that reports its end.
// Spool files (and the run's directory) are made by the producer at the
// first output (a run without output needs none).
//
// Durability, as before without fsync: metadata reaches the page cache
// (and so survives an agent crash, not a host crash) within coalesce of
// the start or the end of a run, and at the latest when the manager closes
// (Close waits for attached runs' trailers, then drains the queue). What
// an agent crash inside that window costs: a restarted agent reports the
// run as AGENT_LOST (with its output intact) although a client may have
// received the real trailer; a crash between the start of an attached run
// and its record loses the record of the run (the next agent removes any
// spool files it left). Detached runs are recorded before their start is
// reported (Start), so a crash never loses one.
//
// The manager owns the writer's goroutine: loop runs until close.
type writer struct {
	wake chan struct{} // capacity 1
	// now (capacity 1) ends the coalescing wait at once (flush).
	now  chan struct{}
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	queue   []*Run          // guarded by mu
	flushes []chan struct{} // guarded by mu; closed once the queue before them is written
	closed  bool            // guarded by mu
}

// coalesce is how long the writer lets changes gather before writing: a
// run that ends within it is written once, start and trailer together.
const coalesce = 5 * time.Millisecond

func newWriter() *writer {
	return &writer{wake: make(chan struct{}, 1), now: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

// add queues r for writing, once however often it is added before the
// writer gets to it (the write takes the run as it is then); after close it
// writes r in the caller.
func (w *writer) add(r *Run) {
	if !r.queued.CompareAndSwap(false, true) {
		return
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		w.write(r)
		return
	}
	w.queue = append(w.queue, r)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *writer) loop() {
	defer close(w.done)
	for {
		stopping := false
		select {
		case <-w.wake:
			// Most runs end within a few milliseconds: wait that long so
			// that the start and the trailer become one write.
			t := time.NewTimer(coalesce)
			select {
			case <-t.C:
			case <-w.now:
			case <-w.stop:
				stopping = true
			}
			t.Stop()
		case <-w.stop:
			stopping = true
		}
		w.mu.Lock()
		q, fl := w.queue, w.flushes
		w.queue, w.flushes = nil, nil
		w.closed = stopping
		w.mu.Unlock()
		for _, r := range q {
			w.write(r)
		}
		for _, ch := range fl {
			close(ch)
		}
		if stopping {
			return
		}
	}
}

// flush returns once everything queued before the call is written.
func (w *writer) flush() {
	ch := make(chan struct{})
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		<-w.done
		return
	}
	w.flushes = append(w.flushes, ch)
	w.mu.Unlock()
	for _, c := range []chan struct{}{w.wake, w.now} {
		select {
		case c <- struct{}{}:
		default:
		}
	}
	<-ch
}

// close writes what is queued and stops the loop.
func (w *writer) close() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *writer) write(r *Run) {
	r.queued.Store(false) // a change from now on queues it again
	if r.final() {
		// Before the trailer is recorded, which records the output too
		// while it is in memory.
		r.settleSpools()
	}
	if err := r.persist(); err != nil {
		r.log.Warn("persist run", "error", err)
	}
}
