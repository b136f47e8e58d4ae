package sessionbench

import "github.com/dtmux/dtmux/internal/benchenv"

// The shared harness (controller, binaries, samples) is internal/benchenv.

const wsName = "sbench"

type latencies = benchenv.Latencies

var ms = benchenv.MS
