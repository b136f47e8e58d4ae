package daemon

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pair returns a connected client conn and the server's accepted one.
func pair(t *testing.T) (*net.UnixConn, net.Conn) {
	t.Helper()
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, err := net.Listen("unix", filepath.Join(dir, SocketName))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := dial(filepath.Join(dir, SocketName))
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

func TestPumpHopEnds(t *testing.T) {
	c, s := pair(t)
	if pid, err := peerPID(c); err != nil || pid != os.Getpid() {
		t.Errorf("peer pid %d %v, want %d", pid, err, os.Getpid())
	}
	inR, inW := io.Pipe()
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- Pump(inR, &out, c) }()
	// The "daemon" echoes until EOF, then closes, as the agent's HTTP/2
	// server does.
	go func() { io.Copy(s, s); s.Close() }()
	payload := bytes.Repeat([]byte("frame"), 100000)
	go func() { inW.Write(payload); inW.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Pump: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Pump did not return after the hop's EOF")
	}
	if !bytes.Equal(out.Bytes(), payload) {
		t.Fatalf("echoed %d bytes, want %d unchanged", out.Len(), len(payload))
	}
}

func TestPumpDaemonEnds(t *testing.T) {
	c, s := pair(t)
	inR, inW := io.Pipe() // never closed by the hop
	t.Cleanup(func() { inW.Close() })
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- Pump(inR, &out, c) }()
	s.Write([]byte("bye"))
	s.Close()
	select {
	case err := <-done:
		if err != nil || out.String() != "bye" {
			t.Fatalf("Pump: %v, out %q", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Pump did not return when the daemon closed")
	}
}

func TestRunningFollowsTheLock(t *testing.T) {
	dir := t.TempDir()
	if _, alive := running(dir); alive {
		t.Fatal("alive with no pid file")
	}
	f, err := os.OpenFile(filepath.Join(dir, PIDName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("4242\n")
	if _, alive := running(dir); alive {
		t.Fatal("alive with an unlocked pid file")
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	if pid, alive := running(dir); !alive || pid != 4242 {
		t.Fatalf("locked: pid %d alive %v", pid, alive)
	}
	f.Close()
	if _, alive := running(dir); alive {
		t.Fatal("alive after the holder closed the file")
	}
}

func TestConnectRefusesLongSocketPath(t *testing.T) {
	long := "/tmp/" + strings.Repeat("d", 110)
	_, err := Connect(t.Context(), Config{StateDir: long, Path: "/bin/false"})
	if err == nil || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("err %v", err)
	}
	if _, err := os.Stat(long); err == nil {
		t.Fatal("created the state dir anyway")
	}
}

func TestBuildIDOfThisTest(t *testing.T) {
	a, err := buildID("/proc/self/exe")
	if err != nil || a == "" || strings.HasPrefix(a, "sha256:") {
		t.Fatalf("build id %q %v", a, err)
	}
	// A file without a Go note falls back to its checksum.
	p := filepath.Join(t.TempDir(), "x")
	os.WriteFile(p, []byte("not elf"), 0o600)
	if b, err := buildID(p); err != nil || !strings.HasPrefix(b, "sha256:") {
		t.Fatalf("non-ELF: %q %v", b, err)
	}
}
