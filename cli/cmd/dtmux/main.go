// Command dtmux is the dtmux command line client.
package main

import (
	"context"
	"os"
	"runtime/debug"

	"github.com/dtmux/dtmux/cli"
)

func main() {
	// Most invocations live a few milliseconds, and the default GC target
	// (100%) of a heap that starts at 4 MiB runs collections during the
	// start-up alone: a larger one saves about a millisecond of
	// `dtmux exec WS -- true`. A long stream's live heap stays small.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	os.Exit(cli.Main(context.Background(), cli.NewApp(), os.Args[1:]))
}
