// Package cgroup puts runs in Linux control groups with memory, pids and
// CPU limits, using whatever the host allows: cgroup v2 where it is mounted
// with those controllers, cgroup v1 controllers otherwise, and nothing
// (with a reason) when neither is writable.
package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// Controllers dtmux uses, in a fixed order.
var wanted = []string{"memory", "pids", "cpu"}

// Mode names the cgroup layout in use.
type Mode string

const (
	// None means runs are not put in cgroups (see Manager.Reason).
	None Mode = ""
	// V2 is the unified hierarchy.
	V2 Mode = "cgroup2"
	// V1 is one hierarchy per controller.
	V1 Mode = "cgroup1"
)

// ErrUnavailable is returned by Create when the host offers no usable
// cgroup controller.
var ErrUnavailable = errors.New("cgroups unavailable")

// ErrUnsupportedLimit is returned by Create when a limit needs a
// controller the host does not offer.
var ErrUnsupportedLimit = errors.New("cgroup limit not supported on this host")

// Options tune Detect.
type Options struct {
	// Root is prepended to every path read or written (default "/"); tests
	// point it at a fake tree.
	Root string
	// Name is the directory created for this agent under its own cgroup
	// (default "dtmux-<pid>").
	Name string
	// Logger receives what was detected.
	Logger hclog.Logger
}

// Manager creates per-run groups under the agent's own cgroup. Its fields
// are set by Detect and never change.
type Manager struct {
	mode   Mode
	reason string
	// base maps a controller to the agent's directory for it. In v2 every
	// controller maps to the same directory.
	base map[string]string
	log  hclog.Logger
}

// Detect finds out what the host allows and creates the agent's parent
// directories. It never fails: when cgroups cannot be used, the Manager's
// Mode is None and Reason says why.
func Detect(o Options) *Manager {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.Name == "" {
		o.Name = fmt.Sprintf("dtmux-%d", os.Getpid())
	}
	log := o.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	m := &Manager{log: log.Named("cgroup")}
	mounts, err := readMounts(filepath.Join(o.Root, "proc/self/mountinfo"))
	if err != nil {
		m.reason = fmt.Sprintf("no cgroups: %v", err)
		m.log.Info("cgroups unavailable", "reason", m.reason)
		return m
	}
	self, err := readSelf(filepath.Join(o.Root, "proc/self/cgroup"))
	if err != nil {
		m.reason = fmt.Sprintf("no cgroups: %v", err)
		m.log.Info("cgroups unavailable", "reason", m.reason)
		return m
	}
	var reasons []string
	if base, why := detectV2(o.Root, o.Name, mounts, self); base != nil {
		m.mode, m.base = V2, base
	} else {
		reasons = append(reasons, why)
		base, why := detectV1(o.Root, o.Name, mounts, self)
		if base != nil {
			m.mode, m.base = V1, base
		}
		if why != "" {
			reasons = append(reasons, why)
		}
	}
	if m.mode == None {
		m.reason = "no cgroups: " + strings.Join(reasons, "; ")
		m.log.Info("cgroups unavailable", "reason", m.reason)
		return m
	}
	m.reason = strings.Join(reasons, "; ")
	m.log.Info("cgroups available", "mode", string(m.mode), "controllers", strings.Join(m.Controllers(), ","), "note", m.reason)
	return m
}

// Mode is the layout in use (None when cgroups are unavailable).
func (m *Manager) Mode() Mode { return m.mode }

// Available reports whether runs can be put in cgroups.
func (m *Manager) Available() bool { return m.mode != None }

// Reason explains why cgroups (or v2) are not used; empty when nothing is
// missing.
func (m *Manager) Reason() string { return m.reason }

// Controllers lists the usable controllers, in a fixed order.
func (m *Manager) Controllers() []string {
	var out []string
	for _, c := range wanted {
		if _, ok := m.base[c]; ok {
			out = append(out, c)
		}
	}
	return out
}

// Supports reports whether a controller ("memory", "pids", "cpu") is
// usable.
func (m *Manager) Supports(controller string) bool {
	_, ok := m.base[controller]
	return ok
}

// Isolation describes the isolation the host allows, for
// GetAgentInfoResponse.isolation: "cgroup2: memory,pids,cpu" or
// "cgroup1: …", then "rlimit" (always), then why cgroups are not used when
// they are not.
func (m *Manager) Isolation() []string {
	var out []string
	if m.Available() {
		out = append(out, string(m.mode)+": "+strings.Join(m.Controllers(), ","))
	}
	out = append(out, "rlimit")
	if !m.Available() {
		out = append(out, m.reason)
	}
	return out
}

// Close removes the agent's directories (they must be empty of runs).
func (m *Manager) Close() error {
	var errs []error
	for _, d := range m.dirs() {
		if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// dirs lists the distinct base directories.
func (m *Manager) dirs() []string {
	seen := map[string]bool{}
	var out []string
	for _, d := range m.base {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return out
}

// Limits bound one run. Zero means no limit.
type Limits struct {
	// MemoryBytes is the memory limit (memory.max / memory.limit_in_bytes).
	MemoryBytes uint64
	// Pids is the most tasks the group may hold (pids.max).
	Pids uint64
	// CPUMillis is the CPU quota in thousandths of a CPU (1000 = one CPU).
	CPUMillis uint64
}

// IsZero reports whether no limit is set.
func (l Limits) IsZero() bool { return l == Limits{} }

var validID = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// Open returns the group of run id made earlier by Create, in this
// process or in the image of it before an exec (a daemon re-executed as
// another build keeps its runs, and their groups).
func (m *Manager) Open(id string) (*Group, error) {
	if !m.Available() {
		return nil, fmt.Errorf("%w: %s", ErrUnavailable, m.reason)
	}
	if !validID.MatchString(id) || id == "." || id == ".." {
		return nil, fmt.Errorf("cgroup for run %q: invalid id", id)
	}
	g := &Group{mode: m.mode, dirs: map[string]string{}, log: m.log}
	for _, c := range m.Controllers() {
		d := filepath.Join(m.base[c], id)
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("cgroup for run %q: %s is missing", id, d)
		}
		g.dirs[c] = d
	}
	return g, nil
}

// Create makes a group for one run and writes its limits. Every run gets
// its own group even without limits, so that Close can find and kill
// everything the run left behind. Callers Close the group when the run
// ends.
func (m *Manager) Create(id string, l Limits) (*Group, error) {
	if !m.Available() {
		return nil, fmt.Errorf("%w: %s", ErrUnavailable, m.reason)
	}
	if !validID.MatchString(id) || id == "." || id == ".." {
		return nil, fmt.Errorf("cgroup for run %q: invalid id", id)
	}
	for c, set := range map[string]bool{"memory": l.MemoryBytes > 0, "pids": l.Pids > 0, "cpu": l.CPUMillis > 0} {
		if set && !m.Supports(c) {
			return nil, fmt.Errorf("%w: %s", ErrUnsupportedLimit, c)
		}
	}
	g := &Group{mode: m.mode, dirs: map[string]string{}, log: m.log}
	for _, c := range m.Controllers() {
		d := filepath.Join(m.base[c], id)
		if _, done := g.dirs[c]; done {
			continue
		}
		if err := os.Mkdir(d, 0o755); err != nil {
			_ = g.Close()
			return nil, fmt.Errorf("cgroup for run %q: %w", id, err)
		}
		g.dirs[c] = d
		if m.mode == V2 {
			// One directory holds every controller.
			for _, c2 := range m.Controllers() {
				g.dirs[c2] = d
			}
			break
		}
	}
	if err := g.setLimits(l); err != nil {
		_ = g.Close()
		return nil, fmt.Errorf("cgroup for run %q: %w", id, err)
	}
	return g, nil
}
