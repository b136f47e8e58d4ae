package controller

import (
	"context"
	"errors"
	"io"
	"strings"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/controller/pool"
	"github.com/dtmux/dtmux/controller/provider"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// Router serves dtmux.agent.v1.AgentService on the controller by
// forwarding every call, message by message, to the agent of the
// workspace named in the call's "dtmux-workspace" metadata.
//
// It registers the service under its real name, built from the generated
// descriptor, so reflection lists it and health reports it; every method,
// unary or streaming, is handled as a stream of opaque frames, so methods
// added to the proto later are routed without code here.
type Router struct {
	pool *pool.Pool
	log  hclog.Logger
}

// NewRouter returns a router over p.
func NewRouter(p *pool.Pool, log hclog.Logger) *Router {
	return &Router{pool: p, log: log.Named("router")}
}

// Register adds AgentService to s.
func (r *Router) Register(s grpc.ServiceRegistrar) {
	src := agentv1.AgentService_ServiceDesc
	desc := grpc.ServiceDesc{
		ServiceName: src.ServiceName,
		HandlerType: (*any)(nil),
		Metadata:    src.Metadata,
	}
	for _, m := range src.Methods {
		desc.Streams = append(desc.Streams, grpc.StreamDesc{StreamName: m.MethodName, Handler: r.handle, ServerStreams: true, ClientStreams: true})
	}
	for _, st := range src.Streams {
		desc.Streams = append(desc.Streams, grpc.StreamDesc{StreamName: st.StreamName, Handler: r.handle, ServerStreams: true, ClientStreams: true})
	}
	s.RegisterService(&desc, r)
}

// proxyDesc lets the client side send and receive any number of messages;
// the agent enforces each method's real shape.
var proxyDesc = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// dropMetadata are incoming keys never forwarded: transport headers grpc
// sets itself, the routing key, and the caller's credentials (the agent
// has its own).
var dropMetadata = map[string]bool{
	":authority":           true,
	"authorization":        true,
	"content-type":         true,
	"user-agent":           true,
	"te":                   true,
	WorkspaceMetadataKey:   true,
	"grpc-accept-encoding": true,
	"grpc-encoding":        true,
	"grpc-timeout":         true,
}

func (r *Router) handle(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	ctx := ss.Context()
	in, _ := metadata.FromIncomingContext(ctx)
	var ws string
	if v := in.Get(WorkspaceMetadataKey); len(v) > 0 {
		ws = strings.TrimSpace(v[0])
	}
	if ws == "" {
		return status.Error(codes.InvalidArgument, "no workspace named: set metadata "+WorkspaceMetadataKey)
	}
	if err := provider.ValidateName(ws); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	cc, err := r.pool.Conn(ctx, ws)
	if err != nil {
		return toStatus(r.log, ws, err)
	}
	out := metadata.MD{}
	for k, v := range in {
		if !dropMetadata[k] {
			out[k] = v
		}
	}
	// The agent call ends with this one: the caller's cancellation and
	// deadline carry over through ctx.
	cctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, out))
	defer cancel()
	cs, err := cc.NewStream(cctx, proxyDesc, method, grpc.ForceCodecV2(Codec()))
	if err != nil {
		return r.agentErr(ctx, ws, err, false)
	}

	// Client to agent. This goroutine ends when the caller half-closes or
	// the call ends: once handle returns, grpc fails ss.RecvMsg.
	c2s := make(chan error, 1)
	go func() {
		for {
			f := new(rawFrame)
			if err := ss.RecvMsg(f); err != nil {
				if errors.Is(err, io.EOF) {
					c2s <- cs.CloseSend()
				} else {
					c2s <- err
					cancel() // the caller is gone: cancel the agent call
				}
				return
			}
			if err := cs.SendMsg(f); err != nil {
				f.free() // still ours when grpc failed before encoding it
				// The agent side failed; its status comes from RecvMsg.
				c2s <- nil
				return
			}
		}
	}()

	// Agent to client, as each message arrives.
	gotHeader := false
	if h, err := cs.Header(); err == nil {
		gotHeader = true
		if len(h) > 0 {
			if err := ss.SendHeader(h); err != nil {
				return err
			}
		}
	}
	for {
		f := new(rawFrame)
		if err := cs.RecvMsg(f); err != nil {
			ss.SetTrailer(cs.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			return r.agentErr(ctx, ws, err, gotHeader)
		}
		if err := ss.SendMsg(f); err != nil {
			f.free()
			return err
		}
	}
}

// agentErr passes the agent's status through, naming the workspace when
// the agent could not be reached at all. ctx is the client's call.
func (r *Router) agentErr(ctx context.Context, ws string, err error, reached bool) error {
	s, ok := status.FromError(err)
	if !ok {
		return toStatus(r.log, ws, err)
	}
	// Canceled while the client still waits: the pool closed the
	// connection under the call (a workspace stopped, the controller
	// stopping). Not the client's own cancellation, which it would not
	// retry.
	if s.Code() == codes.Canceled && ctx.Err() == nil {
		s = status.New(codes.Unavailable, "the connection to the agent was closed: "+s.Message())
	}
	if s.Code() == codes.Unavailable {
		// Said so that a client does not take it for its own connection
		// to the controller failing.
		if !reached {
			return status.Errorf(codes.Unavailable, "workspace %q: agent unreachable: %s", ws, s.Message())
		}
		return status.Errorf(codes.Unavailable, "workspace %q: lost the agent: %s", ws, s.Message())
	}
	return err
}
