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
		return nil, fmt.Errorf("memory, pids and cpu limits apply to exec runs only (session runs take cpu seconds, address space, open files and processes): %w", ErrLimitUnavailable)
	}
	if !l.hasRlimits() || len(argv) == 0 {
		return argv, nil
	}
	h := m.cfg.LimitHelper
	return append(slices.Clone(h), limitArgs(l, nil, argv[0], argv)...), nil
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
