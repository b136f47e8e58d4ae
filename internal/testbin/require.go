package testbin

import (
	"os"
	"os/exec"
	"testing"
)

// RequireTool returns the path of an external tool a test needs (tmux,
// ssh, sshd). A developer machine without it skips the test; CI sets
// DTMUX_REQUIRE_TOOLS=1 and fails instead, so that every test runs there.
func RequireTool(t testing.TB, name string, fallbacks ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, f := range fallbacks {
		if fi, err := os.Stat(f); err == nil && !fi.IsDir() {
			return f
		}
	}
	if os.Getenv("DTMUX_REQUIRE_TOOLS") == "1" {
		t.Fatalf("%s is required (DTMUX_REQUIRE_TOOLS=1) but not installed", name)
	}
	t.Skipf("%s not installed", name)
	return ""
}
