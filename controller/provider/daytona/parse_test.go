package daytona

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dtmux/dtmux/controller/provider"
)

func TestParseListSamples(t *testing.T) {
	type want struct {
		name  string
		state provider.State
		label string // k=v expected, optional
		attr  string // k=v expected, optional
	}
	tests := []struct {
		file string
		want []want
	}{
		{"list-v0.26.json", []want{{"Hello-World", provider.StateStarted, "", "repository=https://github.com/octocat/Hello-World.git"}, {"daytona", provider.StateStopped, "", "target=local"}, {"example", provider.StateUnknown, "", ""}}},
		{"list-v0.26-verbose.json", []want{{"Hello-World", provider.StateStarted, "", ""}, {"daytona", provider.StateStopped, "", ""}, {"example", provider.StateUnknown, "", ""}}},
		{"list-v0.51.json", []want{{"Hello-World", provider.StateStarted, "", "project=Hello-World"}, {"daytona", provider.StateStopped, "", ""}, {"example", provider.StateUnknown, "", ""}}},
		{"list-v0.51-verbose.json", []want{{"Hello-World", provider.StateStarted, "", ""}, {"daytona", provider.StateStopped, "", ""}, {"example", provider.StateUnknown, "", ""}}},
		{"list-v0.53.json", []want{{"Hello-World", provider.StateStarted, "team=platform", "target=local"}, {"daytona", provider.StateError, "", ""}, {"example", provider.StateStopped, "", ""}}},
		{"list-sandbox.json", []want{{"dtmux-ws-alpha", provider.StateStarted, "dtmux.workspace=alpha", "region=us"}, {"dtmux-ws-beta", provider.StateStopped, "", "auto_stop_minutes=0"}, {"dtmux-ws-gamma", provider.StateStopped, "", "id=1a7b3c9d-5e2f-4a86-b0c4-d8e6f2a1b937"}}},
		{"list-sandbox.v0.108-v0.179.json", []want{{"dtmux-ws-alpha", provider.StateStarted, "", "auto_stop_minutes=15"}, {"dtmux-ws-beta", provider.StateStopped, "", "region=eu"}, {"dtmux-ws-gamma", provider.StateStopped, "", ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			ws, err := ParseList(data)
			if err != nil {
				t.Fatal(err)
			}
			if len(ws) != len(tt.want) {
				t.Fatalf("got %d workspaces, want %d: %+v", len(ws), len(tt.want), ws)
			}
			for i, w := range tt.want {
				got := ws[i]
				if got.Name != w.name || got.State != w.state {
					t.Errorf("[%d] = %s %v (%s), want %s %v", i, got.Name, got.State, got.StateDetail, w.name, w.state)
				}
				if k, v, ok := strings.Cut(w.label, "="); ok && got.Labels[k] != v {
					t.Errorf("[%d] label %s = %q, want %q", i, k, got.Labels[k], v)
				}
				if k, v, ok := strings.Cut(w.attr, "="); ok && got.Attributes[k] != v {
					t.Errorf("[%d] attribute %s = %q, want %q", i, k, got.Attributes[k], v)
				}
			}
		})
	}
}

func TestErrorDetail(t *testing.T) {
	data, _ := os.ReadFile(filepath.Join("testdata", "list-v0.53.json"))
	ws, err := ParseList(data)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ws[1].StateDetail, "unable to find result in devcontainer output") {
		t.Fatalf("error detail = %q", ws[1].StateDetail)
	}
}

// No secret ever reaches a Workspace: apiKey and envVars are not decoded.
func TestNoSecrets(t *testing.T) {
	in := `[{"apiKey":"SECRET-KEY","envVars":{"TOKEN":"SECRET-ENV"},"id":"abc","name":"w",
	  "state":{"name":"error","error":"failed to clone https://x-access-token:SECRET-TOKEN3@github.com/o/priv.git"},
	  "repository":{"url":"https://x-access-token:SECRET-TOKEN@github.com/o/priv.git"},
	  "projects":[{"name":"p","envVars":{"X":"SECRET-ENV2"}}]},
	 {"id":"def","name":"v","projects":[{"name":"p","repository":{"url":"https://u:SECRET@TOKEN2@github.com/o/priv.git"}}]}]`
	ws, err := ParseList([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ToLower(strings.Join(flatten(ws), " "))
	if strings.Contains(s, "secret") {
		t.Fatalf("a secret leaked into %s", s)
	}
	for _, w := range ws {
		if got, want := w.Attributes["repository"], "https://[redacted]@github.com/o/priv.git"; got != want {
			t.Errorf("%s: repository %q, want %q", w.Name, got, want)
		}
	}
	if strings.Contains(s, "token2") || strings.Contains(s, "token3") {
		t.Errorf("a token leaked into %s", s)
	}
}

func flatten(ws []provider.Workspace) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.Name, w.StateDetail)
		for k, v := range w.Labels {
			out = append(out, k, v)
		}
		for k, v := range w.Attributes {
			out = append(out, k, v)
		}
	}
	return out
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in        string
		want      Version
		sandboxes bool
		err       bool
	}{
		{"Daytona version v0.53.0\n", Version{0, 53, 0}, false, false},
		{"Daytona version v0.26.1", Version{0, 26, 1}, false, false},
		{"Daytona CLI version: v0.190.0", Version{0, 190, 0}, true, false},
		{"0.100.2", Version{0, 100, 2}, true, false},
		{"garbage", Version{}, false, true},
	}
	for _, tt := range tests {
		v, err := ParseVersion(tt.in)
		if (err != nil) != tt.err || v != tt.want || v.Sandboxes() != tt.sandboxes {
			t.Errorf("ParseVersion(%q) = %v, %v", tt.in, v, err)
		}
	}
}

func TestParseSSHCommand(t *testing.T) {
	tests := []struct {
		in, user, host, port string
		err                  bool
	}{
		{"ssh tok123@ssh.app.daytona.io", "tok123", "ssh.app.daytona.io", "", false},
		{"ssh -p 2222 tok@127.0.0.1", "tok", "127.0.0.1", "2222", false},
		{"ssh -p2222 tok@h", "tok", "h", "2222", false},
		{"ssh -p 99999 tok@h", "", "", "", true},
		{"scp tok@h", "", "", "", true},
		{"ssh host-without-user", "", "", "", true},
		{"", "", "", "", true},
	}
	for _, tt := range tests {
		u, h, p, err := parseSSHCommand(tt.in)
		if (err != nil) != tt.err || u != tt.user || h != tt.host || p != tt.port {
			t.Errorf("parseSSHCommand(%q) = %q %q %q %v", tt.in, u, h, p, err)
		}
	}
}

// FuzzParseList: never panics; what it returns is sorted and named.
func FuzzParseList(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.json"))
	for _, file := range files {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ws, err := ParseList(data)
		if err != nil {
			return
		}
		for i, w := range ws {
			if w.Name == "" {
				t.Fatalf("unnamed workspace %+v", w)
			}
			if i > 0 && ws[i-1].Name > w.Name {
				t.Fatal("not sorted")
			}
		}
	})
}
