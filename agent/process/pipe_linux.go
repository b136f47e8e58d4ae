package process

import (
	"errors"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/dtmux/dtmux/internal/transport"
)

// firstChunk is the read buffer of a run's output until it turns out to
// be bulk output: a default pipe's capacity.
const firstChunk = 64 << 10

// growPipe asks the kernel for a pipe buffer of size bytes, so that a fast
// writer and the agent each make a syscall per size bytes rather than per
// 64 KiB. Only runs with bulk output get it: the bytes count against the
// user's pipe quota (fs.pipe-user-pages-soft). Failure (a PTY, the quota,
// fs.pipe-max-size) leaves the pipe as it is.
func growPipe(f *os.File, size int) { transport.GrowPipe(f, size) }

// childPipe makes a pipe between the agent and a run's process; childReads
// says which end is the child's. Only the agent's end joins Go's poller:
// the child's end is closed here right after the fork, and registering it
// (and unregistering it) would cost two epoll calls for nothing.
func childPipe(childReads bool) (r, w *os.File, err error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, os.NewSyscallError("pipe2", err)
	}
	ours := p[1]
	if !childReads {
		ours = p[0]
	}
	if err := unix.SetNonblock(ours, true); err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
		return nil, nil, os.NewSyscallError("setnonblock", err)
	}
	// NewFile makes a descriptor in non-blocking mode pollable, and leaves
	// a blocking one alone.
	return os.NewFile(uintptr(p[0]), "|0"), os.NewFile(uintptr(p[1]), "|1"), nil
}

// childFIFO opens the named pipe at path that carries one output stream
// of a detached run (see adopt.go): the agent's end (read-only, in Go's
// poller) and the child's (write-only, blocking).
func childFIFO(path string) (ours, child *os.File, err error) {
	if ours, err = openFIFO(path); err != nil {
		return nil, nil, err
	}
	// The child writes in blocking mode.
	if child, err = openBlocking(path, unix.O_WRONLY); err != nil {
		ours.Close()
		return nil, nil, err
	}
	return ours, child, nil
}

// keeperEnd opens a read end of a run's named pipe for its keeper: it
// never reads, so blocking mode, outside Go's poller.
func keeperEnd(path string) (*os.File, error) { return openBlocking(path, unix.O_RDONLY) }

// openBlocking opens an end (mode O_RDONLY or O_WRONLY) of the named pipe
// at path for a process other than the agent, in blocking mode. The open
// itself does not block: a write end is opened where a read end is open
// already (the agent's), and a non-blocking open never waits for the other
// end.
func openBlocking(path string, mode int) (*os.File, error) {
	fd, err := unix.Open(path, mode|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err == nil {
		if err = unix.SetNonblock(fd, false); err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// openFIFO opens the agent's end of a run's named pipe: read-only and
// non-blocking, which never waits for a writer.
func openFIFO(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		unix.Close(fd)
		return nil, &os.PathError{Op: "open", Path: path, Err: errors.New("not a named pipe")}
	}
	return os.NewFile(uintptr(fd), "|"+filepath.Base(path)), nil
}
