package process_test

import (
	"context"
	"errors"
	"io"
	"testing"

	"github.com/dtmux/dtmux/agent/process"
)

// BenchmarkOutputThroughput moves 256 MiB from a process through the spool
// to a live reader (go test -bench Output -run '^$' ./agent/process/).
func BenchmarkOutputThroughput(b *testing.B) {
	const n = 256 << 20
	m, err := process.NewManager(process.Config{StateDir: b.TempDir(), Workdir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	b.SetBytes(n)
	for b.Loop() {
		r, _, err := m.Start(process.Spec{Argv: []string{"head", "-c", "268435456", "/dev/zero"}})
		if err != nil {
			b.Fatal(err)
		}
		rd := r.NewReader(0, 0)
		var got int
		for {
			ev, err := rd.Next(context.Background(), true)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			if ev.Kind == process.EventGap {
				b.Fatalf("reader fell behind: gap of %d", ev.Bytes)
			}
			got += len(ev.Data)
		}
		if got != n {
			b.Fatalf("got %d bytes", got)
		}
	}
}
