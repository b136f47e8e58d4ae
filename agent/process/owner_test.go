package process_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"github.com/dtmux/dtmux/agent/process"
)

// pattern returns the first n bytes of `yes LINE`.
func pattern(line string, n int) []byte {
	out := bytes.Repeat([]byte(line+"\n"), n/(len(line)+1)+1)
	return out[:n]
}

// waitFor polls cond until it holds, failing after a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestOwnerGetsEveryByte: the owner of an attached run falls a whole spool
// behind; the process waits for it instead of evicting, and it receives
// every byte. A viewer that reads nothing meanwhile holds nothing back and
// gets a gap.
func TestOwnerGetsEveryByte(t *testing.T) {
	m, _ := newManager(t, nil)
	const limit = 1 << 20
	const n = 8*limit + 12345
	const line = "0123456789abcdefghijklmnopqrstuvwxyz"
	spec := sh(fmt.Sprintf("yes %s | head -c %d; echo done >&2", line, n))
	spec.Limits.MaxOutputBytes = limit
	spec.Owner = true
	r := start(t, m, spec)
	owner := r.OwnerReader()
	if owner == nil {
		t.Fatal("no owner reader for an owned run")
	}
	defer owner.Close()
	if r.OwnerReader() != nil {
		t.Fatal("a second owner reader")
	}
	viewer := r.NewReader(0, 0)
	defer viewer.Close()

	// With the owner reading nothing, the spool fills up to its limit and
	// no further: the producer waits.
	waitFor(t, "a full spool", func() bool { return r.Info().StdoutBytes == limit })
	time.Sleep(200 * time.Millisecond)
	if in := r.Info(); in.StdoutBytes != limit || in.State != process.StateRunning {
		t.Fatalf("with an owner that reads nothing: %d bytes spooled, state %v; want %d and running", in.StdoutBytes, in.State, limit)
	}

	// The owner reads slowly, one event at a time.
	ctx := context.Background()
	h := sha256.New()
	var got uint64
	var stderr []byte
	for i := 0; ; i++ {
		ev, err := owner.Next(ctx, true)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ev.Kind == process.EventGap {
			t.Fatalf("the owner got a gap of %d bytes at %v offset %d", ev.Bytes, ev.Stream, ev.Offset)
		}
		if ev.Stream == process.Stderr {
			stderr = append(stderr, ev.Data...)
			continue
		}
		if ev.Offset != got {
			t.Fatalf("stdout event at %d, want %d", ev.Offset, got)
		}
		h.Write(ev.Data)
		got += uint64(len(ev.Data))
		if i%4 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	if want := sha256.Sum256(pattern(line, n)); got != n || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Errorf("owner got %d of %d bytes, checksum match %v", got, n, bytes.Equal(h.Sum(nil), want[:]))
	}
	if string(stderr) != "done\n" {
		t.Errorf("stderr %q", stderr)
	}
	if tr := r.Trailer(); tr.Reason != process.ReasonExited || tr.ExitCode != 0 || tr.StdoutBytes != n {
		t.Errorf("trailer %+v", tr)
	}

	// The viewer never read while the run went on: it lost the start.
	ev, err := viewer.Next(ctx, true)
	if err != nil || ev.Kind != process.EventGap || ev.Bytes != n-limit {
		t.Errorf("viewer's first event %+v (%v), want a gap of %d", ev, err, n-limit)
	}
}

// TestOwnerCloseReleasesTheProcess: once the owner goes away, the process
// no longer waits and later bytes are evicted as usual.
func TestOwnerCloseReleasesTheProcess(t *testing.T) {
	m, _ := newManager(t, nil)
	spec := sh("head -c 5000000 /dev/zero")
	spec.Limits.MaxOutputBytes = 1 << 20
	spec.Owner = true
	r := start(t, m, spec)
	owner := r.OwnerReader()
	waitFor(t, "a full spool", func() bool { return r.Info().StdoutBytes == 1<<20 })
	owner.Close()
	waitDone(t, r)
	if tr := r.Trailer(); tr.Reason != process.ReasonExited || tr.StdoutBytes != 5000000 {
		t.Errorf("trailer %+v", tr)
	}
}

// TestOwnerIgnoredWhenDetachedOrKilled: a detached run has no owner, and
// a kill lifts the back-pressure so a stalled owner cannot keep a killed
// run alive.
func TestOwnerIgnoredWhenDetachedOrKilled(t *testing.T) {
	m, _ := newManager(t, nil)
	spec := sh("head -c 5000000 /dev/zero")
	spec.Limits.MaxOutputBytes = 1 << 20
	spec.Owner, spec.Detach = true, true
	r := start(t, m, spec)
	if r.OwnerReader() != nil {
		t.Error("a detached run has an owner")
	}
	waitDone(t, r)

	spec = sh("cat /dev/zero")
	spec.Limits.MaxOutputBytes = 1 << 20
	spec.Owner = true
	r = start(t, m, spec)
	owner := r.OwnerReader()
	defer owner.Close()
	waitFor(t, "a full spool", func() bool { return r.Info().StdoutBytes == 1<<20 })
	r.Kill("test")
	waitDone(t, r)
	if tr := r.Trailer(); tr.Reason != process.ReasonKilled {
		t.Errorf("trailer %+v", tr)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// TestFinishedRunsHoldNoFiles: retained runs close their spools; readers
// reopen them.
func TestFinishedRunsHoldNoFiles(t *testing.T) {
	m, _ := newManager(t, nil)
	before := openFDs(t)
	const runs = 300
	var last *process.Run
	for i := range runs {
		last = start(t, m, sh(fmt.Sprintf("echo out %d; echo err %d >&2", i, i)))
		waitDone(t, last)
	}
	if after := openFDs(t); after > before+10 {
		t.Errorf("%d finished runs left %d more open files (before %d, after %d)", runs, after-before, before, after)
	}
	if n := len(m.List(nil)); n != runs {
		t.Errorf("%d runs listed, want %d", n, runs)
	}
	// A finished run is still readable, and reading leaves nothing open.
	res := collect(t, last, 0, 0)
	if want := fmt.Sprintf("out %d\n", runs-1); string(res.stdout) != want || string(res.stderr) != fmt.Sprintf("err %d\n", runs-1) {
		t.Errorf("stdout %q stderr %q", res.stdout, res.stderr)
	}
	mid := m.List(nil)[runs/2]
	r, err := m.Get(mid.ID)
	if err != nil {
		t.Fatal(err)
	}
	rd := r.NewReader(4, 0)
	ev, err := rd.Next(context.Background(), true)
	if err != nil || string(ev.Data) != fmt.Sprintf("%d\n", runs/2) {
		t.Errorf("read from offset 4: %q (%v)", ev.Data, err)
	}
	rd.Close()
	if after := openFDs(t); after > before+10 {
		t.Errorf("readers left files open: before %d, after %d", before, after)
	}
}

// TestOwnerGetsTheTailAfterExit: the process has exited with its last
// bytes still in the pipe while the owner is a spool behind; the drain
// waits for the owner rather than closing the pipe after the drain grace.
func TestOwnerGetsTheTailAfterExit(t *testing.T) {
	m, _ := newManager(t, nil)
	const limit = 1 << 20
	const n = limit + 100000 // the tail fits in the reader's chunk and the pipe
	spec := sh(fmt.Sprintf("head -c %d /dev/zero", n))
	spec.Limits.MaxOutputBytes = limit
	spec.Owner = true
	r := start(t, m, spec)
	owner := r.OwnerReader()
	defer owner.Close()
	waitFor(t, "the process to exit", func() bool { return gone(r.Info().PID) })
	time.Sleep(1 * time.Second) // > DrainGrace (300ms) several times
	var got uint64
	for {
		ev, err := owner.Next(context.Background(), true)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ev.Kind != process.EventOutput {
			t.Fatalf("owner got a gap of %d bytes", ev.Bytes)
		}
		got += uint64(len(ev.Data))
	}
	if tr := r.Trailer(); got != n || tr.StdoutBytes != n {
		t.Errorf("owner got %d bytes, trailer counts %d, want %d", got, tr.StdoutBytes, n)
	}
}
