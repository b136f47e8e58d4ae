package agent

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/dtmux/dtmux/agent/process"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// TestExecOwnerIsLossless: an Exec client that reads slowly gets every
// byte of an output several spools long, without a gap; an AttachRun
// viewer that reads nothing meanwhile gets a gap and holds nothing back.
func TestExecOwnerIsLossless(t *testing.T) {
	a := newTestAgent(t, func(c *process.Config) { c.SpoolLimit = 256 << 10 })
	const n = 3<<20 + 777
	const line = "abcdefghijklmnopqrstuvwxyz0123456789"
	start := startMsg("sh", "-c", fmt.Sprintf("yes %s | head -c %d", line, n))
	start.GetStart().RunId = "owned"
	stream, err := a.client.Exec(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(start); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil { // started
		t.Fatal(err)
	}
	viewer, err := a.client.AttachRun(ctxT(t), &agentv1.AttachRunRequest{RunId: "owned", Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := viewer.Recv(); err != nil { // started
		t.Fatal(err)
	}

	h := sha256.New()
	var got uint64
	var trailer *agentv1.RunTrailer
	for i := 0; trailer == nil; i++ {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("after %d bytes: %v", got, err)
		}
		switch e := ev.GetEvent().(type) {
		case *agentv1.ExecResponse_Gap:
			t.Fatalf("the owning Exec got a gap %v", e.Gap)
		case *agentv1.ExecResponse_Output:
			if e.Output.GetOffset() != got {
				t.Fatalf("output at %d, want %d", e.Output.GetOffset(), got)
			}
			h.Write(e.Output.GetData())
			got += uint64(len(e.Output.GetData()))
		case *agentv1.ExecResponse_Trailer:
			trailer = e.Trailer
		}
		if i%8 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	want := sha256.Sum256(bytes.Repeat([]byte(line+"\n"), n/(len(line)+1)+1)[:n])
	if got != n || !bytes.Equal(h.Sum(nil), want[:]) || trailer.GetStdoutBytes() != n {
		t.Errorf("owner got %d of %d bytes (checksum match %v), trailer %v", got, n, bytes.Equal(h.Sum(nil), want[:]), trailer)
	}

	// The viewer read only what gRPC buffered before the owner went on.
	var seen, gaps uint64
	for {
		ev, err := viewer.Recv()
		if err != nil {
			t.Fatalf("viewer: %v", err)
		}
		if g := ev.GetGap(); g != nil {
			gaps += g.GetBytes()
			seen += g.GetBytes()
		}
		seen += uint64(len(ev.GetOutput().GetData()))
		if ev.GetTrailer() != nil {
			break
		}
	}
	if gaps == 0 || seen != n {
		t.Errorf("viewer: %d bytes in gaps, %d accounted for; want a gap and %d", gaps, seen, n)
	}
}

// TestExecCgroupLimitsWithoutCgroups: a manager without cgroups refuses
// cgroup limits with a clear InvalidArgument.
func TestExecCgroupLimitsWithoutCgroups(t *testing.T) {
	a := newTestAgent(t, nil)
	start := startMsg("true")
	start.GetStart().Limits = &agentv1.RunLimits{Pids: 10}
	r := a.exec(t, start)
	wantCode(t, r.err, codes.InvalidArgument, "cgroups")
	if strings.Contains(fmt.Sprint(r.err), "internal") {
		t.Errorf("err %v", r.err)
	}
}
