// Package sshtest starts a private OpenSSH server on 127.0.0.1 for tests:
// its own config, host key, authorized keys and port in a temp dir, logged
// in as the current user, stopped in t.Cleanup.
package sshtest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dtmux/dtmux/internal/testbin"
)

// SSHD is where the OpenSSH server is expected.
const SSHD = "/usr/sbin/sshd"

// Server is a running private sshd.
type Server struct {
	// Dir holds the config, keys and logs.
	Dir string
	// Home is the HOME of sessions on this server (a temp dir, so that
	// anything installed under ~ stays inside the test).
	Home string
	// Port is the loopback TCP port.
	Port int
	// User is the login name (the current user).
	User string
	// Key is the client's private key file.
	Key string
	// Config is an ssh_config file for the client (identity, port, known
	// hosts); pass it with -F.
	Config string
	// Log is the sshd log file.
	Log string

	cmd  *exec.Cmd
	done chan struct{}
}

// Options tune the server.
type Options struct {
	// Env is set in every session (sshd SetEnv), in addition to HOME and
	// TMUX_TMPDIR pointing into the test's dirs.
	Env map[string]string
	// RejectAll makes the server refuse every login (no authorized keys).
	RejectAll bool
}

// Start starts a server or skips the test when sshd is not installed.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	testbin.RequireTool(t, "sshd", SSHD)
	testbin.RequireTool(t, "ssh")
	testbin.RequireTool(t, "ssh-keygen")
	// sshd's compiled-in privilege separation dir; the package's service
	// unit normally makes it.
	if _, err := os.Stat("/run/sshd"); err != nil && os.Geteuid() == 0 {
		os.MkdirAll("/run/sshd", 0o755)
	}
	u, err := user.Current()
	if err != nil {
		t.Fatalf("sshtest: current user: %v", err)
	}
	// Short path: it holds a unix socket (ControlPath in benchmarks).
	dir, err := os.MkdirTemp("", "dtssh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// sshd refuses keys in group/world-writable dirs (StrictModes); keep
	// everything 0700.
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s := &Server{
		Dir:    dir,
		Home:   filepath.Join(dir, "home"),
		User:   u.Username,
		Key:    filepath.Join(dir, "id_ed25519"),
		Config: filepath.Join(dir, "ssh_config"),
		Log:    filepath.Join(dir, "sshd.log"),
		done:   make(chan struct{}),
	}
	for _, d := range []string{s.Home, filepath.Join(dir, "tmux")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	hostKey := filepath.Join(dir, "host_ed25519")
	keygen(t, hostKey)
	keygen(t, s.Key)
	auth := filepath.Join(dir, "authorized_keys")
	pub, err := os.ReadFile(s.Key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if o.RejectAll {
		pub = nil
	}
	if err := os.WriteFile(auth, pub, 0o600); err != nil {
		t.Fatal(err)
	}
	hostPub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}

	env := map[string]string{"HOME": s.Home, "TMUX_TMPDIR": filepath.Join(dir, "tmux")}
	for k, v := range o.Env {
		env[k] = v
	}
	var setenv []string
	for k, v := range env {
		setenv = append(setenv, strconv.Quote(k+"="+v))
	}

	// A port picked by the kernel, released just before sshd binds it;
	// retried when another process wins the race.
	for attempt := 0; ; attempt++ {
		s.Port = freePort(t)
		cfg := filepath.Join(dir, "sshd_config")
		conf := fmt.Sprintf(`ListenAddress 127.0.0.1:%d
HostKey %s
PidFile %s
AuthorizedKeysFile %s
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowUsers %s
SetEnv %s
MaxStartups 100:30:200
MaxSessions 100
LogLevel VERBOSE
`, s.Port, hostKey, filepath.Join(dir, "sshd.pid"), auth, s.User, strings.Join(setenv, " "))
		if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		logf, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		// -D: stay in the foreground so the test owns the process; -e
		// would log to stderr, -E appends to our log file.
		cmd := exec.Command(SSHD, "-D", "-f", cfg, "-E", s.Log)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			logf.Close()
			t.Fatalf("sshtest: start sshd: %v", err)
		}
		logf.Close()
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		if waitListening(s.Port, exited) {
			s.cmd = cmd
			go func() { <-exited; close(s.done) }()
			break
		}
		cmd.Process.Kill()
		<-exited
		if attempt >= 4 {
			log, _ := os.ReadFile(s.Log)
			t.Fatalf("sshtest: sshd did not start:\n%s", log)
		}
	}
	t.Cleanup(s.Stop)

	known := filepath.Join(dir, "known_hosts")
	line := fmt.Sprintf("[127.0.0.1]:%d %s", s.Port, hostPub)
	if err := os.WriteFile(known, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	client := fmt.Sprintf(`Host *
  Port %d
  User %s
  IdentityFile %s
  IdentitiesOnly yes
  UserKnownHostsFile %s
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
`, s.Port, s.User, s.Key, known)
	if err := os.WriteFile(s.Config, []byte(client), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// Destination is user@127.0.0.1.
func (s *Server) Destination() string { return s.User + "@127.0.0.1" }

// Args are the ssh arguments that reach this server: -F Config.
func (s *Server) Args() []string { return []string{"-F", s.Config} }

// Run runs a command on the server through the system ssh and returns its
// combined output.
func (s *Server) Run(t testing.TB, command string) (string, error) {
	t.Helper()
	out, err := exec.Command("ssh", append(s.Args(), s.Destination(), "--", command)...).CombinedOutput()
	return string(out), err
}

var stopMu sync.Mutex

// Stop kills the server. Sessions already open keep their own processes
// until their clients go away.
func (s *Server) Stop() {
	stopMu.Lock()
	defer stopMu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

func keygen(t testing.TB, path string) {
	t.Helper()
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dtmux-test", "-f", path).CombinedOutput()
	if err != nil {
		t.Fatalf("sshtest: ssh-keygen: %v\n%s", err, out)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitListening waits until the port accepts a connection and answers with
// an SSH banner, or sshd exits.
func waitListening(port int, exited chan error) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			exited <- err
			return false
		default:
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 4)
			n, _ := c.Read(buf)
			c.Close()
			if bytes.Equal(buf[:n], []byte("SSH-")) {
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}
