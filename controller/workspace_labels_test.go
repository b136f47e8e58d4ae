package controller

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// Labels are checked before any provider sees them (the fake one checks
// nothing), so every provider lists and selects by well-formed labels.
func TestCreateWorkspaceRejectsBadLabels(t *testing.T) {
	f := newFixture(t)
	c := controllerv1.NewWorkspaceServiceClient(f.conn)
	ctx := ctxFor(t, "")
	for name, labels := range map[string]map[string]string{
		"empty-key":      {"": "v"},
		"key-space":      {"a b": "v"},
		"key-comma":      {"a,b": "v"},
		"key-64":         {strings.Repeat("k", 64): "v"},
		"value-newline":  {"k": "a\nb"},
		"value-escape":   {"k": "\x1b[2J"},
		"value-257-byte": {"k": strings.Repeat("v", 257)},
	} {
		_, err := c.CreateWorkspace(ctx, &controllerv1.CreateWorkspaceRequest{Name: name, Labels: labels})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "label") {
			t.Errorf("%s: %v, want InvalidArgument about the label", name, err)
		}
		if _, err := f.prov.Get(ctx, name); err == nil {
			t.Errorf("%s: the provider created it", name)
		}
	}
	if _, err := c.CreateWorkspace(ctx, &controllerv1.CreateWorkspaceRequest{Name: "ok", Labels: map[string]string{"dtmux.io/team": "web-1"}}); err != nil {
		t.Errorf("good labels: %v", err)
	}
}
