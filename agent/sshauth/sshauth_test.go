package sshauth

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// listen makes a unix socket at path, as sshd does for a forwarded agent.
func listen(t *testing.T, path string) net.Listener {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestUpdateAndEnv(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "state")
	if env := Env(dir); env != nil || Managed(dir) {
		t.Fatalf("no hop forwarded an agent yet, Env = %q, Managed %v", env, Managed(dir))
	}
	if _, err := Update(dir, ""); err != nil || Env(dir) != nil {
		t.Fatalf("a hop without an agent: err %v, Env %q", err, Env(dir))
	}
	want := []string{"SSH_AUTH_SOCK=" + LinkPath(dir)}
	var hops []net.Listener
	var done []func()
	for _, name := range []string{"a.sock", "b.sock"} {
		sock := filepath.Join(tmp, name)
		hops = append(hops, listen(t, sock))
		d, err := Update(dir, sock)
		if err != nil {
			t.Fatal(err)
		}
		done = append(done, d)
		if got, _ := os.Readlink(LinkPath(dir)); got != sock {
			t.Errorf("link points at %q, want the newest hop's %q", got, sock)
		}
		if env := Env(dir); !slices.Equal(env, want) {
			t.Errorf("Env = %q, want %q", env, want)
		}
	}
	// A hop without an agent leaves the others'.
	if _, err := Update(dir, ""); err != nil {
		t.Fatal(err)
	}
	if env := Env(dir); !slices.Equal(env, want) {
		t.Errorf("after a hop without an agent: Env = %q, want %q", env, want)
	}
	// The newest hop ends while the older one is up: runs get the older
	// one's agent.
	hops[1].Close()
	if env := Env(dir); !slices.Equal(env, want) {
		t.Errorf("with the newest hop gone: Env = %q, want %q", env, want)
	}
	if got, _ := os.Readlink(LinkPath(dir)); got != filepath.Join(tmp, "a.sock") {
		t.Errorf("link points at %q, want the hop still up", got)
	}
	// Once no hop's session is up (sshd removes their sockets), runs get
	// no SSH_AUTH_SOCK rather than a dead one.
	hops[0].Close()
	done[0]()
	if env := Env(dir); env != nil || !Managed(dir) {
		t.Errorf("with every socket gone: Env = %q, Managed %v", env, Managed(dir))
	}
	if left, _ := os.ReadDir(filepath.Join(dir, hopsDir)); len(left) != 0 {
		t.Errorf("links of ended hops left: %v", left)
	}
	if left, _ := filepath.Glob(LinkPath(dir) + ".new.*"); len(left) != 0 {
		t.Errorf("temporary links left: %v", left)
	}
	// A relative state dir gives an absolute link: runs start elsewhere.
	if p := LinkPath("rel"); !filepath.IsAbs(p) {
		t.Errorf("LinkPath(rel) = %q", p)
	}
	if _, err := Update(filepath.Join(tmp, strings.Repeat("d", 120)), "/tmp/s"); err == nil {
		t.Error("a link too long for a socket path was accepted silently")
	}
}

// Runs starting at once after the newest hop ended all get the agent of
// the hop still up.
func TestEnvConcurrentTakeOver(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "state")
	listen(t, filepath.Join(tmp, "a.sock"))
	if _, err := Update(dir, filepath.Join(tmp, "a.sock")); err != nil {
		t.Fatal(err)
	}
	b := listen(t, filepath.Join(tmp, "b.sock"))
	if _, err := Update(dir, filepath.Join(tmp, "b.sock")); err != nil {
		t.Fatal(err)
	}
	b.Close()
	var wg sync.WaitGroup
	var missed atomic.Int32
	for range 32 {
		wg.Go(func() {
			if Env(dir) == nil {
				missed.Add(1)
			}
		})
	}
	wg.Wait()
	if n := missed.Load(); n != 0 {
		t.Errorf("%d of 32 runs started at once got no agent", n)
	}
}
