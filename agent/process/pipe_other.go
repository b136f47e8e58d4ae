//go:build !linux

package process

import "os"

// firstChunk is the read buffer of a run's output: without a way to grow
// the pipe, it stays at readChunk's size from the start.
const firstChunk = readChunk

func growPipe(*os.File, int) {}

// childPipe is os.Pipe.
func childPipe(bool) (r, w *os.File, err error) { return os.Pipe() }
