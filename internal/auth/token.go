// Package auth authenticates dtmux gRPC calls: bearer tokens read from
// files (compared in constant time, re-read when the file changes) and the
// peer uid of unix-socket connections.
package auth

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// MetadataKey is the gRPC metadata key that carries the bearer token.
const MetadataKey = "authorization"

// TokenFile is a bearer token kept in a file. The file is re-read when its
// modification time or size changes, so a token can be rotated without a
// restart. Only the first line counts; surrounding white space is trimmed
// from the file (but never from what a client sends).
type TokenFile struct {
	path string

	mu      sync.Mutex // guards the fields below
	token   []byte
	modTime time.Time
	size    int64
	checked time.Time
}

// LoadTokenFile reads the token at path. The file must not be readable by
// group or others, and must not be empty.
func LoadTokenFile(path string) (*TokenFile, error) {
	t := &TokenFile{path: path}
	if err := t.reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// Path is the file the token is read from.
func (t *TokenFile) Path() string { return t.path }

// Reload re-reads the file now (for SIGHUP).
func (t *TokenFile) Reload() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.reloadLocked()
}

func (t *TokenFile) reload() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.reloadLocked()
}

// reloadLocked reads the file. Callers hold mu.
func (t *TokenFile) reloadLocked() error {
	fi, err := os.Stat(t.path)
	if err != nil {
		return fmt.Errorf("token file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("token file %s: permissions %#o are too open (want 0600)", t.path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(t.path)
	if err != nil {
		return fmt.Errorf("token file: %w", err)
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return fmt.Errorf("token file %s is empty", t.path)
	}
	t.token = line
	t.modTime = fi.ModTime()
	t.size = fi.Size()
	t.checked = time.Now()
	return nil
}

// Token returns the current token, re-reading the file when it changed
// (checked at most once a second). A file that became unreadable keeps the
// last good token.
func (t *TokenFile) Token() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	if time.Since(t.checked) >= time.Second {
		t.checked = time.Now()
		if fi, err := os.Stat(t.path); err == nil && (!fi.ModTime().Equal(t.modTime) || fi.Size() != t.size) {
			_ = t.reloadLocked()
		}
	}
	return t.token
}

// ErrBadToken is returned for a missing or wrong token.
var ErrBadToken = errors.New("missing or invalid bearer token")

// Check compares a presented "Bearer X" header value with the token in
// constant time.
func (t *TokenFile) Check(header string) error {
	presented, ok := strings.CutPrefix(header, "Bearer ")
	if !ok {
		return ErrBadToken
	}
	want := t.Token()
	if subtle.ConstantTimeCompare([]byte(presented), want) != 1 {
		return ErrBadToken
	}
	return nil
}

// Bearer is client-side per-RPC credentials that send a token.
type Bearer struct {
	// Source yields the token for each call.
	Source interface{ Token() []byte }
	// Secure tells gRPC whether the token needs a secure transport.
	Secure bool
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (b Bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{MetadataKey: "Bearer " + string(b.Source.Token())}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (b Bearer) RequireTransportSecurity() bool { return b.Secure }
