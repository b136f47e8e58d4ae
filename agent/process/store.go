package process

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// journal persists run metadata (never secret values) so that a restarted
// agent still lists its runs: one append-only file of JSON lines, each the
// whole record of one run as it is then, or the note that a run was
// forgotten. Replaying it, the last line about a run wins.
//
// A run costs one or two appends (start, trailer) and no file creation:
// making a directory and renaming a file into it cost more than forking
// the process on common filesystems (half a millisecond of CPU each on a
// virtual disk), an append costs about a microsecond. Like the rename
// before it, an append reaches the page cache (it survives an agent crash,
// not a host crash). A torn last line, from a crash in the middle of an
// append, is skipped when the journal is read.
//
// The journal keeps the latest line of every live run in memory and
// rewrites the file from them (a temporary file and a rename) when it has
// grown to several times that, and when the manager opens it.
type journal struct {
	path string

	mu     sync.Mutex
	f      *os.File          // guarded by mu; nil once closed
	size   int64             // guarded by mu; bytes in the file
	latest map[string][]byte // guarded by mu; each live run's last line
	live   int64             // guarded by mu; bytes in latest
}

const journalFile = "journal"

// compactAbove is the size below which the journal is never rewritten.
const compactAbove = 1 << 20

// record is one line of the journal.
type record struct {
	Run *Info `json:"run,omitempty"`
	// Output is what a finished run's streams kept in memory (see
	// memOutput).
	Output *memOutput `json:"output,omitempty"`
	Gone   string     `json:"gone,omitempty"` // the id of a forgotten run
}

// memOutput is a finished run's output that stayed in memory (see
// spool), per stream (stdout, stderr): the stream's last bytes, up to the
// run's byte count; nil for a stream in its spool file.
type memOutput [2]*[]byte

// loaded is a run read back from the journal.
type loaded struct {
	Info
	output *memOutput
}

// openJournal reads the journal in dir (none yet is an empty one) and
// returns it with the last record of every run it names, by id. Lines
// that do not decode are skipped and counted in bad.
func openJournal(dir string) (j *journal, runs []loaded, bad int, err error) {
	j = &journal{path: filepath.Join(dir, journalFile), latest: map[string][]byte{}}
	f, err := os.Open(j.path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, 0, fmt.Errorf("read run journal: %w", err)
	}
	last := map[string]loaded{}
	if f != nil {
		defer f.Close()
		rd := bufio.NewReaderSize(f, 64<<10)
		for {
			line, rerr := rd.ReadBytes('\n')
			if len(line) > 0 && rerr == nil {
				var rec record
				switch {
				case json.Unmarshal(line, &rec) != nil:
					bad++
				case rec.Gone != "":
					j.drop(rec.Gone)
					delete(last, rec.Gone)
				case rec.Run != nil && ValidateRunID(rec.Run.ID) == nil:
					j.keep(rec.Run.ID, line)
					last[rec.Run.ID] = loaded{Info: *rec.Run, output: rec.Output}
				default:
					bad++
				}
			} else if len(line) > 0 {
				bad++ // torn by a crash in the middle of an append
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				return nil, nil, 0, fmt.Errorf("read run journal: %w", rerr)
			}
		}
	}
	for _, id := range slices.Sorted(maps.Keys(last)) {
		runs = append(runs, last[id])
	}
	return j, runs, bad, nil
}

func (j *journal) keep(id string, line []byte) {
	j.drop(id)
	j.latest[id] = line
	j.live += int64(len(line))
}

func (j *journal) drop(id string) {
	if old, ok := j.latest[id]; ok {
		j.live -= int64(len(old))
		delete(j.latest, id)
	}
}

// put records info (and output, when not nil) as the run's current
// state.
func (j *journal) put(info Info, output *memOutput) error { return j.keepRun(info, output, true) }

// set makes info the run's current state for the next rewrite (compact)
// without writing it now.
func (j *journal) set(info Info, output *memOutput) error {
	return j.keepRun(info, output, false)
}

func (j *journal) keepRun(info Info, output *memOutput, write bool) error {
	b, err := json.Marshal(record{Run: &info, Output: output})
	if err != nil {
		return fmt.Errorf("encode run %s: %w", info.ID, err)
	}
	line := append(b, '\n')
	j.mu.Lock()
	defer j.mu.Unlock()
	j.keep(info.ID, line)
	if !write {
		return nil
	}
	return j.appendLocked(line)
}

// unset forgets the run id at the next rewrite (compact).
func (j *journal) unset(id string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.drop(id)
}

// gone records that the run id is forgotten.
func (j *journal) gone(id string) error {
	b, err := json.Marshal(record{Gone: id})
	if err != nil {
		return fmt.Errorf("encode run %s: %w", id, err)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.drop(id)
	return j.appendLocked(append(b, '\n'))
}

// appendLocked writes line at the end of the file, opening it first if
// need be, and rewrites the file once it has grown well past what is
// live.
func (j *journal) appendLocked(line []byte) error {
	if j.f == nil {
		if err := j.reopenLocked(); err != nil {
			return err
		}
	}
	n, err := j.f.Write(line)
	j.size += int64(n)
	if err != nil {
		return fmt.Errorf("append to run journal: %w", err)
	}
	if j.size > compactAbove && j.size > 4*j.live {
		return j.compactLocked()
	}
	return nil
}

// compact rewrites the file from the live records.
func (j *journal) compact() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.compactLocked()
}

func (j *journal) compactLocked() error {
	ids := make([]string, 0, len(j.latest))
	for id := range j.latest {
		ids = append(ids, id)
	}
	slices.Sort(ids) // run ids start with their start time
	var buf bytes.Buffer
	for _, id := range ids {
		buf.Write(j.latest[id])
	}
	tmp, err := os.CreateTemp(filepath.Dir(j.path), ".journal-*")
	if err != nil {
		return fmt.Errorf("rewrite run journal: %w", err)
	}
	_, err = tmp.Write(buf.Bytes())
	if err == nil {
		err = os.Rename(tmp.Name(), j.path)
	}
	if err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("rewrite run journal: %w", err)
	}
	// The temporary file is the journal now; O_APPEND is not needed with
	// one writer that tracks the size.
	if j.f != nil {
		j.f.Close()
	}
	j.f, j.size = tmp, int64(buf.Len())
	if _, err := tmp.Seek(j.size, io.SeekStart); err != nil {
		return fmt.Errorf("rewrite run journal: %w", err)
	}
	return nil
}

func (j *journal) reopenLocked() error {
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open run journal: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open run journal: %w", err)
	}
	j.f, j.size = f, fi.Size()
	return nil
}

// close closes the file; a later write opens it again.
func (j *journal) close() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f != nil {
		j.f.Close()
		j.f = nil
	}
}

// legacyMeta is where agents before the journal kept a run's metadata:
// StateDir/runs/ID/meta.json.
const legacyMeta = "meta.json"

func loadLegacyMeta(dir string) (Info, error) {
	var info Info
	b, err := os.ReadFile(filepath.Join(dir, legacyMeta))
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, fmt.Errorf("decode %s: %w", filepath.Join(dir, legacyMeta), err)
	}
	return info, nil
}
