// Command dtmux-agent serves dtmux.agent.v1.AgentService inside a
// workspace: on a unix socket, on TCP (token, optional TLS), or on one
// connection over stdin/stdout (--stdio, for ssh and daytona ssh hops: a
// pump to a long-lived agent of the same state dir, see stdio.go).
//
// Signals: SIGTERM and SIGINT shut down (attached runs are killed,
// detached runs keep going); SIGUSR1 shuts down killing every run, for a
// workspace stop or delete; SIGUSR2 re-executes a daemon as the build a
// pump asked for, handing its detached runs over (handover.go); SIGHUP
// reloads the token file (tcp).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/agent"
	"github.com/dtmux/dtmux/agent/cgroup"
	"github.com/dtmux/dtmux/agent/daemon"
	"github.com/dtmux/dtmux/agent/process"
	"github.com/dtmux/dtmux/agent/sshauth"
	"github.com/dtmux/dtmux/agent/tmux"
	"github.com/dtmux/dtmux/internal/logging"
	"github.com/dtmux/dtmux/internal/rpcserver"
	"github.com/dtmux/dtmux/internal/transport"
	"github.com/dtmux/dtmux/internal/version"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// defaultMaxProcs is --max-procs' default. The agent relays: it starts
// processes and moves their output, and tmux's, to its connections, work
// one CPU does at over 1 GB/s. It shares the workspace's CPUs with the
// user's own work, and every further CPU its scheduler may use costs
// thread wake-ups between goroutines that one CPU runs in turn: with 1,
// Exec(true) through the controller took 1.16-1.18 ms against 1.25-1.28
// ms, and 1 GiB through it moved as fast, in alternating rounds of the
// two builds on 2 CPUs (`DTMUX_BIN=DIR go test -run '^$' -bench
// 'Exec/(exec-true|1GiB)' -benchtime 1x ./bench/exec/`, one DIR each).
const defaultMaxProcs = 1

// drainGrace is how long in-flight calls get on shutdown before the server
// stops hard.
const drainGrace = 5 * time.Second

func main() {
	// The hidden re-exec that applies rlimits, then becomes the program.
	if len(os.Args) > 1 && os.Args[1] == process.ExecLimitedCommand {
		err := process.ExecLimited(os.Args[2:])
		fmt.Fprintf(os.Stderr, "dtmux-agent: %v\n", err)
		os.Exit(127)
	}
	// The hidden helper that is a session run's pane process.
	if len(os.Args) > 1 && os.Args[1] == tmux.PaneExecCommand {
		tmux.PaneExec(os.Args[2:])
	}
	err := run(os.Args[1:])
	var re *reexec
	if errors.As(err, &re) {
		err = re.exec() // returns only on failure
	}
	if err != nil && !errors.Is(err, errHelp) {
		fmt.Fprintf(os.Stderr, "dtmux-agent: %v\n", err)
		os.Exit(1)
	}
}

type flags struct {
	listen, stateDir, workspace, workdir, tokenFile string
	tlsCert, tlsKey, tlsClientCA                    string
	stdio, insecure, logJSON, version               bool
	logLevel, logFile                               string
	spoolLimit                                      uint64
	retention                                       time.Duration
	maxRuns                                         int
	maxProcs                                        int
	tmuxBin                                         string
	tmuxHistory                                     int
}

func parseFlags(args []string) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("dtmux-agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.listen, "listen", "", "serve on unix:///path.sock or tcp://host:port")
	fs.BoolVar(&f.stdio, "stdio", false, "carry one connection on stdin/stdout to the agent daemon of --state-dir (started when none runs), then exit")
	fs.StringVar(&f.stateDir, "state-dir", "", "where runs are kept (default $XDG_STATE_HOME/dtmux-agent or ~/.local/state/dtmux-agent)")
	fs.StringVar(&f.workspace, "workspace", "", "workspace name, DTMUX_WORKSPACE in runs (default: host name)")
	fs.StringVar(&f.workdir, "workdir", "", "default working directory of runs (default: home)")
	fs.StringVar(&f.tokenFile, "token-file", "", "bearer token file (0600), required for tcp")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "TLS certificate (PEM) for tcp")
	fs.StringVar(&f.tlsKey, "tls-key", "", "TLS private key (PEM) for tcp")
	fs.StringVar(&f.tlsClientCA, "tls-client-ca", "", "CA bundle: require client certificates signed by it")
	fs.BoolVar(&f.insecure, "insecure-allow-plaintext", false, "allow tcp on a non-loopback address without TLS")
	fs.StringVar(&f.logLevel, "log-level", "info", "trace, debug, info, warn or error")
	fs.BoolVar(&f.logJSON, "log-json", false, "log JSON lines")
	fs.StringVar(&f.logFile, "log-file", "", "append logs to this file instead of stderr")
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	fs.Uint64Var(&f.spoolLimit, "spool-limit", process.DefaultSpoolLimit, "output bytes kept per run and stream")
	fs.DurationVar(&f.retention, "retention", process.DefaultRetention, "how long finished runs stay queryable")
	fs.IntVar(&f.maxRuns, "max-runs", process.DefaultMaxRuns, "most runs running at once")
	fs.IntVar(&f.maxProcs, "max-procs", defaultMaxProcs, "CPUs the agent's own code may use at once (GOMAXPROCS in the environment wins)")
	fs.StringVar(&f.tmuxBin, "tmux-bin", "tmux", "tmux executable for sessions (3.2 or later)")
	fs.IntVar(&f.tmuxHistory, "tmux-history-limit", 50000, "scrollback lines kept per tmux pane")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stderr)
			fmt.Fprintln(os.Stderr, "usage: dtmux-agent (--listen ADDR | --stdio) [flags]")
			fs.PrintDefaults()
			return nil, errHelp
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if f.version {
		return f, nil
	}
	if (f.listen == "") == !f.stdio {
		return nil, errors.New("give exactly one of --listen ADDR or --stdio")
	}
	if f.spoolLimit == 0 || f.retention <= 0 || f.maxRuns <= 0 || f.maxProcs <= 0 {
		return nil, errors.New("--spool-limit, --retention, --max-runs and --max-procs must be positive")
	}
	return f, nil
}

// errHelp ends the program successfully after the usage was printed.
var errHelp = errors.New("help requested")

func defaultStateDir() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "dtmux-agent"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no --state-dir and no home directory: %w", err)
	}
	return filepath.Join(home, ".local", "state", "dtmux-agent"), nil
}

func run(args []string) error {
	f, err := parseFlags(args)
	if err != nil {
		return err
	}
	if f.version {
		fmt.Printf("dtmux-agent %s\n", version.Version)
		return nil
	}
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(f.maxProcs)
	}

	logOut := io.Writer(os.Stderr)
	if f.logFile != "" {
		lf, err := os.OpenFile(f.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("log file: %w", err)
		}
		defer lf.Close()
		logOut = lf
	}
	log, err := logging.New(logging.Options{Name: "dtmux-agent", Level: f.logLevel, JSON: f.logJSON, Output: logOut})
	if err != nil {
		return err
	}

	if f.stateDir == "" {
		if f.stateDir, err = defaultStateDir(); err != nil {
			return err
		}
	}
	if f.workspace == "" {
		f.workspace, _ = os.Hostname()
	}
	if f.workdir == "" {
		if f.workdir, err = os.UserHomeDir(); err != nil {
			return fmt.Errorf("no --workdir and no home directory: %w", err)
		}
	}
	if fi, err := os.Stat(f.workdir); err != nil || !fi.IsDir() {
		return fmt.Errorf("--workdir %s is not a directory", f.workdir)
	}
	if f.stdio {
		return runStdio(log, f, args)
	}
	if sshauth.Managed(f.stateDir) {
		// Hops forward the ssh agent through the link (sshauth.Env);
		// the socket this daemon inherited, of the hop that started it
		// (or of an older build's), is not to be passed on.
		os.Unsetenv("SSH_AUTH_SOCK")
	}
	// What runs and tmux panes get of the agent a hop forwards, at their
	// start.
	forwardedAgent := func() []string { return sshauth.Env(f.stateDir) }

	// Before anything is started: no run may inherit an ignored SIGHUP.
	defer resetIgnoredSignals(log)()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// SIGUSR1: shut down like SIGTERM, but kill detached runs too (and
	// what runs of an earlier agent left running): for a workspace stop.
	killAll := make(chan os.Signal, 1)
	signal.Notify(killAll, syscall.SIGUSR1)
	defer signal.Stop(killAll)
	reexecC := make(chan os.Signal, 1)
	signal.Notify(reexecC, daemon.ReexecSignal)
	defer signal.Stop(reexecC)

	cfg := rpcserver.Config{Logger: log}
	addr, err := transport.ParseAddress(f.listen)
	if err != nil {
		return err
	}
	if err := cfg.Secure(ctx, log, addr, rpcserver.Security{
		TokenFile: f.tokenFile, TLSCert: f.tlsCert, TLSKey: f.tlsKey, TLSClientCA: f.tlsClientCA,
		InsecureAllowPlaintext: f.insecure,
	}); err != nil {
		return err
	}
	// The daemon of a state dir (what --stdio pumps join) also takes the
	// hops they hand over, and serves them on the same server. Its socket
	// comes first: a pump that reached the daemon's socket finds it.
	hops := listenHops(log, addr, f.stateDir)
	if hops != nil {
		defer hops.Close()
	}
	lis, err := transport.Listen(addr)
	if err != nil {
		return err
	}
	defer lis.Close()

	// Runs with memory, pids or CPU limits go in cgroups where the host
	// allows; GetAgentInfo says what it allows, and why not.
	cgroups := cgroup.Detect(cgroup.Options{Logger: log})
	defer func() {
		if err := cgroups.Close(); err != nil {
			log.Debug("remove the agent's cgroups (detached runs may still use them)", "error", err)
		}
	}()
	runs, err := process.NewManager(process.Config{
		StateDir:   f.stateDir,
		Workspace:  f.workspace,
		Workdir:    f.workdir,
		SpoolLimit: f.spoolLimit,
		Retention:  f.retention,
		MaxRuns:    f.maxRuns,
		Cgroups:    cgroups,
		Handover:   takeHandover(log),
		Env:        forwardedAgent,
		Logger:     log,
	})
	if err != nil {
		return err
	}

	// Sessions: the agent's private tmux server outlives the agent. When
	// tmux is missing or too old, runs are still served and the session
	// RPCs answer FailedPrecondition with the reason.
	var paneHelper []string
	if self, err := os.Executable(); err == nil {
		paneHelper = []string{self, tmux.PaneExecCommand}
	}
	sessions := tmux.New(tmux.Config{
		StateDir:     filepath.Join(f.stateDir, "tmux"),
		Bin:          f.tmuxBin,
		HistoryLimit: f.tmuxHistory,
		WorkDir:      f.workdir,
		PaneHelper:   paneHelper,
		RunEnv:       forwardedAgent,
		Logger:       log,
	})
	_ = sessions.Start(ctx) // logged by the manager; Err() keeps the reason
	defer sessions.Close()

	srv := rpcserver.New(cfg)
	api := agent.New(agent.Options{
		Logger:    log,
		Runs:      runs,
		Tmux:      sessions,
		Workspace: f.workspace,
		Workdir:   f.workdir,
		Isolation: cgroups.Isolation(),
	})
	agentv1.RegisterAgentServiceServer(srv.Server, api)
	srv.MarkServing()

	served := make(chan error, 2)
	go func() { served <- srv.Serve(lis) }()
	serving := 1
	if hops != nil {
		serving++
		go func() { served <- srv.Serve(hops) }()
	}
	log.Info("serving", "listen", lis.Addr().String(), "workspace", f.workspace, "state_dir", f.stateDir, "version", version.Version)

	var serveErr error
	var next *reexec
	closeRuns := runs.Close
wait:
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down")
		case <-killAll:
			// The workspace is being stopped or deleted: nothing it ran
			// may outlive it.
			log.Info("shutting down with every run (SIGUSR1)")
			closeRuns = runs.CloseAll
		case <-reexecC:
			if !daemon.Reexecutable() {
				log.Warn("ignoring SIGUSR2: only a daemon started by --stdio re-executes")
				continue
			}
			req, err := daemon.TakeRequest(f.stateDir)
			if err != nil {
				log.Warn("ignoring SIGUSR2", "error", err)
				daemon.RecordFailure(f.stateDir, daemon.Request{}, err.Error())
				continue
			}
			log.Info("shutting down to re-execute", "path", req.Path)
			next = &reexec{req: req, state: f.stateDir, log: log}
			closeRuns = func() (err error) {
				next.handed, err = runs.HandOver()
				return err
			}
		case serveErr = <-served:
			serving--
		}
		break wait
	}
	// Kill attached runs first so that their Exec streams end with a
	// trailer; detached runs keep going, unless SIGUSR1 said otherwise.
	if err := closeRuns(); err != nil {
		log.Warn("stop runs", "error", err)
	}
	// Followers of sessions and of detached runs would hold the graceful
	// stop for its whole grace.
	api.Shutdown()
	var force []func()
	if hops != nil {
		force = append(force, func() { hops.CloseAll() })
	}
	srv.GracefulStop(drainGrace, force...)
	for ; serving > 0; serving-- {
		if err := <-served; serveErr == nil {
			serveErr = err
		}
	}
	if serveErr != nil && !errors.Is(serveErr, net.ErrClosed) {
		return fmt.Errorf("serve: %w", serveErr)
	}
	if next != nil {
		// Until the exec: the daemon's own socket watch (daemon.Adopt)
		// sends SIGTERM once the socket is gone, which it now is, and
		// nothing else may end the process before it hands over.
		signal.Notify(make(chan os.Signal, 1), syscall.SIGTERM, syscall.SIGINT, daemon.ReexecSignal)
		return next
	}
	return nil
}

// listenHops opens the hand-off socket when addr is the daemon socket of
// stateDir; nil otherwise, or when it cannot (pumps then copy).
func listenHops(log hclog.Logger, addr transport.Address, stateDir string) *daemon.HopListener {
	abs, err := filepath.Abs(stateDir)
	if err != nil || addr.Network != "unix" || filepath.Clean(addr.Addr) != daemon.SocketPath(abs) {
		return nil
	}
	hops, err := daemon.ListenHops(abs)
	if err != nil {
		log.Warn("hops are copied by their pumps", "error", err)
		return nil
	}
	return hops
}
