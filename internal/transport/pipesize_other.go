//go:build !linux

package transport

import "syscall"

// HopPipeBytes: see pipesize_linux.go.
const HopPipeBytes = 1 << 20

// GrowPipe does nothing where pipes cannot grow.
func GrowPipe(interface {
	SyscallConn() (syscall.RawConn, error)
}, int) {
}
