package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// cpuPeriodMicros is the CFS period dtmux writes with a CPU quota.
const cpuPeriodMicros = 100000

// Group is one run's control group: a directory per controller (v1) or a
// single directory (v2).
type Group struct {
	mode Mode
	dirs map[string]string // controller → directory
	log  hclog.Logger
}

// Dirs lists the group's distinct directories. Pass them to the process
// that will run the command, which joins them with Join before it execs.
func (g *Group) Dirs() []string {
	seen := map[string]bool{}
	var out []string
	for _, d := range g.dirs {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return out
}

// Join moves pid into the group.
func (g *Group) Join(pid int) error { return Join(pid, g.Dirs()...) }

// Join moves pid into every cgroup directory in dirs. A re-exec helper
// calls it with its own pid just before it execs the user's program, so
// that the program and everything it forks start inside the group and can
// never escape it (joining after the exec would race with early forks).
func Join(pid int, dirs ...string) error {
	for _, d := range dirs {
		if err := writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("join cgroup %s: %w", d, err)
		}
	}
	return nil
}

func (g *Group) setLimits(l Limits) error {
	write := func(controller, file, value string) error {
		return writeFile(filepath.Join(g.dirs[controller], file), value)
	}
	if l.MemoryBytes > 0 {
		v := strconv.FormatUint(l.MemoryBytes, 10)
		if g.mode == V2 {
			if err := write("memory", "memory.max", v); err != nil {
				return err
			}
			// Without this, the run could page out past its limit.
			if _, err := os.Stat(filepath.Join(g.dirs["memory"], "memory.swap.max")); err == nil {
				if err := write("memory", "memory.swap.max", "0"); err != nil {
					return err
				}
			}
		} else {
			if err := write("memory", "memory.limit_in_bytes", v); err != nil {
				return err
			}
			// memsw (memory+swap) exists only with swap accounting; it must
			// be written after limit_in_bytes, and not below it.
			if _, err := os.Stat(filepath.Join(g.dirs["memory"], "memory.memsw.limit_in_bytes")); err == nil {
				if err := write("memory", "memory.memsw.limit_in_bytes", v); err != nil {
					g.log.Debug("memsw limit not set", "error", err)
				}
			}
		}
	}
	if l.Pids > 0 {
		if err := write("pids", "pids.max", strconv.FormatUint(l.Pids, 10)); err != nil {
			return err
		}
	}
	if l.CPUMillis > 0 {
		// The kernel's smallest quota is 1 ms per period.
		quota := max(l.CPUMillis*cpuPeriodMicros/1000, 1000)
		if g.mode == V2 {
			if err := write("cpu", "cpu.max", fmt.Sprintf("%d %d", quota, cpuPeriodMicros)); err != nil {
				return err
			}
		} else {
			if err := write("cpu", "cpu.cfs_period_us", strconv.Itoa(cpuPeriodMicros)); err != nil {
				return err
			}
			if err := write("cpu", "cpu.cfs_quota_us", strconv.FormatUint(quota, 10)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Limit names, as Exceeded reports them (and RunTrailer.detail shows).
const (
	LimitMemory = "memory"
	LimitPids   = "pids"
)

// Exceeded lists the limits the group ran into so far: LimitMemory when
// the kernel OOM-killed a task of the group, LimitPids when a fork was
// refused by pids.max. The caller reads it when the run ends (before
// Close) and reports EXIT_REASON_LIMIT_EXCEEDED with the first entry.
func (g *Group) Exceeded() []string {
	var out []string
	if d, ok := g.dirs["memory"]; ok && g.oomKilled(d) {
		out = append(out, LimitMemory)
	}
	if d, ok := g.dirs["pids"]; ok && keyedValue(filepath.Join(d, "pids.events"), "max") > 0 {
		out = append(out, LimitPids)
	}
	return out
}

func (g *Group) oomKilled(dir string) bool {
	if g.mode == V2 {
		return keyedValue(filepath.Join(dir, "memory.events"), "oom_kill") > 0
	}
	// oom_control has an oom_kill counter on Linux 4.13 and later; older
	// kernels only tell that the limit was hit.
	p := filepath.Join(dir, "memory.oom_control")
	if hasKey(p, "oom_kill") {
		return keyedValue(p, "oom_kill") > 0
	}
	return keyedValue(p, "under_oom") > 0 || singleValue(filepath.Join(dir, "memory.failcnt")) > 0
}

// Procs lists the processes in the group.
func (g *Group) Procs() ([]int, error) {
	var out []int
	for _, d := range g.Dirs() {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			return nil, err
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(out, pid) {
				out = append(out, pid)
			}
		}
	}
	return out, nil
}

// closeWait bounds how long Close waits for killed processes to leave.
const closeWait = 10 * time.Second

// Close kills whatever is still in the group (children that left the
// run's process group included) and removes its directories.
func (g *Group) Close() error {
	self := os.Getpid()
	deadline := time.Now().Add(closeWait)
	for {
		pids, err := g.Procs()
		if err != nil {
			return fmt.Errorf("close cgroup: %w", err)
		}
		pids = slices.DeleteFunc(pids, func(p int) bool { return p == self })
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("close cgroup: processes %v did not exit", pids)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var errs []error
	for _, d := range g.Dirs() {
		// A group is removable once its last task is gone; exiting tasks
		// can linger for a moment after they leave cgroup.procs.
		for {
			err := os.Remove(d)
			if err == nil || os.IsNotExist(err) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// keyedValue reads "key N" from a flat-keyed cgroup file; 0 when absent.
func keyedValue(path, key string) uint64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == key {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

func hasKey(path, key string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, _, _ := strings.Cut(line, " "); k == key {
			return true
		}
	}
	return false
}

func singleValue(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n
}
