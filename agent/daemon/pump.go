package daemon

import (
	"errors"
	"io"
	"net"
	"syscall"
	"time"
)

// closeGrace is how long the daemon's half may still flow after the hop's
// half ended (the daemon closes its side once it reads EOF).
const closeGrace = 2 * time.Second

// Pump copies in to conn and conn to out until the hop or the daemon ends
// the connection; the bytes (HTTP/2 frames) pass through untouched. It
// returns nil when either side simply closed. A read of in may still be
// pending when it returns (stdin cannot be interrupted): the caller exits.
func Pump(in io.Reader, out io.Writer, conn *net.UnixConn) error {
	defer conn.Close()
	up := make(chan error, 1)
	down := make(chan error, 1)
	go func() {
		_, err := io.Copy(conn, in)
		// The hop is gone (or half-closed): the daemon reads EOF and
		// closes the connection, which ends the other half.
		conn.CloseWrite()
		up <- err
	}()
	go func() {
		_, err := io.Copy(out, conn)
		down <- err
	}()
	select {
	case err := <-down:
		return quiet(err)
	case err := <-up:
		select {
		case <-down:
		case <-time.After(closeGrace):
		}
		return quiet(err)
	}
}

// quiet drops the errors that only say the other side went away.
func quiet(err error) error {
	if err == nil || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
