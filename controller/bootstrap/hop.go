package bootstrap

import (
	"os"
	"os/exec"
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

// Command implements Hop.
func (h SSH) Command(script string) *exec.Cmd {
	bin := h.Binary
	if bin == "" {
		bin = "ssh"
	}
	args := append(append(append([]string{}, h.Args...), sshDefaults...), h.Destination, "--", Script(script))
	cmd := exec.Command(bin, args...)
	if len(h.Env) > 0 {
		cmd.Env = append(os.Environ(), h.Env...)
	}
	return cmd
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
