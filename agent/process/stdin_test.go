package process_test

import (
	"testing"

	"github.com/dtmux/dtmux/agent/process"
)

// TestLastExecClientClosesStdin: once the last Exec stream of a run has
// gone nobody can write its stdin, so the process gets end-of-file, also
// when the run is detached and keeps going.
func TestLastExecClientClosesStdin(t *testing.T) {
	m, _ := newManager(t, nil)
	for _, argv := range [][]string{{"cat"}, {"sh", "-c", "read x; echo read $?"}} {
		r := start(t, m, process.Spec{Argv: argv, Detach: true})
		a, b := r.AddClient(true), r.AddClient(true)
		viewer := r.AddClient(false) // AttachRun viewers cannot write stdin
		if err := r.WriteStdin([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		a()
		if err := r.WriteStdin([]byte(" there")); err != nil {
			t.Fatalf("%v: stdin closed while an Exec client remains: %v", argv, err)
		}
		b()
		waitDone(t, r)
		viewer()
		res := collect(t, r, 0, 0)
		want := "hi there"
		if argv[0] == "sh" {
			want = "read 1\n" // EOF before a newline
		}
		if string(res.stdout) != want || res.trailer.Reason != process.ReasonExited || res.trailer.ExitCode != 0 {
			t.Errorf("%v: %q %+v, want %q and EXITED 0", argv, res.stdout, res.trailer, want)
		}
	}
}
