package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/controller/bootstrap"
	"github.com/dtmux/dtmux/controller/provider"
	"github.com/dtmux/dtmux/controller/provider/daytona"
	"github.com/dtmux/dtmux/controller/provider/ssh"
	"github.com/dtmux/dtmux/internal/version"
)

// remoteFlags configure the ssh and daytona providers.
type remoteFlags struct {
	hosts, agentDir, installDir string
	daytonaBin, daytonaKeyFile  string
	hopIdle, uploadTimeout      time.Duration
}

func (r *remoteFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.hosts, "hosts", "", "ssh provider: YAML hosts file (hosts: [{name, destination, labels, ssh_args}])")
	fs.StringVar(&r.agentDir, "agent-dir", "", "ssh/daytona: directory of dtmux-agent-<os>-<arch> binaries to install (default: next to this binary)")
	fs.StringVar(&r.installDir, "agent-install-dir", bootstrap.DefaultInstallDir, "ssh/daytona: remote directory the agent is installed in")
	fs.StringVar(&r.daytonaBin, "daytona", "daytona", "daytona provider: the daytona CLI")
	fs.StringVar(&r.daytonaKeyFile, "daytona-api-key-file", "", "daytona provider: file holding the API key (default $DAYTONA_API_KEY; never a flag value)")
	fs.DurationVar(&r.uploadTimeout, "agent-upload-timeout", bootstrap.DefaultUploadTimeout, "ssh/daytona: how long installing the agent (about 14 MB) may take over a slow link")
	fs.DurationVar(&r.hopIdle, "hop-idle-timeout", 0, "ssh/daytona: close an idle hop after this long (daytona sandboxes default: under their auto-stop)")
}

func (r *remoteFlags) bootstrapConfig(log hclog.Logger) (bootstrap.Config, error) {
	dir := r.agentDir
	if dir == "" {
		exe, err := os.Executable()
		if err != nil {
			return bootstrap.Config{}, fmt.Errorf("find the agent binaries: %w", err)
		}
		dir = filepath.Dir(exe)
	}
	if r.uploadTimeout <= 0 {
		return bootstrap.Config{}, errors.New("--agent-upload-timeout must be positive")
	}
	return bootstrap.Config{AgentDir: dir, InstallDir: r.installDir, Version: version.Version, UploadTimeout: r.uploadTimeout, Logger: log.Named("bootstrap")}, nil
}

func newSSH(f *flags, log hclog.Logger) (provider.Provider, error) {
	if f.remote.hosts == "" {
		return nil, errors.New("--provider ssh needs --hosts FILE")
	}
	bc, err := f.remote.bootstrapConfig(log)
	if err != nil {
		return nil, err
	}
	return ssh.New(ssh.Config{HostsFile: f.remote.hosts, Bootstrap: bootstrap.New(bc), IdleTimeout: f.remote.hopIdle, Logger: log})
}

func newDaytona(f *flags, log hclog.Logger) (provider.Provider, error) {
	bc, err := f.remote.bootstrapConfig(log)
	if err != nil {
		return nil, err
	}
	return daytona.New(daytona.Config{
		Binary:         f.remote.daytonaBin,
		Bootstrap:      bc,
		APIKeyFile:     f.remote.daytonaKeyFile,
		KnownHostsFile: filepath.Join(f.stateDir, "daytona_known_hosts"),
		IdleTimeout:    f.remote.hopIdle,
		Logger:         log,
	})
}
