package cgroup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeRoot builds a tree with /proc/self/{mountinfo,cgroup} and the given
// files (paths relative to the root).
func fakeRoot(t *testing.T, mountinfo, self string, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	all := map[string]string{"proc/self/mountinfo": mountinfo, "proc/self/cgroup": self}
	for k, v := range files {
		all[k] = v
	}
	for p, content := range all {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestDetectV2Delegated(t *testing.T) {
	root := fakeRoot(t,
		"30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
		"0::/user.slice/agent\n",
		map[string]string{
			"sys/fs/cgroup/user.slice/agent/cgroup.controllers":     "cpuset cpu io memory pids\n",
			"sys/fs/cgroup/user.slice/agent/cgroup.subtree_control": "",
			// What the kernel would create in the new directory.
			"sys/fs/cgroup/user.slice/agent/dt/cgroup.subtree_control": "",
		})
	m := Detect(Options{Root: root, Name: "dt"})
	if m.Mode() != V2 {
		t.Fatalf("mode %q (reason %q), want cgroup2", m.Mode(), m.Reason())
	}
	if got := strings.Join(m.Controllers(), ","); got != "memory,pids,cpu" {
		t.Errorf("controllers %s", got)
	}
	b, _ := os.ReadFile(filepath.Join(root, "sys/fs/cgroup/user.slice/agent/cgroup.subtree_control"))
	if got := string(b); got != "+memory +pids +cpu" {
		t.Errorf("subtree_control written %q", got)
	}
	if iso := m.Isolation(); iso[0] != "cgroup2: memory,pids,cpu" {
		t.Errorf("isolation %v", iso)
	}
}

func TestDetectHybridFallsBackToV1(t *testing.T) {
	root := fakeRoot(t,
		"32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"+
			"35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"+
			"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
		"4:memory:/box\n2:cpu,cpuacct:/\n0::/\n",
		map[string]string{
			"sys/fs/cgroup/unified/cgroup.controllers": "hugetlb\n",
			"sys/fs/cgroup/memory/box/tasks":           "",
			"sys/fs/cgroup/cpu/tasks":                  "",
		})
	m := Detect(Options{Root: root, Name: "dt"})
	if m.Mode() != V1 {
		t.Fatalf("mode %q (reason %q), want cgroup1", m.Mode(), m.Reason())
	}
	if got := strings.Join(m.Controllers(), ","); got != "memory,cpu" {
		t.Errorf("controllers %s, want memory,cpu", got)
	}
	if m.Supports("pids") {
		t.Error("pids reported without a pids mount")
	}
	for _, want := range []string{"hugetlb", "pids not mounted"} {
		if !strings.Contains(m.Reason(), want) {
			t.Errorf("reason %q lacks %q", m.Reason(), want)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "sys/fs/cgroup/memory/box/dt")); err != nil {
		t.Errorf("memory base not created under the agent's own cgroup: %v", err)
	}
	if _, err := m.Create("r1", Limits{Pids: 5}); err == nil {
		t.Error("pids limit accepted without a pids controller")
	}
}

func TestDetectNone(t *testing.T) {
	root := fakeRoot(t, "1 0 0:1 / / rw - ext4 /dev/root rw\n", "0::/\n", nil)
	m := Detect(Options{Root: root, Name: "dt"})
	if m.Available() {
		t.Fatalf("mode %q on a host without cgroups", m.Mode())
	}
	iso := m.Isolation()
	if len(iso) != 2 || iso[0] != "rlimit" || !strings.HasPrefix(iso[1], "no cgroups: ") {
		t.Fatalf("isolation %q", iso)
	}
	if _, err := m.Create("r1", Limits{}); err == nil {
		t.Fatal("Create succeeded without cgroups")
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/x\04`: `/x\04`, `\134`: `\`} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
