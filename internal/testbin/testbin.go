// Package testbin builds the real dtmux binaries once per test process, so
// that end-to-end tests run what users run.
package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// The binaries and their main packages.
const (
	Agent      = "dtmux-agent"
	Controller = "dtmux-controller"
	CLI        = "dtmux"
)

var mains = map[string]string{
	Agent:      "./agent/cmd/dtmux-agent",
	Controller: "./controller/cmd/dtmux-controller",
	CLI:        "./cli/cmd/dtmux",
}

var (
	once sync.Once
	dir  string
	err  error
	out  []byte
)

// Dir builds all three binaries (once per process; with -race only when
// the test binary has it and DTMUX_E2E_RACE=1, since a race-built agent
// moving 100 MB is slow) and returns the directory holding them. The
// directory is removed when the process exits only if TestMain calls
// Cleanup.
func Dir(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		dir, err = os.MkdirTemp("", "dtmux-bin-")
		if err != nil {
			return
		}
		args := []string{"build", "-o", dir + string(os.PathSeparator)}
		if raceEnabled && os.Getenv("DTMUX_E2E_RACE") == "1" {
			args = append(args, "-race")
		}
		for _, m := range []string{Agent, Controller, CLI} {
			args = append(args, mains[m])
		}
		cmd := exec.Command("go", args...)
		cmd.Dir = moduleRoot()
		out, err = cmd.CombinedOutput()
	})
	if err != nil {
		t.Fatalf("build dtmux binaries: %v\n%s", err, out)
	}
	return dir
}

// Path returns the path of one built binary.
func Path(t testing.TB, name string) string {
	t.Helper()
	return filepath.Join(Dir(t), name)
}

// Cleanup removes the built binaries; call it from TestMain after m.Run.
func Cleanup() {
	if dir != "" {
		os.RemoveAll(dir)
	}
}

// moduleRoot is the directory holding go.mod, found from this file.
func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}
