package tmux

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestValidKey(t *testing.T) {
	for _, k := range []string{
		"Enter", "enter", "ENTER", "Escape", "Tab", "BTab", "BSpace", "Space", "Up", "Down", "Left", "Right",
		"Home", "End", "PageUp", "PPage", "PgUp", "PageDown", "NPage", "PgDn", "IC", "Insert", "DC", "Delete",
		"F1", "f12", "KP*", "KP/", "KP-", "KP+", "KP.", "KP0", "KP9", "KPEnter",
		"a", "Z", "0", "#", ";", "\"", "'", "~", "-", "^", "é", "😀",
		"C-c", "c-a", "^a", "M-x", "S-Up", "C-M-S-Left", "c-m-s-x", "M--", "C-Space", "C-[", "C-/", "C-?", "M-;", "C-é",
	} {
		if err := ValidKey(k); err != nil {
			t.Errorf("ValidKey(%q) = %v, want nil", k, err)
		}
	}
	for _, k := range []string{
		"", "NotAKey", "Entr", "Enter;kill-server", "F13", "KP", "KPx", "ab", "a-b", "X-a", "C-", "C-M-",
		"C-$", "C-{", "C-~", "C-\"", " ", "\t", "\x1b", "\x7f", "\xff", "Any", "None", "User0", "MouseDown1",
		"Enter Enter", "C-NotAKey",
	} {
		err := ValidKey(k)
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("ValidKey(%q) = %v, want ErrInvalidArgument", k, err)
			continue
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("key %q", k)) {
			t.Errorf("ValidKey(%q) = %q: does not name the key", k, err)
		}
	}
}

// TestValidKeyAgreesWithTmux asks the tmux in use, through bind-key (which
// fails on a key it does not know, where send-keys would type the name as
// text), about every key ValidKey accepts or rejects.
func TestValidKeyAgreesWithTmux(t *testing.T) {
	m := newManager(t)
	var cands []string
	for name := range keyNames {
		for _, mod := range []string{"", "C-", "M-", "S-", "^", "c-m-"} {
			cands = append(cands, mod+name, mod+strings.ToUpper(name))
		}
	}
	for c := byte(0x21); c < 0x7f; c++ {
		for _, mod := range []string{"", "M-", "S-"} {
			cands = append(cands, mod+string(rune(c)))
		}
		if m.version.Major == 3 && m.version.Minor == 3 {
			// Which characters have a control key differs between
			// releases; keyNames and ctrlUnknown follow 3.3a.
			cands = append(cands, "C-"+string(rune(c)))
		}
	}
	cands = append(cands, "NotAKey", "Entr", "F13", "KP", "KPx", "ab", "a-b", "X-a", "C-", "é", "C-é", "M-é", "ü")
	// tmux knows these but they mean nothing to send-keys.
	tmuxOnly := map[string]bool{"Any": true, "User0": true}
	cands = append(cands, "Any", "User0")
	for _, k := range cands {
		if k == ";" {
			continue // m.run takes a lone ";" as a separator; TestSendKeys sends it
		}
		_, tmuxErr := m.run(ctx(t), nil, "bind-key", "-T", "dtmux-test", k, "display-message", "x")
		ours := ValidKey(k)
		switch {
		case ours == nil && tmuxErr != nil:
			t.Errorf("%q: ValidKey accepts it, tmux does not: %v", k, tmuxErr)
		case ours != nil && tmuxErr == nil && !tmuxOnly[k]:
			t.Errorf("%q: tmux knows it, ValidKey rejects it: %v", k, ours)
		}
	}
}

// Keys arrive as the bytes their names stand for; a key that is no key is
// an error naming it, and nothing of the request is typed.
func TestSendKeys(t *testing.T) {
	m := newManager(t)
	dir := t.TempDir()
	mustCreate(t, m, "keys", "/bin/sh", "-c", "stty raw -echo; exec cat > "+dir+"/out")
	waitCommand(t, m, "keys", "cat") // keys typed before stty raw are cooked
	tg := Target{Session: "keys"}
	err := m.SendInput(ctx(t), tg, Input{Text: []byte("never"), Keys: []string{"Enter", "NotAKey", "Entr"}})
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), `"NotAKey"`) {
		t.Fatalf("unknown key: %v, want ErrInvalidArgument naming \"NotAKey\"", err)
	}
	keys := []string{"a", "#", ";", "\"", "'", "~", "$", "é", "Space", "Tab", "C-a", "^b", "M-x", "Enter",
		"-", "BSpace", "Escape", "z"}
	if err := m.SendInput(ctx(t), tg, Input{Keys: keys}); err != nil {
		t.Fatal(err)
	}
	want := []byte("a#;\"'~$é \t\x01\x02\x1bx\r-\x7f\x1bz")
	if got := waitFile(t, dir+"/out", len(want)); !bytes.Equal(got, want) {
		t.Fatalf("pane received %q, want %q", got, want)
	}
}

// Input to a dead pane is an error saying so, not silently dropped.
func TestSendToDeadPane(t *testing.T) {
	m := newManager(t)
	s := mustCreate(t, m, "dead", "/bin/sh", "-c", "exit 9")
	pane := s.Windows[0].Panes[0].ID
	waitDead(t, m, "dead")
	for _, in := range []Input{{Text: []byte("hello")}, {Keys: []string{"Enter"}}, {Data: bytes.Repeat([]byte("x"), pasteThreshold+1)}} {
		err := m.SendInput(ctx(t), Target{Session: "dead"}, in)
		want := "pane " + pane + " of session dead is dead (exit status 9): nothing was sent"
		var pd *PaneDeadError
		if !errors.Is(err, ErrPaneDead) || !errors.As(err, &pd) || err.Error() != want {
			t.Errorf("send to a dead pane: %v, want %q", err, want)
		}
	}
}

func waitDead(t *testing.T, m *Manager, session string) Pane {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, err := m.Session(ctx(t), session)
		if err != nil {
			t.Fatal(err)
		}
		if p := s.Windows[0].Panes[0]; p.Dead && p.Exit.Code >= 0 {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("pane of %s did not die: %+v", session, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
