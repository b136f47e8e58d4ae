package process_test

import (
	"context"
	"errors"
	"io"
	"os/exec"
	"testing"

	"github.com/dtmux/dtmux/agent/process"
)

// BenchmarkStart measures Manager.Start of `true` alone: what an Exec
// waits for before it can say "started" (go test -bench Start -run '^$'
// ./agent/process/). The run is then drained outside the timer.
func BenchmarkStart(b *testing.B) {
	m := benchManager(b)
	for b.Loop() {
		r, _, err := m.Start(process.Spec{Argv: []string{"true"}, Owner: true})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		drain(b, r)
		b.StartTimer()
	}
}

// BenchmarkStartToEnd measures a whole run of `true` as an Exec sees it:
// Start, read to EOF, trailer.
func BenchmarkStartToEnd(b *testing.B) {
	m := benchManager(b)
	for b.Loop() {
		r, _, err := m.Start(process.Spec{Argv: []string{"true"}, Owner: true})
		if err != nil {
			b.Fatal(err)
		}
		drain(b, r)
		if t := r.Trailer(); t == nil || t.ExitCode != 0 {
			b.Fatalf("trailer %+v", t)
		}
	}
}

// BenchmarkExecCmdStart is the floor for BenchmarkStart: exec.Cmd.Start
// of `true` with three pipes, no run bookkeeping.
func BenchmarkExecCmdStart(b *testing.B) {
	for b.Loop() {
		cmd := exec.Command("/usr/bin/true")
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		io.Copy(io.Discard, out)
		cmd.Wait()
		b.StartTimer()
	}
}

func benchManager(b *testing.B) *process.Manager {
	b.Helper()
	m, err := process.NewManager(process.Config{StateDir: b.TempDir(), Workdir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	return m
}

func drain(b *testing.B, r *process.Run) {
	b.Helper()
	rd := r.OwnerReader()
	if rd == nil {
		rd = r.NewReader(0, 0)
	}
	defer rd.Close()
	for {
		_, err := rd.Next(context.Background(), true)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	<-r.Done()
}
