// Package controller holds the controller's gRPC services: the
// AgentService router that forwards every agent call to the workspace named
// in its metadata, and WorkspaceService over a provider. Both are thin:
// the work is done by controller/pool and the providers.
package controller

import (
	"fmt"
	"strings"
)

// WorkspaceMetadataKey names the workspace an AgentService call is for.
const WorkspaceMetadataKey = "dtmux-workspace"

// parseSelectors turns "k=v" label selectors into a map. A key may appear
// once.
func parseSelectors(sel []string) (map[string]string, error) {
	out := make(map[string]string, len(sel))
	for _, s := range sel {
		k, v, ok := strings.Cut(s, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("label selector %q: want key=value", s)
		}
		if prev, dup := out[k]; dup && prev != v {
			return nil, fmt.Errorf("label selector %q: key %q given twice", s, k)
		}
		out[k] = v
	}
	return out, nil
}

// matchLabels reports whether labels hold every selector's key and value.
func matchLabels(labels, sel map[string]string) bool {
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
