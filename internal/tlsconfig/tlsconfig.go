// Package tlsconfig builds the TLS configurations of dtmux servers and
// clients from certificate files, and creates a small private CA with
// server and client certificates for a deployment (`certs init`).
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
)

// ServerOptions name the files of a server's TLS identity.
type ServerOptions struct {
	// CertFile is the server's certificate chain (PEM).
	CertFile string
	// KeyFile is the server's private key (PEM). It must not be readable by
	// group or others.
	KeyFile string
	// ClientCAFile, when set, turns on mutual TLS: every client must present
	// a certificate for client authentication signed by one of these CAs.
	ClientCAFile string
	// Logger receives one warning per refused client certificate.
	Logger hclog.Logger
	// Now returns the time certificates are checked against (default
	// time.Now); tests set it.
	Now func() time.Time
}

// Enabled reports whether any TLS file was given.
func (o ServerOptions) Enabled() bool {
	return o.CertFile != "" || o.KeyFile != "" || o.ClientCAFile != ""
}

// Server loads a server TLS configuration: TLS 1.3 only, and mutual TLS
// when a client CA is given. It returns nil, nil when no file is named.
//
// Client certificates are verified by dtmux itself (rather than by
// crypto/tls) so that every refusal is logged once, with the reason, on the
// server's own logger; the effect is the same as
// tls.RequireAndVerifyClientCert.
func Server(o ServerOptions) (*tls.Config, error) {
	if !o.Enabled() {
		return nil, nil
	}
	if o.CertFile == "" || o.KeyFile == "" {
		return nil, errors.New("tls: --tls-cert and --tls-key must be given together")
	}
	if err := checkPrivate(o.KeyFile); err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: load server certificate: %w", err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2"},
	}
	if o.ClientCAFile == "" {
		return cfg, nil
	}
	pool, err := loadPool(o.ClientCAFile)
	if err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	cfg.ClientCAs = pool
	cfg.ClientAuth = tls.RequestClientCert
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		err := verifyClient(cs, pool, now())
		if err != nil {
			log.Warn("refused TLS client", "error", err)
		}
		return err
	}
	return cfg, nil
}

// verifyClient checks a client's certificate chain against the client CAs.
func verifyClient(cs tls.ConnectionState, pool *x509.CertPool, now time.Time) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: client certificate required")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	leaf := cs.PeerCertificates[0]
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return fmt.Errorf("tls: client certificate %q: %w", leaf.Subject.CommonName, err)
	}
	return nil
}

// ClientOptions say how a client verifies a server and which certificate,
// if any, it presents.
type ClientOptions struct {
	// CAFile holds the CAs that sign the servers' certificates. Empty means
	// the host's roots.
	CAFile string
	// CertFile and KeyFile are the client certificate for mutual TLS.
	CertFile, KeyFile string
	// ServerName overrides the name checked in the server's certificate
	// (default: the host dialled).
	ServerName string
}

// Enabled reports whether any TLS option was given.
func (o ClientOptions) Enabled() bool {
	return o.CAFile != "" || o.CertFile != "" || o.KeyFile != ""
}

// Client builds a client TLS configuration (TLS 1.3 only). It returns nil,
// nil when no option is set.
func Client(o ClientOptions) (*tls.Config, error) {
	if !o.Enabled() {
		return nil, nil
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: o.ServerName,
		NextProtos: []string{"h2"},
	}
	if o.CAFile != "" {
		pool, err := loadPool(o.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if o.CertFile != "" || o.KeyFile != "" {
		if o.CertFile == "" || o.KeyFile == "" {
			return nil, errors.New("tls: client certificate and key must be given together")
		}
		if err := checkPrivate(o.KeyFile); err != nil {
			return nil, err
		}
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls: load client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func loadPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tls: %s holds no PEM certificate", path)
	}
	return pool, nil
}

// checkPrivate refuses a key file that group or others may read.
func checkPrivate(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("tls: key file %s: permissions %#o are too open (want 0600)", path, fi.Mode().Perm())
	}
	return nil
}
