// Package transport parses dtmux listen and dial addresses and opens
// listeners and client connections on them.
package transport

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Address is where a dtmux server listens: a unix socket path or a TCP
// host:port.
type Address struct {
	// Network is "unix" or "tcp".
	Network string
	// Addr is the socket path or host:port.
	Addr string
}

// ParseAddress reads "unix:///path.sock", "tcp://host:port", or a bare
// path (taken as a unix socket).
func ParseAddress(s string) (Address, error) {
	switch {
	case s == "":
		return Address{}, errors.New("empty address")
	case strings.HasPrefix(s, "unix://"):
		p := strings.TrimPrefix(s, "unix://")
		if p == "" {
			return Address{}, fmt.Errorf("address %q: empty socket path", s)
		}
		return Address{Network: "unix", Addr: p}, nil
	case strings.HasPrefix(s, "tcp://"):
		hp := strings.TrimPrefix(s, "tcp://")
		if _, _, err := net.SplitHostPort(hp); err != nil {
			return Address{}, fmt.Errorf("address %q: %w", s, err)
		}
		return Address{Network: "tcp", Addr: hp}, nil
	case strings.Contains(s, "://"):
		return Address{}, fmt.Errorf("address %q: unknown scheme (want unix:// or tcp://)", s)
	default:
		return Address{Network: "unix", Addr: s}, nil
	}
}

// String gives the address back in URL form.
func (a Address) String() string { return a.Network + "://" + a.Addr }

// Target is the gRPC dial target for the address.
func (a Address) Target() string {
	if a.Network == "unix" {
		return "unix://" + a.Addr
	}
	return "passthrough:///" + a.Addr
}

// IsLoopback reports whether a TCP address binds only loopback interfaces.
// "localhost" counts; an empty host (all interfaces) does not.
func (a Address) IsLoopback() bool {
	if a.Network != "tcp" {
		return true
	}
	host, _, err := net.SplitHostPort(a.Addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// Listen opens a listener. A unix socket is created 0600 inside a
// directory that is made 0700 when dtmux creates it; a stale socket file
// left by a dead server is replaced, a live one is an error.
func Listen(a Address) (net.Listener, error) {
	if a.Network != "unix" {
		return net.Listen(a.Network, a.Addr)
	}
	dir := filepath.Dir(a.Addr)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("listen %s: %w", a, err)
	}
	if _, err := os.Stat(a.Addr); err == nil {
		if c, err := net.Dial("unix", a.Addr); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen %s: another server is already listening there", a)
		}
		if err := os.Remove(a.Addr); err != nil {
			return nil, fmt.Errorf("listen %s: remove stale socket: %w", a, err)
		}
	}
	// The umask makes the socket 0600 from birth: no window in which
	// another user could connect before a chmod.
	old := umask(0o177)
	l, err := net.Listen("unix", a.Addr)
	umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", a, err)
	}
	return l, nil
}
