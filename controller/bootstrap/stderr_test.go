package bootstrap

import (
	"strings"
	"testing"
)

// A hop's stderr quoted in an error is one line, and ssh's notice about a
// new host key does not hide the reason (ws ls shows what follows the
// last ": ").
func TestOneLine(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"Warning: Permanently added '[127.0.0.1]:35073' (ED25519) to the list of known hosts.\r\nroot@127.0.0.1: Permission denied (publickey).\r\n",
			"root@127.0.0.1: Permission denied (publickey)."},
		{"Warning: Permanently added 'h' (ED25519) to the list of known hosts.\r\n",
			"Warning: Permanently added 'h' (ED25519) to the list of known hosts."},
		{"a\nb\r\n\n c \nd\n", "b; c; d"},
		{"ssh: connect to host 127.0.0.1 port 1: Connection refused\r\n", "ssh: connect to host 127.0.0.1 port 1: Connection refused"},
		{"\r\n \n", ""},
		{"unknown option -- -\nusage: ssh [-46AaCfGgKkMNnqsTtVvXxYy] [-B bind_interface]\n           [-b bind_address] [-c cipher_spec]\n", "unknown option -- -"},
		{strings.Repeat("x", 1<<20) + "\nthe end\n", "the end"},
	} {
		if got := oneLine(tt.in); got != tt.want {
			t.Errorf("oneLine(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
