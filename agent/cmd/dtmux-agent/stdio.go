package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/agent/daemon"
	"github.com/dtmux/dtmux/agent/sshauth"
)

// connectTimeout bounds finding, replacing or starting the daemon.
const connectTimeout = time.Minute

// A daemon started by a pump takes over its lock and watch before anything
// else runs (see daemon.Adopt); in any other agent process this is a no-op.
func init() { daemon.Adopt() }

// runStdio is --stdio: it joins the hop (stdin/stdout) to the long-lived
// agent daemon of the same state dir, which it starts when none runs, or
// replaces when it is another build or has other flags. The daemon takes
// the hop's pipes over (daemon.HandOff); when it cannot, this process
// copies bytes between the hop and the daemon's socket.
//
// Why not serve gRPC here: a workspace is reached through one hop, and
// hops die. An agent that lived on the hop's pipes took its runs (even
// detached ones) with it. Now only this pump dies with the hop; the daemon
// (and its runs and tmux sessions) lives on, and the pump of the next hop
// joins it, so clients reattach and get the whole output.
//
// The daemon is `dtmux-agent` with this process's flags, --stdio replaced
// by --listen unix://STATE/agent.sock and --state-dir made absolute; its
// stderr goes to STATE/agent.log. The unix socket checks that the peer
// (this pump) runs as the same user.
func runStdio(log hclog.Logger, f *flags, args []string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this executable: %w", err)
	}
	state, err := filepath.Abs(f.stateDir)
	if err != nil {
		return err
	}
	// Before a daemon may be started below: runs it starts find the link
	// at once.
	agentDone, err := sshauth.Update(state, os.Getenv("SSH_AUTH_SOCK"))
	if err != nil {
		log.Warn("runs will not get this hop's ssh agent", "error", err)
	}
	defer agentDone()
	// A daemon started here would pass this hop's socket, gone with the
	// hop, on to every run: they get the link instead.
	os.Unsetenv("SSH_AUTH_SOCK")
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	conn, err := daemon.Connect(ctx, daemon.Config{
		StateDir: state,
		Path:     exe,
		Args:     daemonArgs(args, state),
		Logger:   log.Named("stdio"),
	})
	if err != nil {
		return err
	}
	cancel()
	// The daemon serves the hop's pipes itself when it can take them;
	// this process then only waits, for whoever runs the hop waits for it.
	hop, err := daemon.HandOff(state, os.Stdin, os.Stdout)
	if err == nil {
		conn.Close()
		hop.Wait()
		return nil
	}
	log.Debug("copying the hop: the daemon did not take it", "error", err)
	// When the hop's reader is gone a write to stdout fails with EPIPE;
	// without Notify, Go would kill the process with SIGPIPE instead
	// (it does so for fds 1 and 2), and the pump would not end cleanly.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	return daemon.Pump(os.Stdin, os.Stdout, conn)
}

// daemonArgs are the pump's arguments with --stdio replaced by the
// daemon's socket. Flags keep their order; the later --state-dir wins.
func daemonArgs(args []string, state string) []string {
	var out []string
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && name == "stdio" {
			continue
		}
		out = append(out, a)
	}
	return append(out, "--state-dir", state, "--listen", "unix://"+daemon.SocketPath(state))
}
