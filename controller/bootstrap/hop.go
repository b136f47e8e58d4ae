package bootstrap

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// SSH is a hop through the system ssh binary, so the user's ssh config,
// agent and ProxyJump apply.
type SSH struct {
	// Binary is the ssh executable (default "ssh" from PATH).
	Binary string
	// Args come first on the command line, so they win over the defaults
	// (ssh keeps the first value of an option).
	Args []string
	// Destination is anything ssh accepts: host, user@host, an alias.
	Destination string
	// Env is added to the environment of the ssh process.
	Env []string
	// Label names the hop in errors and logs (default "ssh DEST").
	Label string
	// User, when set, is the login name, given to ssh in a config it reads
	// from an inherited pipe rather than on its command line, which any
	// local user can read (/proc/PID/cmdline): a Daytona sandbox's login
	// name is its access token. It is redacted from the hop's stderr in
	// logs and errors too.
	User string
}

// Defaults every hop uses unless Args override them: no prompts, find a
// dead connection, do not wait forever for an unreachable host.
var sshDefaults = []string{
	"-T",
	"-o", "BatchMode=yes",
	"-o", "ServerAliveInterval=15",
	"-o", "ServerAliveCountMax=3",
	"-o", "ConnectTimeout=15",
	// AES-GCM first: with AES-NI it moves about 1.5x the bytes of OpenSSH's
	// default chacha20 on this hardware class, and the hop carries bulk
	// output. "^" only reorders the default list, so a host that offers
	// neither still negotiates; an -o Ciphers in ssh_args wins over this.
	"-o", "Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com",
}

// Command implements Hop. With User set, the config file that carries it
// stays until removed: the Bootstrapper removes it once ssh has read it
// (hopCommand).
func (h SSH) Command(script string) *exec.Cmd {
	cmd, _ := h.command(script)
	return cmd
}

// command is Command, and what to undo once ssh has read its config.
func (h SSH) command(script string) (*exec.Cmd, func()) {
	bin := h.Binary
	if bin == "" {
		bin = "ssh"
	}
	userArgs, cleanup := h.Args, func() {}
	if h.User != "" {
		path, rest, err := userConfig(h.User, h.Destination, h.Args)
		if err != nil {
			// ssh says what is wrong with a config it cannot read.
			path, rest = "/nonexistent/dtmux: "+err.Error(), h.Args
		} else {
			cleanup = func() { os.Remove(path) }
		}
		userArgs = append([]string{"-F", path}, rest...)
	}
	args := append(append(append([]string{}, userArgs...), sshDefaults...), h.Destination, "--", Script(script))
	cmd := exec.Command(bin, args...)
	if len(h.Env) > 0 {
		cmd.Env = append(os.Environ(), h.Env...)
	}
	return cmd, cleanup
}

// userConfig writes an ssh config that sets the login name to user and
// then reads the config ssh would have read (the -F file in args, taken
// out of the args returned, or the user's and the system's) into a file
// only this user can read, and returns its path. (ssh closes the
// descriptors it inherits, so a pipe cannot carry it.)
func userConfig(user, host string, args []string) (string, []string, error) {
	// Nothing ssh_config would read as a quote, a comment, an expansion.
	if !loginName.MatchString(user) || !loginName.MatchString(host) {
		return "", nil, errors.New("a login name or host that is not plain letters, digits and . _ - +")
	}
	includes := []string{"~/.ssh/config", "/etc/ssh/ssh_config"}
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-F" && i+1 < len(args):
			includes = []string{args[i+1]}
			i++
			continue
		case strings.HasPrefix(a, "-F"):
			includes = []string{a[2:]}
			continue
		}
		rest = append(rest, a)
	}
	var sb strings.Builder
	// ssh keeps the first value it reads: this one, for this host only
	// (not a ProxyJump host, which reads this config too).
	fmt.Fprintf(&sb, "Host %s\n  User %s\nHost *\n", host, user)
	for _, inc := range includes {
		if inc == "none" {
			continue
		}
		if !strings.HasPrefix(inc, "~") && !filepath.IsAbs(inc) {
			if abs, err := filepath.Abs(inc); err == nil {
				inc = abs
			}
		}
		fmt.Fprintf(&sb, "Include \"%s\"\n", inc)
	}
	f, err := os.CreateTemp("", "dtmux-ssh-*.conf") // mode 0600
	if err != nil {
		return "", nil, err
	}
	_, err = f.WriteString(sb.String())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", nil, err
	}
	return f.Name(), rest, nil
}

// loginName is what userConfig puts in a config file.
var loginName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]*$`)

// hopCommand is hop.Command(script), and what to undo once the process
// has read its config: the caller calls done after the process's first
// output or its end.
func hopCommand(hop Hop, script string) (cmd *exec.Cmd, done func()) {
	if h, ok := hop.(SSH); ok {
		return h.command(script)
	}
	return hop.Command(script), func() {}
}

// redact is what a hop's stderr must not show.
func (h SSH) redact() []string {
	if h.User == "" {
		return nil
	}
	return []string{h.User}
}

func (h SSH) String() string {
	if h.Label != "" {
		return h.Label
	}
	return "ssh " + h.Destination
}

// Exec is a hop through any command that takes the remote command as its
// last argument, e.g. `daytona ssh WS --`.
type Exec struct {
	// Argv is the command before the remote command.
	Argv []string
	// Env is added to the environment of the process.
	Env []string
	// Label names the hop in errors and logs (default Argv joined).
	Label string
}

// Command implements Hop.
func (h Exec) Command(script string) *exec.Cmd {
	cmd := exec.Command(h.Argv[0], append(append([]string{}, h.Argv[1:]...), Script(script))...)
	if len(h.Env) > 0 {
		cmd.Env = append(os.Environ(), h.Env...)
	}
	return cmd
}

func (h Exec) String() string {
	if h.Label != "" {
		return h.Label
	}
	return strings.Join(h.Argv, " ")
}
