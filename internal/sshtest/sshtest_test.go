package sshtest

import (
	"strings"
	"testing"
)

func TestServer(t *testing.T) {
	s := Start(t, Options{Env: map[string]string{"DTMUX_MARK": "m1"}})
	out, err := s.Run(t, `echo "$HOME $DTMUX_MARK $TMUX_TMPDIR"; exit 3`)
	if err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("want exit status 3, got %v (%s)", err, out)
	}
	want := s.Home + " m1 " + s.Dir + "/tmux"
	if strings.TrimSpace(out) != want {
		t.Fatalf("session env = %q, want %q", out, want)
	}
}

func TestRejectAll(t *testing.T) {
	s := Start(t, Options{RejectAll: true})
	out, err := s.Run(t, "true")
	if err == nil || !strings.Contains(out, "Permission denied") {
		t.Fatalf("want Permission denied, got %v (%s)", err, out)
	}
}
