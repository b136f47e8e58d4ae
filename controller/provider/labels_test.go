package provider

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateLabels(t *testing.T) {
	tests := []struct {
		name   string
		labels map[string]string
		ok     bool
	}{
		{"none", nil, true},
		{"plain", map[string]string{"team": "web", "dtmux.io/role": "ci-1_a", "k": ""}, true},
		{"63-byte key", map[string]string{strings.Repeat("k", 63): "v"}, true},
		{"256-byte value", map[string]string{"k": strings.Repeat("v", 256)}, true},
		{"unicode value", map[string]string{"owner": "Zoë Müller"}, true},
		{"empty key", map[string]string{"": "v"}, false},
		{"64-byte key", map[string]string{strings.Repeat("k", 64): "v"}, false},
		{"space in key", map[string]string{"a b": "v"}, false},
		{"equals in key", map[string]string{"a=b": "v"}, false},
		{"comma in key", map[string]string{"a,b": "v"}, false},
		{"newline in key", map[string]string{"a\nb": "v"}, false},
		{"non-ascii key", map[string]string{"tëam": "v"}, false},
		{"257-byte value", map[string]string{"k": strings.Repeat("v", 257)}, false},
		{"newline in value", map[string]string{"k": "a\nb"}, false},
		{"escape in value", map[string]string{"k": "\x1b[31mred"}, false},
		{"DEL in value", map[string]string{"k": "a\x7f"}, false},
		{"C1 control in value", map[string]string{"k": "a\u0085"}, false},
		{"invalid UTF-8 value", map[string]string{"k": "a\xff"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateLabels(tt.labels)
			if tt.ok && err != nil {
				t.Fatalf("ValidateLabels(%q) = %v, want nil", tt.labels, err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalid) {
				t.Fatalf("ValidateLabels(%q) = %v, want ErrInvalid", tt.labels, err)
			}
		})
	}
}

func TestCheckOptions(t *testing.T) {
	if err := CheckOptions(nil); err != nil {
		t.Errorf("no options: %v", err)
	}
	if err := CheckOptions(map[string]string{"cpu": "2"}, "cpu", "memory"); err != nil {
		t.Errorf("a known option: %v", err)
	}
	err := CheckOptions(map[string]string{"cpu": "2", "zz": "1", "bogus": "x"}, "cpu", "memory")
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "unknown option bogus, zz: this provider takes cpu, memory") {
		t.Errorf("unknown options: %v", err)
	}
	if err := CheckOptions(map[string]string{"workdir": "/x"}); err == nil || !strings.Contains(err.Error(), "takes no options") {
		t.Errorf("a provider without options: %v", err)
	}
}
