package rpcserver

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/go-hclog"

	"github.com/dtmux/dtmux/internal/auth"
	"github.com/dtmux/dtmux/internal/tlsconfig"
	"github.com/dtmux/dtmux/internal/transport"
)

// Security holds the listener flags every dtmux server takes.
type Security struct {
	// TokenFile is the bearer token file (0600), required on TCP.
	TokenFile string
	// TLSCert and TLSKey serve TLS on TCP.
	TLSCert, TLSKey string
	// TLSClientCA, when set, requires client certificates signed by it.
	TLSClientCA string
	// InsecureAllowPlaintext permits plaintext TCP off loopback.
	InsecureAllowPlaintext bool
}

// Secure fills c for a listener on addr: a unix socket checks each peer's
// uid; TCP needs a token (re-read on SIGHUP until ctx ends) and, off
// loopback, TLS unless plaintext is explicitly allowed.
func (c *Config) Secure(ctx context.Context, log hclog.Logger, addr transport.Address, s Security) error {
	if addr.Network == "unix" {
		c.Unix = true
		return nil
	}
	if s.TokenFile == "" {
		return errors.New("--listen tcp:// needs --token-file")
	}
	tok, err := auth.LoadTokenFile(s.TokenFile)
	if err != nil {
		return err
	}
	c.Token = tok
	auth.ReloadOnSIGHUP(ctx, log, tok)
	tlsCfg, err := tlsconfig.Server(tlsconfig.ServerOptions{CertFile: s.TLSCert, KeyFile: s.TLSKey, ClientCAFile: s.TLSClientCA, Logger: log.Named("tls")})
	if err != nil {
		return err
	}
	c.TLS = tlsCfg
	if tlsCfg == nil && !addr.IsLoopback() && !s.InsecureAllowPlaintext {
		return fmt.Errorf("refusing to serve %s without TLS on a non-loopback address (give --tls-cert/--tls-key, or --insecure-allow-plaintext)", addr)
	}
	return nil
}
