package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/dtmux/dtmux/internal/testbin"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// fleetWorkspaces creates n local workspaces ws00.. with labels
// team=web (even) or team=api (odd), a few at a time.
func fleetWorkspaces(t *testing.T, c *Controller, n int) []string {
	t.Helper()
	names := make([]string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range n {
		names[i] = fmt.Sprintf("ws%02d", i)
		team := "web"
		if i%2 == 1 {
			team = "api"
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			c.CreateWorkspace(t, names[i], map[string]string{"team": team})
		}()
	}
	wg.Wait()
	return names
}

// prefixedLines groups "name | line" output by name.
func prefixedLines(t *testing.T, out string) map[string][]string {
	t.Helper()
	got := map[string][]string{}
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if l == "" {
			continue
		}
		name, text, ok := strings.Cut(l, " | ")
		if !ok {
			t.Errorf("line without a prefix: %q", l)
			continue
		}
		name = strings.TrimSpace(name)
		got[name] = append(got[name], text)
	}
	return got
}

func TestFleet(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	names := fleetWorkspaces(t, c, 50)

	t.Run("limits on every target", func(t *testing.T) {
		r := dtmuxCLI(t, c, nil, "fleet", "exec", "--ws", "ws01,ws02", "--limit", "nofile=33", "--", "sh", "-c", "ulimit -n")
		if r.code != 0 || !strings.Contains(r.stdout, "ws01 | 33\n") || !strings.Contains(r.stdout, "ws02 | 33\n") {
			t.Errorf("fleet exec --limit: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		if r := dtmuxCLI(t, c, nil, "fleet", "exec", "--all", "--limit", "nofile=x", "--", "true"); r.code != 254 || !strings.Contains(r.stderr, "--limit nofile") {
			t.Errorf("fleet exec with a bad --limit: exit %d stderr %q", r.code, r.stderr)
		}
	})

	t.Run("output attributed, failures summarised", func(t *testing.T) {
		script := `echo "hello from $DTMUX_WORKSPACE"; printf 'no newline %s' "$DTMUX_WORKSPACE"; echo "warn $DTMUX_WORKSPACE" >&2
case $DTMUX_WORKSPACE in ws07|ws13) exit 3;; ws21) exit 9;; esac`
		r := dtmuxCLI(t, c, nil, "fleet", "exec", "--all", "--max-parallel", "50", "--", "sh", "-c", script)
		if r.code != 9 {
			t.Errorf("exit %d, want the worst exit code 9\nstderr: %s", r.code, r.stderr)
		}
		out := prefixedLines(t, r.stdout)
		for _, n := range names {
			want := []string{"hello from " + n, "no newline " + n}
			if !slices.Equal(out[n], want) {
				t.Errorf("%s stdout lines %q, want %q", n, out[n], want)
			}
			if !strings.Contains(r.stderr, n+" | warn "+n+"\n") {
				t.Errorf("%s: stderr line missing", n)
			}
		}
		if len(out) != 50 {
			t.Errorf("%d workspaces in the output, want 50", len(out))
		}
		for _, want := range []string{"ws07 | dtmux: exit 3", "ws21 | dtmux: exit 9", "47/50 succeeded, 3 failed", "worst exit code 9", "not ok: ws07 ws13 ws21"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
			}
		}
	})

	t.Run("json is NDJSON with a matching summary", func(t *testing.T) {
		r := dtmuxCLI(t, c, nil, "fleet", "exec", "--label", "team=web", "--json", "--", "sh", "-c", `echo "$DTMUX_WORKSPACE"; [ "$DTMUX_WORKSPACE" != ws04 ]`)
		if r.code != 1 {
			t.Errorf("exit %d, want 1\nstderr: %s", r.code, r.stderr)
		}
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		exited := map[string]int32{}
		var sum *controllerv1.FleetSummary
		for i, l := range lines {
			var ev controllerv1.FleetEvent
			if err := protojson.Unmarshal([]byte(l), &ev); err != nil {
				t.Fatalf("line %d is not a JSON event: %v\n%s", i, err, l)
			}
			if e := ev.GetExited(); e != nil {
				exited[ev.GetWorkspace()] = e.GetExitCode()
			}
			if s := ev.GetSummary(); s != nil {
				if i != len(lines)-1 {
					t.Errorf("summary on line %d of %d", i, len(lines))
				}
				sum = s
			}
		}
		if sum == nil {
			t.Fatal("no summary")
		}
		if sum.GetTotal() != 25 || sum.GetSucceeded() != 24 || sum.GetFailed() != 1 || len(exited) != 25 || exited["ws04"] != 1 || !slices.Equal(sum.GetFailedWorkspaces(), []string{"ws04"}) {
			t.Errorf("summary %v, exited %v", sum, exited)
		}
	})

	t.Run("fail-fast stops new starts", func(t *testing.T) {
		r := dtmuxCLI(t, c, nil, "fleet", "exec", "--label", "team=api", "--max-parallel", "1", "--fail-fast", "--run-id", "ff-1", "--json", "--", "sh", "-c", "exit 4")
		if r.code != 4 {
			t.Errorf("exit %d, want 4\nstderr: %s", r.code, r.stderr)
		}
		if !strings.Contains(r.stdout, `"skipped":24`) || !strings.Contains(r.stdout, `"failed":1`) {
			t.Errorf("summary: %s", r.stdout[strings.LastIndex(r.stdout[:len(r.stdout)-1], "\n")+1:])
		}
		// Only one agent ever got the run.
		resp, err := c.Fleet().ListFleetRuns(context.Background(), &controllerv1.ListFleetRunsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, run := range resp.GetRuns() {
			if run.GetRunId() == "ff-1" && run.GetTargets() != 1 {
				t.Errorf("fleet run ff-1 reached %d agents, want 1", run.GetTargets())
			}
		}
		ls := mustCLI(t, c, "fleet", "ls")
		if !strings.Contains(ls.stdout, "ff-1") {
			t.Errorf("fleet ls lacks ff-1:\n%s", ls.stdout)
		}
	})

	t.Run("attach after the CLI was killed", func(t *testing.T) {
		cmd := exec.Command(testbin.Path(t, testbin.CLI), "fleet", "exec", "--all", "--max-parallel", "50", "--run-id", "fa-1", "--",
			"sh", "-c", `echo "a $DTMUX_WORKSPACE"; sleep 3; echo "b $DTMUX_WORKSPACE"`)
		cmd.Env = c.Env()
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		// Kill the CLI once every target started (each printed "a"), while
		// all of them are still running.
		sc := bufio.NewScanner(stdout)
		for seen := 0; seen < len(names); seen++ {
			if !sc.Scan() || !strings.Contains(sc.Text(), "| a ws") {
				t.Fatalf("line %d: %q", seen, sc.Text())
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()

		r := dtmuxCLI(t, c, nil, "fleet", "attach", "fa-1")
		if r.code != 0 {
			t.Errorf("attach exit %d\nstderr: %s", r.code, r.stderr)
		}
		out := prefixedLines(t, r.stdout)
		for _, n := range names {
			if want := []string{"a " + n, "b " + n}; !slices.Equal(out[n], want) {
				t.Errorf("%s: %q, want %q", n, out[n], want)
			}
		}
		if !strings.Contains(r.stderr, "50/50 succeeded") {
			t.Errorf("stderr: %s", r.stderr)
		}
	})
}

// startAgent starts a real dtmux-agent on a unix socket.
func startAgent(t *testing.T, dir, name string) string {
	t.Helper()
	sock := filepath.Join(dir, name+".sock")
	cmd := exec.Command(testbin.Path(t, testbin.Agent), "--listen", "unix://"+sock, "--workspace", name,
		"--state-dir", filepath.Join(dir, name+".state"), "--log-file", filepath.Join(dir, name+".log"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for range 500 {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("agent %s did not listen", name)
	return ""
}

func TestFleetUnreachable(t *testing.T) {
	dir := shortTempDir(t)
	var agents bytes.Buffer
	for _, n := range []string{"a1", "a2", "a3"} {
		fmt.Fprintf(&agents, "%s=unix://%s\n", n, startAgent(t, dir, n))
	}
	// "a0" comes first and never answers: nothing listens on its socket.
	fmt.Fprintf(&agents, "a0=unix://%s\n", filepath.Join(dir, "dead.sock"))
	file := filepath.Join(dir, "agents")
	if err := os.WriteFile(file, agents.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	c := StartController(t, ControllerOptions{Provider: "static", Args: []string{"--agents-file", file}})

	r := dtmuxCLI(t, c, nil, "fleet", "exec", "--all", "--max-parallel", "1", "--retries", "2", "--retry-backoff", "300ms", "--json", "--", "echo", "hi")
	if r.code != 253 {
		t.Errorf("exit %d, want 253 (unreachable, none failed)\nstderr: %s", r.code, r.stderr)
	}
	var order []string
	var sum *controllerv1.FleetSummary
	var attempts uint32
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var ev controllerv1.FleetEvent
		if err := protojson.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		switch {
		case ev.GetExited() != nil, ev.GetUnreachable() != nil:
			order = append(order, ev.GetWorkspace())
			attempts = max(attempts, ev.GetUnreachable().GetAttempts())
		case ev.GetSummary() != nil:
			sum = ev.GetSummary()
		}
	}
	if sum.GetSucceeded() != 3 || sum.GetUnreachable() != 1 || attempts != 3 {
		t.Errorf("summary %v, attempts %d", sum, attempts)
	}
	// With one slot and a0 first, the others ran while a0 backed off.
	if !slices.Equal(order, []string{"a1", "a2", "a3", "a0"}) {
		t.Errorf("targets ended in order %v, want a0 last", order)
	}
}

// Exit codes, long lines and durations as a user sees them: a timeout is
// 124 as for dtmux exec; a 200000-byte line is one prefixed line; attach
// reports how long the run took, not how long collecting it took.
func TestFleetTimeoutLongLinesAttachDuration(t *testing.T) {
	c := StartController(t, ControllerOptions{})
	for _, n := range []string{"f01", "f02", "f03"} {
		c.CreateWorkspace(t, n, nil)
	}

	t.Run("timeout exits 124", func(t *testing.T) {
		r := dtmuxCLI(t, c, nil, "fleet", "exec", "--all", "--timeout", "1s", "--", "sleep", "30")
		if r.code != 124 {
			t.Errorf("exit %d, want 124\nstderr: %s", r.code, r.stderr)
		}
		if !strings.Contains(r.stderr, "worst exit code 124") {
			t.Errorf("stderr: %s", r.stderr)
		}
	})

	t.Run("start failures exit as a shell would", func(t *testing.T) {
		for _, tc := range []struct {
			argv []string
			code int
			says string
		}{
			{[]string{"/no/such/program"}, 127, "not found"},
			{[]string{"/etc/passwd"}, 126, "/etc/passwd"},
			{[]string{"-w", "/no/such/dir", "--", "true"}, 254, "/no/such/dir"},
		} {
			args := append([]string{"fleet", "exec", "--ws", "f01,f02"}, tc.argv...)
			if tc.argv[0] != "-w" {
				args = append([]string{"fleet", "exec", "--ws", "f01,f02", "--"}, tc.argv...)
			}
			r := dtmuxCLI(t, c, nil, args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.says) {
				t.Errorf("fleet exec %v: exit %d, want %d; stderr %q", tc.argv, r.code, tc.code, r.stderr)
			}
		}
	})

	t.Run("long lines stay whole", func(t *testing.T) {
		r := dtmuxCLI(t, c, nil, "fleet", "exec", "--ws", "f01,f03", "--", "sh", "-c",
			`case $DTMUX_WORKSPACE in f01) for i in $(seq 200); do echo "short $i"; done;; *) head -c 200000 /dev/zero | tr "\0" a; echo;; esac`)
		if r.code != 0 {
			t.Fatalf("exit %d\nstderr: %s", r.code, r.stderr)
		}
		out := prefixedLines(t, r.stdout)
		if got := out["f03"]; len(got) != 1 || got[0] != strings.Repeat("a", 200000) {
			t.Errorf("f03 printed %d lines, want one line of 200000 a's", len(got))
		}
		if got := out["f01"]; len(got) != 200 {
			t.Errorf("f01 printed %d lines, want 200", len(got))
		}
	})

	t.Run("attach reports the run's duration", func(t *testing.T) {
		mustCLI(t, c, "fleet", "exec", "--all", "--run-id", "span-1", "--", "sleep", "2")
		r := mustCLI(t, c, "fleet", "attach", "span-1")
		m := regexp.MustCompile(`3/3 succeeded in (\S+)\n`).FindStringSubmatch(r.stderr)
		if m == nil {
			t.Fatalf("no summary line in %q", r.stderr)
		}
		// A lower bound that always holds: the command slept 2s.
		if d, err := time.ParseDuration(m[1]); err != nil || d < 2*time.Second {
			t.Errorf("attach says the run took %s (%v), but the command slept 2s", m[1], err)
		}
	})
}

// fleet attach counts the run's targets only, as QA saw it go wrong: a
// run on one workspace (or three, by label) among hosts of which four are
// unreachable is 1/1 (3/3) and exits 0; the unreachable hosts are no
// targets and are neither reported nor counted. Only when targets are
// missing are the hosts that could not be asked named, and not counted.
func TestFleetAttachCountsTheRunsTargetsOnly(t *testing.T) {
	dir := shortTempDir(t)
	var agents bytes.Buffer
	for _, n := range []string{"a1", "a2", "a3"} {
		fmt.Fprintf(&agents, "%s=unix://%s team=web\n", n, startAgent(t, dir, n))
	}
	fmt.Fprintf(&agents, "b1=unix://%s\n", startAgent(t, dir, "b1"))
	for _, n := range []string{"d1", "d2", "d3", "d4"} {
		fmt.Fprintf(&agents, "%s=unix://%s\n", n, filepath.Join(dir, n+".sock"))
	}
	file := filepath.Join(dir, "agents")
	if err := os.WriteFile(file, agents.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	c := StartController(t, ControllerOptions{Provider: "static", Args: []string{"--agents-file", file}})

	mustCLI(t, c, "fleet", "exec", "--ws", "a1", "--run-id", "fo-1", "--", "sh", "-c", "echo done")
	r := dtmuxCLI(t, c, nil, "fleet", "attach", "fo-1")
	if r.code != 0 || r.stdout != "a1 | done\n" || !strings.Contains(r.stderr, "1/1 succeeded") || strings.Contains(r.stderr, "d1") {
		t.Errorf("attach fo-1: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}

	attachJSON := func(runID string) (code int, sum *controllerv1.FleetSummary, notAsked []string) {
		t.Helper()
		r := dtmuxCLI(t, c, nil, "fleet", "attach", runID, "--json")
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			var ev controllerv1.FleetEvent
			if err := protojson.Unmarshal([]byte(l), &ev); err != nil {
				t.Fatalf("%v: %s\nstderr: %s", err, l, r.stderr)
			}
			switch {
			case ev.GetUnreachable() != nil:
				t.Errorf("%s: unreachable event in attach: %s", runID, l)
			case ev.GetNotAsked() != nil:
				notAsked = append(notAsked, ev.GetWorkspace())
			case ev.GetSummary() != nil:
				sum = ev.GetSummary()
			}
		}
		return r.code, sum, notAsked
	}

	mustCLI(t, c, "fleet", "exec", "--label", "team=web", "--run-id", "fo-2", "--", "true")
	code, sum, notAsked := attachJSON("fo-2")
	if code != 0 || sum.GetTotal() != 3 || sum.GetSucceeded() != 3 || sum.GetUnreachable() != 0 || len(sum.GetFailedWorkspaces())+len(sum.GetUnreachableWorkspaces())+len(sum.GetNotAskedWorkspaces()) != 0 || len(notAsked) != 0 {
		t.Errorf("attach fo-2: exit %d, summary %v, not asked %v", code, sum, notAsked)
	}

	// d1 was a target and unreachable: the run has 2 targets, one found;
	// d1..d4 could not be asked (one of them may hold it).
	dtmuxCLI(t, c, nil, "fleet", "exec", "--ws", "a2,d1", "--retries", "0", "--run-id", "fo-3", "--", "true")
	code, sum, notAsked = attachJSON("fo-3")
	want := []string{"d1", "d2", "d3", "d4"}
	if code != 253 || sum.GetTotal() != 2 || sum.GetSucceeded() != 1 || sum.GetNotFound() != 1 || sum.GetUnreachable() != 0 || sum.GetFailed() != 0 ||
		len(sum.GetFailedWorkspaces())+len(sum.GetUnreachableWorkspaces()) != 0 || !slices.Equal(sum.GetNotAskedWorkspaces(), want) || !slices.Equal(notAsked, want) {
		t.Errorf("attach fo-3: exit %d, summary %v, not asked %v", code, sum, notAsked)
	}

	r = dtmuxCLI(t, c, nil, "fleet", "attach", "f-nope")
	if r.code == 0 || !strings.Contains(r.stderr, "asked 4 workspaces; 4 could not be asked") {
		t.Errorf("attach f-nope: exit %d\nstderr: %s", r.code, r.stderr)
	}
}
