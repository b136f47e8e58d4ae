package tmux

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Sessions outlive the agent: a new manager on the same state dir finds
// the server and its sessions and serves them. Closing the old manager
// leaves no control client behind (a client that is not read but lives
// on freezes its panes, TMUX.md §1).
func TestRestartFindsSessions(t *testing.T) {
	dir := stateDir(t)
	m1 := startManager(t, dir)
	mustCreate(t, m1, "keep", "cat")
	if err := m1.SendInput(ctx(t), Target{Session: "keep"}, Input{Text: []byte("before"), Enter: true}); err != nil {
		t.Fatal(err)
	}
	m1.Close()
	m2 := startManager(t, dir)
	clients, err := m2.run(ctx(t), nil, "list-clients", "-F", "#{client_flags}")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(clients, "control-mode") {
		t.Fatalf("a control client survived Close: %q", clients)
	}
	all, err := m2.ListSessions(ctx(t))
	if err != nil || len(all) != 1 || all[0].Name != "keep" || all[0].Windows[0].Panes[0].Dead {
		t.Fatalf("after restart: %+v %v", all, err)
	}
	f, err := m2.Follow(ctx(t), Target{Session: "keep"}, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(f.Snapshot.Content, []byte("before")) {
		t.Errorf("snapshot: %q", f.Snapshot.Content)
	}
	if err := m2.SendInput(ctx(t), Target{Session: "keep"}, Input{Text: []byte("after"), Enter: true}); err != nil {
		t.Fatal(err)
	}
	readUntil(t, f.Buffer, f.Snapshot.Offset, func(b []byte) bool { return bytes.Count(b, []byte("after")) == 2 })
	// A big output in the session completes: nothing is frozen.
	o, _, err := runIn(t, m2, RunSpec{Session: "keep", Command: Command{Argv: []string{"sh", "-c", "yes | head -c 1000000"}}})
	if err != nil || o.data.Len() < 1000000 {
		t.Fatalf("run after restart: %d bytes, %v", o.data.Len(), err)
	}
}

func TestMissingTmux(t *testing.T) {
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	m := New(Config{StateDir: dir, Bin: "/nonexistent/tmux"})
	if err := m.Start(ctx(t)); err == nil || !strings.Contains(err.Error(), "3.2 or later") {
		t.Fatalf("start: %v", err)
	}
	if _, err := m.ListSessions(ctx(t)); err == nil {
		t.Fatal("list without tmux succeeded")
	}
	old := dir + "/old-tmux"
	if err := os.WriteFile(old, []byte("#!/bin/sh\necho 'tmux 3.1c'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	m = New(Config{StateDir: dir, Bin: old})
	if err := m.Start(ctx(t)); err == nil || !strings.Contains(err.Error(), "too old") {
		t.Fatalf("old tmux: %v", err)
	}
}

// A session run's timeout holds after its caller left and the agent
// restarted: the pane helper enforces it, not the agent.
func TestRunTimeoutSurvivesRestart(t *testing.T) {
	dir := stateDir(t)
	m1 := startManager(t, dir)
	c, cancel := context.WithCancel(ctx(t))
	_, err := m1.RunInSession(c, RunSpec{Session: "to", CreateSession: true, WindowName: "slow", Timeout: 1500 * time.Millisecond,
		Command: Command{Argv: []string{"sh", "-c", "echo ready; exec sleep 300"}}},
		func(RunStarted) error { return nil },
		func(_ uint64, d []byte) error {
			if bytes.Contains(d, []byte("ready")) {
				cancel()
			}
			return nil
		})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("run: %v, want context.Canceled", err)
	}
	m1.Close() // the agent goes; its watchdogs with it
	m2 := startManager(t, dir)
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, err := m2.Session(ctx(t), "to")
		if err != nil {
			t.Fatal(err)
		}
		var p Pane
		for _, w := range s.Windows {
			if w.Name == "slow" {
				p = w.Panes[0]
			}
		}
		if p.Dead && (p.Exit.Signal != 0 || p.Exit.Code >= 0) { // status known
			if p.Exit.Signal != int(syscall.SIGTERM) {
				t.Fatalf("the run ended with %+v, want SIGTERM from its timeout", p.Exit)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the timeout was not enforced after the agent restarted: %+v", p)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
