package benchenv

import (
	"bufio"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Sample times f n times after warm untimed calls.
func Sample(n, warm int, f func()) Latencies {
	for range warm {
		f()
	}
	out := make(Latencies, 0, n)
	for range n {
		start := time.Now()
		f()
		out = append(out, time.Since(start))
	}
	return out
}

// PipeThroughput runs cmd, reads its stdout to EOF, fails b unless exactly
// want bytes came and cmd succeeded, and returns bytes per second from
// the first byte on (so an ssh handshake is not counted).
func PipeThroughput(b testing.TB, cmd *exec.Cmd, want int64) float64 {
	b.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	br := bufio.NewReaderSize(out, 256<<10)
	if _, err := br.Peek(1); err != nil {
		cmd.Wait()
		b.Fatalf("%v: no output: %v\n%s", cmd.Args, err, stderr.String())
	}
	start := time.Now()
	n, err := io.Copy(io.Discard, br)
	d := time.Since(start)
	if werr := cmd.Wait(); err != nil || werr != nil {
		b.Fatalf("%v: %v %v\n%s", cmd.Args, err, werr, stderr.String())
	}
	if n != want {
		b.Fatalf("%v: %d bytes, want %d", cmd.Args, n, want)
	}
	return float64(want) / d.Seconds()
}
