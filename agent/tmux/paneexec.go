package tmux

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dtmux/dtmux/internal/procfs"
)

// PaneExecCommand is the hidden subcommand of the agent binary that runs a
// session run's command in its pane and outlives it until tmux has read
// every byte the command wrote.
//
// Why: tmux 3.3a destroys a pane as soon as it reaps the pane's process
// when FIONREAD on the pty reports nothing left, but Linux moves a pty's
// output to the reader's side from a kernel worker, so under load the last
// kilobytes can still be in flight; tmux then closes the pty and they are
// gone, from %output and from the pipe-pane log alike (seen: 5–15 KB of a
// 2 MB cat on a loaded 2-core machine). The kernel hands the reader every
// byte before read reports EIO, so the helper waits for that: it runs the command
// as its child in the same process group, closes its own copies of the
// terminal when the command has ended, waits until tmux has closed the
// pty (its /dev/pts node disappears), and only then exits with the
// command's status, or dies of the command's signal, which is what tmux
// records as the pane's.
const PaneExecCommand = "__pane-exec"

// How long the helper waits for tmux to close the pty. Other processes of
// the pane's session (a job the command left behind) can keep it open for
// good: after peerCheck the helper looks for them and stops waiting.
const (
	paneCloseWait = 3 * time.Second
	peerCheck     = 20 * time.Millisecond
)

// paneExecArgs builds the helper's arguments: the command's deadline (zero:
// none) and grace, then "--" and argv.
func paneExecArgs(deadline time.Time, grace time.Duration, argv []string) []string {
	var args []string
	if !deadline.IsZero() {
		args = append(args, "--deadline", strconv.FormatInt(deadline.UnixNano(), 10), "--grace", grace.String())
	}
	return append(append(args, "--"), argv...)
}

// PaneExec is the body of the hidden subcommand: args are the optional
// "--deadline UNIX_NANOS --grace DURATION", "--" and the command's argv.
// The helper enforces the deadline itself (SIGTERM to the command's
// group, SIGKILL after the grace), so a session run's timeout holds
// across agent restarts. It never returns.
func PaneExec(args []string) {
	fs := flag.NewFlagSet(PaneExecCommand, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	deadline := fs.Int64("deadline", 0, "when to end the command (unix nanoseconds)")
	grace := fs.Duration("grace", 2*time.Second, "between SIGTERM and SIGKILL")
	err := fs.Parse(args)
	if dash := len(args) - fs.NArg() - 1; err != nil || fs.NArg() < 1 || dash < 0 || args[dash] != "--" {
		fmt.Fprintln(os.Stderr, PaneExecCommand+": want [--deadline NS --grace D] -- ARGV0 [ARGS...]")
		os.Exit(127)
	}
	argv := fs.Args()
	tty, ttyErr := os.Readlink("/proc/self/fd/1")
	var before syscall.Stat_t
	if ttyErr == nil {
		ttyErr = syscall.Stat(tty, &before)
	}
	_, pgrpErr := unix.IoctlGetInt(0, unix.TIOCGPGRP)
	isTTY := ttyErr == nil && pgrpErr == nil && strings.HasPrefix(tty, "/dev/pts/")

	path, err := lookProgram(argv[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "dtmux: %s: %v\n", argv[0], err)
		os.Exit(127)
	}
	// The command gets its own process group in the terminal's
	// foreground, as a shell would do: keys like C-c reach it, and tmux
	// names the pane after it (pane_current_command). Signals sent to
	// this helper's group are passed on, and so is the SIGHUP that the
	// kernel sends only to the session leader when tmux closes the pty.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGHUP)
	cmd := &exec.Cmd{Path: path, Args: argv, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Foreground: isTTY, Ctty: 0}}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "dtmux: %s: %v\n", argv[0], err)
		os.Exit(126)
	}
	done := make(chan struct{})
	go func() {
		var term, kill <-chan time.Time
		if *deadline > 0 {
			t := time.NewTimer(time.Until(time.Unix(0, *deadline)))
			defer t.Stop()
			term = t.C
		}
		for {
			select {
			case sig := <-sigs:
				_ = syscall.Kill(-cmd.Process.Pid, sig.(syscall.Signal))
			case <-term:
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
				kill = time.After(*grace)
			case <-kill:
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			case <-done:
				return
			}
		}
	}()
	_ = cmd.Wait()
	close(done)
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)

	for fd := range 3 {
		_ = syscall.Close(fd)
	}
	if isTTY {
		waitPtyClosed(tty, before)
	}
	if ws.Signaled() {
		dieOf(ws.Signal())
	}
	os.Exit(ws.ExitStatus())
}

// lookProgram resolves argv0 like execvp, including PATH entries relative
// to the working directory (the agent validated the command already).
func lookProgram(argv0 string) (string, error) {
	path, err := exec.LookPath(argv0)
	if errors.Is(err, exec.ErrDot) {
		return path, nil
	}
	return path, err
}

// waitPtyClosed waits until the pty node that was before is gone or
// replaced (a new pty may take the same number).
func waitPtyClosed(tty string, before syscall.Stat_t) {
	start := time.Now()
	peersChecked := false
	for delay := 100 * time.Microsecond; time.Since(start) < paneCloseWait; delay = min(2*delay, 10*time.Millisecond) {
		var now syscall.Stat_t
		if err := syscall.Stat(tty, &now); err != nil || now.Ino != before.Ino || now.Ctim != before.Ctim {
			return
		}
		if !peersChecked && time.Since(start) > peerCheck {
			peersChecked = true
			if sessionPeers() {
				return
			}
		}
		time.Sleep(delay)
	}
}

// sessionPeers reports whether another process is in this process's
// session (the pane's): it may hold the terminal open.
func sessionPeers() bool {
	self := os.Getpid()
	for _, pid := range sessionMembers(map[int]bool{self: true}) {
		if pid != self {
			return true
		}
	}
	return false
}

// sessionMembers lists the live processes whose session id is in sids.
func sessionMembers(sids map[int]bool) []int {
	var out []int
	for _, pid := range procfs.Pids() {
		if st, err := procfs.ReadStat(pid); err == nil && st.State != 'Z' && sids[st.Session] {
			out = append(out, pid)
		}
	}
	return out
}

// dieOf ends this process by sig, so that tmux records the command's
// signal as the pane's. The Go runtime keeps its own handlers for most
// signals (a SIGSEGV sent by kill would exit 2), so the disposition is
// reset with the raw system call first; an all-zero struct sigaction is
// SIG_DFL with no flags on every Linux architecture.
func dieOf(sig syscall.Signal) {
	signal.Reset(sig)
	_ = syscall.Setrlimit(syscall.RLIMIT_CORE, &syscall.Rlimit{}) // the command dumped its own core
	if sig != syscall.SIGKILL && sig != syscall.SIGSTOP {
		var act [4]uintptr
		_, _, _ = syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0)
		set := uint64(1) << (uint(sig) - 1)
		_, _, _ = syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, 1 /* SIG_UNBLOCK */, uintptr(unsafe.Pointer(&set)), 0, 8, 0, 0)
	}
	_ = syscall.Kill(os.Getpid(), sig)
	time.Sleep(time.Second)
	os.Exit(128 + int(sig))
}

// killPane signals a pane's process group. A session run's command has
// its own group, in the terminal's foreground (PaneExec): the helper
// passes catchable signals on, and SIGKILL, which it cannot catch, goes
// to that group directly.
func killPane(pid int, sig syscall.Signal) {
	if sig == syscall.SIGKILL {
		if pg := foregroundGroup(pid); pg > 0 && pg != pid {
			_ = syscall.Kill(-pg, sig)
		}
	}
	_ = syscall.Kill(-pid, sig)
	_ = syscall.Kill(pid, sig)
}

// foregroundGroup is the foreground process group of pid's terminal,
// or 0 when pid is gone.
func foregroundGroup(pid int) int {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return 0
	}
	return st.TPGID
}
