package controller

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// A routed message leaves the codec as the bytes it came in as, even
// after grpc released its own reference; typed messages still go through
// the proto codec.
func TestCodecForwardsRawFrames(t *testing.T) {
	c := Codec()
	msg := &agentv1.ExecResponse{Event: &agentv1.ExecResponse_Output{Output: &agentv1.RunOutput{Offset: 7, Data: bytes.Repeat([]byte("x"), 100<<10)}}}
	wire, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(len(wire))
	copy(*buf, wire)
	in := mem.BufferSlice{mem.NewBuffer(buf, pool)}

	f := new(rawFrame)
	if err := c.Unmarshal(in, f); err != nil {
		t.Fatal(err)
	}
	in.Free() // what grpc does once Unmarshal returns
	out, err := c.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	if got := out.Materialize(); !bytes.Equal(got, wire) {
		t.Fatalf("forwarded %d bytes, want the %d received", len(got), len(wire))
	}
	out.Free()
	if f.data != nil {
		t.Error("the frame kept a reference after handing it to grpc")
	}

	typed, err := c.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	var back agentv1.ExecResponse
	if err := c.Unmarshal(typed, &back); err != nil || !proto.Equal(&back, msg) {
		t.Fatalf("typed round trip: %v", err)
	}
}
