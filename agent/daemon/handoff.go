package daemon

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dtmux/dtmux/internal/auth"
	"github.com/dtmux/dtmux/internal/transport"
)

// A pump hands its hop to the daemon rather than copying it: it passes its
// stdin and stdout (the hop's pipes) over HopSocketName (SCM_RIGHTS) and
// the daemon serves gRPC on them directly. Every byte then crosses one
// process fewer on the way: on an ssh hop the copying pump cost half a
// CPU second per GiB and two wake-ups per message each way.
//
// The pump stays alive (sshd, or whatever runs the hop, waits for it) and
// holds the control connection it passed the pipes on. Either end going
// ends the hop: when the daemon closes the connection (the controller went
// away, the hop's pipes failed) the pump exits; when the pump dies (killed
// with its session) the daemon drops the pipes, as the copying pump's
// death would have.
//
// Like agent.sock, the socket admits only the daemon's own uid.

// HopSocketName is the daemon's hand-off socket in the state directory.
const HopSocketName = "agent.hop.sock"

// handoffTimeout bounds how long a new hand-off connection may take to
// send its pipes.
const handoffTimeout = 5 * time.Second

// HopSocketPath is where the daemon of stateDir takes hops.
func HopSocketPath(stateDir string) string { return filepath.Join(stateDir, HopSocketName) }

// HandOff passes in and out to the daemon listening on its hand-off
// socket in stateDir and closes this process's copies. Wait on the
// returned Hop until the daemon is done with it. An error means the pipes
// were not passed and are untouched: the caller can copy instead (Pump).
func HandOff(stateDir string, in, out *os.File) (*Hop, error) {
	sock := HopSocketPath(stateDir)
	if len(sock) > maxSocketPath {
		return nil, fmt.Errorf("%w: %s", ErrSocketPath, sock)
	}
	conn, err := dial(sock)
	if err != nil {
		return nil, fmt.Errorf("hand the hop to the daemon: %w", err)
	}
	rights := unix.UnixRights(int(in.Fd()), int(out.Fd()))
	if _, _, err := conn.WriteMsgUnix([]byte{1}, rights, nil); err != nil {
		conn.Close()
		return nil, fmt.Errorf("hand the hop to the daemon: %w", err)
	}
	// The daemon holds the pipes now. Ours go, so that the hop ends when
	// the daemon closes its copies.
	in.Close()
	out.Close()
	return &Hop{conn: conn}, nil
}

// Hop is a hop handed over to the daemon.
type Hop struct{ conn *net.UnixConn }

// Wait returns when the daemon is done with the hop.
func (h *Hop) Wait() {
	// Nothing is ever sent on the connection: a read returns when the
	// daemon closes it.
	_, _ = io.Copy(io.Discard, h.conn)
	h.conn.Close()
}

// HopListener takes hops that pumps hand over (see HandOff) and yields
// each as a connection for the daemon's gRPC server.
type HopListener struct {
	lis *net.UnixListener
	uid int

	mu     sync.Mutex
	conns  map[*HopConn]bool // guarded by mu; hops taken and not closed
	closed bool              // guarded by mu; CloseAll was called
}

// ListenHops opens stateDir's hand-off socket (0600; a stale one is
// replaced).
func ListenHops(stateDir string) (*HopListener, error) {
	sock := HopSocketPath(stateDir)
	if len(sock) > maxSocketPath {
		return nil, fmt.Errorf("%w: %s", ErrSocketPath, sock)
	}
	os.Remove(sock) // the daemon holds agent.pid's lock: nothing else listens
	old := syscall.Umask(0o177)
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen for hops: %w", err)
	}
	return &HopListener{lis: lis, uid: os.Getuid(), conns: map[*HopConn]bool{}}, nil
}

// Accept waits for the next hop. A connection that sends no pipes, or
// comes from another uid, is dropped without ending the listener.
func (l *HopListener) Accept() (net.Conn, error) {
	for {
		c, err := l.lis.AcceptUnix()
		if err != nil {
			return nil, err
		}
		hc, err := l.receive(c)
		if err != nil {
			c.Close()
			continue
		}
		return hc, nil
	}
}

func (l *HopListener) receive(c *net.UnixConn) (*HopConn, error) {
	cred, err := auth.PeerCred(c)
	if err != nil {
		return nil, err
	}
	if int(cred.Uid) != l.uid {
		return nil, fmt.Errorf("hop from uid %d refused", cred.Uid)
	}
	c.SetReadDeadline(time.Now().Add(handoffTimeout))
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(2*4))
	_, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Time{})
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		if got, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, got...)
		}
	}
	if len(fds) != 2 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("hop sent %d descriptors, want 2", len(fds))
	}
	for _, fd := range fds {
		unix.CloseOnExec(fd) // never into a run
		_ = unix.SetNonblock(fd, true)
	}
	hc := &HopConn{
		in:   os.NewFile(uintptr(fds[0]), "hop-in"),
		out:  os.NewFile(uintptr(fds[1]), "hop-out"),
		ctl:  c,
		cred: *cred,
		l:    l,
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		hc.Close() // a hop taken while CloseAll ran
		return nil, net.ErrClosed
	}
	l.conns[hc] = true
	l.mu.Unlock()
	transport.GrowPipe(hc.in, transport.HopPipeBytes)
	transport.GrowPipe(hc.out, transport.HopPipeBytes)
	// Owned by the connection: it ends when the pump goes or Close closes
	// ctl, and then closes the pipes.
	go hc.watch()
	return hc, nil
}

// Close stops taking hops; hops already taken go on.
func (l *HopListener) Close() error { return l.lis.Close() }

// CloseAll stops taking hops and closes those taken, wherever they are:
// a hop whose client never spoke would otherwise hold the gRPC server's
// forced stop in its handshake.
func (l *HopListener) CloseAll() error {
	err := l.lis.Close()
	l.mu.Lock()
	l.closed = true
	conns := make([]*HopConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	return err
}

// Addr is the hand-off socket's address.
func (l *HopListener) Addr() net.Addr { return l.lis.Addr() }

// HopConn is a hop a pump handed over: reads come from the hop's stdin
// pipe, writes go to its stdout pipe.
type HopConn struct {
	in, out *os.File
	ctl     *net.UnixConn
	cred    syscall.Ucred
	l       *HopListener

	once sync.Once
}

func (c *HopConn) watch() {
	var b [1]byte
	_, _ = c.ctl.Read(b[:]) // the pump never writes: this is its end
	c.Close()
}

// Read reads from the hop.
func (c *HopConn) Read(p []byte) (int, error) { return c.in.Read(p) }

// Write writes to the hop.
func (c *HopConn) Write(p []byte) (int, error) { return c.out.Write(p) }

// Close closes the pipes and the control connection, which lets the pump
// exit.
func (c *HopConn) Close() error {
	var err error
	c.once.Do(func() {
		err = errors.Join(c.in.Close(), c.out.Close(), c.ctl.Close())
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return err
}

// PeerCred is the kernel's record of the pump that handed the hop over,
// for the server's peer check (auth.UnixPeerCreds).
func (c *HopConn) PeerCred() (*syscall.Ucred, error) {
	cred := c.cred
	return &cred, nil
}

// LocalAddr names the hand-off socket.
func (c *HopConn) LocalAddr() net.Addr { return c.ctl.LocalAddr() }

// RemoteAddr names the hop.
func (c *HopConn) RemoteAddr() net.Addr { return hopAddr(c.cred.Pid) }

// SetDeadline sets both pipes' deadlines.
func (c *HopConn) SetDeadline(t time.Time) error {
	return errors.Join(c.in.SetReadDeadline(t), c.out.SetWriteDeadline(t))
}

// SetReadDeadline sets the read deadline of the hop's stdin.
func (c *HopConn) SetReadDeadline(t time.Time) error { return c.in.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline of the hop's stdout.
func (c *HopConn) SetWriteDeadline(t time.Time) error { return c.out.SetWriteDeadline(t) }

type hopAddr int32

func (hopAddr) Network() string  { return "hop" }
func (a hopAddr) String() string { return fmt.Sprintf("hop (pump pid %d)", int32(a)) }
