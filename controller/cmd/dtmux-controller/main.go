// Command dtmux-controller serves WorkspaceService and routes AgentService
// calls to the agents of workspaces from a provider (local, static, ...),
// over one pooled connection per agent.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/controller"
	"github.com/dtmux/dtmux/controller/pool"
	"github.com/dtmux/dtmux/controller/provider"
	"github.com/dtmux/dtmux/controller/provider/local"
	"github.com/dtmux/dtmux/controller/provider/static"
	"github.com/dtmux/dtmux/internal/auth"
	"github.com/dtmux/dtmux/internal/logging"
	"github.com/dtmux/dtmux/internal/rpcserver"
	"github.com/dtmux/dtmux/internal/tlsconfig"
	"github.com/dtmux/dtmux/internal/transport"
	"github.com/dtmux/dtmux/internal/version"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// drainGrace is how long in-flight calls get on shutdown.
const drainGrace = 5 * time.Second

func main() {
	if len(os.Args) > 1 && os.Args[1] == "certs" {
		if err := runCerts(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "dtmux-controller: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "dtmux-controller: %v\n", err)
		os.Exit(1)
	}
}

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

type flags struct {
	stateDir, listen, providerName, agentBinary string
	tokenFile, tlsCert, tlsKey, tlsClientCA     string
	logLevel, logFile                           string
	idleTimeout                                 time.Duration
	maxDials                                    int
	insecure, logJSON, version, stopAgents      bool

	// static provider
	agents                             listFlag
	agentsFile, agentTokenFile         string
	agentTLSCA, agentTLSCert, agentKey string

	// ssh and daytona providers (remote.go)
	remote remoteFlags
}

func parseFlags(args []string) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("dtmux-controller", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.stateDir, "state-dir", "", "state directory (default $DTMUX_STATE_DIR, else $XDG_STATE_HOME/dtmux, else ~/.local/state/dtmux)")
	fs.StringVar(&f.listen, "listen", "", "serve on unix:///path.sock or tcp://host:port (default unix://STATE/controller.sock)")
	fs.StringVar(&f.providerName, "provider", "local", "where workspaces come from: local, static, ssh or daytona")
	fs.StringVar(&f.agentBinary, "agent-binary", "", "dtmux-agent to start for local workspaces (default: next to this binary, else PATH)")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", pool.DefaultIdleTimeout, "close agent connections idle this long (negative: never)")
	fs.IntVar(&f.maxDials, "max-dials", pool.DefaultMaxConcurrentDials, "most agent connections being opened at once")
	fs.BoolVar(&f.stopAgents, "stop-agents-on-exit", false, "on exit, end what local workspaces run (agents, runs, tmux sessions), as ws stop does, but leave them started (default: leave everything for the next controller to adopt)")
	fs.StringVar(&f.tokenFile, "token-file", "", "bearer token file (0600), required for tcp")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "TLS certificate (PEM) for tcp")
	fs.StringVar(&f.tlsKey, "tls-key", "", "TLS private key (PEM) for tcp")
	fs.StringVar(&f.tlsClientCA, "tls-client-ca", "", "CA bundle: require client certificates signed by it")
	fs.BoolVar(&f.insecure, "insecure-allow-plaintext", false, "allow tcp on a non-loopback address without TLS")
	fs.StringVar(&f.logLevel, "log-level", "info", "trace, debug, info, warn or error")
	fs.BoolVar(&f.logJSON, "log-json", false, "log JSON lines")
	fs.StringVar(&f.logFile, "log-file", "", "append logs to this file instead of stderr")
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	fs.Var(&f.agents, "agent", "static provider: NAME=unix:///path or NAME=tcp://host:port [k=v...] (repeatable)")
	fs.StringVar(&f.agentsFile, "agents-file", "", "static provider: file of agent entries, one a line")
	fs.StringVar(&f.agentTokenFile, "agent-token-file", "", "token file for tcp agents")
	fs.StringVar(&f.agentTLSCA, "agent-tls-ca", "", "CA bundle that signs tcp agents' certificates")
	fs.StringVar(&f.agentTLSCert, "agent-tls-cert", "", "client certificate for tcp agents (mTLS)")
	fs.StringVar(&f.agentKey, "agent-tls-key", "", "client key for tcp agents (mTLS)")
	f.remote.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fmt.Fprintln(os.Stdout, "usage: dtmux-controller [flags]\n       dtmux-controller certs init DIR [--host NAME]...")
			fs.PrintDefaults()
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return f, nil
}

// defaultStateDir follows $DTMUX_STATE_DIR, $XDG_STATE_HOME, then home.
func defaultStateDir() (string, error) {
	if d := os.Getenv("DTMUX_STATE_DIR"); d != "" {
		return d, nil
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "dtmux"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no --state-dir and no home directory: %w", err)
	}
	return filepath.Join(home, ".local", "state", "dtmux"), nil
}

func run(args []string) error {
	f, err := parseFlags(args)
	if err != nil {
		return err
	}
	if f.version {
		fmt.Printf("dtmux-controller %s\n", version.Version)
		return nil
	}
	if f.stateDir == "" {
		if f.stateDir, err = defaultStateDir(); err != nil {
			return err
		}
	}
	if f.stateDir, err = filepath.Abs(f.stateDir); err != nil {
		return err
	}
	if err := os.MkdirAll(f.stateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
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
	log, err := logging.New(logging.Options{Name: "dtmux-controller", Level: f.logLevel, JSON: f.logJSON, Output: logOut})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if f.listen == "" {
		f.listen = "unix://" + filepath.Join(f.stateDir, "controller.sock")
	}
	addr, err := transport.ParseAddress(f.listen)
	if err != nil {
		return err
	}
	cfg := rpcserver.Config{Logger: log, Codec: controller.Codec()}
	if err := cfg.Secure(ctx, log, addr, rpcserver.Security{
		TokenFile: f.tokenFile, TLSCert: f.tlsCert, TLSKey: f.tlsKey, TLSClientCA: f.tlsClientCA,
		InsecureAllowPlaintext: f.insecure,
	}); err != nil {
		return err
	}

	// The state dir first, then the socket: both before this controller
	// adopts any agent.
	release, err := lockStateDir(ctx, f.stateDir, addr, lockWait, log)
	if err != nil {
		return err
	}
	defer release()
	lis, err := transport.Listen(addr)
	if err != nil {
		return err
	}
	defer lis.Close()

	prov, err := newProvider(f, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := prov.Close(); err != nil {
			log.Warn("close provider", "error", err)
		}
	}()
	pcfg := pool.Config{
		Resolve:            prov.Endpoint,
		Logger:             log,
		IdleTimeout:        f.idleTimeout,
		MaxConcurrentDials: f.maxDials,
	}
	if kr, ok := prov.(provider.KeyReporter); ok {
		pcfg.CurrentKey = kr.EndpointKey
	}
	pl := pool.New(pcfg)
	defer pl.Close()

	srv := rpcserver.New(cfg)
	// Every call's response headers carry the controller's version.
	reg := controller.WithVersionHeader(srv.Server, version.Version)
	controllerv1.RegisterWorkspaceServiceServer(reg, controller.NewWorkspaceService(prov, pl, log))
	controller.NewRouter(pl, log).Register(reg)
	fleetEngine := controller.NewFleetEngine(prov, pl, log)
	defer fleetEngine.Close() // before the pool closes
	controllerv1.RegisterFleetServiceServer(reg, controller.NewFleetService(fleetEngine, log))
	srv.MarkServing()

	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	log.Info("serving", "listen", addr.String(), "provider", prov.Name(), "state_dir", f.stateDir, "version", version.Version)

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case serveErr = <-served:
	}
	srv.GracefulStop(drainGrace)
	if serveErr == nil {
		serveErr = <-served
	}
	if serveErr != nil && !errors.Is(serveErr, net.ErrClosed) {
		return fmt.Errorf("serve: %w", serveErr)
	}
	return nil
}

// newProvider builds the provider named by --provider.
func newProvider(f *flags, log hclog.Logger) (provider.Provider, error) {
	switch f.providerName {
	case "local":
		bin, err := agentBinary(f.agentBinary)
		if err != nil {
			return nil, err
		}
		return local.New(local.Config{
			StateDir:          f.stateDir,
			AgentBinary:       bin,
			Logger:            log,
			StopAgentsOnClose: f.stopAgents,
		})
	case "static":
		return newStatic(f)
	case "ssh":
		return newSSH(f, log)
	case "daytona":
		return newDaytona(f, log)
	default:
		return nil, fmt.Errorf("unknown --provider %q (want local, static, ssh or daytona)", f.providerName)
	}
}

func newStatic(f *flags) (provider.Provider, error) {
	var agents []static.Agent
	if f.agentsFile != "" {
		as, err := static.ParseFile(f.agentsFile)
		if err != nil {
			return nil, err
		}
		agents = append(agents, as...)
	}
	for _, e := range f.agents {
		a, err := static.Parse(e)
		if err != nil {
			return nil, err
		}
		agents = append(agents, a)
	}
	if len(agents) == 0 {
		return nil, errors.New("--provider static needs --agent NAME=ADDRESS or --agents-file FILE")
	}
	var dc transport.DialConfig
	if f.agentTokenFile != "" {
		tok, err := auth.LoadTokenFile(f.agentTokenFile)
		if err != nil {
			return nil, err
		}
		dc.Token = tok
	}
	tlsCfg, err := tlsconfig.Client(tlsconfig.ClientOptions{CAFile: f.agentTLSCA, CertFile: f.agentTLSCert, KeyFile: f.agentKey})
	if err != nil {
		return nil, err
	}
	dc.TLS = tlsCfg
	return static.New(agents, dc)
}

// agentBinary finds dtmux-agent: the flag, next to this executable, or
// on PATH.
func agentBinary(flagValue string) (string, error) {
	if flagValue != "" {
		if _, err := os.Stat(flagValue); err != nil {
			return "", fmt.Errorf("--agent-binary: %w", err)
		}
		return filepath.Abs(flagValue)
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "dtmux-agent")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("dtmux-agent"); err == nil {
		return p, nil
	}
	return "", errors.New("dtmux-agent not found next to dtmux-controller or on PATH; give --agent-binary")
}
