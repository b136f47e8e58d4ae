package process

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/dtmux/dtmux/agent/cgroup"
)

// ExecLimitedCommand is the hidden subcommand of the agent binary that
// joins the run's cgroups, applies rlimits to itself and then becomes the
// user's program. Only the limits, cgroup directories and the program's
// argv are on its command line; the environment (secrets included) passes
// through untouched.
const ExecLimitedCommand = "__exec-limited"

// limitArgs builds the helper's arguments after the subcommand name.
func limitArgs(l Limits, cgroupDirs []string, path string, argv []string) []string {
	args := []string{}
	for _, d := range cgroupDirs {
		args = append(args, "--cgroup", d)
	}
	add := func(name string, v uint64) {
		if v > 0 {
			args = append(args, "--"+name, strconv.FormatUint(v, 10))
		}
	}
	add("cpu", l.CPUSeconds)
	add("as", l.AddressSpaceBytes)
	add("nofile", l.OpenFiles)
	add("nproc", l.Processes)
	args = append(args, "--", path)
	return append(args, argv...)
}

// LimitedArgv wraps argv in the limit helper so that it runs with l's
// rlimits, for a command this manager does not start itself (a session
// run, which tmux starts). argv comes back unchanged without rlimits.
// Cgroup limits need a run's own groups, which only Start makes and
// removes: they are refused with ErrLimitUnavailable.
func (m *Manager) LimitedArgv(l Limits, argv []string) ([]string, error) {
	if l.hasCgroupLimits() {
		return nil, fmt.Errorf("memory, pids and cpus limits need a run's own cgroups, which only exec runs get; session runs take cpu-time, as, nofile and nproc: %w", ErrInvalidSpec)
	}
	if err := checkRlimits(l); err != nil {
		return nil, err
	}
	if !l.hasRlimits() || len(argv) == 0 {
		return argv, nil
	}
	h := m.cfg.LimitHelper
	return append(slices.Clone(h), limitArgs(l, nil, argv[0], argv)...), nil
}

// checkRlimits refuses the rlimits the helper could not set: above the
// agent's own hard limit, which only CAP_SYS_RESOURCE may raise (open
// files never above fs.nr_open). Said before the start, not as a failed
// exec.
func checkRlimits(l Limits) error {
	if !l.hasRlimits() {
		return nil
	}
	for _, r := range []struct {
		name string
		res  int
		v    uint64
	}{
		{"cpu-time", unix.RLIMIT_CPU, l.CPUSeconds},
		{"as", unix.RLIMIT_AS, l.AddressSpaceBytes},
		{"nofile", unix.RLIMIT_NOFILE, l.OpenFiles},
		{"nproc", unix.RLIMIT_NPROC, l.Processes},
	} {
		if r.v == 0 {
			continue
		}
		want := r.v
		if r.res == unix.RLIMIT_CPU {
			want++ // the hard CPU limit is a second above the soft one
		}
		var cur unix.Rlimit
		if err := unix.Getrlimit(r.res, &cur); err != nil {
			continue
		}
		max := cur.Max
		if want > max && canRaiseLimits() {
			max = unix.RLIM_INFINITY
			if r.res == unix.RLIMIT_NOFILE {
				max = nrOpen()
			}
		}
		if max != unix.RLIM_INFINITY && want > max {
			return fmt.Errorf("limit %s=%d is above this workspace's maximum (%d): %w", r.name, r.v, max, ErrInvalidSpec)
		}
	}
	return nil
}

// canRaiseLimits reports whether this process may raise hard limits
// (CAP_SYS_RESOURCE), read once: capabilities do not change under it.
var canRaiseLimits = sync.OnceValue(func() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
})

// nrOpen is the kernel's ceiling on open files per process.
func nrOpen() uint64 {
	b, err := os.ReadFile("/proc/sys/fs/nr_open")
	if err != nil {
		return 1 << 20
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 1 << 20
	}
	return n
}

// ExecLimited is the body of the hidden subcommand: args are what follows
// its name. It only returns on failure.
func ExecLimited(args []string) error {
	fs := flag.NewFlagSet(ExecLimitedCommand, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cpu := fs.Uint64("cpu", 0, "RLIMIT_CPU seconds")
	as := fs.Uint64("as", 0, "RLIMIT_AS bytes")
	nofile := fs.Uint64("nofile", 0, "RLIMIT_NOFILE")
	nproc := fs.Uint64("nproc", 0, "RLIMIT_NPROC")
	var dirs []string
	fs.Func("cgroup", "cgroup directory to join (repeatable)", func(d string) error {
		dirs = append(dirs, d)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%s: %w", ExecLimitedCommand, err)
	}
	rest := fs.Args()
	if len(rest) < 2 {
		return errors.New(ExecLimitedCommand + ": want -- PATH ARGV0 [ARGS...]")
	}
	// Join before exec, so that the program and all it forks start inside
	// the groups and can never escape them.
	if err := cgroup.Join(os.Getpid(), dirs...); err != nil {
		return fmt.Errorf("%s: %w", ExecLimitedCommand, err)
	}
	set := func(name string, res int, soft, hard uint64) error {
		if soft == 0 {
			return nil
		}
		if err := unix.Setrlimit(res, &unix.Rlimit{Cur: soft, Max: hard}); err != nil {
			return fmt.Errorf("%s: set %s limit: %w", ExecLimitedCommand, name, err)
		}
		return nil
	}
	// The CPU hard limit is one second above the soft one: SIGXCPU first,
	// SIGKILL if the program ignores it.
	if err := errors.Join(
		set("cpu_seconds", unix.RLIMIT_CPU, *cpu, *cpu+1),
		set("address_space_bytes", unix.RLIMIT_AS, *as, *as),
		set("open_files", unix.RLIMIT_NOFILE, *nofile, *nofile),
		set("processes", unix.RLIMIT_NPROC, *nproc, *nproc),
	); err != nil {
		return err
	}
	path := rest[0]
	if !strings.ContainsRune(path, '/') {
		// Given by name (LimitedArgv): look it up like execvp.
		if p, err := exec.LookPath(path); err == nil || errors.Is(err, exec.ErrDot) {
			path = p
		}
	}
	err := syscall.Exec(path, rest[1:], os.Environ())
	return fmt.Errorf("%s: exec %s: %w", ExecLimitedCommand, rest[0], err)
}
