package workdir

import "testing"

func TestResolve(t *testing.T) {
	t.Setenv("HOME", "/home/u")
	for in, want := range map[string]string{
		"":          "/ws",
		"src/app":   "/ws/src/app",
		"/abs/dir":  "/abs/dir",
		"~":         "/home/u",
		"~/src/app": "/home/u/src/app",
		"~other":    "/ws/~other", // ~user is not expanded
		"./x/../y":  "/ws/y",
	} {
		if got := Resolve("/ws", in); got != want {
			t.Errorf("Resolve(/ws, %q) = %q, want %q", in, got, want)
		}
	}
	t.Setenv("HOME", "")
	if got := Resolve("/ws", "~/a"); got != "/ws/a" {
		t.Errorf("without HOME: %q, want /ws/a", got)
	}
}
