package process

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
)

// spoolHeader is the size of the header at the start of a spool file: the
// stream's total byte count (little endian), rewritten after every chunk so
// that an agent restarted after a crash knows where the ring ends.
const spoolHeader = 8

// readChunk is the largest pipe read (and the most a crashed agent can
// have half-written past the recorded end); see copyOutput.
const readChunk = 1 << 20

// spool keeps the newest limit bytes of one output stream in a ring file.
// The producer never waits for readers: it writes into the file (the page
// cache is the memory half of the spool) and advances the counters; readers
// pull any offset they like with ReadAt and learn about evicted bytes as a
// gap. Memory use does not depend on how much output there is.
//
// A spool may begin in memory (memMax > 0, for attached runs): it keeps
// up to memMax bytes there and makes its file only when the output
// outgrows that (spill). Most commands print a few lines, and creating a
// directory and a file costs more than running them on some filesystems
// (a millisecond of CPU on a virtual disk), and that on the way to the
// first output byte. A finished run's memory counts against a budget
// shared by the manager's runs (Config.OutputMemory); what does not fit
// is spilled by the manager's writer. Spools of detached runs, which a client comes
// back for after an agent restart, use the file from the first byte.
//
// The file is created lazily (create), by the producer before its first
// write to it, never on the path that starts the process: a run without
// output needs none.
//
// The file is open only while someone uses it: the producer until the run
// ends (seal), then readers, each holding a reference (acquire/unref) while
// it reads. A finished run with no reader holds no descriptor, so that
// thousands of retained runs cost no fds.
type spool struct {
	path  string
	limit uint64
	// onWrite runs after each write, outside mu (it wakes readers).
	onWrite func()
	// mkdir makes the run's directory (once) before the file is created.
	mkdir func() error
	// hdr is the producer's header buffer; only the producer uses it.
	hdr [spoolHeader]byte
	// memMax is how much the spool keeps in memory before it spills to
	// its file; 0: the file from the first byte.
	memMax int

	createMu sync.Mutex // serialises create; never held with mu while waiting

	mu      sync.Mutex
	w       *os.File // guarded by mu; the producer's file once created, until sealed
	created bool     // guarded by mu; the file exists
	start   uint64   // guarded by mu; oldest offset still readable
	end     uint64   // guarded by mu; total bytes written
	f       *os.File // guarded by mu; open while refs > 0
	refs    int      // guarded by mu; the producer (created, until sealed) and readers
	sealed  bool     // guarded by mu; no more writes
	gone    bool     // guarded by mu; removed: no more reads
	// mem holds bytes [start, end) until the spool spills; nil after, or
	// when it never held any.
	mem      []byte        // guarded by mu
	inMemory bool          // guarded by mu; not spilled (memMax > 0)
	budget   *atomic.Int64 // guarded by mu; what mem was charged to, if any
	charged  int64         // guarded by mu; how much
}

// newSpool returns the spool at path without touching the disk; the file
// is made by create, after memMax bytes in memory.
func newSpool(path string, limit uint64, memMax int, onWrite func(), mkdir func() error) *spool {
	return &spool{path: path, limit: limit, memMax: memMax, inMemory: memMax > 0, onWrite: onWrite, mkdir: mkdir}
}

// writeMem appends p in memory, evicting past limit, unless that would
// hold more than memMax bytes; ok false: the spool must spill.
func (s *spool) writeMem(p []byte) (ok bool) {
	s.mu.Lock()
	if !s.inMemory || s.gone {
		s.mu.Unlock()
		return false
	}
	newEnd := s.end + uint64(len(p))
	keep := min(newEnd-s.start, s.limit) // bytes held after this write
	if keep > uint64(s.memMax) {
		s.mu.Unlock()
		return false
	}
	if uint64(len(p)) >= keep {
		s.mem = append(s.mem[:0], p[uint64(len(p))-keep:]...)
	} else {
		drop := uint64(len(s.mem)) + uint64(len(p)) - keep
		s.mem = append(s.mem[drop:], p...)
	}
	s.start, s.end = newEnd-keep, newEnd
	s.mu.Unlock()
	if s.onWrite != nil {
		s.onWrite()
	}
	return true
}

// spill moves the memory part into the spool's file; from then on the
// spool is file-backed (see create).
func (s *spool) spill() error {
	_, err := s.create()
	return err
}

// charge counts a sealed spool's memory against budget, and reports
// false (nothing charged) when it does not fit: then it should spill.
func (s *spool) charge(budget *atomic.Int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := int64(len(s.mem))
	if !s.inMemory || n == 0 || s.budget != nil {
		return true
	}
	if budget.Add(-n) < 0 {
		budget.Add(n)
		return false
	}
	s.budget, s.charged = budget, n
	return true
}

func (s *spool) releaseBudgetLocked() {
	if s.budget != nil {
		s.budget.Add(s.charged)
		s.budget, s.charged = nil, 0
	}
}

// memBytes returns the memory part (not a copy: it no longer changes once
// the spool is sealed); ok false when the spool is file-backed.
func (s *spool) memBytes() (b []byte, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mem, s.inMemory
}

// loadMemSpool is the spool of a run from an earlier agent whose output
// was recorded with it (memBytes): data is the stream's last bytes, up to
// end.
func loadMemSpool(path string, limit uint64, data []byte, end uint64, onWrite func(), mkdir func() error) *spool {
	s := newSpool(path, limit, max(len(data), 1), onWrite, mkdir)
	s.mem, s.end, s.sealed = data, end, true
	s.start = end - min(uint64(len(data)), end)
	return s
}

// readMem copies from the memory part at off into buf, like read; ok
// false: the spool is file-backed, read its file.
func (s *spool) readMem(off uint64, buf []byte) (n int, gap uint64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.inMemory {
		return 0, 0, false
	}
	switch {
	case off < s.start:
		return 0, s.start - off, true
	case off >= s.end:
		return 0, 0, true
	}
	return copy(buf, s.mem[off-s.start:]), 0, true
}

// create makes the spool file unless it exists, and returns the
// producer's file, nil once sealed. The file starts with what the memory
// part holds, so a spool that outgrew memory, or does not fit the
// manager's budget, moves to its file whole (spill). A spool removed, or
// sealed with nothing in memory, gets none (a restarted agent reads a
// missing file as empty). Safe to call from any goroutine, any number of
// times.
func (s *spool) create() (*os.File, error) {
	s.mu.Lock()
	w, done := s.w, s.created
	s.mu.Unlock()
	if done {
		return w, nil
	}
	s.createMu.Lock()
	defer s.createMu.Unlock()
	// Only the producer writes before seal, and it is the one calling
	// create then: the memory part holds still until the file replaces it.
	s.mu.Lock()
	w, done = s.w, s.created
	mem, start, end := s.mem, s.start, s.end
	unused := s.gone || (s.sealed && len(mem) == 0)
	s.mu.Unlock()
	if done || unused {
		return w, nil
	}
	f, err := s.createFile(mem, start, end)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseBudgetLocked()
	s.created, s.inMemory, s.mem = true, false, nil
	if s.sealed || s.gone {
		f.Close() // nothing more will be written: keep no descriptor
		return nil, nil
	}
	s.w, s.f, s.refs = f, f, s.refs+1
	return f, nil
}

// createFile makes the spool file (and the run's directory first) holding
// mem, the stream's bytes [start, end).
func (s *spool) createFile(mem []byte, start, end uint64) (*os.File, error) {
	if err := s.mkdir(); err != nil {
		return nil, fmt.Errorf("create spool: %w", err)
	}
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create spool: %w", err)
	}
	var hdr [spoolHeader]byte
	binary.LittleEndian.PutUint64(hdr[:], end)
	err = writeRing(f, s.limit, start, mem)
	if err == nil {
		_, err = f.WriteAt(hdr[:], 0)
	}
	if err != nil {
		f.Close()
		os.Remove(s.path)
		return nil, fmt.Errorf("create spool: %w", err)
	}
	return f, nil
}

// readEnd reads the stream's end offset from the header of the spool
// file f.
func (s *spool) readEnd(f *os.File) (uint64, error) {
	if _, err := f.ReadAt(s.hdr[:], 0); err != nil {
		return 0, fmt.Errorf("read spool header: %w", err)
	}
	return binary.LittleEndian.Uint64(s.hdr[:]), nil
}

// mayHaveOverrun counts as evicted the oldest bytes of the ring that a
// writer that died writing a chunk (up to readChunk past the recorded end)
// may have overwritten, as loadSpool does for a run that was in flight.
func (s *spool) mayHaveOverrun() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reach := s.end + readChunk; reach > s.limit {
		s.start = max(s.start, min(reach-s.limit, s.end))
	}
}

// loadSpool reads the spool header of a run from an earlier agent; the
// file stays closed until a reader wants it. recorded is how many bytes
// the run's record says the stream had. inFlight says the run was
// still writing when that agent died: then the chunk after the recorded end
// may have overwritten the oldest bytes of the ring, so those count as
// evicted.
func loadSpool(path string, limit uint64, inFlight bool, recorded uint64) (*spool, error) {
	s := &spool{path: path, limit: limit, sealed: true, created: true}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		// The run wrote nothing before that agent stopped, or what it
		// wrote was in memory (recorded bytes): a gap then.
		s.start, s.end = recorded, recorded
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	defer f.Close()
	if s.end, err = s.readEnd(f); err != nil {
		return nil, err
	}
	reach := s.end
	if inFlight {
		reach += readChunk
	}
	if reach > limit {
		s.start = min(reach-limit, s.end)
	}
	return s, nil
}

// acquire returns the spool's file for reading, opening it read-only when
// nobody holds it. Call unref when done with it.
func (s *spool) acquire() (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone {
		return nil, fmt.Errorf("read spool: %w", os.ErrClosed)
	}
	if s.f == nil {
		f, err := os.Open(s.path)
		if err != nil {
			return nil, fmt.Errorf("open spool: %w", err)
		}
		s.f = f
	}
	s.refs++
	return s.f, nil
}

// unref drops a reference taken by acquire (or the producer's, via seal).
func (s *spool) unref() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refs--
	if s.refs == 0 && s.f != nil && (s.sealed || s.gone) {
		s.f.Close()
		s.f = nil
	}
}

// seal ends writing: the producer's file is closed as soon as no reader
// holds it. Call once, after the last write.
func (s *spool) seal() {
	s.mu.Lock()
	held := !s.sealed && s.w != nil
	s.sealed = true
	s.w = nil
	s.mu.Unlock()
	if held {
		s.unref()
	}
}

// remove forbids further reads (the run was forgotten). Readers that hold
// the file finish their current read.
func (s *spool) remove() {
	s.seal()
	s.mu.Lock()
	s.gone = true
	s.releaseBudgetLocked()
	s.mem = nil
	if s.refs == 0 && s.f != nil {
		s.f.Close()
		s.f = nil
	}
	s.mu.Unlock()
}

// write appends p. Only the producer calls it, before seal.
func (s *spool) write(p []byte) error {
	if s.writeMem(p) {
		return nil
	}
	w, err := s.create()
	if err != nil {
		return err
	}
	if w == nil {
		return fmt.Errorf("write spool: %w", os.ErrClosed)
	}
	s.mu.Lock()
	off := s.end
	newEnd := off + uint64(len(p))
	// Evict before overwriting, so that a reader that sees start unchanged
	// after its ReadAt knows its bytes were intact.
	if newEnd > s.limit && newEnd-s.limit > s.start {
		s.start = newEnd - s.limit
	}
	s.mu.Unlock()

	if err := writeRing(w, s.limit, off, p); err != nil {
		return fmt.Errorf("write spool: %w", err)
	}
	binary.LittleEndian.PutUint64(s.hdr[:], newEnd)
	if _, err := w.WriteAt(s.hdr[:], 0); err != nil {
		return fmt.Errorf("write spool: %w", err)
	}

	s.mu.Lock()
	s.end = newEnd
	s.mu.Unlock()
	if s.onWrite != nil {
		s.onWrite()
	}
	return nil
}

// writeRing writes p, the bytes from offset off of a stream, into the
// ring of limit bytes in f; of more than limit bytes only the last fit.
func writeRing(f *os.File, limit, off uint64, p []byte) error {
	if uint64(len(p)) > limit {
		skip := uint64(len(p)) - limit
		p, off = p[skip:], off+skip
	}
	for len(p) > 0 {
		pos := off % limit
		n := min(uint64(len(p)), limit-pos)
		if _, err := f.WriteAt(p[:n], spoolHeader+int64(pos)); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// bounds returns the readable range [start, end).
func (s *spool) bounds() (start, end uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.start, s.end
}

// read copies spooled bytes from off into buf, using f from acquire. It
// returns n > 0 bytes, or gap > 0 bytes evicted from off, or neither when
// off is at the end.
func (s *spool) read(f *os.File, off uint64, buf []byte) (n int, gap uint64, err error) {
	start, end := s.bounds()
	if off < start {
		return 0, start - off, nil
	}
	if off >= end {
		return 0, 0, nil
	}
	want := min(uint64(len(buf)), end-off)
	pos := off % s.limit
	first := min(want, s.limit-pos)
	if _, err := f.ReadAt(buf[:first], spoolHeader+int64(pos)); err != nil {
		return 0, 0, fmt.Errorf("read spool: %w", err)
	}
	if first < want {
		if _, err := f.ReadAt(buf[first:want], spoolHeader); err != nil {
			return 0, 0, fmt.Errorf("read spool: %w", err)
		}
	}
	// The producer may have overwritten part of what was read meanwhile.
	if start2, _ := s.bounds(); start2 > off {
		return 0, start2 - off, nil
	}
	return int(want), 0, nil
}
