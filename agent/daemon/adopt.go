package daemon

import (
	"os"
	"strconv"
	"syscall"
	"time"
)

// watchEvery is how often a daemon checks that its socket is still its own.
const watchEvery = 2 * time.Second

// Adopt is called first thing by every agent process. In a daemon that a
// pump started it keeps the lock on agent.pid (fd 3) out of the runs and
// tmux servers the daemon starts, removes the pump's variables from the
// environment the runs inherit, and starts a watch that asks the daemon to
// shut down (SIGTERM, the normal graceful path) once its socket has been
// removed or replaced: such a daemon can never be reached again, and the
// state dir it holds is gone (a deleted home, a test's temp dir).
// Elsewhere it does nothing.
func Adopt() {
	fdS, ok := os.LookupEnv(envLockFD)
	if !ok {
		return
	}
	sock := os.Getenv(envSocket)
	os.Unsetenv(envLockFD)
	os.Unsetenv(envSocket)
	if fd, err := strconv.Atoi(fdS); err == nil && fd > 2 {
		// Kept open (never closed) for the life of the process: that is
		// the lock. A re-exec passes it on (see reexec.go).
		syscall.CloseOnExec(fd)
		if sock != "" {
			adopted.lockFD, adopted.socket = fd, sock
			announce(sock)
		}
	}
	if sock != "" {
		// The watch lives as long as the process; its only act is to
		// start the shutdown.
		go watch(sock)
	}
}

// listenGrace is how long a daemon may take to create its socket; a socket
// still missing after it was removed before the watch first saw it.
const listenGrace = 10 * time.Second

func watch(sock string) {
	start := time.Now()
	var ino uint64
	for {
		time.Sleep(watchEvery)
		var st syscall.Stat_t
		err := syscall.Stat(sock, &st)
		switch {
		case err == nil && ino == 0:
			// The pump removed any stale socket before starting this
			// daemon, so the first one seen is its own.
			ino = st.Ino
		case ino != 0 && (err != nil || st.Ino != ino),
			ino == 0 && err != nil && time.Since(start) > listenGrace:
			syscall.Kill(os.Getpid(), syscall.SIGTERM)
			return
		}
	}
}
