package tlsconfig_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/internal/rpcserver"
	"github.com/dtmux/dtmux/internal/tlsconfig"
)

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestInitWritesPrivateFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	f, err := tlsconfig.Init(dir, []string{"agent.example", "10.1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %#o, want 0700", fi.Mode().Perm())
	}
	for _, p := range []string{f.CACert, f.CAKey, f.ServerCert, f.ServerKey, f.ClientCert, f.ClientKey} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %#o, want 0600", p, fi.Mode().Perm())
		}
	}
	pair, err := tls.LoadX509KeyPair(f.ServerCert, f.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf := pair.Leaf
	for _, name := range []string{"localhost", "agent.example"} {
		if err := leaf.VerifyHostname(name); err != nil {
			t.Errorf("server cert does not cover %s: %v", name, err)
		}
	}
	for _, ip := range []string{"127.0.0.1", "::1", "10.1.2.3"} {
		if err := leaf.VerifyHostname(ip); err != nil {
			t.Errorf("server cert does not cover %s: %v", ip, err)
		}
	}
	if _, err := tlsconfig.Init(dir, nil); err == nil {
		t.Error("second Init over existing files succeeded; want refusal")
	}
}

func TestKeyFileTooOpenRefused(t *testing.T) {
	f, err := tlsconfig.Init(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(f.ServerKey, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = tlsconfig.Server(tlsconfig.ServerOptions{CertFile: f.ServerCert, KeyFile: f.ServerKey})
	if err == nil || !strings.Contains(err.Error(), "too open") {
		t.Fatalf("Server with a 0644 key: err = %v, want 'too open'", err)
	}
}

func TestServerRequiresBothFiles(t *testing.T) {
	if c, err := tlsconfig.Server(tlsconfig.ServerOptions{}); c != nil || err != nil {
		t.Fatalf("no options: got %v, %v; want nil, nil", c, err)
	}
	if _, err := tlsconfig.Server(tlsconfig.ServerOptions{CertFile: "x"}); err == nil {
		t.Fatal("cert without key accepted")
	}
}

// server starts a real gRPC server (rpcserver, as the binaries use) on
// loopback TCP with the given TLS config and returns its address.
func server(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := rpcserver.New(rpcserver.Config{TLS: cfg})
	s.MarkServing()
	done := make(chan struct{})
	go func() { _ = s.Serve(l); close(done) }()
	t.Cleanup(func() { s.Stop(); <-done })
	return l.Addr().String()
}

func check(t *testing.T, addr string, cfg *tls.Config) error {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	f, err := tlsconfig.Init(filepath.Join(dir, "certs"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var logBuf syncBuffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logBuf, Level: hclog.Trace})
	srv, err := tlsconfig.Server(tlsconfig.ServerOptions{CertFile: f.ServerCert, KeyFile: f.ServerKey, ClientCAFile: f.CACert, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if srv.MinVersion != tls.VersionTLS13 {
		t.Errorf("MinVersion %#x, want TLS 1.3", srv.MinVersion)
	}
	addr := server(t, srv)

	// Extra client identities: an expired one from the right CA, and a
	// valid one from another CA.
	ca, err := tlsconfig.LoadCA(f.CACert, f.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	expCert, expKey, err := ca.Issue(tlsconfig.Leaf{CommonName: "expired", Client: true,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	other, err := tlsconfig.NewCA("other CA", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	othCert, othKey, err := other.Issue(tlsconfig.Leaf{CommonName: "stranger", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	srvOnlyCert, srvOnlyKey, err := ca.Issue(tlsconfig.Leaf{CommonName: "server-usage-only", Server: true})
	if err != nil {
		t.Fatal(err)
	}
	otherCAFile := writeFile(t, dir, "other-ca.crt", other.CertPEM)

	client := func(t *testing.T, o tlsconfig.ClientOptions) *tls.Config {
		t.Helper()
		c, err := tlsconfig.Client(o)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	t.Run("good client", func(t *testing.T) {
		cfg := client(t, tlsconfig.ClientOptions{CAFile: f.CACert, CertFile: f.ClientCert, KeyFile: f.ClientKey})
		if err := check(t, addr, cfg); err != nil {
			t.Fatalf("good client refused: %v", err)
		}
	})

	refusals := []struct {
		name       string
		opts       tlsconfig.ClientOptions
		serverLogs string // substring of the one server log line; "" when the client refuses the server
		force      bool   // present the certificate even when the server's CA list does not name its issuer
	}{
		{"no client cert", tlsconfig.ClientOptions{CAFile: f.CACert}, "client certificate required", false},
		{"expired client cert", tlsconfig.ClientOptions{CAFile: f.CACert,
			CertFile: writeFile(t, dir, "exp.crt", expCert), KeyFile: writeFile(t, dir, "exp.key", expKey)}, "expired", false},
		{"client cert from another CA", tlsconfig.ClientOptions{CAFile: f.CACert,
			CertFile: writeFile(t, dir, "oth.crt", othCert), KeyFile: writeFile(t, dir, "oth.key", othKey)}, "client certificate required", false},
		// Go clients withhold a certificate the server's CA list does not
		// name; other clients may send it anyway.
		{"client cert from another CA, sent anyway", tlsconfig.ClientOptions{CAFile: f.CACert,
			CertFile: filepath.Join(dir, "oth.crt"), KeyFile: filepath.Join(dir, "oth.key")}, "unknown authority", true},
		{"cert without client usage", tlsconfig.ClientOptions{CAFile: f.CACert,
			CertFile: writeFile(t, dir, "so.crt", srvOnlyCert), KeyFile: writeFile(t, dir, "so.key", srvOnlyKey)}, "usage", false},
		{"client trusting another CA", tlsconfig.ClientOptions{CAFile: otherCAFile, CertFile: f.ClientCert, KeyFile: f.ClientKey}, "", false},
		{"wrong server name", tlsconfig.ClientOptions{CAFile: f.CACert, CertFile: f.ClientCert, KeyFile: f.ClientKey, ServerName: "evil.example"}, "", false},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			before := strings.Count(logBuf.String(), "refused TLS client")
			cfg := client(t, tc.opts)
			if tc.force {
				cert := cfg.Certificates[0]
				cfg.Certificates = nil
				cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
			}
			err := check(t, addr, cfg)
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("got %v, want Unavailable (handshake refused)", err)
			}
			if tc.serverLogs == "" {
				return
			}
			// The server logs before it sends its alert, so the line is
			// there by the time the client sees the failure.
			lines := matching(logBuf.String(), "refused TLS client")
			if got := len(lines) - before; got != 1 {
				t.Fatalf("server logged %d refusals, want exactly 1; log:\n%s", got, logBuf.String())
			}
			last := lines[len(lines)-1]
			if !strings.Contains(last, tc.serverLogs) {
				t.Errorf("refusal log %q does not say %q", last, tc.serverLogs)
			}
		})
	}

	t.Run("TLS 1.2 client", func(t *testing.T) {
		cfg := client(t, tlsconfig.ClientOptions{CAFile: f.CACert, CertFile: f.ClientCert, KeyFile: f.ClientKey})
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		if err := check(t, addr, cfg); status.Code(err) != codes.Unavailable {
			t.Fatalf("TLS 1.2 client: %v, want Unavailable", err)
		}
	})
}

func matching(log, sub string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return out
}

func TestServerTLSWithoutClientCA(t *testing.T) {
	f, err := tlsconfig.Init(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := tlsconfig.Server(tlsconfig.ServerOptions{CertFile: f.ServerCert, KeyFile: f.ServerKey})
	if err != nil {
		t.Fatal(err)
	}
	addr := server(t, srv)
	cfg, err := tlsconfig.Client(tlsconfig.ClientOptions{CAFile: f.CACert})
	if err != nil {
		t.Fatal(err)
	}
	if err := check(t, addr, cfg); err != nil {
		t.Fatalf("server-only TLS: %v", err)
	}
	// A client that trusts only the host's roots refuses the private CA.
	cfg2 := &tls.Config{MinVersion: tls.VersionTLS13}
	if err := check(t, addr, cfg2); status.Code(err) != codes.Unavailable {
		t.Fatalf("client without the CA: %v, want Unavailable", err)
	}
}
