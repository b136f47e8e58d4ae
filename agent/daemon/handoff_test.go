package daemon

import (
	"bytes"
	"io"
	"os"
	"testing"
	"time"
)

// hop is the two pipes a hop gives its pump (stdin, stdout), and the far
// ends that stand for sshd.
type hop struct {
	stdin, stdout *os.File // the pump's ends
	send, recv    *os.File // sshd's ends
}

func newHop(t *testing.T) *hop {
	t.Helper()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inR.Close(); inW.Close(); outR.Close(); outW.Close() })
	return &hop{stdin: inR, stdout: outW, send: inW, recv: outR}
}

// handedOff hands a new hop to a daemon's listener and returns the
// pump's Hop, the daemon's connection and the hop.
func handedOff(t *testing.T) (*Hop, *HopConn, *hop) {
	t.Helper()
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, err := ListenHops(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	h := newHop(t)
	hp, err := HandOff(dir, h.stdin, h.stdout)
	if err != nil {
		t.Fatal(err)
	}
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return hp, c.(*HopConn), h
}

// The daemon reads and writes the hop's own pipes; the pump holds no copy
// of them, and ends when the daemon closes the hop.
func TestHandOffDaemonServesThePipes(t *testing.T) {
	hp, c, h := handedOff(t)
	if pc, err := c.PeerCred(); err != nil || int(pc.Pid) != os.Getpid() || int(pc.Uid) != os.Getuid() {
		t.Errorf("peer %+v %v, want this process", pc, err)
	}
	// sshd → daemon, daemon → sshd, in bulk.
	payload := bytes.Repeat([]byte("frame"), 400000)
	go func() { h.send.Write(payload); h.send.Close() }()
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(h.recv); got <- b }()
	if _, err := io.Copy(c, c); err != nil {
		t.Fatalf("echo through the handed-off pipes: %v", err)
	}
	waited := make(chan struct{})
	go func() { hp.Wait(); close(waited) }()
	select {
	case <-waited:
		t.Fatal("the pump ended while the daemon still had the hop")
	case <-time.After(50 * time.Millisecond):
	}
	c.Close()
	if b := <-got; !bytes.Equal(b, payload) {
		t.Fatalf("sshd got %d bytes back, want %d unchanged (EOF only once the daemon closed)", len(b), len(payload))
	}
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("the pump did not end when the daemon closed the hop")
	}
}

// A pump that dies takes the hop with it: the daemon's reads end.
func TestHandOffPumpGone(t *testing.T) {
	hp, c, _ := handedOff(t)
	hp.conn.Close() // as the pump's death would
	read := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 1)); read <- err }()
	select {
	case err := <-read:
		if err == nil {
			t.Fatal("read data after the pump died")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the daemon kept the hop of a dead pump")
	}
}

// Without a daemon taking hops, HandOff fails and leaves the pipes to the
// pump (which then copies).
func TestHandOffNoDaemon(t *testing.T) {
	dir := t.TempDir()
	h := newHop(t)
	if _, err := HandOff(dir, h.stdin, h.stdout); err == nil {
		t.Fatal("HandOff succeeded without a listener")
	}
	if _, err := h.stdout.Write([]byte("x")); err != nil {
		t.Errorf("the pump's stdout after a failed hand-off: %v", err)
	}
}
