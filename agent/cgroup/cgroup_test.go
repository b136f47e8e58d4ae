package cgroup_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/dtmux/dtmux/agent/cgroup"
)

// helperEnv makes the test binary act as the agent's re-exec helper: join
// the cgroup directories it names (":"-separated), then exec the rest of
// its arguments.
const helperEnv = "DTMUX_CGROUP_TEST_JOIN"

func TestMain(m *testing.M) {
	if dirs, ok := os.LookupEnv(helperEnv); ok {
		os.Unsetenv(helperEnv)
		if err := cgroup.Join(os.Getpid(), strings.Split(dirs, ":")...); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(125)
		}
		args := os.Args[1:]
		path, err := exec.LookPath(args[0])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(127)
		}
		err = syscall.Exec(path, args, os.Environ())
		fmt.Fprintln(os.Stderr, err)
		os.Exit(126)
	}
	os.Exit(m.Run())
}

// hostManager detects the real host's cgroups under a test-specific name
// and skips when this host offers none (not root, no controllers).
func hostManager(t *testing.T) *cgroup.Manager {
	t.Helper()
	m := cgroup.Detect(cgroup.Options{Name: fmt.Sprintf("dtmux-test-%d", os.Getpid())})
	if !m.Available() {
		t.Skipf("host offers no cgroups: %s", m.Reason())
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("manager close: %v", err)
		}
	})
	return m
}

// runIn starts argv in g the way the agent does: a helper that joins the
// group, then execs.
func runIn(t *testing.T, g *cgroup.Group, argv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], argv...)
	cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join(g.Dirs(), ":"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	return cmd
}

func TestDetectHost(t *testing.T) {
	m := hostManager(t)
	iso := m.Isolation()
	if !slices.Contains(iso, "rlimit") {
		t.Errorf("isolation %v lacks rlimit", iso)
	}
	if !strings.HasPrefix(iso[0], string(m.Mode())+": ") {
		t.Errorf("isolation %v does not start with the mode %s", iso, m.Mode())
	}
	t.Logf("mode %s, controllers %v, note %q", m.Mode(), m.Controllers(), m.Reason())
}

func TestMemoryLimitOOMKills(t *testing.T) {
	m := hostManager(t)
	if !m.Supports("memory") {
		t.Skip("no memory controller")
	}
	g, err := m.Create("oom-run", cgroup.Limits{MemoryBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer closeGroup(t, g)
	if got := g.Exceeded(); len(got) != 0 {
		t.Fatalf("fresh group already exceeded %v", got)
	}
	cmd := runIn(t, g, "perl", "-e", `$x = "a" x (512 << 20); print length($x), "\n"`)
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("512 MiB allocation under a 64 MiB limit: %v, want killed", err)
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("wait status %v, want SIGKILL from the OOM killer", ws)
	}
	if got := g.Exceeded(); !slices.Contains(got, cgroup.LimitMemory) {
		t.Fatalf("Exceeded() = %v, want memory", got)
	}
}

func TestMemoryUnderLimitRuns(t *testing.T) {
	m := hostManager(t)
	if !m.Supports("memory") {
		t.Skip("no memory controller")
	}
	g, err := m.Create("small-run", cgroup.Limits{MemoryBytes: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer closeGroup(t, g)
	cmd := runIn(t, g, "perl", "-e", `$x = "a" x (16 << 20); exit 0`)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("16 MiB under a 256 MiB limit: %v", err)
	}
	if got := g.Exceeded(); len(got) != 0 {
		t.Fatalf("Exceeded() = %v, want none", got)
	}
}

func TestPidsLimitStopsForks(t *testing.T) {
	m := hostManager(t)
	if !m.Supports("pids") {
		t.Skip("no pids controller")
	}
	g, err := m.Create("fork-run", cgroup.Limits{Pids: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer closeGroup(t, g)
	// Try to start 50 background sleeps; at most 8 tasks fit.
	cmd := runIn(t, g, "sh", "-c", `n=0; for i in $(seq 50); do sleep 600 2>/dev/null & n=$((n+1)); done; exit 0`)
	_ = cmd.Wait()
	if got := g.Exceeded(); !slices.Contains(got, cgroup.LimitPids) {
		t.Fatalf("Exceeded() = %v, want pids", got)
	}
	procs, err := g.Procs()
	if err != nil {
		t.Fatal(err)
	}
	if len(procs) > 8 {
		t.Fatalf("%d processes in a group with pids.max=8", len(procs))
	}
	if len(procs) == 0 {
		t.Fatalf("no sleeper left in the group; the test proves nothing")
	}
}

func TestCloseKillsEscapedChildrenAndRemovesDirs(t *testing.T) {
	m := hostManager(t)
	g, err := m.Create("escape-run", cgroup.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	// The child leaves the run's process group and session: killing the
	// group would miss it, the cgroup does not.
	cmd := exec.Command(os.Args[0], "sh", "-c", `setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!`)
	cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join(g.Dirs(), ":"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("pid %q: %v", out, err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	procs, _ := g.Procs()
	if !slices.Contains(procs, pid) {
		t.Fatalf("escaped child %d not in the group (procs %v)", pid, procs)
	}
	dirs := g.Dirs()
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		// It may be a zombie of init for a moment; check its state.
		if st := procState(pid); st != "" && st != "Z" {
			t.Fatalf("escaped child %d still alive (state %s) after Close", pid, st)
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("cgroup dir %s still there after Close (%v)", d, err)
		}
	}
}

func TestCPUQuotaWritten(t *testing.T) {
	m := hostManager(t)
	if !m.Supports("cpu") {
		t.Skip("no cpu controller")
	}
	g, err := m.Create("cpu-run", cgroup.Limits{CPUMillis: 500})
	if err != nil {
		t.Fatal(err)
	}
	defer closeGroup(t, g)
	var file, want string
	if m.Mode() == cgroup.V2 {
		file, want = "cpu.max", "50000 100000"
	} else {
		file, want = "cpu.cfs_quota_us", "50000"
	}
	var found bool
	for _, d := range g.Dirs() {
		if b, err := os.ReadFile(filepath.Join(d, file)); err == nil {
			found = true
			if got := strings.TrimSpace(string(b)); got != want {
				t.Errorf("%s = %q, want %q", file, got, want)
			}
		}
	}
	if !found {
		t.Fatalf("no %s in %v", file, g.Dirs())
	}
}

func TestCreateRejectsBadIDs(t *testing.T) {
	m := hostManager(t)
	for _, id := range []string{"", ".", "..", "a/b", "../x", "x\x00y", strings.Repeat("a", 65)} {
		if g, err := m.Create(id, cgroup.Limits{}); err == nil {
			_ = g.Close()
			t.Errorf("Create(%q) succeeded", id)
		}
	}
}

func closeGroup(t *testing.T, g *cgroup.Group) {
	t.Helper()
	dirs := g.Dirs()
	if err := g.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("cgroup dir %s still there after Close", d)
		}
	}
}

func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndex(s, ")")
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}
