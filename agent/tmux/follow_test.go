package tmux

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestCaptureAfter10000Lines(t *testing.T) {
	m := newManager(t)
	mustCreate(t, m, "cap", "sh", "-c", "seq 1 10000; exec sleep 600")
	f, err := m.Follow(ctx(t), Target{Session: "cap"}, false, 1)
	if err != nil {
		t.Fatal(err)
	}
	// Wait (on %output, not by polling capture-pane) until 10000 shows.
	readUntil(t, f.Buffer, 0, func(b []byte) bool { return bytes.Contains(b, []byte("10000\r\n")) })
	cp, err := m.Capture(ctx(t), Target{Session: "cap"}, CaptureOptions{AllHistory: true})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(cp.Content), "\n"), "\n")
	if len(lines) < 10000 {
		t.Fatalf("captured %d lines", len(lines))
	}
	for i := 1; i <= 10000; i++ {
		if lines[i-1] != strconv.Itoa(i) {
			t.Fatalf("line %d = %q", i, lines[i-1])
		}
	}
	if cp.HistorySize < 10000-30 || cp.Size.Rows != 30 {
		t.Errorf("history %d size %+v", cp.HistorySize, cp.Size)
	}
	part, err := m.Capture(ctx(t), Target{Session: "cap"}, CaptureOptions{HistoryLines: 5})
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(part.Content), "\n"); n != 35 {
		t.Errorf("history 5 + 30 rows: %d lines", n)
	}
}

// A snapshot and the live stream after it neither lose nor repeat a line,
// while output is being produced during the handoff.
func TestFollowSnapshotNoGapNoDup(t *testing.T) {
	m := newManager(t)
	mustCreate(t, m, "fol", "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); echo L$i; done; exec sleep 600")
	time.Sleep(100 * time.Millisecond) // let output be under way; correctness does not depend on it
	f, err := m.Follow(ctx(t), Target{Session: "fol"}, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	snap := strings.Split(strings.TrimRight(string(f.Snapshot.Content), "\n"), "\n")
	last := 0
	for _, l := range snap {
		if n, err := strconv.Atoi(strings.TrimPrefix(l, "L")); err == nil && strings.HasPrefix(l, "L") {
			if n != last+1 {
				t.Fatalf("snapshot jumps from L%d to L%d", last, n)
			}
			last = n
		}
	}
	live := readUntil(t, f.Buffer, f.Snapshot.Offset, func(b []byte) bool {
		return last == 20000 || bytes.Contains(b, []byte("L20000\r\n"))
	})
	// The snapshot ends with a whole line when output is line-buffered
	// by sh; live output continues with the next one.
	next := last
	for _, l := range strings.Split(strings.TrimSuffix(string(live), "\r\n"), "\r\n") {
		if l == "" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimPrefix(l, "L"))
		if err != nil {
			t.Fatalf("live line %q", l)
		}
		if n != next+1 {
			t.Fatalf("after L%d came L%d (snapshot ended at L%d)", next, n, last)
		}
		next = n
	}
	if next != 20000 {
		t.Fatalf("ended at L%d", next)
	}
	t.Logf("snapshot ended at L%d", last)
}

// A follower that never reads does not make the agent hold more than the
// per-pane bound; it gets an eviction gap and continues.
func TestSlowFollowerBoundedMemory(t *testing.T) {
	const bound = 64 << 10
	m := newManager(t, func(c *Config) { c.BufferBytes = bound })
	mustCreate(t, m, "slow", "sleep", "600")
	f, err := m.Follow(ctx(t), Target{Session: "slow"}, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	start := f.Cursor.Offset
	o, _, err := runIn(t, m, RunSpec{Session: "slow", Command: Command{Argv: []string{"sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"}}})
	if err != nil {
		t.Fatal(err)
	}
	if o.data.Len() != 3000000 {
		t.Errorf("run output %d bytes", o.data.Len())
	}
	// The follower of the first window saw nothing; follow the run's
	// pane: its buffer stayed bounded.
	b := m.mustClient(t, "slow").Buffer(o.started.Pane)
	if n := b.Buffered(); n > bound+bound/4 {
		t.Errorf("buffered %d bytes, bound %d", n, bound)
	}
	c := b.NewCursor(0)
	ch := b.Next(c, 1<<20)
	if ch.Gap == nil || ch.Gap.Reason != GapEvicted || ch.Gap.Bytes == 0 {
		t.Fatalf("slow reader: %+v", ch)
	}
	if ch := b.Next(c, 1<<20); len(ch.Data) == 0 {
		t.Fatalf("after the gap: %+v", ch)
	}
	_ = start
}

func (m *Manager) mustClient(t testing.TB, s string) *Client {
	t.Helper()
	c, err := m.client(ctx(t), s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tmux flow control: a paused pane gives a "paused" gap, and a follower
// can resync with a snapshot.
func TestPauseGivesGap(t *testing.T) {
	m := newManager(t)
	mustCreate(t, m, "pz", "sleep", "600")
	f, err := m.Follow(ctx(t), Target{Session: "pz"}, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Ask tmux to pause the pane, as it does for a reader pause-after
	// behind; then output must report a paused gap before newer bytes.
	if _, err := f.c.Command(ctx(t), "refresh-client -A "+quoteWord(f.Pane+":pause")); err != nil {
		t.Fatal(err)
	}
	if err := m.SendInput(ctx(t), Target{Session: "pz"}, Input{Text: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(20 * time.Second)
	for {
		ch := f.Buffer.Next(f.Cursor, 1<<20)
		if ch.Gap != nil {
			if ch.Gap.Reason != GapPaused {
				t.Fatalf("gap %+v", ch.Gap)
			}
			break
		}
		if ch.Wait != nil {
			select {
			case <-ch.Wait:
			case <-deadline:
				t.Fatal("no paused gap")
			}
		}
	}
	if _, err := f.Resync(ctx(t)); err != nil {
		t.Fatal(err)
	}
}

// tmux 3.3a drops a pane's last output at exit (#4807): a follower that
// reads up to the exit and then the Tail has every byte, in order.
// Without the pane log, runs of this test came up short.
func TestFollowTailAtExit(t *testing.T) {
	m := newManager(t, func(c *Config) { c.BufferBytes = 64 << 20 })
	dir := t.TempDir()
	var data bytes.Buffer
	for i := range 100000 {
		fmt.Fprintf(&data, "line %06d %s\n", i, strings.Repeat("y", i%40))
	}
	data.WriteString("THE END\n")
	if err := os.WriteFile(filepath.Join(dir, "data"), data.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	// stty raw after the read: the file arrives byte for byte.
	mustCreate(t, m, "tail", "sh", "-c", "read x; stty raw -echo; cat "+filepath.Join(dir, "data")+"; exit 4")
	f, err := m.Follow(ctx(t), Target{Session: "tail"}, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SendInput(ctx(t), Target{Session: "tail"}, Input{Enter: true}); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	deadline := time.After(60 * time.Second)
	for {
		ch := f.Buffer.Next(f.Cursor, 1<<20)
		if ch.Data != nil {
			got.Write(ch.Data)
			continue
		}
		if ch.Gap != nil {
			t.Fatalf("gap %+v", *ch.Gap)
		}
		if ch.Exit != nil {
			if ch.Exit.Code != 4 {
				t.Errorf("exit %+v", *ch.Exit)
			}
			got.Write(f.Tail(ctx(t)))
			break
		}
		if ch.Closed {
			t.Fatal("pane closed")
		}
		select {
		case <-ch.Wait:
		case <-deadline:
			t.Fatalf("no exit; got %d bytes", got.Len())
		}
	}
	// Before the file: the echo of the Enter that read consumed.
	out := bytes.TrimPrefix(got.Bytes(), []byte("\r\n"))
	if !bytes.Equal(out, data.Bytes()) {
		t.Fatalf("got %d bytes ending %q, want %d ending %q", len(out), out[max(0, len(out)-40):], data.Len(), data.Bytes()[data.Len()-40:])
	}
}

// A followed pane's log does not keep what the buffer has evicted: its
// head is punched out, so a long, chatty pane does not fill the disk.
func TestFollowLogHeadFreed(t *testing.T) {
	m := newManager(t, func(c *Config) { c.BufferBytes = 64 << 10 })
	mustCreate(t, m, "chatty", "sh", "-c", "read x; head -c 12000000 /dev/zero | tr '\\0' 'z'; echo; echo DONE; exec sleep 600")
	f, err := m.Follow(ctx(t), Target{Session: "chatty"}, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SendInput(ctx(t), Target{Session: "chatty"}, Input{Enter: true}); err != nil {
		t.Fatal(err)
	}
	c := f.Buffer.NewCursor(0)
	deadline := time.After(60 * time.Second)
	var tail []byte
	for !bytes.Contains(tail, []byte("DONE")) {
		ch := f.Buffer.Next(c, 1<<20)
		if ch.Data != nil {
			tail = append(tail[max(0, len(tail)-16):], ch.Data...)
			continue
		}
		if ch.Gap != nil {
			continue // evicted: expected with a small buffer
		}
		select {
		case <-ch.Wait:
		case <-deadline:
			t.Fatal("no DONE")
		}
	}
	logs, _ := filepath.Glob(filepath.Join(m.cfg.StateDir, "logs", "pane-*.log"))
	if len(logs) != 1 {
		t.Fatalf("pane logs %v, want one", logs)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(logs[0], &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; st.Size < 12000000 || used > st.Size/2 {
		t.Errorf("log size %d, %d bytes on disk: its head was not freed", st.Size, used)
	}
}
