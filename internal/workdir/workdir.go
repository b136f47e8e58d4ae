// Package workdir resolves the working directory a client asks for, the
// same way for runs and for tmux windows.
package workdir

import (
	"os"
	"path/filepath"
	"strings"
)

// Resolve returns the directory p names in a workspace whose directory is
// workdir: workdir when p is empty, p when absolute, the home directory
// ($HOME, else workdir) and below for "~" and "~/...", else p under
// workdir. The "~" is for clients whose own shell would expand it to their
// home, not the workspace's: `-w '~/src'` means the workspace user's.
func Resolve(workdir, p string) string {
	switch {
	case p == "":
		return workdir
	case p == "~" || strings.HasPrefix(p, "~/"):
		home := os.Getenv("HOME")
		if home == "" {
			home = workdir
		}
		return filepath.Join(home, p[1:])
	case filepath.IsAbs(p):
		return p
	default:
		return filepath.Join(workdir, p)
	}
}
