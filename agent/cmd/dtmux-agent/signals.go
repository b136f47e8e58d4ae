package main

import (
	"bufio"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"
)

// resettable are the signals a run must not inherit as ignored. An agent
// started under nohup, or in the background by a non-interactive shell,
// inherits SIGHUP, or SIGINT and SIGQUIT, as ignored (SIG_IGN); exec keeps
// an ignored signal ignored, so every run would ignore them too and a
// hang-up or Ctrl-C would do nothing. Go's runtime catches most signals
// itself (caught signals become SIG_DFL across exec) but keeps an
// inherited SIG_IGN for SIGHUP, SIGINT and the job-control stops.
//
// SIGTTIN and SIGTTOU are left alone: catching them would make a
// background agent's terminal writes (with tostop) retry forever.
var resettable = []syscall.Signal{
	syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM,
	syscall.SIGPIPE, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGALRM,
	syscall.SIGTSTP,
}

// resetIgnoredSignals does what sshd does for its sessions: the signals of
// resettable that this process inherited as ignored are caught from now on
// (and dropped, so the agent itself still ignores them), which gives every
// child the default disposition. Handling registered elsewhere (SIGTERM
// and SIGINT shut down, SIGHUP reloads tokens) is unaffected. The returned
// function stops the goroutine that drops them.
func resetIgnoredSignals(log hclog.Logger) (stop func()) {
	ignored := ignoredSignals()
	if len(ignored) == 0 {
		return func() {}
	}
	log.Debug("inherited ignored signals; runs get the default", "signals", ignored)
	ch := make(chan os.Signal, 4)
	sigs := make([]os.Signal, len(ignored))
	for i, s := range ignored {
		sigs[i] = s
	}
	signal.Notify(ch, sigs...)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for s := range ch {
			log.Debug("ignoring signal, as inherited", "signal", s.String())
		}
	}()
	return func() {
		signal.Stop(ch)
		close(ch)
		<-done
	}
}

// ignoredSignals returns the signals of resettable this process ignores
// now: from /proc/self/status (SigIgn), which also shows the job-control
// signals, or else from signal.Ignored.
func ignoredSignals() []syscall.Signal {
	var out []syscall.Signal
	if mask, ok := procSigIgn(); ok {
		for _, s := range resettable {
			if mask&(1<<(uint(s)-1)) != 0 {
				out = append(out, s)
			}
		}
		return out
	}
	for _, s := range resettable {
		if signal.Ignored(s) {
			out = append(out, s)
		}
	}
	return out
}

func procSigIgn() (uint64, bool) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "SigIgn:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return mask, err == nil
		}
	}
	return 0, false
}
