package controller

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// rawFrame is one routed message, kept as the bytes grpc received: the
// router passes it from one stream to the other without decoding it or
// copying it (the agent enforces each method's real shape).
type rawFrame struct {
	data mem.BufferSlice
}

// free releases a frame that was received but not sent on.
func (f *rawFrame) free() {
	f.data.Free()
	f.data = nil
}

// Codec is the controller's codec, on its server and on the router's
// agent streams: the proto codec for every message but a *rawFrame,
// which it takes by reference on receipt and hands back on send.
// Forwarding 1 GiB of output through the proto codec (decode into
// unknown fields, encode again) cost two copies of every byte.
func Codec() encoding.CodecV2 { return codec{encoding.GetCodecV2(proto.Name)} }

type codec struct{ proto encoding.CodecV2 }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*rawFrame); ok {
		// grpc frees what Marshal returns once it is written: the frame's
		// reference goes with it.
		d := f.data
		f.data = nil
		return d, nil
	}
	return c.proto.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*rawFrame); ok {
		// grpc frees data after Unmarshal: keep a reference of our own.
		data.Ref()
		f.data = data
		return nil
	}
	return c.proto.Unmarshal(data, v)
}

func (codec) Name() string { return proto.Name }
