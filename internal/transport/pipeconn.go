package transport

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// pipeAddr names one end of a pipe connection.
type pipeAddr string

func (a pipeAddr) Network() string { return "pipe" }
func (a pipeAddr) String() string  { return string(a) }

// PipeConn joins a reader and a writer (a child's stdout and stdin, or this
// process's stdin and stdout) into a net.Conn that carries one gRPC
// connection. Deadlines are not supported: gRPC's HTTP/2 transport does not
// need them, and keepalive finds a dead peer.
type PipeConn struct {
	r      io.ReadCloser
	w      io.WriteCloser
	local  pipeAddr
	remote pipeAddr

	once    sync.Once
	closed  chan struct{}
	onClose func()
}

// NewPipeConn returns a connection reading r and writing w. onClose, when
// set, runs once after both ends are closed.
func NewPipeConn(r io.ReadCloser, w io.WriteCloser, name string, onClose func()) *PipeConn {
	return &PipeConn{r: r, w: w, local: pipeAddr("local"), remote: pipeAddr(name), closed: make(chan struct{}), onClose: onClose}
}

func (c *PipeConn) Read(b []byte) (int, error)  { return c.r.Read(b) }
func (c *PipeConn) Write(b []byte) (int, error) { return c.w.Write(b) }

// Close closes both ends.
func (c *PipeConn) Close() error {
	var err error
	c.once.Do(func() {
		err = errors.Join(c.w.Close(), c.r.Close())
		close(c.closed)
		if c.onClose != nil {
			c.onClose()
		}
	})
	return err
}

// Done is closed once Close has run.
func (c *PipeConn) Done() <-chan struct{} { return c.closed }

func (c *PipeConn) LocalAddr() net.Addr              { return c.local }
func (c *PipeConn) RemoteAddr() net.Addr             { return c.remote }
func (c *PipeConn) SetDeadline(time.Time) error      { return nil }
func (c *PipeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *PipeConn) SetWriteDeadline(time.Time) error { return nil }

// StdioListener is a net.Listener that yields exactly one connection made
// of this process's stdin and stdout, then blocks until closed. Serve on it
// and the server exits when the connection ends (see Done).
type StdioListener struct {
	conn   *PipeConn
	once   sync.Once
	handed chan struct{}
	closed chan struct{}
	cOnce  sync.Once
}

// NewStdioListener wraps os.Stdin and os.Stdout. Nothing else may write to
// stdout afterwards: it carries HTTP/2 frames.
func NewStdioListener() *StdioListener {
	return NewPipeListener(os.Stdin, os.Stdout)
}

// NewPipeListener is NewStdioListener for any reader and writer (tests).
func NewPipeListener(r io.ReadCloser, w io.WriteCloser) *StdioListener {
	l := &StdioListener{handed: make(chan struct{}), closed: make(chan struct{})}
	l.conn = NewPipeConn(r, w, "stdio", nil)
	return l
}

// Accept returns the stdio connection once, then blocks until Close.
func (l *StdioListener) Accept() (net.Conn, error) {
	first := false
	l.once.Do(func() { first = true; close(l.handed) })
	if first {
		return l.conn, nil
	}
	<-l.closed
	return nil, net.ErrClosed
}

// Done is closed when the stdio connection has been closed (by the peer
// going away and the server closing it, or by Close).
func (l *StdioListener) Done() <-chan struct{} { return l.conn.Done() }

// Close stops Accept. It does not close the connection: the server does.
func (l *StdioListener) Close() error {
	l.cOnce.Do(func() { close(l.closed) })
	return nil
}

// Addr implements net.Listener.
func (l *StdioListener) Addr() net.Addr { return pipeAddr("stdio") }
