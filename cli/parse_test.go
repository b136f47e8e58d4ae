package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

func TestParseEnvEntry(t *testing.T) {
	tests := []struct {
		in        string
		key, val  string
		wantError string
	}{
		{in: "A=b", key: "A", val: "b"},
		{in: "A=", key: "A", val: ""},
		{in: "A=b=c", key: "A", val: "b=c"},
		{in: "PATH=/usr/bin:/bin", key: "PATH", val: "/usr/bin:/bin"},
		{in: "A", wantError: "want KEY=VALUE"},
		{in: "", wantError: "want KEY=VALUE"},
		{in: "=b", wantError: "empty name"},
		{in: "A=\x00", wantError: "NUL"},
		{in: "A\x00=b", wantError: "NUL"},
		{in: "A=\xff", wantError: "UTF-8"},
	}
	for _, tt := range tests {
		k, v, err := ParseEnvEntry(tt.in)
		if tt.wantError != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantError) {
				t.Errorf("ParseEnvEntry(%q) error = %v, want one containing %q", tt.in, err, tt.wantError)
			}
			continue
		}
		if err != nil || k != tt.key || v != tt.val {
			t.Errorf("ParseEnvEntry(%q) = %q, %q, %v; want %q, %q", tt.in, k, v, err, tt.key, tt.val)
		}
	}
}

func TestParseEnvLaterWins(t *testing.T) {
	m, err := ParseEnv([]string{"A=1", "B=2", "A=3"})
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 2 || m["A"] != "3" || m["B"] != "2" {
		t.Errorf("ParseEnv = %v", m)
	}
	if m, err := ParseEnv(nil); m != nil || err != nil {
		t.Errorf("ParseEnv(nil) = %v, %v", m, err)
	}
	if _, err := ParseEnv([]string{"A=1", "bad"}); err == nil {
		t.Error("ParseEnv accepted an entry without '='")
	}
}

func TestParseEnvFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(good, []byte("# comment\n\nTOKEN=s3cr=t\r\nEMPTY=\n  # indented comment\nSPACE= x \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := ParseEnvFile(good)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"TOKEN": "s3cr=t", "EMPTY": "", "SPACE": " x "}
	if len(m) != len(want) {
		t.Fatalf("ParseEnvFile = %v, want %v", m, want)
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %q, want %q", k, m[k], v)
		}
	}

	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("OK=1\nsupersecretvalue\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = ParseEnvFile(bad)
	if err == nil || !strings.Contains(err.Error(), ":2:") {
		t.Fatalf("error = %v, want one naming line 2", err)
	}
	if strings.Contains(err.Error(), "supersecretvalue") {
		t.Errorf("error echoes the secret: %v", err)
	}
	if _, err := ParseEnvFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file accepted")
	}
}

func TestParseLabels(t *testing.T) {
	m, err := ParseLabels([]string{"team=web", "tier=", "a=b=c"})
	if err != nil {
		t.Fatal(err)
	}
	if m["team"] != "web" || m["tier"] != "" || m["a"] != "b=c" || len(m) != 3 {
		t.Errorf("ParseLabels = %v", m)
	}
	long := strings.Repeat("k", 63)
	if _, err := ParseLabels([]string{long + "=" + strings.Repeat("v", 256), "a.b/c_d-E9=x y"}); err != nil {
		t.Errorf("labels at the limits: %v", err)
	}
	for _, in := range [][]string{{"team"}, {"=web"}, {" =web"}, {"team=web", "team=api"}, {"k=\xff"},
		{"bad label=x"}, {"k:x=1"}, {"ключ=v"}, {long + "k=v"}, {"k=" + strings.Repeat("v", 257)}, {"k=a\nb"}, {"k=a\tb"}, {"k=\x7f"}} {
		if _, err := ParseLabels(in); err == nil {
			t.Errorf("ParseLabels(%q) accepted", in)
		}
	}
	if _, err := ParseLabels([]string{"team=web", "team=web"}); err != nil {
		t.Errorf("the same label twice: %v", err)
	}
}

func TestParseSignal(t *testing.T) {
	tests := map[string]agentv1.Signal{
		"TERM": agentv1.Signal_SIGNAL_TERM, "SIGTERM": agentv1.Signal_SIGNAL_TERM, "term": agentv1.Signal_SIGNAL_TERM,
		"15": agentv1.Signal_SIGNAL_TERM, "kill": agentv1.Signal_SIGNAL_KILL, "9": agentv1.Signal_SIGNAL_KILL,
		"SIGINT": agentv1.Signal_SIGNAL_INT, "hup": agentv1.Signal_SIGNAL_HUP, " usr1 ": agentv1.Signal_SIGNAL_USR1,
	}
	for in, want := range tests {
		got, err := ParseSignal(in)
		if err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "SIG", "FOO", "0", "11", "-9", "SIGSEGV"} {
		if got, err := ParseSignal(in); err == nil {
			t.Errorf("ParseSignal(%q) = %v, want an error", in, got)
		}
	}
	if got := signalName(24); got != "SIGXCPU" { // a cpu-time limit's
		t.Errorf("signalName(24) = %q", got)
	}
	if got := signalName(15); got != "SIGTERM" {
		t.Errorf("signalName(15) = %q", got)
	}
}

// FuzzParseEnvEntry checks that whatever is accepted round-trips and can
// travel as a protobuf string, and that errors are one line.
func FuzzParseEnvEntry(f *testing.F) {
	f.Add("A=b")
	f.Fuzz(func(t *testing.T, s string) {
		k, v, err := ParseEnvEntry(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") && !strings.Contains(s, "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		if k+"="+v != s {
			t.Fatalf("round trip: %q -> %q, %q", s, k, v)
		}
		if k == "" || strings.Contains(k, "=") || strings.ContainsRune(s, 0) || !utf8.ValidString(s) {
			t.Fatalf("accepted bad entry %q (key %q)", s, k)
		}
		if m, err := ParseEnv([]string{s}); err != nil || m[k] != v {
			t.Fatalf("ParseEnv disagrees: %v, %v", m, err)
		}
	})
}

// FuzzParseLabel checks the same properties for labels.
func FuzzParseLabel(f *testing.F) {
	f.Add("team=web")
	f.Fuzz(func(t *testing.T, s string) {
		k, v, err := ParseLabel(s)
		if err != nil {
			return
		}
		if k+"="+v != s {
			t.Fatalf("round trip: %q -> %q, %q", s, k, v)
		}
		if strings.TrimSpace(k) == "" || strings.Contains(k, "=") || strings.ContainsRune(s, 0) || !utf8.ValidString(s) ||
			len(k) > 63 || strings.ContainsAny(k, " \t:") || len(v) > 256 || strings.ContainsAny(v, "\n\r\t") {
			t.Fatalf("accepted bad label %q", s)
		}
	})
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"0": 0, "1048576": 1 << 20, "64K": 64 << 10, "100M": 100 << 20, "2g": 2 << 30, "256MiB": 256 << 20, "1KB": 1024, " 3 ": 3} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "-1", "1.5G", "lots", "99999999999999T"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
}
