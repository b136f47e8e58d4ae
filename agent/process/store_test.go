package process

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func finishedInfo(id string, code int) Info {
	now := time.Now()
	return Info{
		ID: id, Argv: []string{"sh", "-c", "exit"}, State: StateFinished, StartedAt: now,
		Trailer: &Trailer{Reason: ReasonExited, ExitCode: code, EndedAt: now},
	}
}

// The journal stays a few times the size of what is live however many
// changes it records, and reads back the last record of each run.
func TestJournalCompactsAndReplays(t *testing.T) {
	dir := t.TempDir()
	j, runs, bad, err := openJournal(dir)
	if err != nil || len(runs) != 0 || bad != 0 {
		t.Fatalf("empty journal: %v %v %d", runs, bad, err)
	}
	if err := j.compact(); err != nil {
		t.Fatal(err)
	}
	for i := range 10000 {
		if err := j.put(finishedInfo("busy", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.put(finishedInfo("kept", 7), nil); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		id := "gone-" + strings.Repeat("x", i%10) + string(rune('a'+i%26))
		if err := j.put(finishedInfo(id, 1), nil); err != nil {
			t.Fatal(err)
		}
		if err := j.gone(id); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, journalFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > compactAbove+4<<10 {
		t.Errorf("journal is %d bytes after 10000 changes of 2 live runs", fi.Size())
	}
	j.close()

	_, runs, bad, err = openJournal(dir)
	if err != nil || bad != 0 {
		t.Fatalf("reopen: %v, %d bad lines", err, bad)
	}
	got := map[string]int{}
	for _, r := range runs {
		got[r.ID] = r.Trailer.ExitCode
	}
	if len(got) != 2 || got["busy"] != 9999 || got["kept"] != 7 {
		t.Errorf("replayed %v, want busy:9999 kept:7", got)
	}
}

// A run id forgotten and then used again is one run when read back.
func TestJournalReusedID(t *testing.T) {
	dir := t.TempDir()
	j, _, _, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []func() error{
		func() error { return j.put(finishedInfo("again", 1), nil) },
		func() error { return j.gone("again") },
		func() error { return j.put(finishedInfo("again", 2), nil) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	j.close()
	_, runs, bad, err := openJournal(dir)
	if err != nil || bad != 0 || len(runs) != 1 || runs[0].Trailer.ExitCode != 2 {
		t.Fatalf("read back %+v (%d bad, %v); want one run, exit 2", runs, bad, err)
	}
}

// A line torn by a crash in the middle of an append, or garbage, costs
// that line only.
func TestJournalSkipsTornLines(t *testing.T) {
	dir := t.TempDir()
	good, _ := json.Marshal(record{Run: ptr(finishedInfo("good", 3))})
	torn, _ := json.Marshal(record{Run: ptr(finishedInfo("torn", 4))})
	data := string(good) + "\nnot json\n" + string(torn[:len(torn)/2])
	if err := os.WriteFile(filepath.Join(dir, journalFile), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	_, runs, bad, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 1 || runs[0].ID != "good" || runs[0].Trailer.ExitCode != 3 || bad != 2 {
		t.Errorf("runs %+v, %d bad lines; want only good, 2 bad", runs, bad)
	}
}

// A restarted agent brings back runs recorded in the per-run metadata
// files of agents before the journal, and removes directories of runs
// nobody recorded.
func TestManagerMigratesLegacyRuns(t *testing.T) {
	state := t.TempDir()
	runsDir := filepath.Join(state, "runs")
	legacy := filepath.Join(runsDir, "old-run")
	leftover := filepath.Join(runsDir, "never-recorded")
	for _, d := range []string{legacy, leftover} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	meta, _ := json.Marshal(finishedInfo("old-run", 5))
	if err := os.WriteFile(filepath.Join(legacy, legacyMeta), meta, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(leftover, "stdout"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(Config{StateDir: state, Workdir: t.TempDir(), LimitHelper: []string{"/nonexistent"}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := m.Get("old-run")
	if err != nil {
		t.Fatal(err)
	}
	if tr := r.Trailer(); tr == nil || tr.ExitCode != 5 {
		t.Errorf("legacy run's trailer %+v, want exit 5", tr)
	}
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Errorf("unrecorded run directory: %v, want removed", err)
	}
	if _, err := os.Stat(filepath.Join(legacy, legacyMeta)); !os.IsNotExist(err) {
		t.Errorf("legacy metadata file: %v, want moved into the journal", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m2, err := NewManager(Config{StateDir: state, Workdir: t.TempDir(), LimitHelper: []string{"/nonexistent"}})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if r, err := m2.Get("old-run"); err != nil || r.Trailer().ExitCode != 5 {
		t.Errorf("after a second restart: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }
