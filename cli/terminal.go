package cli

import (
	"os"
	"sync"

	"golang.org/x/term"
)

// rawMode puts the terminal fd in raw mode and returns the function that
// restores it. The restore function is idempotent, so callers both defer
// it and call it early on paths that print to the terminal.
func rawMode(fd int) (restore func(), err error) {
	old, err := term.MakeRaw(fd)
	if err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { _ = term.Restore(fd, old) }) }, nil
}

// terminalSize is the size of the first of fds that is a terminal.
func terminalSize(fds ...int) (rows, cols uint32, ok bool) {
	for _, fd := range fds {
		if fd < 0 || !term.IsTerminal(fd) {
			continue
		}
		w, h, err := term.GetSize(fd)
		if err == nil && w > 0 && h > 0 {
			return uint32(h), uint32(w), true
		}
	}
	return 0, 0, false
}

// fdOf is the descriptor of w when it is an *os.File, else -1.
func fdOf(v any) int {
	if f, ok := v.(*os.File); ok {
		return int(f.Fd())
	}
	return -1
}

// termName is $TERM, or xterm-256color.
func (a *App) termName() string {
	if t := a.Getenv("TERM"); t != "" {
		return t
	}
	return "xterm-256color"
}
