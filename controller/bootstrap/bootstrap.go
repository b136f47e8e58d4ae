// Package bootstrap reaches a workspace's agent over a stdio hop (ssh,
// daytona ssh, a token-authenticated gateway): it checks the installed
// agent, uploads the matching binary when it is missing or different, and
// starts `dtmux-agent --stdio`, whose pipes become the connection.
package bootstrap

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/internal/transport"
)

// DefaultInstallDir is where the agent is installed on the remote side.
const DefaultInstallDir = "~/.dtmux/bin"

// AgentName is the installed agent's file name, and the prefix of the
// cross-built binaries (dtmux-agent-linux-amd64) in the agent dir.
const AgentName = "dtmux-agent"

// Markers the start script prints on its first stdout line.
const (
	markOK    = "dtmux-ok"
	markProbe = "dtmux-probe"
)

// maxPreamble bounds what a hop may print (a chatty shell rc file) before
// the start script's marker line.
const maxPreamble = 64 << 10

// ErrNoBinary: there is no agent binary for the remote OS/architecture.
var ErrNoBinary = errors.New("no dtmux-agent binary for the remote platform")

// Hop starts processes that run a command on the workspace: `ssh host
// CMD`, `daytona ssh WS -- CMD`, `ssh -T token@gateway CMD`.
type Hop interface {
	// Command returns an unstarted command running script (POSIX sh) on
	// the workspace, its stdin and stdout joined to the remote command's.
	Command(script string) *exec.Cmd
	// String names the hop in errors and logs (never a secret).
	String() string
}

// Config tunes a Bootstrapper.
type Config struct {
	// AgentDir holds the agent binaries to install, named
	// dtmux-agent-<goos>-<goarch>; a plain dtmux-agent there serves the
	// controller's own platform.
	AgentDir string
	// InstallDir is the remote directory (default DefaultInstallDir; a
	// leading ~/ means the remote $HOME).
	InstallDir string
	// Version, when set, must appear in the remote agent's --version
	// output; the checksum must match in any case.
	Version string
	// AgentArgs are passed to the remote agent after --stdio.
	AgentArgs []string
	// RemoteStderr, when set, is a remote file the agent's stderr is
	// appended to, for hops that do not carry stderr (Daytona's gateway).
	// A leading ~/ means the remote $HOME.
	RemoteStderr string
	// UploadTimeout bounds one upload (default DefaultUploadTimeout).
	UploadTimeout time.Duration
	// Logger receives hop stderr and bootstrap events; Named per workspace
	// by Dial.
	Logger hclog.Logger
}

// DefaultUploadTimeout bounds an upload: 14 MB at 50 KB/s.
const DefaultUploadTimeout = 5 * time.Minute

// AttemptTimeout bounds one Dial through a Bootstrapper with c: an upload
// and the ssh sessions around it (a probe, the start, which may wait for a
// daemon being replaced). Give a Dial that long, not a connect timeout
// sized for a socket: an install over a slow link takes minutes.
func (c Config) AttemptTimeout() time.Duration {
	up := c.UploadTimeout
	if up == 0 {
		up = DefaultUploadTimeout
	}
	return up + 2*time.Minute
}

// Bootstrapper installs and starts agents. It is safe for concurrent use.
type Bootstrapper struct {
	cfg Config
	log hclog.Logger

	mu   sync.Mutex
	bins map[string]binary // by path; guarded by mu
}

// binary is a local agent build.
type binary struct {
	path    string
	goos    string
	goarch  string
	size    int64
	modTime time.Time
	sum     string
}

// AttemptTimeout bounds one Dial (see Config.AttemptTimeout).
func (b *Bootstrapper) AttemptTimeout() time.Duration { return b.cfg.AttemptTimeout() }

// New returns a Bootstrapper.
func New(c Config) *Bootstrapper {
	if c.InstallDir == "" {
		c.InstallDir = DefaultInstallDir
	}
	if c.UploadTimeout == 0 {
		c.UploadTimeout = DefaultUploadTimeout
	}
	log := c.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Bootstrapper{cfg: c, log: log, bins: map[string]binary{}}
}

// Dial starts the agent on the workspace behind hop and returns the
// connection to it. It installs the agent first when the installed one is
// missing or differs. The returned conn's Close kills the hop process.
// The hop outlives ctx, which bounds only the start.
func (b *Bootstrapper) Dial(ctx context.Context, workspace string, hop Hop) (net.Conn, error) {
	log := b.log.Named(workspace)
	bins, err := b.binaries()
	if err != nil {
		return nil, err
	}
	uploaded := false
	for {
		conn, probe, err := b.start(ctx, log, workspace, hop, bins)
		if err != nil || conn != nil {
			return conn, err
		}
		bin, ok := pick(bins, probe.os, probe.arch)
		if !ok {
			return nil, fmt.Errorf("%w: %s %s (uname -sm) has no %s-<os>-<arch> in %s",
				ErrNoBinary, probe.os, probe.arch, AgentName, b.cfg.AgentDir)
		}
		if uploaded || probe.sum == bin.sum {
			// The right bytes are there but do not start or report the
			// expected version: uploading again would not help.
			return nil, fmt.Errorf("the installed agent (sha256 %s) does not run as expected: --version printed %q, want it to contain %q",
				short(probe.sum), probe.version, b.cfg.Version)
		}
		log.Info("installing agent", "hop", hop.String(), "platform", bin.goos+"/"+bin.goarch,
			"size", bin.size, "installed_version", probe.version)
		if err := b.upload(ctx, log, hop, bin); err != nil {
			return nil, fmt.Errorf("install agent over %s: %w", hop, err)
		}
		uploaded = true
	}
}

// probe is what the start script reports when it does not start the agent.
type probe struct {
	os, arch, sum, version string
}

// start runs the start script: it either execs the agent (conn returned)
// or reports the remote platform and installed agent (probe returned).
func (b *Bootstrapper) start(ctx context.Context, log hclog.Logger, workspace string, hop Hop, bins []binary) (net.Conn, probe, error) {
	began := time.Now()
	cmd, configRead := hopCommand(hop, b.startScript(bins))
	// ssh has read its config once the script speaks, or it has ended.
	defer configRead()
	stderr := newStderrLog(log.Named("hop"), redactions(hop))
	cmd.Stderr = stderr
	// Its own process group: terminal signals aimed at the controller do
	// not reach it, and Close can kill whatever it spawned (ProxyCommand).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 2 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, probe{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, probe{}, err
	}
	if err := cmd.Start(); err != nil {
		return nil, probe{}, fmt.Errorf("start %s: %w", hop, err)
	}
	// Bulk output crosses these pipes: see transport.HopPipeBytes.
	for _, p := range []any{stdin, stdout} {
		if f, ok := p.(interface {
			SyscallConn() (syscall.RawConn, error)
		}); ok {
			transport.GrowPipe(f, transport.HopPipeBytes)
		}
	}
	h := &hopProc{cmd: cmd, exited: make(chan struct{})}
	go func() { h.err = cmd.Wait(); close(h.exited) }()

	type result struct {
		line string
		err  error
	}
	br := bufio.NewReaderSize(stdout, 4096)
	got := make(chan result, 1)
	go func() { line, err := readMarker(br); got <- result{line, err} }()
	var r result
	select {
	case r = <-got:
	case <-ctx.Done():
		h.kill()
		<-got
		return nil, probe{}, fmt.Errorf("start agent over %s: no answer after %s: %w", hop, time.Since(began).Round(100*time.Millisecond), ctx.Err())
	}
	if r.err != nil {
		h.kill()
		return nil, probe{}, fmt.Errorf("%s exited before the agent started (%v): %s",
			hop, h.exitErr(), stderr.tail())
	}
	if r.line == markOK {
		log.Debug("agent started", "hop", hop.String())
		rc := struct {
			io.Reader
			io.Closer
		}{br, stdout}
		return transport.NewPipeConn(rc, stdin, "hop:"+workspace, h.kill), probe{}, nil
	}
	f := strings.Split(strings.TrimPrefix(r.line, markProbe+"\t"), "\t")
	for len(f) < 4 {
		f = append(f, "")
	}
	stdin.Close()
	select {
	case <-h.exited:
	case <-ctx.Done():
		// A hop that does not end its session when the script has.
		h.kill()
	}
	p := probe{os: f[0], arch: f[1], sum: f[2], version: f[3]}
	log.Debug("agent probe", "os", p.os, "arch", p.arch, "sum", short(p.sum), "version", p.version)
	return nil, p, nil
}

// readMarker skips noise until the start script's marker line.
func readMarker(br *bufio.Reader) (string, error) {
	n := 0
	for n < maxPreamble {
		line, err := br.ReadString('\n')
		n += len(line)
		if err != nil {
			return "", err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == markOK || strings.HasPrefix(line, markProbe+"\t") {
			return line, nil
		}
	}
	return "", errors.New("no start marker in the hop's output")
}

// hopProc is one running hop process.
type hopProc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // set before exited is closed
	once   sync.Once
}

// kill ends the hop's process group and waits for it.
func (h *hopProc) kill() {
	h.once.Do(func() {
		select {
		case <-h.exited:
			// Reaped: its pid (and group id) may be another's by now.
		default:
			syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
			h.cmd.Process.Kill()
		}
		<-h.exited
	})
}

func (h *hopProc) exitErr() error {
	<-h.exited
	if h.err == nil {
		return errors.New("exit status 0")
	}
	return h.err
}

// upload installs bin: head -c SIZE, not cat, so that a gateway that never
// passes on EOF cannot hang it; checksum verified before the atomic rename.
func (b *Bootstrapper) upload(parent context.Context, log hclog.Logger, hop Hop, bin binary) error {
	ctx, cancel := context.WithTimeout(parent, b.cfg.UploadTimeout)
	defer cancel()
	f, err := os.Open(bin.path)
	if err != nil {
		return err
	}
	defer f.Close()
	// The temporary file goes however the script ends: a hop that drops
	// mid-upload leaves sh with a short file and no stderr to write to
	// (SIGPIPE), or a SIGHUP. Leftovers of a script killed outright
	// (SIGKILL) older than an hour are swept (find -mmin: GNU, busybox).
	script := fmt.Sprintf(`echo >&2
set -e
d=%s
mkdir -p "$d"
find "$d" -maxdepth 1 -name '.%s.*' -mmin +60 -exec rm -f {} + 2>/dev/null || true
t="$d/.%s.$$"
trap 'rm -f "$t"' EXIT
trap 'rm -f "$t"; exit 1' HUP INT TERM PIPE
head -c %d > "$t"
s=$( (sha256sum "$t" || shasum -a 256 "$t") 2>/dev/null | cut -d' ' -f1)
if [ "$s" != %s ]; then echo "checksum mismatch after upload (got '$s'; is sha256sum installed?)" >&2; exit 3; fi
chmod 755 "$t"
mv -f "$t" "$d/%s"
`, remotePath(b.cfg.InstallDir), AgentName, AgentName, bin.size, bin.sum, AgentName)
	cmd, configRead := hopCommand(hop, script)
	defer configRead() // at the latest
	cmd.Stdin = io.LimitReader(f, bin.size)
	var out bytes.Buffer
	// The script speaks first thing (a newline): ssh has read its config.
	w := &firstWrite{w: &out, first: configRead}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		if parent.Err() == nil {
			return fmt.Errorf("%d bytes took longer than the upload timeout, %s (the controller's --agent-upload-timeout)", bin.size, b.cfg.UploadTimeout)
		}
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("%v: %s", err, oneLine(redact(out.String(), redactions(hop))))
	}
	log.Info("agent installed", "dir", b.cfg.InstallDir, "sha256", short(bin.sum))
	return nil
}

// firstWrite is w, calling first (once) before the first write.
type firstWrite struct {
	w     io.Writer
	first func()
	once  sync.Once
}

func (f *firstWrite) Write(p []byte) (int, error) {
	f.once.Do(f.first)
	return f.w.Write(p)
}

// startScript checks the installed agent against the binary for the
// remote platform and execs it, or prints a probe line.
func (b *Bootstrapper) startScript(bins []binary) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "d=%s\na=\"$d/%s\"\n", remotePath(b.cfg.InstallDir), AgentName)
	sb.WriteString("o=$(uname -s); m=$(uname -m)\ncase \"$o $m\" in\n")
	for _, bin := range bins {
		pats := unamePatterns(bin.goos, bin.goarch)
		if len(pats) == 0 {
			continue
		}
		fmt.Fprintf(&sb, "%s) w=%s;;\n", strings.Join(pats, "|"), bin.sum)
	}
	sb.WriteString("*) w=;;\nesac\n")
	sb.WriteString("s=$( (sha256sum \"$a\" || shasum -a 256 \"$a\") 2>/dev/null | cut -d' ' -f1)\n")
	sb.WriteString("v=$(\"$a\" --version 2>/dev/null | head -n 1)\n")
	fmt.Fprintf(&sb, "case \"$v\" in *%s*) vok=1;; *) vok=;; esac\n", shQuote(b.cfg.Version))
	args := []string{"--stdio"}
	for _, a := range b.cfg.AgentArgs {
		args = append(args, shQuote(a))
	}
	redirect := ""
	if b.cfg.RemoteStderr != "" {
		p := remotePath(b.cfg.RemoteStderr)
		fmt.Fprintf(&sb, "mkdir -p \"$(dirname %s)\" 2>/dev/null\n", p)
		redirect = " 2>>" + p
	}
	fmt.Fprintf(&sb, "if [ -n \"$w\" ] && [ \"$s\" = \"$w\" ] && [ -n \"$vok\" ]; then echo %s; exec \"$a\" %s%s; fi\n",
		markOK, strings.Join(args, " "), redirect)
	fmt.Fprintf(&sb, "printf '%s\\t%%s\\t%%s\\t%%s\\t%%s\\n' \"$o\" \"$m\" \"$s\" \"$v\"\n", markProbe)
	return sb.String()
}

// unamePatterns are the `uname -s` `uname -m` pairs of a Go platform.
func unamePatterns(goos, goarch string) []string {
	var s string
	switch goos {
	case "linux":
		s = "Linux"
	case "darwin":
		s = "Darwin"
	case "freebsd":
		s = "FreeBSD"
	default:
		return nil
	}
	var ms []string
	switch goarch {
	case "amd64":
		ms = []string{"x86_64", "amd64"}
	case "arm64":
		ms = []string{"aarch64", "arm64"}
	case "386":
		ms = []string{"i386", "i686"}
	case "arm":
		ms = []string{"armv6l", "armv7l"}
	case "riscv64":
		ms = []string{"riscv64"}
	default:
		return nil
	}
	var out []string
	for _, m := range ms {
		out = append(out, shQuote(s+" "+m))
	}
	return out
}

// pick finds the binary for a `uname -s`, `uname -m` pair.
func pick(bins []binary, unameS, unameM string) (binary, bool) {
	for _, bin := range bins {
		for _, p := range unamePatterns(bin.goos, bin.goarch) {
			if p == shQuote(unameS+" "+unameM) {
				return bin, true
			}
		}
	}
	return binary{}, false
}

// binaries lists the agent builds in AgentDir, checksummed once per file
// version.
func (b *Bootstrapper) binaries() ([]binary, error) {
	if b.cfg.AgentDir == "" {
		return nil, errors.New("no agent dir configured (the dtmux-agent binaries to install)")
	}
	entries, err := os.ReadDir(b.cfg.AgentDir)
	if err != nil {
		return nil, fmt.Errorf("agent dir: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	seen := map[string]bool{}
	var out []binary
	for _, e := range entries {
		goos, goarch := "", ""
		switch name := e.Name(); {
		case name == AgentName:
			goos, goarch = runtime.GOOS, runtime.GOARCH
		case strings.HasPrefix(name, AgentName+"-"):
			parts := strings.Split(strings.TrimPrefix(name, AgentName+"-"), "-")
			if len(parts) != 2 {
				continue
			}
			goos, goarch = parts[0], parts[1]
		default:
			continue
		}
		path := filepath.Join(b.cfg.AgentDir, e.Name())
		st, err := os.Stat(path)
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		bin, ok := b.bins[path]
		if !ok || bin.size != st.Size() || !bin.modTime.Equal(st.ModTime()) {
			sum, err := fileSum(path)
			if err != nil {
				return nil, err
			}
			bin = binary{path: path, goos: goos, goarch: goarch, size: st.Size(), modTime: st.ModTime(), sum: sum}
			b.bins[path] = bin
		}
		// A cross-built binary wins over the plain one for the same
		// platform.
		key := goos + "/" + goarch
		if seen[key] && e.Name() == AgentName {
			continue
		}
		if seen[key] {
			for i := range out {
				if out[i].goos+"/"+out[i].goarch == key {
					out[i] = bin
				}
			}
			continue
		}
		seen[key] = true
		out = append(out, bin)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: none in %s (want %s-linux-amd64 etc.)", ErrNoBinary, b.cfg.AgentDir, AgentName)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].path < out[j].path })
	return out, nil
}

func fileSum(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// remotePath quotes a remote path for sh, keeping a leading ~/ as $HOME.
func remotePath(p string) string {
	if p == "~" {
		return `"$HOME"`
	}
	if strings.HasPrefix(p, "~/") {
		return `"$HOME"/` + shQuote(strings.TrimPrefix(p, "~/"))
	}
	return shQuote(p)
}

// shQuote quotes s as one sh word.
func shQuote(s string) string {
	if s == "" {
		return "''"
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Script wraps a POSIX sh script into one command line for a remote login
// shell of any kind: exec sh -c '...'.
func Script(script string) string { return "exec sh -c " + shQuote(script) }

func short(sum string) string {
	if len(sum) > 12 {
		return sum[:12]
	}
	return sum
}
