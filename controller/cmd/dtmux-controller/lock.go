package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// lockName is the controller's lock in its state dir, held (flock) for the
// life of the process.
const lockName = "controller.lock"

// lockWait is how long a controller waits for one that is shutting down in
// the same state dir.
const lockWait = 30 * time.Second

// lockStateDir takes the state dir for this controller. A controller that
// is shutting down has closed its socket but may still be stopping agents
// (--stop-agents-on-exit) or draining calls: a new one that adopted the
// agents then would lose them to the old one. So the lock is held until
// the process exits, and a new controller waits for it (up to wait), or
// fails at once when the other one still serves on sock.
func lockStateDir(stateDir, sock string, wait time.Duration, log hclog.Logger) (release func(), err error) {
	path := filepath.Join(stateDir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir lock: %w", err)
	}
	deadline := time.Now().Add(wait)
	for logged := false; ; logged = true {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("state dir lock: %w", err)
		}
		if sock != "" {
			if c, err := net.Dial("unix", sock); err == nil {
				c.Close()
				f.Close()
				return nil, fmt.Errorf("another controller serves this state dir (%s): stop it first, or use another --state-dir", sock)
			}
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("another controller still holds this state dir (%s) after %v", path, wait)
		}
		if !logged {
			log.Info("waiting for the controller shutting down in this state dir", "lock", path)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
