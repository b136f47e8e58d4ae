package agent

import (
	"os"
	"os/signal"
	"syscall"
	"testing"
)

func TestMain(m *testing.M) {
	// Runs must get SIGHUP's default even when this test runs under
	// nohup, as the agent binary arranges for its runs: a caught signal is
	// reset across exec, an inherited ignored one is not.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
	os.Exit(m.Run())
}
