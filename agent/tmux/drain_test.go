package tmux

import (
	"strings"
	"testing"
)

// Every pane the driver starts has a pipe (so tmux reads its last output
// before marking it dead), and a dead pane without one, which pipe-pane
// refuses, is respawned with one.
func TestRespawnGivesPipe(t *testing.T) {
	m := newManager(t)
	mustCreate(t, m, "p", "sh", "-c", "read x; exit 3")
	pipe := func() string {
		t.Helper()
		out, err := m.run(ctx(t), nil, "display-message", "-p", "-t", "=p:", "#{pane_pipe}")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	if got := pipe(); got != "1" {
		t.Fatalf("new pane: pane_pipe %s, want 1", got)
	}
	// As a pane of an earlier agent: no pipe, then dead.
	if _, err := m.run(ctx(t), nil, "pipe-pane", "-t", "=p:"); err != nil {
		t.Fatal(err)
	}
	if got := pipe(); got != "0" {
		t.Fatalf("after closing the pipe: pane_pipe %s", got)
	}
	if err := m.SendInput(ctx(t), Target{Session: "p"}, Input{Enter: true}); err != nil {
		t.Fatal(err)
	}
	p := waitDead(t, m, "p")
	cmd := Command{Argv: []string{"sh", "-c", "echo again; exit 9"}}
	argv, err := m.prepare(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.mustClient(t, "p").respawn(ctx(t), p.ID, m.respawnLine(p.ID, cmd, argv)); err != nil {
		t.Fatalf("respawn of a dead pane without a pipe: %v", err)
	}
	if p2 := waitDead(t, m, "p"); p2.Exit.Code != 9 {
		t.Fatalf("respawned command: %+v", p2)
	}
	if got := pipe(); got != "1" {
		t.Errorf("respawned pane: pane_pipe %s, want 1", got)
	}
}
