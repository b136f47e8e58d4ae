package sshauth

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestUpdateAndEnv(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if env := Env(dir); env != nil {
		t.Fatalf("no hop forwarded an agent yet, Env = %q", env)
	}
	if err := Update(dir, ""); err != nil || Env(dir) != nil {
		t.Fatalf("a hop without an agent: err %v, Env %q", err, Env(dir))
	}
	for _, sock := range []string{"/tmp/ssh-a/agent.1", "/tmp/ssh-b/agent.2"} {
		if err := Update(dir, sock); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.Readlink(LinkPath(dir)); got != sock {
			t.Errorf("link points at %q, want the newest hop's %q", got, sock)
		}
		if env := Env(dir); !slices.Equal(env, []string{"SSH_AUTH_SOCK=" + LinkPath(dir)}) {
			t.Errorf("Env = %q", env)
		}
	}
	// A hop without an agent leaves the last one's.
	if err := Update(dir, ""); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.Readlink(LinkPath(dir)); got != "/tmp/ssh-b/agent.2" {
		t.Errorf("link after a hop without an agent: %q", got)
	}
	if left, _ := filepath.Glob(LinkPath(dir) + ".new.*"); len(left) != 0 {
		t.Errorf("temporary links left: %v", left)
	}
}
