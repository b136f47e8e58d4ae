package tlsconfig

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CA is a certificate authority that can issue certificates.
type CA struct {
	// Cert is the CA's certificate.
	Cert *x509.Certificate
	// Key signs issued certificates.
	Key crypto.Signer
	// CertPEM is Cert in PEM form.
	CertPEM []byte
	// KeyPEM is Key in PEM form (PKCS #8).
	KeyPEM []byte
}

// NewCA creates a self-signed CA valid from now until notAfter.
func NewCA(commonName string, notAfter time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"dtmux"}},
		NotBefore:             time.Now().Add(-5 * time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: encodeCert(der), KeyPEM: keyPEM}, nil
}

// LoadCA reads a CA certificate and key written by Init.
func LoadCA(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, errors.New("load CA: not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load CA key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("load CA key: not a signing key")
	}
	return &CA{Cert: cert, Key: signer, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// Leaf says what certificate to issue.
type Leaf struct {
	// CommonName of the subject.
	CommonName string
	// Hosts are DNS names or IP addresses put in the subject alternative
	// names (servers).
	Hosts []string
	// Server and Client select the extended key usages.
	Server, Client bool
	// NotBefore and NotAfter bound the validity; zero means from five
	// minutes ago (clock skew) to DefaultValidity from now.
	NotBefore, NotAfter time.Time
}

// DefaultValidity is how long issued certificates are valid unless told.
const DefaultValidity = 2 * 365 * 24 * time.Hour

// Issue creates a key and a certificate signed by the CA, both in PEM.
func (ca *CA) Issue(l Leaf) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, nil, err
	}
	nb, na := l.NotBefore, l.NotAfter
	if nb.IsZero() {
		nb = time.Now().Add(-5 * time.Minute)
	}
	if na.IsZero() {
		na = time.Now().Add(DefaultValidity)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: l.CommonName, Organization: []string{"dtmux"}},
		NotBefore:    nb,
		NotAfter:     na,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if l.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if l.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	for _, h := range l.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %q: %w", l.CommonName, err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return encodeCert(der), keyPEM, nil
}

// Files are the paths Init writes, all inside one directory.
type Files struct {
	CACert, CAKey         string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
}

// FilesIn returns the file names Init uses in dir.
func FilesIn(dir string) Files {
	j := func(n string) string { return filepath.Join(dir, n) }
	return Files{
		CACert: j("ca.crt"), CAKey: j("ca.key"),
		ServerCert: j("server.crt"), ServerKey: j("server.key"),
		ClientCert: j("client.crt"), ClientKey: j("client.key"),
	}
}

// DefaultHosts are always in the server certificate's names.
var DefaultHosts = []string{"localhost", "127.0.0.1", "::1"}

// Init creates dir (0700) and writes a new CA, a server certificate for
// DefaultHosts plus hosts, and a client certificate, every file 0600. It
// refuses to overwrite an existing CA: delete the directory to start over.
func Init(dir string, hosts []string) (Files, error) {
	f := FilesIn(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Files{}, fmt.Errorf("certs init: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return Files{}, fmt.Errorf("certs init: %w", err)
	}
	for _, p := range []string{f.CACert, f.CAKey, f.ServerCert, f.ServerKey, f.ClientCert, f.ClientKey} {
		if _, err := os.Lstat(p); err == nil {
			return Files{}, fmt.Errorf("certs init: %s already exists; remove the directory's certificates to start over", p)
		}
	}
	ca, err := NewCA("dtmux CA", time.Now().Add(10*365*24*time.Hour))
	if err != nil {
		return Files{}, err
	}
	all := append(append([]string{}, DefaultHosts...), hosts...)
	srvCert, srvKey, err := ca.Issue(Leaf{CommonName: "dtmux server", Hosts: dedupe(all), Server: true})
	if err != nil {
		return Files{}, err
	}
	cliCert, cliKey, err := ca.Issue(Leaf{CommonName: "dtmux client", Client: true})
	if err != nil {
		return Files{}, err
	}
	for _, w := range []struct {
		path string
		data []byte
	}{
		{f.CACert, ca.CertPEM}, {f.CAKey, ca.KeyPEM},
		{f.ServerCert, srvCert}, {f.ServerKey, srvKey},
		{f.ClientCert, cliCert}, {f.ClientKey, cliKey},
	} {
		if err := writePrivate(w.path, w.data); err != nil {
			return Files{}, err
		}
	}
	return f, nil
}

// writePrivate creates path 0600 (never following an existing file).
func writePrivate(path string, data []byte) error {
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("certs init: %w", err)
	}
	if _, err := fh.Write(data); err != nil {
		fh.Close()
		return fmt.Errorf("certs init: %w", err)
	}
	return fh.Close()
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if v != "" && !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

func serialNumber() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
