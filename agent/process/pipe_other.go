//go:build !linux

package process

import (
	"errors"
	"os"
)

// firstChunk is the read buffer of a run's output: without a way to grow
// the pipe, it stays at readChunk's size from the start.
const firstChunk = readChunk

func growPipe(*os.File, int) {}

// childPipe is os.Pipe.
func childPipe(bool) (r, w *os.File, err error) { return os.Pipe() }

var errNoFIFO = errors.New("named pipes for run output are only used on Linux")

// childFIFO is unsupported: detached runs use pipes.
func childFIFO(string) (ours, child *os.File, err error) { return nil, nil, errNoFIFO }

// keeperEnd is unsupported.
func keeperEnd(string) (*os.File, error) { return nil, errNoFIFO }

// openFIFO is unsupported.
func openFIFO(string) (*os.File, error) { return nil, errNoFIFO }
