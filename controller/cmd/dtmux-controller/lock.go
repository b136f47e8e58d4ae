package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/internal/transport"
)

// lockName is the controller's lock in its state dir, held (flock) for the
// life of the process; it records the holder's pid and address.
const lockName = "controller.lock"

// lockWait is how long a controller waits for one that is shutting down in
// the same state dir.
const lockWait = 30 * time.Second

// lockStateDir takes the state dir for this controller, which will serve
// at addr. A controller that is shutting down has closed its socket but
// may still be stopping agents (--stop-agents-on-exit) or draining calls:
// a new one that adopted the agents then would lose them to the old one.
// So the lock is held until the process exits, and a new controller waits
// for it (up to wait, or until ctx ends), or fails at once when the holder
// still serves at the address it recorded.
func lockStateDir(ctx context.Context, stateDir string, addr transport.Address, wait time.Duration, log hclog.Logger) (release func(), err error) {
	path := filepath.Join(stateDir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir lock: %w", err)
	}
	deadline := time.Now().Add(wait)
	for logged := false; ; logged = true {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			if err := f.Truncate(0); err == nil {
				f.WriteAt([]byte(fmt.Sprintf("pid=%d listen=%s\n", os.Getpid(), addr)), 0)
			}
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("state dir lock: %w", err)
		}
		pid, holder := lockHolder(path)
		if holder.Addr == "" {
			// A holder that recorded nothing (an older build): most
			// likely it serves where this one would.
			holder = addr
		}
		who := "another controller"
		if pid > 0 {
			who = fmt.Sprintf("another controller (pid %d)", pid)
		}
		if serving(ctx, holder) {
			f.Close()
			return nil, fmt.Errorf("%s serves this state dir at %s: stop it first, or use another --state-dir", who, holder)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("%s still holds this state dir (%s) after %v", who, path, wait)
		}
		if !logged {
			log.Info("waiting for the controller shutting down in this state dir", "pid", pid, "lock", path)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// lockHolder reads what the holder of the lock at path recorded.
func lockHolder(path string) (int, transport.Address) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, transport.Address{}
	}
	var pid int
	var addr transport.Address
	for _, f := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "pid":
			pid, _ = strconv.Atoi(v)
		case "listen":
			addr, _ = transport.ParseAddress(v)
		}
	}
	return pid, addr
}

// serving reports whether something accepts connections at a.
func serving(ctx context.Context, a transport.Address) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, a.Network, a.Addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
