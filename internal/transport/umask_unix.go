//go:build unix

package transport

import "syscall"

// umask is process-wide; Listen holds it only across one bind.
func umask(m int) int { return syscall.Umask(m) }
