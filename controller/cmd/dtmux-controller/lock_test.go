package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/internal/transport"
)

// TestStateDirLock: a controller starting while another one shuts down in
// the same state dir waits for it (and can be interrupted); while the other
// one serves, wherever it listens, it fails at once.
func TestStateDirLock(t *testing.T) {
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	first := transport.Address{Network: "unix", Addr: filepath.Join(dir, "controller.sock")}
	other := transport.Address{Network: "unix", Addr: filepath.Join(dir, "other.sock")}
	log := hclog.NewNullLogger()
	lock := func(ctx context.Context, a transport.Address, wait time.Duration) (func(), error) {
		return lockStateDir(ctx, dir, a, wait, log)
	}

	held, err := lock(context.Background(), first, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Shutting down: the lock is held, its socket is gone.
	got := make(chan error, 1)
	go func() {
		release, err := lock(context.Background(), other, 30*time.Second)
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

	held, err = lock(context.Background(), first, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held()
	// A wait is interrupted by its context (Ctrl-C).
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := lock(ctx, other, 30*time.Second); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("interrupted wait: %v", err)
	}
	// Serving, at another address than the newcomer's: fails at once,
	// naming where.
	lis, err := net.Listen("unix", first.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	start := time.Now()
	_, err = lock(context.Background(), other, 30*time.Second)
	if err == nil || !strings.Contains(err.Error(), "serves this state dir at "+first.String()) || time.Since(start) > 5*time.Second {
		t.Fatalf("while another controller serves: %v after %v, want a prompt refusal", err, time.Since(start))
	}
}
