package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// TestStateDirLock: a controller starting while another one shuts down in
// the same state dir waits for it; while the other one serves, it fails at
// once.
func TestStateDirLock(t *testing.T) {
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "controller.sock")

	held, err := lockStateDir(dir, sock, time.Second, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	// Shutting down: the lock is held, the socket is gone.
	got := make(chan error, 1)
	go func() {
		release, err := lockStateDir(dir, sock, 30*time.Second, hclog.NewNullLogger())
		if err == nil {
			release()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("took the state dir while the other controller holds it: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	held()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("after the other controller exited: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still waiting after the lock was released")
	}

	// Serving: fails at once, naming the socket.
	held, err = lockStateDir(dir, sock, time.Second, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer held()
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	start := time.Now()
	_, err = lockStateDir(dir, sock, 30*time.Second, hclog.NewNullLogger())
	if err == nil || !strings.Contains(err.Error(), "another controller serves this state dir") || time.Since(start) > 5*time.Second {
		t.Fatalf("while another controller serves: %v after %v, want a prompt refusal", err, time.Since(start))
	}
}
