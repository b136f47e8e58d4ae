// Package rpcserver builds the gRPC servers of dtmux binaries with the same
// middleware, health and reflection everywhere.
package rpcserver

import (
	"context"
	"crypto/tls"
	"os"
	"slices"
	"strings"
	"time"

	grpcauth "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/internal/auth"
	dlog "github.com/dtmux/dtmux/internal/logging"
	"github.com/dtmux/dtmux/internal/transport"
)

// Config describes one server.
type Config struct {
	// Logger receives one line per finished call (debug for OK, warn and
	// error otherwise) and authentication failures.
	Logger hclog.Logger
	// Token, when set, is required as a bearer token on every call but
	// health checks.
	Token *auth.TokenFile
	// Unix makes the server record each connection's peer uid and admit
	// only AllowedUIDs (default: the server's own uid).
	Unix bool
	// AllowedUIDs lists the uids admitted on a unix socket.
	AllowedUIDs []uint32
	// TLS, when set, secures connections (TCP).
	TLS *tls.Config
	// MaxMessageBytes bounds one message (default transport.MaxMessageBytes).
	MaxMessageBytes int
	// MaxConcurrentStreams bounds the streams of one connection (default
	// 1024).
	MaxConcurrentStreams uint32
	// Codec, when set, replaces the proto codec on every call (the
	// controller's forwards routed messages without decoding them).
	Codec encoding.CodecV2
}

// Server is a gRPC server with its health service.
type Server struct {
	*grpc.Server
	// Health reports SERVING for "" and every registered service once
	// MarkServing is called.
	Health *health.Server
}

// New builds the server. Register services on it, then call MarkServing
// and Serve.
func New(c Config) *Server {
	log := c.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	maxMsg := c.MaxMessageBytes
	if maxMsg == 0 {
		maxMsg = transport.MaxMessageBytes
	}
	maxStreams := c.MaxConcurrentStreams
	if maxStreams == 0 {
		maxStreams = 1024
	}
	allowed := c.AllowedUIDs
	if len(allowed) == 0 {
		allowed = []uint32{uint32(os.Getuid())}
	}

	authFn := func(ctx context.Context) (context.Context, error) {
		if c.Unix {
			p, ok := peer.FromContext(ctx)
			pi, isPeer := p.AuthInfo.(auth.PeerInfo)
			if !ok || !isPeer {
				return nil, status.Error(codes.PermissionDenied, "peer credentials unavailable")
			}
			if !slices.Contains(allowed, pi.UID) {
				log.Warn("refused unix peer", "uid", pi.UID, "pid", pi.PID)
				return nil, status.Errorf(codes.PermissionDenied, "uid %d may not use this socket", pi.UID)
			}
		}
		if c.Token != nil {
			md, _ := metadata.FromIncomingContext(ctx)
			var header string
			if v := md.Get(auth.MetadataKey); len(v) > 0 {
				header = v[0]
			}
			if err := c.Token.Check(header); err != nil {
				addr := ""
				if p, ok := peer.FromContext(ctx); ok {
					addr = p.Addr.String()
				}
				log.Warn("refused call", "peer", addr, "error", err)
				return nil, status.Error(codes.Unauthenticated, err.Error())
			}
		}
		return ctx, nil
	}
	glog := dlog.GRPC(log.Named("grpc"))
	logOpts := []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		logging.WithLevels(func(code codes.Code) logging.Level {
			switch code {
			case codes.OK, codes.Canceled:
				return logging.LevelDebug
			case codes.Internal, codes.Unknown, codes.DataLoss:
				return logging.LevelError
			default:
				return logging.LevelInfo
			}
		}),
	}
	recoverOpt := recovery.WithRecoveryHandler(func(p any) error {
		log.Error("panic in handler", "panic", p)
		return status.Error(codes.Internal, "internal error")
	})

	opts := append(transport.ServerTuning(),
		grpc.MaxRecvMsgSize(maxMsg),
		grpc.MaxSendMsgSize(maxMsg),
		grpc.MaxConcurrentStreams(maxStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// Order: logging, then auth, then recovery innermost.
		grpc.ChainUnaryInterceptor(
			logging.UnaryServerInterceptor(glog, logOpts...),
			unaryAuth(authFn),
			recovery.UnaryServerInterceptor(recoverOpt),
		),
		grpc.ChainStreamInterceptor(
			logging.StreamServerInterceptor(glog, logOpts...),
			streamAuth(authFn),
			recovery.StreamServerInterceptor(recoverOpt),
		),
	)
	switch {
	case c.TLS != nil:
		opts = append(opts, grpc.Creds(credentials.NewTLS(c.TLS)))
	case c.Unix:
		opts = append(opts, grpc.Creds(auth.UnixPeerCreds{}))
	}
	if c.Codec != nil {
		opts = append(opts, grpc.ForceServerCodecV2(c.Codec))
	}
	s := &Server{Server: grpc.NewServer(opts...), Health: health.NewServer()}
	healthpb.RegisterHealthServer(s.Server, s.Health)
	reflection.Register(s.Server)
	return s
}

// Health checks stay open so that probes work without credentials.
const healthPrefix = "/grpc.health.v1.Health/"

func unaryAuth(fn grpcauth.AuthFunc) grpc.UnaryServerInterceptor {
	inner := grpcauth.UnaryServerInterceptor(fn)
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if strings.HasPrefix(info.FullMethod, healthPrefix) {
			return h(ctx, req)
		}
		return inner(ctx, req, info, h)
	}
}

func streamAuth(fn grpcauth.AuthFunc) grpc.StreamServerInterceptor {
	inner := grpcauth.StreamServerInterceptor(fn)
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if strings.HasPrefix(info.FullMethod, healthPrefix) {
			return h(srv, ss)
		}
		return inner(srv, ss, info, h)
	}
}

// MarkServing sets every registered service (and "") to SERVING.
func (s *Server) MarkServing() {
	s.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for name := range s.GetServiceInfo() {
		s.Health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
}

// GracefulStop marks the server NOT_SERVING, then drains calls for up to
// grace before stopping hard; force runs first then (say, to close
// connections the server would wait for).
func (s *Server) GracefulStop(grace time.Duration, force ...func()) {
	s.Health.Shutdown()
	done := make(chan struct{})
	go func() {
		s.Server.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
		for _, f := range force {
			f()
		}
		s.Server.Stop()
		<-done
	}
}
