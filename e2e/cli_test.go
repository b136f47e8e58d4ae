package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dtmux/dtmux/internal/testbin"
)

// cliResult is what one run of the dtmux binary printed and returned.
type cliResult struct {
	stdout, stderr string
	code           int
}

// dtmuxCLI runs the real dtmux binary against c with stdin (nil: empty).
func dtmuxCLI(t *testing.T, c *Controller, stdin io.Reader, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testbin.Path(t, testbin.CLI), args...)
	cmd.Env = c.Env()
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("dtmux %s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("dtmux %s: did not finish\nstdout: %s\nstderr: %s", strings.Join(args, " "), clipOut(out.String()), errb.String())
	}
	return cliResult{out.String(), errb.String(), code}
}

func clipOut(s string) string {
	if len(s) > 2000 {
		return s[:2000] + "..."
	}
	return s
}

// mustCLI runs dtmux and fails the test unless it exits 0.
func mustCLI(t *testing.T, c *Controller, args ...string) cliResult {
	t.Helper()
	r := dtmuxCLI(t, c, nil, args...)
	if r.code != 0 {
		t.Fatalf("dtmux %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, clipOut(r.stdout), r.stderr)
	}
	return r
}

// oneLineError checks that stderr is a single "dtmux: ..." line.
func oneLineError(t *testing.T, r cliResult, contains string) {
	t.Helper()
	if !strings.HasPrefix(r.stderr, "dtmux: ") || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, contains) {
		t.Errorf("stderr %q: want one \"dtmux: \" line containing %q", r.stderr, contains)
	}
}

func TestCLIExec(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)

	t.Run("exit codes", func(t *testing.T) {
		for _, tt := range []struct {
			argv []string
			code int
		}{
			{[]string{"true"}, 0},
			{[]string{"sh", "-c", "exit 3"}, 3},
			{[]string{"sh", "-c", "kill -TERM $$"}, 128 + int(syscall.SIGTERM)},
		} {
			r := dtmuxCLI(t, c, nil, append([]string{"exec", "w1", "--"}, tt.argv...)...)
			if r.code != tt.code {
				t.Errorf("%q: exit %d, want %d (stderr %q)", tt.argv, r.code, tt.code, r.stderr)
			}
		}
	})

	t.Run("stdout and stderr apart", func(t *testing.T) {
		r := mustCLI(t, c, "exec", "w1", "--", "sh", "-c", "echo out; echo err >&2; echo out2")
		if r.stdout != "out\nout2\n" || r.stderr != "err\n" {
			t.Errorf("stdout %q stderr %q", r.stdout, r.stderr)
		}
	})

	t.Run("stdin piped to EOF", func(t *testing.T) {
		in := "hello\nworld without newline"
		r := dtmuxCLI(t, c, strings.NewReader(in), "exec", "w1", "--", "cat")
		if r.code != 0 || r.stdout != in {
			t.Errorf("cat: exit %d stdout %q, want %q (stderr %q)", r.code, r.stdout, in, r.stderr)
		}
		big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
		r = dtmuxCLI(t, c, bytes.NewReader(big), "exec", "w1", "--", "wc", "-c")
		if r.code != 0 || strings.TrimSpace(r.stdout) != strconv.Itoa(len(big)) {
			t.Errorf("wc -c: exit %d stdout %q, want %d", r.code, r.stdout, len(big))
		}
		r = dtmuxCLI(t, c, strings.NewReader(""), "exec", "w1", "--", "wc", "-c")
		if r.code != 0 || strings.TrimSpace(r.stdout) != "0" {
			t.Errorf("empty stdin: wc -c = %q", r.stdout)
		}
	})

	// 100 MB through the default spool (64 MiB) checks that a live reader
	// is never outrun; with --max-output 128M the spool holds it all, which
	// isolates the CLI-controller-agent path itself.
	for _, extra := range [][]string{nil, {"--max-output", "128M"}} {
		name := "100 MB byte-exact, default spool"
		if extra != nil {
			name = "100 MB byte-exact, " + strings.Join(extra, " ")
		}
		t.Run(name, func(t *testing.T) {
			r := mustCLI(t, c, "exec", "w1", "--", "sh", "-c", "head -c 100000000 /dev/urandom > big.bin && sha256sum big.bin")
			t.Cleanup(func() { mustCLI(t, c, "exec", "w1", "--", "rm", "-f", "big.bin") })
			remote, _, _ := strings.Cut(r.stdout, " ")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			args := append(append([]string{"exec", "w1"}, extra...), "--", "cat", "big.bin")
			cmd := exec.CommandContext(ctx, testbin.Path(t, testbin.CLI), args...)
			cmd.Env = c.Env()
			h := sha256.New()
			n := &countingWriter{w: h}
			var errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = n, &errb
			if err := cmd.Run(); err != nil {
				t.Fatalf("cat big.bin: %v: %s", err, errb.String())
			}
			if got := hex.EncodeToString(h.Sum(nil)); got != remote || n.n != 100000000 {
				// Evicted bytes mean the agent's spool let a live reader
				// fall behind by more than its limit.
				t.Errorf("received %d of 100000000 bytes with sha256 %s; remote sha256 %q; stderr %q", n.n, got, remote, clipOut(errb.String()))
			}
		})
	}

	t.Run("timeout kills a grandchild", func(t *testing.T) {
		r := dtmuxCLI(t, c, nil, "exec", "w1", "--timeout", "1s", "--",
			"sh", "-c", `sh -c 'sleep 300 & echo $! > gc.pid; wait'; echo never`)
		if r.code != 124 || strings.Contains(r.stdout, "never") {
			t.Errorf("exit %d stdout %q, want 124", r.code, r.stdout)
		}
		oneLineError(t, r, "timed out")
		pid, err := strconv.Atoi(strings.TrimSpace(mustCLI(t, c, "exec", "w1", "--", "cat", "gc.pid").stdout))
		if err != nil || pid <= 0 {
			t.Fatalf("grandchild pid: %v", err)
		}
		// The agent kills the group before it sends the trailer; allow a
		// bounded wait for the kernel to finish tearing it down.
		deadline := time.Now().Add(15 * time.Second)
		for processAlive(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("grandchild %d still alive after the timeout", pid)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("detached run reattached from an offset", func(t *testing.T) {
		r := mustCLI(t, c, "exec", "-d", "w1", "--", "sh", "-c", "printf 0123456789; sleep 1; printf abcdef")
		id := strings.TrimSpace(r.stdout)
		if id == "" || strings.Contains(id, "\n") || r.stdout != id+"\n" {
			t.Fatalf("exec -d printed %q, want the run id alone", r.stdout)
		}
		r = dtmuxCLI(t, c, nil, "runs", "logs", "w1", id, "--from", "4", "-f")
		if r.code != 0 || r.stdout != "456789abcdef" {
			t.Errorf("runs logs --from 4 -f: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		r = mustCLI(t, c, "runs", "ls", "w1")
		if !strings.Contains(r.stdout, id) {
			t.Errorf("runs ls does not list %s:\n%s", id, r.stdout)
		}
		r = mustCLI(t, c, "runs", "ls", "w1", "-o", "json")
		var runs struct {
			Runs []struct {
				RunID string `json:"run_id"`
			} `json:"runs"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &runs); err != nil || len(runs.Runs) == 0 {
			t.Errorf("runs ls -o json: %v\n%s", err, r.stdout)
		}
	})

	t.Run("detached run has no stdin", func(t *testing.T) {
		// cat reads stdin: detached, it must see EOF at once rather than
		// wait for input no one can send.
		r := mustCLI(t, c, "exec", "-d", "w1", "--", "cat")
		id := strings.TrimSpace(r.stdout)
		r = dtmuxCLI(t, c, nil, "runs", "logs", "w1", id, "-f")
		if r.code != 0 || r.stdout != "" {
			t.Errorf("runs logs -f of a detached cat: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		// An empty pipe on stdin (cron, CI) is nothing left unread.
		if r := dtmuxCLI(t, c, strings.NewReader(""), "exec", "-d", "w1", "--", "true"); r.code != 0 || r.stderr != "" {
			t.Errorf("exec -d with an empty pipe on stdin: exit %d stderr %q, want no note", r.code, r.stderr)
		}
	})

	t.Run("same run id runs once", func(t *testing.T) {
		args := []string{"exec", "w1", "--run-id", "once-1", "--", "sh", "-c", "echo x >> once.txt; echo done"}
		first := mustCLI(t, c, args...)
		second := mustCLI(t, c, args...)
		if first.stdout != "done\n" || second.stdout != "done\n" {
			t.Errorf("outputs %q and %q, want the run's output both times", first.stdout, second.stdout)
		}
		if got := mustCLI(t, c, "exec", "w1", "--", "cat", "once.txt").stdout; got != "x\n" {
			t.Errorf("once.txt = %q: the command ran more than once", got)
		}
	})

	t.Run("env and cwd", func(t *testing.T) {
		dir := t.TempDir()
		r := mustCLI(t, c, "exec", "w1", "-e", "A=1 2", "--secret-env", "S=hidden", "-w", dir, "--", "sh", "-c", `printf '%s|%s|%s|%s' "$A" "$S" "$PWD" "$DTMUX_WORKSPACE"`)
		if want := "1 2|hidden|" + dir + "|w1"; r.stdout != want {
			t.Errorf("got %q, want %q", r.stdout, want)
		}
		// "~" is the workspace's home, not the caller's.
		r = mustCLI(t, c, "exec", "w1", "-w", "~", "--", "sh", "-c", `printf '%s|%s' "$PWD" "$HOME"`)
		if pwd, home, _ := strings.Cut(r.stdout, "|"); pwd != home || !strings.Contains(home, "workspaces") {
			t.Errorf("-w ~: PWD|HOME = %q, want the workspace's home for both", r.stdout)
		}
		r = mustCLI(t, c, "runs", "ls", "w1", "-o", "json")
		if strings.Contains(r.stdout, "hidden") {
			t.Error("runs ls shows a secret value")
		}
	})

	t.Run("Ctrl-C is forwarded", func(t *testing.T) {
		l := startCLI(t, c, "exec", "w1", "--", "sh", "-c", "echo ready; exec sleep 300")
		if l.first != "ready" {
			t.Fatalf("first line %q", l.first)
		}
		l.signal(t, syscall.SIGINT)
		if code := l.wait(t); code != 128+int(syscall.SIGINT) {
			t.Errorf("exit %d, want %d (the remote sleep died from SIGINT)", code, 128+int(syscall.SIGINT))
		}
	})

	t.Run("SIGTERM ignored by the run: the second one ends dtmux", func(t *testing.T) {
		// What timeout(1) or a supervisor does to a dtmux whose remote
		// program ignores SIGTERM (as an interactive shell does).
		l := startCLI(t, c, "exec", "w1", "--", "sh", "-c", `trap "" TERM; echo $$; while :; do sleep 1; done`)
		remote, err := strconv.Atoi(l.first)
		if err != nil {
			t.Fatalf("first line %q: %v", l.first, err)
		}
		l.signal(t, syscall.SIGTERM)
		time.Sleep(300 * time.Millisecond)
		if !processAlive(remote) {
			t.Fatal("the remote shell died from an ignored SIGTERM")
		}
		l.signal(t, syscall.SIGTERM)
		if code := l.wait(t); code != 128+int(syscall.SIGTERM) {
			t.Errorf("exit %d, want %d; stderr %q", code, 128+int(syscall.SIGTERM), l.stderr.String())
		}
		if !strings.Contains(l.stderr.String(), "gave up waiting") {
			t.Errorf("stderr %q does not say dtmux gave up", l.stderr.String())
		}
		// Gone with its client, as with ssh: the hang-up's SIGHUP.
		eventually(t, "the run ended after dtmux gave up", func() string {
			if processAlive(remote) {
				return "remote shell still alive"
			}
			return ""
		})
	})

	t.Run("-t without a terminal: no PTY unless -tt", func(t *testing.T) {
		r := dtmuxCLI(t, c, strings.NewReader("piped"), "exec", "-t", "w1", "--", "sh", "-c", "test -t 0 && echo tty; cat")
		if r.code != 0 || r.stdout != "piped" || !strings.Contains(r.stderr, "no pseudo-terminal") {
			t.Errorf("-t with a pipe: %+v, want stdin piped without a PTY, and a note", r)
		}
		r = dtmuxCLI(t, c, nil, "exec", "-tt", "w1", "--", "sh", "-c", "test -t 0 && test -t 1 && echo tty")
		if r.code != 0 || r.stdout != "tty\r\n" || r.stderr != "" {
			t.Errorf("-tt: %+v, want a PTY", r)
		}
	})

	t.Run("errors", func(t *testing.T) {
		r := dtmuxCLI(t, c, nil, "exec", "nope", "--", "true")
		if r.code != 255 {
			t.Errorf("unknown workspace: exit %d", r.code)
		}
		oneLineError(t, r, `workspace "nope" not found`)
		// A name no workspace can have is the caller's mistake, not a
		// missing workspace; so for the fleet.
		for _, args := range [][]string{{"exec", "Bad Name", "--", "true"}, {"runs", "ls", "a/b"}, {"fleet", "exec", "--ws", "w1,Bad Name", "--", "true"}} {
			r := dtmuxCLI(t, c, nil, args...)
			if r.code != 254 {
				t.Errorf("%v: exit %d, want 254", args, r.code)
			}
			oneLineError(t, r, "workspace name")
		}
		r = dtmuxCLI(t, c, nil, "fleet", "exec", "--ws", "w1,nope", "--", "true")
		if r.code != 255 {
			t.Errorf("fleet exec on an unknown workspace: exit %d", r.code)
		}
		oneLineError(t, r, `workspace "nope" not found`)

		for name, args := range map[string][]string{
			"empty argv":     {"exec", "w1"},
			"empty argv --":  {"exec", "w1", "--"},
			"env without =":  {"exec", "w1", "-e", "JUSTKEY", "--", "true"},
			"env empty name": {"exec", "w1", "-e", "=x", "--", "true"},
		} {
			r := dtmuxCLI(t, c, nil, args...)
			if r.code != 254 {
				t.Errorf("%s: exit %d, want 254", name, r.code)
			}
			oneLineError(t, r, "")
		}

		// A missing or non-executable program exits as a shell says.
		r = dtmuxCLI(t, c, nil, "exec", "w1", "--", "nosuchcmd", "x")
		if r.code != 127 || r.stderr != "dtmux: nosuchcmd: command not found\n" {
			t.Errorf("missing program: exit %d stderr %q, want 127 and \"dtmux: nosuchcmd: command not found\"", r.code, r.stderr)
		}
		mustCLI(t, c, "exec", "w1", "--", "sh", "-c", "printf 'echo hi\n' > noexec.sh; chmod 0644 noexec.sh")
		r = dtmuxCLI(t, c, nil, "exec", "w1", "--", "./noexec.sh")
		if r.code != 126 {
			t.Errorf("non-executable program: exit %d stderr %q, want 126", r.code, r.stderr)
		}
		oneLineError(t, r, "./noexec.sh: cannot execute")
		// A run id taken by another command is refused plainly.
		mustCLI(t, c, "exec", "w1", "--run-id", "taken-1", "--", "true")
		r = dtmuxCLI(t, c, nil, "exec", "w1", "--run-id", "taken-1", "--", "false")
		if r.code != 254 {
			t.Errorf("run id conflict: exit %d, want 254 (stderr %q)", r.code, r.stderr)
		}
		oneLineError(t, r, `run id "taken-1" is already used by a different command`)

		// Input the server rejects is invalid input too.
		r = dtmuxCLI(t, c, nil, "exec", "w1", "--run-id", "bad id", "--", "true")
		if r.code != 254 {
			t.Errorf("--run-id 'bad id': exit %d, want 254 (stderr %q)", r.code, r.stderr)
		}
		oneLineError(t, r, "bad id")

		secrets := filepath.Join(t.TempDir(), "big.env")
		if err := os.WriteFile(secrets, []byte("BIG="+strings.Repeat("v", 5<<20)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		r = dtmuxCLI(t, c, nil, "exec", "w1", "--secret-env-file", secrets, "--", "true")
		// The caller's input to fix, as a large value the kernel refuses.
		if r.code != 254 {
			t.Errorf("oversized message: exit %d, want 254", r.code)
		}
		oneLineError(t, r, "the request is too large (")

		r = dtmuxCLI(t, c, nil, "runs", "logs", "w1", "no-such-run")
		if r.code != 255 {
			t.Errorf("unknown run: exit %d", r.code)
		}
		oneLineError(t, r, "no-such-run")
	})
}

func TestCLIWorkspaces(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	mustCLI(t, c, "ws", "create", "wa", "--label", "team=web")
	mustCLI(t, c, "ws", "create", "wb", "--label", "team=api")

	r := mustCLI(t, c, "ws", "ls")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(r.stdout, "team=web") {
		t.Errorf("ws ls:\n%s", r.stdout)
	}
	r = mustCLI(t, c, "ws", "ls", "--label", "team=web", "-o", "json")
	var got struct {
		Workspaces []struct {
			Name string `json:"name"`
		} `json:"workspaces"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got.Workspaces) != 1 || got.Workspaces[0].Name != "wa" {
		t.Errorf("ws ls --label team=web -o json: %v %s", err, r.stdout)
	}

	r = dtmuxCLI(t, c, nil, "ws", "create", "wa")
	if r.code != 254 {
		t.Errorf("duplicate create: exit %d, want 254 (a name already taken)", r.code)
	}
	oneLineError(t, r, "wa")
	r = dtmuxCLI(t, c, nil, "ws", "create", "wopt", "--opt", "workdir=/tmp")
	if r.code != 254 {
		t.Errorf("ws create --opt the provider does not take: exit %d, want 254", r.code)
	}
	oneLineError(t, r, "unknown option workdir")
	r = dtmuxCLI(t, c, nil, "ws", "create", "")
	if r.code != 254 {
		t.Errorf("ws create '': exit %d, want 254 (stderr %q)", r.code, r.stderr)
	}
	oneLineError(t, r, "")

	mustCLI(t, c, "ws", "stop", "wb")
	r = dtmuxCLI(t, c, nil, "exec", "wb", "--", "true")
	if r.code != 255 {
		t.Errorf("exec in a stopped workspace: exit %d", r.code)
	}
	oneLineError(t, r, "")
	mustCLI(t, c, "ws", "start", "wb")
	mustCLI(t, c, "exec", "wb", "--", "true")

	mustCLI(t, c, "ws", "rm", "--force", "wb")
	if r := mustCLI(t, c, "ws", "ls"); strings.Contains(r.stdout, "wb") {
		t.Errorf("wb still listed after rm:\n%s", r.stdout)
	}
	r = mustCLI(t, c, "version")
	if !strings.HasPrefix(r.stdout, "dtmux ") || !strings.Contains(r.stdout, "controller") {
		t.Errorf("version: %q", r.stdout)
	}
	c.CreateWorkspace(t, "wv", nil)
	r = mustCLI(t, c, "version", "--workspace", "wv")
	if !regexp.MustCompile(`(?m)^agent \S+ in wv \(linux/\w+, tmux \d`).MatchString(r.stdout) {
		t.Errorf("version --workspace: %q", r.stdout)
	}
}

func TestCLINoController(t *testing.T) {
	dir := shortTempDir(t)
	cmd := exec.Command(testbin.Path(t, testbin.CLI), "ws", "ls")
	cmd.Env = append(os.Environ(), "DTMUX_CONTROLLER=", "DTMUX_STATE_DIR="+dir)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	want := fmt.Sprintf("dtmux: no controller at unix://%s/controller.sock: start one with `dtmux-controller`\n", dir)
	if !errors.As(err, &ee) || ee.ExitCode() != 255 || string(out) != want {
		t.Errorf("got %v %q, want 255 and %q", err, out, want)
	}
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// eventually polls f until it returns "" (success) or the bound passes,
// then fails with f's last complaint. The bound is a safety net, not a
// timing assertion.
func eventually(t *testing.T, what string, f func() string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		msg := f()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestCLISessions(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)

	if r := mustCLI(t, c, "session", "new", "w1", "s1", "--", "cat"); r.stdout != "s1\n" {
		t.Errorf("session new printed %q", r.stdout)
	}
	r := mustCLI(t, c, "session", "ls", "w1")
	if !strings.Contains(r.stdout, "s1") {
		t.Errorf("session ls:\n%s", r.stdout)
	}
	// protojson varies its whitespace on purpose: decode, never grep.
	r = mustCLI(t, c, "session", "ls", "w1", "-o", "json")
	var listed struct {
		Sessions []struct {
			Name string `json:"name"`
		} `json:"sessions"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &listed); err != nil || len(listed.Sessions) != 1 || listed.Sessions[0].Name != "s1" {
		t.Errorf("session ls -o json: %v\n%s", err, r.stdout)
	}

	// Text arrives exactly as typed: nothing is a tmux command or a shell
	// word. cat (and the tty echo) show it back.
	text := "a;b \"q\" 'r' $(echo no) `echo no` tab\there é ünï 😀 end;"
	mustCLI(t, c, "session", "send", "w1", "s1", "--enter", text)
	eventually(t, "typed text in capture", func() string {
		got := mustCLI(t, c, "session", "capture", "w1", "s1").stdout
		// The terminal renders the tab as spaces: check either side of it.
		before, after, _ := strings.Cut(text, "\t")
		if !strings.Contains(got, before) || !strings.Contains(got, after) {
			return fmt.Sprintf("capture:\n%s", got)
		}
		return ""
	})
	// Named keys: C-c ends cat, so the window's command exits.
	mustCLI(t, c, "session", "send", "w1", "s1", "--keys", "C-c")

	r = dtmuxCLI(t, c, nil, "session", "new", "w1", "bad name")
	if r.code != 254 {
		t.Errorf("invalid session name: exit %d, want 254 (stderr %q)", r.code, r.stderr)
	}
	oneLineError(t, r, "")
	r = dtmuxCLI(t, c, nil, "session", "capture", "w1", "nosuch")
	if r.code != 255 {
		t.Errorf("capture of an unknown session: exit %d", r.code)
	}
	oneLineError(t, r, "nosuch")

	mustCLI(t, c, "session", "kill", "w1", "s1")
	r = dtmuxCLI(t, c, nil, "session", "kill", "w1", "s1")
	if r.code != 255 {
		t.Errorf("second kill: exit %d", r.code)
	}
	oneLineError(t, r, "s1")

	t.Run("capture --lines is the last N lines", func(t *testing.T) {
		mustCLI(t, c, "session", "new", "w1", "s3", "--", "sh", "-c", "seq 1 60; exec cat")
		t.Cleanup(func() { dtmuxCLI(t, c, nil, "session", "kill", "w1", "s3") })
		eventually(t, "capture --lines 5", func() string {
			if got := mustCLI(t, c, "session", "capture", "w1", "s3", "--lines", "5").stdout; got != "56\n57\n58\n59\n60\n" {
				return fmt.Sprintf("got %q, want 56..60", got)
			}
			return ""
		})
	})

	t.Run("logs -f follows live output", func(t *testing.T) {
		mustCLI(t, c, "session", "new", "w1", "s2", "--", "sh", "-c", "echo first; read x; echo second-$x; exit 4")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, testbin.Path(t, testbin.CLI), "session", "logs", "w1", "s2", "-f")
		cmd.Env = c.Env()
		var out syncBuffer
		cmd.Stdout = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		eventually(t, "snapshot", func() string {
			if !strings.Contains(out.String(), "first") {
				return out.String()
			}
			return ""
		})
		mustCLI(t, c, "session", "send", "w1", "s2", "--enter", "42")
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 4 || !strings.Contains(out.String(), "second-42") {
			t.Errorf("logs -f: %v, output %q; want exit 4 after second-42", err, out.String())
		}
		mustCLI(t, c, "session", "kill", "w1", "s2")
	})
}

func TestCLIRunScript(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)
	dir := t.TempDir()
	script := filepath.Join(dir, "build.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"start $1\"\nfor p in 10 50 100; do echo \"building $p%\"; done\nexit $2\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	r := dtmuxCLI(t, c, nil, "run", "w1", script, "arg1", "3")
	if r.code != 3 || !strings.Contains(r.stdout, "start arg1") || !strings.Contains(r.stdout, "building 100%") {
		t.Errorf("run: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	// The finished run's window is closed: no dead "build-..." window
	// is left behind in the scripts session.
	eventually(t, "the finished script's window closed", func() string {
		if out := mustCLI(t, c, "session", "ls", "w1").stdout; strings.Contains(out, "build") {
			return out
		}
		return ""
	})
	r = dtmuxCLI(t, c, nil, "run", "w1", "--keep-window", script, "x", "5")
	if r.code != 5 {
		t.Errorf("run --keep-window: exit %d stderr %q", r.code, r.stderr)
	}
	if out := mustCLI(t, c, "session", "ls", "w1").stdout; !regexp.MustCompile(`build-[0-9a-f]{4}\(exit 5\)`).MatchString(out) {
		t.Errorf("run --keep-window: no dead build-XXXX window with its status:\n%s", out)
	}
	r = dtmuxCLI(t, c, nil, "run", "w1", "--progress", `(\d+)%`, script, "x", "0")
	if r.code != 0 || !strings.Contains(r.stderr, "progress: 10%\nprogress: 50%\nprogress: 100%\n") {
		t.Errorf("--progress: exit %d stderr %q", r.code, r.stderr)
	}
	// A readiness gate whose pattern never shows does not pass.
	r = dtmuxCLI(t, c, nil, "run", "w1", "--wait-for", "NEVER-SHOWN", script, "x", "0")
	if r.code != 1 || !strings.Contains(r.stderr, "before its output matched --wait-for") {
		t.Errorf("--wait-for a pattern that never shows: exit %d stderr %q", r.code, r.stderr)
	}
	// After --wait-for returned, the script's window still closes when
	// the script ends (no --keep-window).
	quick := writeScript(t, dir, "quick.sh", "#!/bin/sh\necho ready\nsleep 1\n")
	if r := dtmuxCLI(t, c, nil, "run", "w1", "--wait-for", "ready", quick); r.code != 0 {
		t.Errorf("--wait-for ready: exit %d stderr %q", r.code, r.stderr)
	}
	windowGone(t, c, "quick-", "the waited-for script's window closed after it ended")

	waiter := filepath.Join(dir, "server.sh")
	if err := os.WriteFile(waiter, []byte("#!/bin/sh\necho booting\necho 'Build complete'\nexec sleep 300\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = dtmuxCLI(t, c, nil, "run", "w1", "--session", "srv", "--wait-for", "Build complete", waiter)
	if r.code != 0 || !strings.Contains(r.stderr, "keeps running") {
		t.Errorf("--wait-for: exit %d stderr %q", r.code, r.stderr)
	}
	// The hint names the run's own window (server-XXXX).
	m := regexp.MustCompile(`dtmux session logs w1 srv:(server-[0-9a-f]{4}) -f`).FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("--wait-for: no follow hint naming the window in %q", r.stderr)
	}
	// The script is still running in its window: the CLI's cancelled
	// stream did not end it.
	eventually(t, "the waited-for script is running", func() string {
		if !scriptRunning(t, c, "w1", "srv", m[1]) {
			return mustCLI(t, c, "session", "ls", "w1").stdout
		}
		return ""
	})
	mustCLI(t, c, "session", "kill", "w1", "srv")

	r = dtmuxCLI(t, c, nil, "run", "w1", "--timeout", "1s", waiter)
	if r.code != 124 {
		t.Errorf("run --timeout: exit %d stderr %q", r.code, r.stderr)
	}

	// SIGTERM (a cancelled CI job, timeout(1)) interrupts the script as
	// Ctrl-C does: its status comes back and its window goes.
	sleeper := writeScript(t, dir, "sleeper.sh", "#!/bin/sh\necho started\nsleep 300\n")
	code, stderr := runThenSignal(t, c, sleeper, syscall.SIGTERM)
	if code != 130 {
		t.Errorf("run, then SIGTERM: exit %d (stderr %q), want 130 from the interrupted script", code, stderr)
	}
	windowGone(t, c, "sleeper-", "the interrupted script's window closed")
	// A script that ignores it: the second SIGTERM leaves, saying where
	// the script still runs.
	stubborn := writeScript(t, dir, "stubborn.sh", "#!/bin/sh\ntrap '' INT\necho started\nwhile :; do sleep 1; done\n")
	code, stderr = runThenSignal(t, c, stubborn, syscall.SIGTERM, syscall.SIGTERM)
	if code != 128+int(syscall.SIGTERM) || !strings.Contains(stderr, "gave up waiting") || !strings.Contains(stderr, "dtmux session send w1") {
		t.Errorf("run, then SIGTERM twice: exit %d stderr %q, want 143 and where the script runs", code, stderr)
	}
}

// writeScript writes a script into dir and returns its path.
func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// windowGone waits until no window of w1 is named with prefix.
func windowGone(t *testing.T, c *Controller, prefix, what string) {
	t.Helper()
	eventually(t, what, func() string {
		if out := mustCLI(t, c, "session", "ls", "w1").stdout; strings.Contains(out, prefix) {
			return out
		}
		return ""
	})
}

// runThenSignal runs `dtmux run w1 script`, and once the script printed
// its first line sends sigs to dtmux, 300 ms apart.
func runThenSignal(t *testing.T, c *Controller, script string, sigs ...syscall.Signal) (int, string) {
	t.Helper()
	l := startCLI(t, c, "run", "w1", script)
	if l.first != "started" {
		t.Fatalf("first line %q", l.first)
	}
	for i, sig := range sigs {
		if i > 0 {
			time.Sleep(300 * time.Millisecond)
		}
		l.signal(t, sig)
	}
	return l.wait(t), l.stderr.String()
}

// liveCLI is a dtmux process running in the background.
type liveCLI struct {
	cmd    *exec.Cmd
	first  string      // its first line of output, read by startCLI
	rest   *syncBuffer // the rest of its output
	stderr *syncBuffer
	done   chan struct{}
}

// stdoutLines are the lines it printed after the first, once it exited.
func (l *liveCLI) stdoutLines() []string {
	<-l.done
	return strings.Fields(l.rest.String())
}

// startCLI starts dtmux with args and returns once it printed a line (the
// rest of its output is drained). It is killed at cleanup if still going.
func startCLI(t *testing.T, c *Controller, args ...string) *liveCLI {
	t.Helper()
	l := &liveCLI{cmd: exec.Command(testbin.Path(t, testbin.CLI), args...), rest: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	l.cmd.Env = c.Env()
	l.cmd.Stderr = l.stderr
	out, err := l.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.cmd.Process.Kill()
		<-l.done
	})
	r := bufio.NewReader(out)
	line, err := r.ReadString('\n')
	go func() {
		io.Copy(l.rest, r)
		l.cmd.Wait()
		close(l.done)
	}()
	if err != nil {
		t.Fatalf("dtmux %s: first line %q: %v; stderr %q", strings.Join(args, " "), line, err, l.stderr.String())
	}
	l.first = strings.TrimSpace(line)
	return l
}

func (l *liveCLI) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := l.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// wait returns the exit code, failing the test after a minute.
func (l *liveCLI) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-l.done:
		return l.cmd.ProcessState.ExitCode()
	case <-time.After(time.Minute):
		t.Fatalf("dtmux did not exit; stderr %q", l.stderr.String())
		return 0
	}
}

// scriptRunning reports whether window win of session sess has a live
// pane running sleep (what the test scripts exec into). win is a window
// name, or a script's base name matching any of its runs' windows
// (dtmux run names them win-XXXX).
func scriptRunning(t *testing.T, c *Controller, ws, sess, win string) bool {
	t.Helper()
	r := mustCLI(t, c, "session", "ls", ws, "-o", "json")
	var got struct {
		Sessions []struct {
			Name    string `json:"name"`
			Windows []struct {
				Name  string `json:"name"`
				Panes []struct {
					Dead           bool   `json:"dead"`
					CurrentCommand string `json:"current_command"`
				} `json:"panes"`
			} `json:"windows"`
		} `json:"sessions"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("session ls -o json: %v\n%s", err, r.stdout)
	}
	for _, s := range got.Sessions {
		for _, w := range s.Windows {
			if s.Name == sess && (w.Name == win || runWindow.MatchString(w.Name) && strings.HasPrefix(w.Name, win+"-")) && len(w.Panes) == 1 &&
				!w.Panes[0].Dead && w.Panes[0].CurrentCommand == "sleep" {
				return true
			}
		}
	}
	return false
}

// runWindow is the shape of a dtmux run window's name.
var runWindow = regexp.MustCompile(`^.+-[0-9a-f]{4}$`)

func TestCLIServices(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)
	file := filepath.Join(t.TempDir(), "services.yaml")
	if err := os.WriteFile(file, []byte(`services:
  - name: api
    command: [sh, -c, 'echo "api up on $PORT"; exec sleep 300']
    env: {PORT: "8080"}
  - name: web
    command: echo web up && exec sleep 300
`), 0o644); err != nil {
		t.Fatal(err)
	}
	r := mustCLI(t, c, "up", "w1", "-f", file)
	if strings.Count(r.stdout, "started") != 2 {
		t.Errorf("first up:\n%s", r.stdout)
	}
	r = mustCLI(t, c, "up", "w1", "-f", file)
	if strings.Count(r.stdout, "unchanged") != 2 {
		t.Errorf("second up is not idempotent:\n%s", r.stdout)
	}
	r = mustCLI(t, c, "ps", "w1")
	if strings.Count(r.stdout, "running") != 2 {
		t.Errorf("ps:\n%s", r.stdout)
	}
	eventually(t, "api logs", func() string {
		if out := mustCLI(t, c, "logs", "w1", "api").stdout; !strings.Contains(out, "api up on 8080") {
			return out
		}
		return ""
	})
	mustCLI(t, c, "restart", "w1", "web")
	mustCLI(t, c, "down", "w1")
	mustCLI(t, c, "down", "w1")
	if r := dtmuxCLI(t, c, nil, "ps", "w1"); strings.Contains(r.stdout, "running") {
		t.Errorf("services still running after down:\n%s", r.stdout)
	}
	r = dtmuxCLI(t, c, nil, "up", "w1", "-f", filepath.Join(t.TempDir(), "missing.yaml"))
	if r.code != 254 {
		t.Errorf("missing file: exit %d", r.code)
	}
	oneLineError(t, r, "missing.yaml")
}

// attachInOuterTerminal starts a controller with workspace w1 and a shell
// session dbg, and runs `dtmux attach w1 dbg` in a pane of an outer tmux
// server on a private socket, a real terminal for it; after dtmux exits
// the pane prints attach-exit-CODE, runs then, and sleeps. It returns the
// controller, a runner of outer tmux commands and the pane's id (an
// unambiguous target: "=0" is not a pane).
func attachInOuterTerminal(t *testing.T, then string) (*Controller, func(args ...string) string, string) {
	t.Helper()
	testbin.RequireTool(t, "tmux")
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)
	mustCLI(t, c, "session", "new", "w1", "dbg", "--", "sh")

	sock := filepath.Join(shortTempDir(t), "outer")
	outer := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("tmux", append([]string{"-S", sock, "-f", "/dev/null"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("outer tmux %q: %v: %s", args, err, out)
		}
		return string(out)
	}
	t.Cleanup(func() { _ = exec.Command("tmux", "-S", sock, "kill-server").Run() })
	envArgs := []string{}
	for _, e := range c.Env() {
		if strings.HasPrefix(e, "DTMUX_") {
			envArgs = append(envArgs, "-e", e)
		}
	}
	pane := strings.TrimSpace(outer(append(append([]string{"new-session", "-d", "-x", "120", "-y", "40", "-P", "-F", "#{pane_id}"}, envArgs...),
		testbin.Path(t, testbin.CLI)+" attach w1 dbg; echo attach-exit-$?; "+then+"sleep 300")...))
	return c, outer, pane
}

// TestCLIAttach drives `dtmux attach` through a real terminal: an outer
// tmux server on a private socket runs it in a pane, types into it, reads
// the screen, and detaches with tmux's own key.
func TestCLIAttach(t *testing.T) {
	c, outer, pane := attachInOuterTerminal(t, "stty -a; ")
	outer("set-option", "-g", "prefix", "C-a")
	screen := func() string { return outer("capture-pane", "-p", "-J", "-t", pane) }

	eventually(t, "the inner session on screen", func() string {
		if s := screen(); strings.TrimSpace(s) == "" {
			return "blank screen"
		}
		return ""
	})
	outer("send-keys", "-t", pane, "-l", "echo hello-$((6*7))")
	outer("send-keys", "-t", pane, "Enter")
	eventually(t, "typed command's output", func() string {
		if s := screen(); !strings.Contains(s, "hello-42") {
			return s
		}
		return ""
	})
	// tmux's detach key (C-b d) reaches the inner tmux untouched.
	outer("send-keys", "-t", pane, "C-b", "d")
	eventually(t, "dtmux attach exits 0 on detach", func() string {
		if s := screen(); !strings.Contains(s, "attach-exit-0") {
			return s
		}
		return ""
	})
	// The terminal is back in cooked mode: the stty -a after dtmux shows
	// canonical input and echo, which raw mode had turned off.
	eventually(t, "stty -a after dtmux attach", func() string {
		s := screen()
		_, after, ok := strings.Cut(s, "attach-exit-0")
		if !ok || !strings.Contains(after, "speed") {
			return s
		}
		for _, flag := range []string{"icanon", "echo", "isig", "icrnl", "opost"} {
			if !regexp.MustCompile(`(^|\s)` + flag + `(\s|$)`).MatchString(after) {
				t.Errorf("terminal not restored: %s is off after dtmux attach:\n%s", flag, after)
			}
		}
		return ""
	})
	r := mustCLI(t, c, "session", "capture", "w1", "dbg")
	if !strings.Contains(r.stdout, "hello-42") {
		t.Errorf("the session did not keep its state after detach:\n%s", r.stdout)
	}
	// Detaching left the session and its shell running.
	r = mustCLI(t, c, "session", "ls", "w1", "-o", "json")
	if !strings.Contains(r.stdout, "dbg") || strings.Contains(r.stdout, `"dead": true`) {
		t.Errorf("the session did not survive the detach:\n%s", r.stdout)
	}
}

// syncBuffer is a bytes.Buffer safe for a process writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestCLILostConnection breaks a running `dtmux exec` three ways: the
// agent dies, the workspace is removed, the controller dies. Each time
// the CLI says in one line what was lost and what to do, and exits 255.
func TestCLILostConnection(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)
	c.CreateWorkspace(t, "w2", nil)

	// execUntil starts `dtmux exec ws -- ...` that prints "ready" and
	// sleeps, calls breakIt once "ready" is out, and returns the result.
	execUntil := func(t *testing.T, ws, runID string, breakIt func()) cliResult {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, testbin.Path(t, testbin.CLI), "exec", ws, "--run-id", runID, "--", "sh", "-c", "echo ready; exec sleep 300")
		cmd.Env = c.Env()
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var errb syncBuffer
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
			t.Fatalf("first line %q, %v", line, err)
		}
		breakIt()
		err = cmd.Wait()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return cliResult{"", errb.String(), code}
	}

	t.Run("agent killed", func(t *testing.T) {
		journal := filepath.Join(c.StateDir, "workspaces", "w1", "agent", "runs", "journal")
		r := execUntil(t, "w1", "long-w1", func() {
			// An attached run's record is written just after its start;
			// a run the agent never recorded is beyond the next agent.
			eventually(t, "the run recorded", func() string {
				if b, err := os.ReadFile(journal); err != nil || !bytes.Contains(b, []byte(`"long-w1"`)) {
					return fmt.Sprintf("%v: %.200q", err, b)
				}
				return ""
			})
			if pid := c.AgentPID("w1"); pid <= 0 || syscall.Kill(pid, syscall.SIGKILL) != nil {
				t.Fatalf("cannot kill w1's agent (pid %d)", pid)
			}
		})
		if r.code != 255 {
			t.Errorf("exit %d, want 255 (stderr %q)", r.code, r.stderr)
		}
		oneLineError(t, r, "lost the connection to workspace w1's agent during run long-w1")
		// The command the message suggests works right away: the call
		// waits a moment for the agent the provider restarts.
		if r := dtmuxCLI(t, c, nil, "runs", "ls", "w1"); r.code != 0 {
			t.Errorf("runs ls right after the agent died: exit %d stderr %q", r.code, r.stderr)
		}
		// The restarted agent hangs the orphaned attached run up: its
		// client is gone, as after a dropped ssh session.
		eventually(t, "the attached run hung up by the next agent", func() string {
			r := dtmuxCLI(t, c, nil, "runs", "ls", "w1", "-o", "json")
			if r.code != 0 || !strings.Contains(r.stdout, "hung up") || strings.Contains(r.stdout, "still running") {
				return r.stdout + r.stderr
			}
			return ""
		})
	})

	t.Run("workspace removed", func(t *testing.T) {
		// Either the run's trailer (killed by the removal) or the stream's
		// end reaches the CLI first; both must say what happened.
		r := execUntil(t, "w2", "long-w2", func() { mustCLI(t, c, "ws", "rm", "--force", "w2") })
		switch r.code {
		case 255:
			oneLineError(t, r, "workspace w2 was removed during run long-w2")
		case 128 + int(syscall.SIGKILL):
			oneLineError(t, r, "run long-w2 was killed")
		default:
			t.Errorf("exit %d, want 255 or 137 (stderr %q)", r.code, r.stderr)
		}
		if strings.Contains(r.stderr, "canceled") {
			t.Errorf("stderr %q: want what happened, not \"canceled\"", r.stderr)
		}
	})

	t.Run("controller killed", func(t *testing.T) {
		eventually(t, "w1's agent back", func() string {
			if r := dtmuxCLI(t, c, nil, "exec", "w1", "--", "true"); r.code != 0 {
				return r.stderr
			}
			return ""
		})
		r := execUntil(t, "w1", "long-w1-again", c.Kill)
		if r.code != 255 {
			t.Errorf("exit %d, want 255 (stderr %q)", r.code, r.stderr)
		}
		oneLineError(t, r, "lost the connection to the controller during run long-w1-again on w1 (an attached run is hung up when its client goes away; start long jobs with -d and reattach with: dtmux runs logs w1 long-w1-again -f)")
	})
}

// TestCLIAttachAgentLost kills the workspace's agent while `dtmux attach`
// shows a session in a real terminal (an outer tmux pane): dtmux says
// what was lost, exits 255, and leaves the terminal as it found it — not
// in the inner tmux's alternate screen.
func TestCLIAttachAgentLost(t *testing.T) {
	c, outer, pane := attachInOuterTerminal(t, "")
	alternate := func() string { return strings.TrimSpace(outer("display-message", "-p", "-t", pane, "#{alternate_on}")) }
	eventually(t, "the inner tmux on the outer terminal's alternate screen", func() string {
		if a := alternate(); a != "1" {
			return "alternate_on=" + a
		}
		return ""
	})
	if pid := c.AgentPID("w1"); pid <= 0 || syscall.Kill(pid, syscall.SIGKILL) != nil {
		t.Fatalf("cannot kill w1's agent (pid %d)", pid)
	}
	eventually(t, "dtmux attach exits 255 with a one-line reason", func() string {
		s := outer("capture-pane", "-p", "-J", "-t", pane)
		if !strings.Contains(s, "attach-exit-255") || !strings.Contains(s, "lost the connection to workspace w1's agent while attached to session dbg") {
			return s
		}
		return ""
	})
	if a := alternate(); a != "0" {
		t.Errorf("the outer terminal is left on the alternate screen (alternate_on=%s)", a)
	}
}

// --limit sets rlimits on exec and session runs, through the real binaries;
// a bad limit is a usage error, and cgroup limits on a session run are
// refused with the reason instead of being ignored.
func TestCLIResourceLimits(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)

	r := mustCLI(t, c, "exec", "w1", "--limit", "nofile=20", "--limit", "cpu-time=1m", "--", "sh", "-c", "ulimit -n; ulimit -t")
	if r.stdout != "20\n60\n" {
		t.Errorf("exec --limit: stdout %q, want the limits 20 and 60", r.stdout)
	}

	script := filepath.Join(t.TempDir(), "limits.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"nofile=$(ulimit -n) cpu=$(ulimit -t)\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = mustCLI(t, c, "run", "w1", "--limit", "nofile=21", "--limit", "cpu-time=7", script)
	if !strings.Contains(r.stdout, "nofile=21 cpu=7") {
		t.Errorf("run --limit: stdout %q, want nofile=21 cpu=7", r.stdout)
	}

	spin := filepath.Join(filepath.Dir(script), "spin.sh")
	if err := os.WriteFile(spin, []byte("#!/bin/sh\nwhile :; do :; done\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = dtmuxCLI(t, c, nil, "run", "w1", "--limit", "cpu-time=1", spin)
	if r.code != 128+int(syscall.SIGXCPU) || !strings.Contains(r.stderr, "cpu-time limit 1s exceeded") {
		t.Errorf("run over its cpu-time: exit %d stderr %q, want %d and the limit named", r.code, r.stderr, 128+int(syscall.SIGXCPU))
	}

	for _, bad := range [][]string{
		{"exec", "w1", "--limit", "nofile=0", "--", "true"},
		{"exec", "w1", "--limit", "bogus=1", "--", "true"},
		{"exec", "w1", "--limit", "memory", "--", "true"},
		{"run", "w1", "--limit", "cpus=-1", script},
	} {
		r := dtmuxCLI(t, c, nil, bad...)
		if r.code != 254 || !strings.Contains(r.stderr, "--limit") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("%v: exit %d stderr %q, want 254 and one line about --limit", bad, r.code, r.stderr)
		}
	}
	r = dtmuxCLI(t, c, nil, "run", "w1", "--limit", "memory=64M", script)
	if r.code != 254 || !strings.Contains(r.stderr, "only dtmux exec") {
		t.Errorf("run --limit memory: exit %d stderr %q, want a usage refusal naming dtmux exec", r.code, r.stderr)
	}
	// Above what the workspace allows (its hard limit, and never more
	// than fs.nr_open): said before the start, not as a failed exec
	// (exit 127).
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		over := strconv.FormatUint(n+1, 10)
		for _, cmd := range [][]string{{"exec", "w1", "--limit", "nofile=" + over, "--", "true"}, {"run", "w1", "--limit", "nofile=" + over, script}} {
			r := dtmuxCLI(t, c, nil, cmd...)
			if r.code != 254 || !strings.Contains(r.stderr, "above this workspace's maximum") {
				t.Errorf("%v: exit %d stderr %q, want 254 naming the maximum", cmd, r.code, r.stderr)
			}
		}
	}
}

// TestCLIStopAgentsOnExit: a controller started with --stop-agents-on-exit
// (as this harness starts them) leaves nothing running that no agent can
// reach: not the agents, not their detached runs, not their tmux sessions.
func TestCLIStopAgentsOnExit(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)
	mustCLI(t, c, "session", "new", "w1", "s", "--", "sleep", "777.125")
	run := strings.TrimSpace(mustCLI(t, c, "exec", "-d", "w1", "--", "sleep", "778.125").stdout)
	eventually(t, "both sleeps running", func() string {
		if n := len(procsWithArgs("sleep", "777.125")) + len(procsWithArgs("sleep", "778.125")); n != 2 {
			return fmt.Sprintf("%d of 2 running", n)
		}
		return ""
	})
	c.Stop(t)
	for _, arg := range []string{"777.125", "778.125"} {
		if pids := procsWithArgs("sleep", arg); len(pids) > 0 {
			t.Errorf("sleep %s still running (pids %v) after the controller exited", arg, pids)
		}
	}
	// The next controller's agent says what ended the detached run.
	c.Restart(t)
	var got struct {
		Runs []struct {
			RunID   string `json:"run_id"`
			Trailer struct {
				Reason string `json:"reason"`
				Detail string `json:"detail"`
			} `json:"trailer"`
		} `json:"runs"`
	}
	r := mustCLI(t, c, "runs", "ls", "w1", "-o", "json")
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, x := range got.Runs {
		if x.RunID == run {
			found = true
			if x.Trailer.Reason != "EXIT_REASON_KILLED" || x.Trailer.Detail != "agent stopped with every run" {
				t.Errorf("the detached run after the controller's exit: %+v, want killed with the agent", x)
			}
		}
	}
	if !found {
		t.Errorf("run %s not listed: %s", run, r.stdout)
	}
}

// procsWithArgs lists the processes whose command line is exactly argv.
func procsWithArgs(argv ...string) []int {
	want := strings.Join(argv, "\x00") + "\x00"
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && string(b) == want {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestCLIFollowerOfAStoppedWorkspace: `ws stop` ends a `session logs -f`
// at once, and the follower says the workspace went away, not that the
// controller is unreachable.
func TestCLIFollowerOfAStoppedWorkspace(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)
	mustCLI(t, c, "session", "new", "w1", "s", "--", "sh", "-c", "echo ready; exec sleep 300")
	l := startCLI(t, c, "session", "logs", "w1", "s", "-f")
	if l.first != "ready" {
		t.Fatalf("follower's first line %q", l.first)
	}
	mustCLI(t, c, "ws", "stop", "w1")
	if code := l.wait(t); code != 255 || !strings.Contains(l.stderr.String(), "workspace w1 went away (stopped)") || strings.Contains(l.stderr.String(), "cannot reach controller") {
		t.Errorf("follower after ws stop: exit %d, stderr %q", code, l.stderr.String())
	}
}

// TestCLIRunsLogsFollowsAcrossAgentRestart: `runs logs -f` takes its run up
// again when the agent goes away under it (here killed; the local provider
// starts it again), from where the output had got to: no byte twice, none
// missing (the run printed on while no agent ran: the next one adopted
// it), and the run's end.
func TestCLIRunsLogsFollowsAcrossAgentRestart(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)
	gate := filepath.Join(t.TempDir(), "gate")
	// It pauses after line 10 until told to go on: the agent is killed
	// then, with no output read and not yet spooled (a crash in the middle
	// of a copy may lose that one read, and the run's end says so:
	// TestRestartAdoptsDetachedRuns); lines 11-30 come while it is away.
	run := strings.TrimSpace(mustCLI(t, c, "exec", "-d", "w1", "--", "sh", "-c",
		`i=0; while [ $i -lt 30 ]; do i=$((i+1)); echo line$i; if [ $i = 10 ]; then until [ -e "$1.mid" ]; do sleep 0.02; done; fi; sleep 0.05; done; until [ -e "$1" ]; do sleep 0.05; done; exit 3`, "sh", gate).stdout)
	l := startCLI(t, c, "runs", "logs", "w1", run, "-f")
	if l.first != "line1" {
		t.Fatalf("follower's first line %q", l.first)
	}
	for i := 0; !strings.Contains(l.rest.String(), "line10\n"); i++ {
		if i == 600 {
			t.Fatalf("follower before the kill: %q", l.rest.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	pidFile := filepath.Join(c.StateDir, "workspaces", "w1", "agent.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(gate+".mid", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 0; !strings.Contains(l.rest.String(), "line30\n"); i++ {
		if i == 1200 {
			t.Fatalf("follower after the agent's restart: %q; stderr %q", l.rest.String(), l.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code := l.wait(t)
	if !strings.Contains(l.stderr.String(), "reattaching at stdout byte") || !strings.Contains(l.stderr.String(), "exit status cannot be known") || code != 255 {
		t.Errorf("follower across the agent's restart: exit %d, stderr %q", code, l.stderr.String())
	}
	// Every line, once.
	lines := l.stdoutLines()
	for i, line := range lines {
		if line != "line"+strconv.Itoa(i+2) { // line1 was read by startCLI
			t.Fatalf("follower's output, line %d: %q; all: %q", i+2, line, lines)
		}
	}
	if len(lines) != 29 {
		t.Errorf("follower printed %d lines, want 30", len(lines)+1)
	}
}

// TestCLIRunsLogsFollowWaitsForARestartingAgent: `runs logs -f` started
// while the workspace's agent is down (a local workspace restarts it, with
// a backoff after crashes in a row) waits for it and then follows the run
// to its end, rather than give up at once with a misleading reason.
func TestCLIRunsLogsFollowWaitsForARestartingAgent(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	c.CreateWorkspace(t, "w1", nil)
	gate := filepath.Join(t.TempDir(), "gate")
	run := strings.TrimSpace(mustCLI(t, c, "exec", "-d", "w1", "--", "sh", "-c",
		`echo first; until [ -e "$1" ]; do sleep 0.05; done; echo last`, "sh", gate).stdout)
	pidFile := filepath.Join(c.StateDir, "workspaces", "w1", "agent.pid")
	agentPID := func() int {
		b, _ := os.ReadFile(pidFile)
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return pid
	}
	// Crashes in a row: the restarts back off (100 ms, 200 ms, 400 ms...),
	// the last by 6.4 s, longer than the controller's own wait for an
	// agent it reached before.
	var l *liveCLI
	const crashes = 8
	for i := 0; i < crashes; i++ {
		pid := agentPID()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if i == crashes-1 {
			l = startCLI(t, c, "runs", "logs", "w1", run, "-f")
			break
		}
		eventually(t, "the agent restarted", func() string {
			if p := agentPID(); p == pid || p == 0 || !processAlive(p) {
				return "not yet"
			}
			return ""
		})
	}
	if l.first != "first" {
		t.Fatalf("follower's first line %q; stderr %q", l.first, l.stderr.String())
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code := l.wait(t)
	if lines := l.stdoutLines(); len(lines) != 1 || lines[0] != "last" || code != 255 || !strings.Contains(l.stderr.String(), "exit status cannot be known") {
		t.Errorf("follower of a run whose agent was down: %q, exit %d, stderr %q", lines, code, l.stderr.String())
	}
}
