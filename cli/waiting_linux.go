package cli

import (
	"os"

	"golang.org/x/sys/unix"
)

// bytesWaiting reports whether a pipe or socket holds unread bytes.
func bytesWaiting(f *os.File) bool {
	n, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCINQ) // FIONREAD
	return err == nil && n > 0
}
