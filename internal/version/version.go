// Package version holds the build's version, set at link time.
package version

// Version is the dtmux release, set with
// -ldflags "-X github.com/dtmux/dtmux/internal/version.Version=...".
// Builds without it report "dev".
var Version = "dev"
