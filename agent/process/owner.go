package process

import (
	"sync"
	"sync/atomic"
	"time"
)

// owner is the back-pressure between a run's output and the Exec client
// that started it attached (Spec.Owner). Like ssh, the process waits for
// that client: when the next bytes would evict output the owner has not
// read yet, the producer stops reading the pipe, so the process blocks on
// write, until the owner reads on. Every other reader (detached runs,
// AttachRun, extra Exec viewers) never holds the process back and gets
// gaps instead. The producer's fast path is two atomic loads per chunk.
type owner struct {
	// active says back-pressure applies: an owner is expected or reading.
	active atomic.Bool
	// claimed is set once the owner's Reader exists.
	claimed atomic.Bool
	// off is how far the owner has read, per stream.
	off [2]atomic.Uint64
	// kick[k] (capacity 1) wakes the producer of stream k after the owner
	// read more of it.
	kick [2]chan struct{}
	// released is closed when back-pressure ends for good: the owner went
	// away, or the agent is ending the run.
	released    chan struct{}
	releaseOnce sync.Once
	// waiting counts producers waiting for the owner now; waits counts
	// every wait, so that the drain after the leader's exit can tell a
	// pipe held open by a grandchild from output the owner still reads.
	waiting atomic.Int32
	waits   atomic.Uint64
}

func newOwner() owner {
	return owner{
		kick:     [2]chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)},
		released: make(chan struct{}),
	}
}

// OwnerReader returns the reader of the client that owns the run (see
// Spec.Owner), from offset 0, or nil when the run has no owner or its
// reader was taken already. Close it when the client goes away: from then
// on the process no longer waits.
func (r *Run) OwnerReader() *Reader {
	if !r.own.active.Load() || !r.own.claimed.CompareAndSwap(false, true) {
		return nil
	}
	return &Reader{r: r, owner: true}
}

// ownerRead records that the owner has read stream k up to off.
func (r *Run) ownerRead(k int, off uint64) {
	r.own.off[k].Store(off)
	select {
	case r.own.kick[k] <- struct{}{}:
	default:
	}
}

// disown ends back-pressure for good.
func (r *Run) disown() {
	r.own.releaseOnce.Do(func() {
		r.own.active.Store(false)
		close(r.own.released)
	})
}

// room returns how many of want bytes stream k may write at end without
// evicting output the owner has not read, waiting while that is none.
func (r *Run) room(k int, end, limit uint64, want int) int {
	for {
		if !r.own.active.Load() {
			return want
		}
		read := r.own.off[k].Load()
		if used := end - read; used < limit {
			return int(min(uint64(want), limit-used))
		}
		r.own.waiting.Add(1)
		r.own.waits.Add(1)
		select {
		case <-r.own.kick[k]:
		case <-r.own.released:
		}
		r.own.waiting.Add(-1)
		// Output waiting for the owner is not silence.
		r.lastOutput.Store(time.Now().UnixNano())
	}
}

// heldBack reports whether a producer waits for the owner now or has
// waited since the caller's previous look (whose waits count is since).
func (r *Run) heldBack(since uint64) (bool, uint64) {
	n := r.own.waits.Load()
	return r.own.waiting.Load() > 0 || n != since, n
}
