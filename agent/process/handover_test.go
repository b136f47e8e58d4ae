package process_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dtmux/dtmux/agent/process"
)

// TestHandOverKeepsDetachedRunsGoing: what a daemon replaced by a new build
// does (HandOver, then exec; here a second manager in the same process
// stands for the new image): a detached run goes on under the next manager
// with the same process, every byte of its output and its real exit status,
// and its stdin still reaches it.
func TestHandOverKeepsDetachedRunsGoing(t *testing.T) {
	state := t.TempDir()
	m1, _ := newManager(t, func(c *process.Config) { c.StateDir = state })
	script := `i=0; while [ $i -lt 30 ]; do echo out$i; echo err$i >&2; i=$((i+1)); sleep 0.02; done; read line; echo "got $line"; exit 7`
	spec := sh(script)
	spec.Detach = true
	spec.ID = "handed"
	r1 := start(t, m1, spec)
	attached := start(t, m1, sh("sleep 100"))
	time.Sleep(150 * time.Millisecond) // some output before the handover

	handed, err := m1.HandOver()
	if err != nil {
		t.Fatal(err)
	}
	if len(handed) != 1 || handed[0].ID != "handed" || handed[0].PID != r1.Info().PID {
		t.Fatalf("handed %+v, want run handed (pid %d)", handed, r1.Info().PID)
	}
	if tr := attached.Trailer(); tr == nil || tr.Reason != process.ReasonKilled {
		t.Errorf("attached run after the handover: %+v, want killed as by Close", tr)
	}

	m2, _ := newManager(t, func(c *process.Config) { c.StateDir = state; c.Handover = handed })
	r2, err := m2.Get("handed")
	if err != nil {
		t.Fatal(err)
	}
	if info := r2.Info(); info.State != process.StateRunning || info.PID != handed[0].PID {
		t.Fatalf("resumed run: %+v, want running with pid %d", info, handed[0].PID)
	}
	if err := r2.WriteStdin([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	res := collect(t, r2, 0, 0)
	var wantOut, wantErr strings.Builder
	for i := range 30 {
		wantOut.WriteString("out" + strconv.Itoa(i) + "\n")
		wantErr.WriteString("err" + strconv.Itoa(i) + "\n")
	}
	wantOut.WriteString("got hello\n")
	if string(res.stdout) != wantOut.String() || string(res.stderr) != wantErr.String() || len(res.gaps) != 0 {
		t.Errorf("output across the handover:\nstdout %q\nstderr %q\ngaps %v", res.stdout, res.stderr, res.gaps)
	}
	if res.trailer.Reason != process.ReasonExited || res.trailer.ExitCode != 7 {
		t.Errorf("trailer %+v, want exit 7", res.trailer)
	}
}
