package transport

import (
	"time"

	"google.golang.org/grpc"
)

// Flow-control windows and I/O buffers of every dtmux connection, client
// and server alike, so that each hop (CLI → controller → agent) moves bulk
// output at the same pace.
//
// grpc-go starts streams at a 64 KiB window and grows it by estimating the
// bandwidth-delay product; on a unix socket or loopback the round trip is
// so short that the estimate stays small and a 512 KiB output event waits
// for several window updates. A static window (which turns the estimator
// off) lets a whole event and the next be in flight. Windows cost no
// memory by themselves: they only permit data in flight.
const (
	// StreamWindowBytes is the initial window of each stream.
	StreamWindowBytes = 8 << 20
	// ConnWindowBytes is the initial window of each connection, shared by
	// its streams.
	ConnWindowBytes = 16 << 20
	// WriteBufferBytes is the buffer grpc fills before a write syscall.
	// Shared write buffers (WithSharedWriteBuffer) return it to a pool
	// between writes, so idle connections (a controller's pool of a
	// thousand agents) hold none.
	WriteBufferBytes = 256 << 10
	// ReadBufferBytes is each connection's read buffer, held for the
	// connection's life; kept at a size a thousand connections can afford.
	ReadBufferBytes = 64 << 10
	// ClientReadBytes is the read buffer of a client's single connection
	// (Dial): a read syscall per 1 MiB of bulk output rather than per
	// 64 KiB.
	ClientReadBytes = 1 << 20
)

// ClientTuning returns the dial options that apply the windows and
// buffers above; DialOptions includes them.
func ClientTuning() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInitialWindowSize(StreamWindowBytes),
		grpc.WithInitialConnWindowSize(ConnWindowBytes),
		grpc.WithWriteBufferSize(WriteBufferBytes),
		grpc.WithReadBufferSize(ReadBufferBytes),
		grpc.WithSharedWriteBuffer(true),
	}
}

// handshakeTimeout bounds a new connection's handshake (TLS, then HTTP/2's
// preface and settings) on a server: clients send them as soon as they
// connect, over an ssh hop too (the agent is installed and the hop is up
// before its pump hands the connection over).
const handshakeTimeout = 15 * time.Second

// ServerTuning returns the server options that apply the windows and
// buffers above; rpcserver.New includes them.
func ServerTuning() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InitialWindowSize(StreamWindowBytes),
		grpc.InitialConnWindowSize(ConnWindowBytes),
		grpc.WriteBufferSize(WriteBufferBytes),
		grpc.ReadBufferSize(ReadBufferBytes),
		grpc.SharedWriteBuffer(true),
		// A client that connects and never speaks holds a server's
		// forced stop until its handshake times out (grpc's default:
		// 120s).
		grpc.ConnectionTimeout(handshakeTimeout),
	}
}
