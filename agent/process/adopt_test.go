package process_test

import (
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/dtmux/dtmux/agent/process"
)

// What a detached run leaves behind still writing to its output once the
// run is over (its leader gone, the drain grace past) gets SIGPIPE at its
// next write, as with pipes, rather than block for good on a named pipe
// that nobody reads: the keeper that held the pipes open for a next agent
// goes with the run.
func TestLeftBehindWriterGetsSIGPIPE(t *testing.T) {
	m, _ := newManager(t, nil)
	r := start(t, m, process.Spec{ID: "bg", Argv: []string{"sh", "-c", `sh -c 'sleep 0.5; exec yes' & echo $!; exit 0`}, Detach: true})
	if !r.Info().OutputFIFOs || r.Info().KeeperPID == 0 {
		t.Fatalf("a detached run without named pipes and their keeper: %+v", r.Info())
	}
	res := collect(t, r, 0, 0)
	if res.trailer.Reason != process.ReasonExited || res.trailer.ExitCode != 0 {
		t.Fatalf("trailer %+v", res.trailer)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(res.stdout)))
	if err != nil {
		t.Fatalf("background pid %q", res.stdout)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	waitGone(t, pid)
	waitGone(t, r.Info().KeeperPID)
}
