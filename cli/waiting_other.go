//go:build !linux

package cli

import "os"

// bytesWaiting cannot tell here: a pipe may hold input.
func bytesWaiting(*os.File) bool { return true }
