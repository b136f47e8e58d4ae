package process

import (
	"os"

	"golang.org/x/sys/unix"
)

// firstChunk is the read buffer of a run's output until it turns out to
// be bulk output: a default pipe's capacity.
const firstChunk = 64 << 10

// growPipe asks the kernel for a pipe buffer of size bytes, so that a fast
// writer and the agent each make a syscall per size bytes rather than per
// 64 KiB. Only runs with bulk output get it: the bytes count against the
// user's pipe quota (fs.pipe-user-pages-soft). Failure (a PTY, the quota,
// fs.pipe-max-size) leaves the pipe as it is.
func growPipe(f *os.File, size int) {
	sc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = sc.Control(func(fd uintptr) {
		_, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, size)
	})
}
