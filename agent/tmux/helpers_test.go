package tmux

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/internal/testbin"
)

func TestMain(m *testing.M) {
	// Session runs re-execute this test binary as their pane's process.
	if len(os.Args) > 1 && os.Args[1] == PaneExecCommand {
		PaneExec(os.Args[2:])
	}
	os.Exit(m.Run())
}

func needTmux(t testing.TB) {
	t.Helper()
	testbin.RequireTool(t, "tmux")
}

// newManager starts a manager on a fresh private server; the server is
// killed when the test ends.
func newManager(t testing.TB, mut ...func(*Config)) *Manager {
	t.Helper()
	return startManager(t, stateDir(t), mut...)
}

// stateDir is a fresh, short state directory (the server socket's path
// must fit in 108 bytes), removed when the test ends.
func stateDir(t testing.TB) string {
	t.Helper()
	needTmux(t)
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func startManager(t testing.TB, dir string, mut ...func(*Config)) *Manager {
	t.Helper()
	work := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		StateDir: dir,
		WorkDir:  work,
		// A race-instrumented helper would sleep a second at exit.
		PaneHelper: []string{"/usr/bin/env", "GORACE=atexit_sleep_ms=0", self, PaneExecCommand},
		Logger:     hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr}),
	}
	for _, f := range mut {
		f(&cfg)
	}
	m := New(cfg)
	if err := m.Start(ctx(t)); err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(m.KillServer)
	return m
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func mustCreate(t testing.TB, m *Manager, name string, argv ...string) Session {
	t.Helper()
	s, err := m.CreateSession(ctx(t), SessionSpec{Name: name, Command: Command{Argv: argv}, Size: Size{Cols: 120, Rows: 30}})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return s
}

// readUntil follows a pane's buffer from offset until cond holds on what
// was read, or the context ends.
func readUntil(t testing.TB, b *Buffer, from uint64, cond func([]byte) bool) []byte {
	t.Helper()
	c := b.NewCursor(from)
	var got bytes.Buffer
	deadline := time.After(30 * time.Second)
	for !cond(got.Bytes()) {
		ch := b.Next(c, 1<<20)
		if ch.Data != nil {
			got.Write(ch.Data)
			continue
		}
		if ch.Gap != nil {
			t.Fatalf("unexpected gap %+v", *ch.Gap)
		}
		if ch.Closed {
			t.Fatalf("pane closed; got %q", got.Bytes())
		}
		select {
		case <-ch.Wait:
		case <-deadline:
			t.Fatalf("timed out; got %q", got.Bytes())
		}
	}
	return got.Bytes()
}

func waitFile(t testing.TB, path string, want int) []byte {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if len(b) >= want || time.Now().After(deadline) {
			return b
		}
		time.Sleep(20 * time.Millisecond)
	}
}
