package controller

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// VersionHeader is the response header in which the controller reports
// its version on every call of the services registered through
// WithVersionHeader (the CLI's `dtmux version` reads it).
const VersionHeader = "dtmux-version"

// WithVersionHeader returns a registrar that registers services on s so
// that the response headers of every call carry VersionHeader: version.
//
// It wraps each method's handler rather than adding an interceptor, so the
// server's own middleware stays as rpcserver builds it; the header is set
// inside that middleware, once a call has passed authentication, so a
// caller without credentials learns nothing. Streams that send headers of
// their own (the router passes on the agent's) keep them: grpc merges the
// two sets, the controller's value first.
func WithVersionHeader(s grpc.ServiceRegistrar, version string) grpc.ServiceRegistrar {
	return versionRegistrar{s: s, md: metadata.Pairs(VersionHeader, version)}
}

type versionRegistrar struct {
	s  grpc.ServiceRegistrar
	md metadata.MD
}

func (r versionRegistrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	d := *desc
	d.Methods = make([]grpc.MethodDesc, len(desc.Methods))
	for i, m := range desc.Methods {
		m.Handler = r.unary(m.Handler)
		d.Methods[i] = m
	}
	d.Streams = make([]grpc.StreamDesc, len(desc.Streams))
	for i, st := range desc.Streams {
		st.Handler = r.stream(st.Handler)
		d.Streams[i] = st
	}
	r.s.RegisterService(&d, impl)
}

// unary sets the header just before the method runs, inside the server's
// interceptor chain (the generated handler calls the chain with the
// method as its innermost handler).
func (r versionRegistrar) unary(h grpc.MethodHandler) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, chain grpc.UnaryServerInterceptor) (any, error) {
		if chain == nil {
			_ = grpc.SetHeader(ctx, r.md)
			return h(srv, ctx, dec, nil)
		}
		wrapped := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, inner grpc.UnaryHandler) (any, error) {
			return chain(ctx, req, info, func(ctx context.Context, req any) (any, error) {
				_ = grpc.SetHeader(ctx, r.md)
				return inner(ctx, req)
			})
		}
		return h(srv, ctx, dec, wrapped)
	}
}

// stream sets the header as the handler starts; grpc calls stream
// handlers inside the stream interceptor chain already.
func (r versionRegistrar) stream(h grpc.StreamHandler) grpc.StreamHandler {
	return func(srv any, ss grpc.ServerStream) error {
		_ = ss.SetHeader(r.md)
		return h(srv, ss)
	}
}
