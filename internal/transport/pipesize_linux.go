package transport

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// HopPipeBytes is the pipe buffer asked for on each end of a hop (the
// controller's pipes to ssh, the agent daemon's handed-over pipes): the
// gRPC transport writes 256 KiB at a time (WriteBufferBytes), which a
// default 64 KiB pipe takes in four wake-ups of its reader. With 1 MiB
// pipes 1 GiB crossed an ssh hop about 15% faster.
const HopPipeBytes = 1 << 20

// GrowPipe asks the kernel for a pipe buffer of size bytes on f (an
// *os.File or anything else with SyscallConn). Failure (not a pipe, the
// user's pipe quota, fs.pipe-max-size) leaves the pipe as it is.
func GrowPipe(f interface {
	SyscallConn() (syscall.RawConn, error)
}, size int) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, size)
	})
}
