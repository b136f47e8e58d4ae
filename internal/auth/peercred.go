package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	"google.golang.org/grpc/credentials"
)

// PeerInfo is the gRPC AuthInfo of a unix-socket connection: the peer's
// credentials as the kernel reports them (SO_PEERCRED).
type PeerInfo struct {
	credentials.CommonAuthInfo
	UID, GID uint32
	PID      int32
}

// AuthType implements credentials.AuthInfo.
func (PeerInfo) AuthType() string { return "unix-peercred" }

// UnixPeerCreds are server transport credentials for unix sockets: they do
// no handshake but record the peer's uid, gid and pid so that an
// interceptor can admit or refuse the caller.
type UnixPeerCreds struct{}

// ClientHandshake implements credentials.TransportCredentials.
func (UnixPeerCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, PeerInfo{}, nil
}

// ServerHandshake implements credentials.TransportCredentials. Besides a
// unix socket it takes any connection that knows its peer's credentials
// (PeerCredConn: a hop an agent's pump handed over).
func (UnixPeerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	var cred *syscall.Ucred
	var err error
	switch pc := c.(type) {
	case *net.UnixConn:
		cred, err = PeerCred(pc)
	case PeerCredConn:
		cred, err = pc.PeerCred()
	default:
		err = errors.New("not a unix socket")
	}
	if err != nil {
		return nil, nil, fmt.Errorf("peer credentials: %w", err)
	}
	return c, PeerInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		UID:            cred.Uid, GID: cred.Gid, PID: cred.Pid,
	}, nil
}

// PeerCredConn is a connection that is not a unix socket itself but
// carries the credentials of the process at its other end.
type PeerCredConn interface {
	net.Conn
	PeerCred() (*syscall.Ucred, error)
}

// PeerCred returns the credentials of the process at the other end of c,
// as the kernel recorded them when it connected (SO_PEERCRED).
func PeerCred(c *net.UnixConn) (*syscall.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, credErr
}

// Info implements credentials.TransportCredentials.
func (UnixPeerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}

// Clone implements credentials.TransportCredentials.
func (UnixPeerCreds) Clone() credentials.TransportCredentials { return UnixPeerCreds{} }

// OverrideServerName implements credentials.TransportCredentials.
func (UnixPeerCreds) OverrideServerName(string) error { return nil }
