package process

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
)

// spoolHeader is the size of the header at the start of a spool file: the
// stream's total byte count (little endian), rewritten after every chunk so
// that an agent restarted after a crash knows where the ring ends.
const spoolHeader = 8

// readChunk is the size of one pipe read (and the most a crashed agent can
// have half-written past the recorded end).
const readChunk = 64 << 10

// spool keeps the newest limit bytes of one output stream in a ring file.
// The producer never waits for readers: it writes into the file (the page
// cache is the memory half of the spool) and advances the counters; readers
// pull any offset they like with ReadAt and learn about evicted bytes as a
// gap. Memory use does not depend on how much output there is.
type spool struct {
	f     *os.File
	limit uint64
	// onWrite runs after each write, outside mu (it wakes readers).
	onWrite func()

	mu    sync.Mutex
	start uint64 // guarded by mu; oldest offset still readable
	end   uint64 // guarded by mu; total bytes written
	hdr   [spoolHeader]byte
}

// newSpool creates (truncating) the spool file at path.
func newSpool(path string, limit uint64, onWrite func()) (*spool, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create spool: %w", err)
	}
	s := &spool{f: f, limit: limit, onWrite: onWrite}
	if _, err := f.WriteAt(s.hdr[:], 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("create spool: %w", err)
	}
	return s, nil
}

// loadSpool opens the spool of a run from an earlier agent. inFlight says
// the run was still writing when that agent died: then the chunk after the
// recorded end may have overwritten the oldest bytes of the ring, so those
// count as evicted.
func loadSpool(path string, limit uint64, inFlight bool) (*spool, error) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	s := &spool{f: f, limit: limit}
	if _, err := f.ReadAt(s.hdr[:], 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("read spool header: %w", err)
	}
	s.end = binary.LittleEndian.Uint64(s.hdr[:])
	reach := s.end
	if inFlight {
		reach += readChunk
	}
	if reach > limit {
		s.start = min(reach-limit, s.end)
	}
	return s, nil
}

// write appends p. Only the producer calls it.
func (s *spool) write(p []byte) error {
	s.mu.Lock()
	off := s.end
	newEnd := off + uint64(len(p))
	// Evict before overwriting, so that a reader that sees start unchanged
	// after its ReadAt knows its bytes were intact.
	if newEnd > s.limit && newEnd-s.limit > s.start {
		s.start = newEnd - s.limit
	}
	s.mu.Unlock()

	if uint64(len(p)) > s.limit {
		skip := uint64(len(p)) - s.limit
		p, off = p[skip:], off+skip
	}
	for len(p) > 0 {
		pos := off % s.limit
		n := min(uint64(len(p)), s.limit-pos)
		if _, err := s.f.WriteAt(p[:n], spoolHeader+int64(pos)); err != nil {
			return fmt.Errorf("write spool: %w", err)
		}
		p, off = p[n:], off+n
	}
	binary.LittleEndian.PutUint64(s.hdr[:], newEnd)
	if _, err := s.f.WriteAt(s.hdr[:], 0); err != nil {
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

// bounds returns the readable range [start, end).
func (s *spool) bounds() (start, end uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.start, s.end
}

// read copies spooled bytes from off into buf. It returns n > 0 bytes, or
// gap > 0 bytes evicted from off, or neither when off is at the end.
func (s *spool) read(off uint64, buf []byte) (n int, gap uint64, err error) {
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
	if _, err := s.f.ReadAt(buf[:first], spoolHeader+int64(pos)); err != nil {
		return 0, 0, fmt.Errorf("read spool: %w", err)
	}
	if first < want {
		if _, err := s.f.ReadAt(buf[first:want], spoolHeader); err != nil {
			return 0, 0, fmt.Errorf("read spool: %w", err)
		}
	}
	// The producer may have overwritten part of what was read meanwhile.
	if start2, _ := s.bounds(); start2 > off {
		return 0, start2 - off, nil
	}
	return int(want), 0, nil
}

func (s *spool) close() error { return s.f.Close() }
