package transport

import (
	"crypto/tls"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/dtmux/dtmux/internal/auth"
)

// MaxMessageBytes is the largest gRPC message dtmux sends or accepts by
// default. Output and input travel in chunks far below it.
const MaxMessageBytes = 4 << 20

// DialConfig says how to reach a server.
type DialConfig struct {
	// Token, when set, is sent as a bearer token on every call.
	Token interface{ Token() []byte }
	// TLS, when set, secures a TCP connection.
	TLS *tls.Config
}

// Keepalive is the client keepalive every dtmux connection uses: it finds a
// dead peer (a killed ssh hop, a vanished host) within about 30 seconds
// even when no call is active.
var Keepalive = keepalive.ClientParameters{
	Time:                15 * time.Second,
	Timeout:             10 * time.Second,
	PermitWithoutStream: true,
}

// DialOptions returns the grpc.DialOptions for an address.
func DialOptions(a Address, c DialConfig) []grpc.DialOption {
	opts := append(ClientTuning(),
		grpc.WithKeepaliveParams(Keepalive),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(MaxMessageBytes),
			grpc.MaxCallSendMsgSize(MaxMessageBytes),
		),
	)
	if c.TLS != nil && a.Network == "tcp" {
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(c.TLS)))
	} else {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if c.Token != nil {
		opts = append(opts, grpc.WithPerRPCCredentials(auth.Bearer{Source: c.Token, Secure: c.TLS != nil && a.Network == "tcp"}))
	}
	return opts
}

// Dial creates a client's connection (the CLI's: one per process); it
// connects lazily, on the first call. Its read buffer is ClientReadBytes:
// a client reads bulk output, and it has one connection to pay for, where
// the controller's pool keeps a thousand at ReadBufferBytes.
func Dial(a Address, c DialConfig, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts := append(DialOptions(a, c), grpc.WithReadBufferSize(ClientReadBytes))
	cc, err := grpc.NewClient(a.Target(), append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", a, err)
	}
	return cc, nil
}
