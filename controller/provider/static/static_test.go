package static

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/dtmux/dtmux/controller/provider"
)

func TestParseAndServe(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "agents")
	if err := os.WriteFile(file, []byte("# agents\n\nweb1=tcp://127.0.0.1:7070 team=web,tier=1\nlocal=unix:///tmp/a.sock\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	agents, err := ParseFile(file)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(agents, provider.Endpoint{}.DialConfig)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	list, _ := p.List(ctx)
	if len(list) != 2 || list[0].Name != "local" || list[1].Name != "web1" || list[1].Labels["tier"] != "1" || list[1].State != provider.StateStarted {
		t.Fatalf("list = %+v", list)
	}
	ep, err := p.Endpoint(ctx, "local")
	if err != nil || ep.Address.Network != "unix" || ep.Address.Addr != "/tmp/a.sock" {
		t.Errorf("endpoint = %+v, %v", ep, err)
	}
	if _, err := p.Endpoint(ctx, "nope"); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("unknown: %v", err)
	}
	if _, err := p.Create(ctx, provider.CreateOptions{Name: "x"}); !errors.Is(err, provider.ErrUnsupported) {
		t.Errorf("create: %v", err)
	}
	if err := p.Delete(ctx, "web1", false); !errors.Is(err, provider.ErrUnsupported) {
		t.Errorf("delete: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, bad := range []string{"", "noaddr", "=unix:///x", "w=http://x", "w=tcp://nohostport", "w=unix:///x lbl"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
	a, _ := Parse("w=unix:///x")
	if _, err := New([]Agent{a, a}, provider.Endpoint{}.DialConfig); !errors.Is(err, provider.ErrInvalid) {
		t.Errorf("duplicate: %v", err)
	}
	a.Name = "bad/name"
	if _, err := New([]Agent{a}, provider.Endpoint{}.DialConfig); !errors.Is(err, provider.ErrInvalid) {
		t.Errorf("bad name: %v", err)
	}
}
