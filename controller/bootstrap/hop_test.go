package bootstrap

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// A login name that is a secret (a Daytona sandbox's access token) is not
// on ssh's command line, which any local user can read: it is in a config
// file only this user can read, which also reads the config ssh would
// have read, and which goes once ssh has read it. Nor is it in what the
// hop's stderr shows.
func TestSSHUserStaysOffTheCommandLine(t *testing.T) {
	const token = "tok-3f9a1c"
	h := SSH{Destination: "gw.example", User: token, Args: []string{"-p", "2222", "-F", "my.conf"}}
	cmd, done := h.command("true")
	if strings.Contains(strings.Join(cmd.Args, " "), token) {
		t.Fatalf("token on the command line: %q", cmd.Args)
	}
	if slices.Contains(cmd.Args, "my.conf") || !slices.Contains(cmd.Args, "2222") {
		t.Fatalf("args: %q, want -p kept and the -F file included instead", cmd.Args)
	}
	i := slices.Index(cmd.Args, "-F")
	if i < 0 {
		t.Fatalf("no config: %q", cmd.Args)
	}
	path := cmd.Args[i+1]
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config %s: %v %v", path, st, err)
	}
	conf, _ := os.ReadFile(path)
	abs, _ := filepath.Abs("my.conf")
	// For the gateway only: a ProxyJump host reads this config too.
	if !strings.HasPrefix(string(conf), "Host gw.example\n  User "+token+"\nHost *\n") || !strings.Contains(string(conf), `Include "`+abs+`"`) {
		t.Errorf("config:\n%s", conf)
	}
	done()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("config left after ssh read it: %v", err)
	}

	// Without -F in the args: the user's and the system's config.
	cmd, done = SSH{Destination: "gw", User: token}.command("true")
	defer done()
	conf, _ = os.ReadFile(cmd.Args[slices.Index(cmd.Args, "-F")+1])
	if !strings.Contains(string(conf), `Include "~/.ssh/config"`) || !strings.Contains(string(conf), `Include "/etc/ssh/ssh_config"`) {
		t.Errorf("config:\n%s", conf)
	}

	// Nothing ssh_config would read as anything but a name.
	for _, bad := range []string{"#tok", "tok'x", "tok%h", "tok${X}", "a b"} {
		cmd, done := SSH{Destination: "gw", User: bad}.command("true")
		done()
		if strings.Contains(strings.Join(cmd.Args, " "), "dtmux-ssh-") {
			t.Errorf("login name %q went into a config: %q", bad, cmd.Args)
		}
	}

	s := newStderrLog(hclog.NewNullLogger(), redactions(h))
	s.Write([]byte(token + "@gw.example: Permission denied (publickey).\n"))
	if tail := s.tail(); strings.Contains(tail, token) || !strings.Contains(tail, "Permission denied") {
		t.Errorf("stderr tail: %q", tail)
	}
}
