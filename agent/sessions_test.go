package agent

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/dtmux/dtmux/agent/tmux"
	"github.com/dtmux/dtmux/internal/errinfo"
	"github.com/dtmux/dtmux/internal/rpcserver"
	"github.com/dtmux/dtmux/internal/testbin"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// newSessionAgent serves the session RPCs of a fresh private tmux server
// over bufconn; the server is killed when the test ends.
func newSessionAgent(t *testing.T, bin string) agentv1.AgentServiceClient {
	t.Helper()
	testbin.RequireTool(t, "tmux")
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr})
	m := tmux.New(tmux.Config{StateDir: dir, Bin: bin, WorkDir: t.TempDir(), Logger: log})
	_ = m.Start(context.Background())
	srv := rpcserver.New(rpcserver.Config{Logger: log})
	agentv1.RegisterAgentServiceServer(srv.Server, New(Options{Logger: log, Tmux: m}))
	srv.MarkServing()
	lis := bufconn.Listen(1 << 20)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	cc, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cc.Close()
		srv.GracefulStop(5 * time.Second)
		<-served
		m.KillServer()
		os.RemoveAll(dir)
	})
	return agentv1.NewAgentServiceClient(cc)
}

func wantSessionCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("got %v, want %v", err, code)
	}
}

func TestSessionRPCErrors(t *testing.T) {
	c := newSessionAgent(t, "")
	ctx := ctxT(t)
	_, err := c.CreateSession(ctx, &agentv1.CreateSessionRequest{Name: "bad name"})
	wantSessionCode(t, err, codes.InvalidArgument)
	_, err = c.CreateSession(ctx, &agentv1.CreateSessionRequest{Name: "s1", Command: &agentv1.CommandSpec{Argv: []string{"sleep", "600"}}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.CreateSession(ctx, &agentv1.CreateSessionRequest{Name: "s1"})
	wantSessionCode(t, err, codes.AlreadyExists)
	_, err = c.KillSession(ctx, &agentv1.KillSessionRequest{Name: "nope"})
	wantSessionCode(t, err, codes.NotFound)
	_, err = c.SendInput(ctx, &agentv1.SendInputRequest{Target: &agentv1.PaneTarget{Session: "nope"}, Text: "x"})
	wantSessionCode(t, err, codes.NotFound)
	_, err = c.CapturePane(ctx, &agentv1.CapturePaneRequest{Target: &agentv1.PaneTarget{Session: "s1", Window: "nope"}})
	wantSessionCode(t, err, codes.NotFound)
	_, err = c.ListSessions(ctx, &agentv1.ListSessionsRequest{Name: "nope"})
	wantSessionCode(t, err, codes.NotFound)
	list, err := c.ListSessions(ctx, &agentv1.ListSessionsRequest{})
	if err != nil || len(list.Sessions) != 1 || list.Sessions[0].Name != "s1" || list.Sessions[0].Size.GetCols() != 200 {
		t.Fatalf("list: %v %v", list, err)
	}
	_, err = c.RestartService(ctx, &agentv1.RestartServiceRequest{Session: "s1", Name: "nope"})
	wantSessionCode(t, err, codes.NotFound)
}

func TestSessionsUnavailableWithoutTmux(t *testing.T) {
	c := newSessionAgent(t, "/nonexistent/tmux")
	_, err := c.ListSessions(ctxT(t), &agentv1.ListSessionsRequest{})
	wantSessionCode(t, err, codes.FailedPrecondition)
	if err != nil && !strings.Contains(err.Error(), "3.2 or later") {
		t.Errorf("message: %v", err)
	}
	info, err := c.GetAgentInfo(ctxT(t), &agentv1.GetAgentInfoRequest{})
	if err != nil || info.TmuxError == "" {
		t.Errorf("info: %v %v", info, err)
	}
}

func runSession(t *testing.T, c agentv1.AgentServiceClient, req *agentv1.RunInSessionRequest) ([]byte, *agentv1.RunTrailer) {
	t.Helper()
	st, err := c.RunInSession(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	for {
		ev, err := st.Recv()
		if err != nil {
			t.Fatalf("recv: %v (output %q)", err, out.Bytes())
		}
		switch e := ev.Event.(type) {
		case *agentv1.RunInSessionResponse_Output:
			if e.Output.Offset != uint64(out.Len()) {
				t.Fatalf("offset %d, have %d", e.Output.Offset, out.Len())
			}
			out.Write(e.Output.Data)
		case *agentv1.RunInSessionResponse_Trailer:
			if _, err := st.Recv(); err != io.EOF {
				t.Errorf("after trailer: %v", err)
			}
			return out.Bytes(), e.Trailer
		}
	}
}

func TestRunInSessionRPC(t *testing.T) {
	c := newSessionAgent(t, "")
	for _, tc := range []struct {
		argv   []string
		reason agentv1.ExitReason
		code   int32
		signal int32
	}{
		{[]string{"true"}, agentv1.ExitReason_EXIT_REASON_EXITED, 0, 0},
		{[]string{"sh", "-c", "echo out; exit 3"}, agentv1.ExitReason_EXIT_REASON_EXITED, 3, 0},
		{[]string{"sh", "-c", "kill -TERM $$"}, agentv1.ExitReason_EXIT_REASON_SIGNALED, -1, 15},
	} {
		out, tr := runSession(t, c, &agentv1.RunInSessionRequest{Session: "r", CreateSession: true, CloseWindow: true,
			Command: &agentv1.CommandSpec{Argv: tc.argv}})
		if tr.Reason != tc.reason || tr.ExitCode != tc.code || tr.Signal != tc.signal || tr.StdoutBytes != uint64(len(out)) {
			t.Errorf("%v: trailer %v", tc.argv, tr)
		}
	}
	_, tr := runSession(t, c, &agentv1.RunInSessionRequest{Session: "r", Command: &agentv1.CommandSpec{Argv: []string{"sleep", "60"}},
		Timeout: durationpbNew(100 * time.Millisecond)})
	if tr.Reason != agentv1.ExitReason_EXIT_REASON_TIMED_OUT {
		t.Errorf("timeout trailer %v", tr)
	}
}

// Text typed through SendInput reaches a Follow stream exactly, after a
// snapshot, with offsets that continue without a gap.
func TestSendInputAndFollowRPC(t *testing.T) {
	c := newSessionAgent(t, "")
	ctx := ctxT(t)
	if _, err := c.CreateSession(ctx, &agentv1.CreateSessionRequest{Name: "f", Command: &agentv1.CommandSpec{Argv: []string{"sh", "-c", "stty raw -echo; echo ready; exec cat"}}}); err != nil {
		t.Fatal(err)
	}
	fs, err := c.FollowSession(ctx, &agentv1.FollowSessionRequest{Target: &agentv1.PaneTarget{Session: "f"}, Snapshot: true})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := fs.Recv()
	if err != nil || ev.GetSnapshot() == nil {
		t.Fatalf("first event %v %v", ev, err)
	}
	next := ev.GetSnapshot().Offset
	// Type only once the pane is raw and silent: text typed before `stty
	// raw -echo` ran would be echoed by the terminal as well.
	var got bytes.Buffer
	got.Write(ev.GetSnapshot().Content)
	for !bytes.Contains(got.Bytes(), []byte("ready")) {
		ev, err := fs.Recv()
		if err != nil {
			t.Fatalf("recv before ready: %v; got %q", err, got.Bytes())
		}
		if o := ev.GetOutput(); o != nil {
			if o.Offset != next {
				t.Fatalf("offset %d, want %d", o.Offset, next)
			}
			next += uint64(len(o.Data))
			got.Write(o.Data)
		}
	}
	got.Reset()
	text := "a;b 'q' \"dq\" $(echo X) `echo Y` $HOME ~ #c\ttab é☃ trailing;"
	if _, err := c.SendInput(ctx, &agentv1.SendInputRequest{Target: &agentv1.PaneTarget{Session: "f"}, Text: text}); err != nil {
		t.Fatal(err)
	}
	for !bytes.Contains(got.Bytes(), []byte(text)) {
		ev, err := fs.Recv()
		if err != nil {
			t.Fatalf("recv: %v; got %q", err, got.Bytes())
		}
		o := ev.GetOutput()
		if o == nil {
			t.Fatalf("event %v", ev)
		}
		if o.Offset != next {
			t.Fatalf("offset %d, want %d", o.Offset, next)
		}
		next += uint64(len(o.Data))
		got.Write(o.Data)
	}
	if s := strings.TrimLeft(got.String(), "\r\n"); s != text {
		t.Errorf("got %q", s)
	}
}

// Attach through a PTY: keys typed reach the session, the screen comes
// back, and leaving the stream detaches without ending the session.
func TestAttachSessionRPC(t *testing.T) {
	c := newSessionAgent(t, "")
	ctx := ctxT(t)
	if _, err := c.CreateSession(ctx, &agentv1.CreateSessionRequest{Name: "att", Command: &agentv1.CommandSpec{Argv: []string{"sh"}}}); err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	st, err := c.AttachSession(actx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&agentv1.AttachSessionRequest{Msg: &agentv1.AttachSessionRequest_Start{Start: &agentv1.AttachSessionStart{
		Session: "att", Size: &agentv1.TerminalSize{Rows: 30, Cols: 100}}}}); err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&agentv1.AttachSessionRequest{Msg: &agentv1.AttachSessionRequest_Input{Input: []byte("echo $((6*7))x\r")}}); err != nil {
		t.Fatal(err)
	}
	var screen bytes.Buffer
	for !bytes.Contains(screen.Bytes(), []byte("42x")) {
		ev, err := st.Recv()
		if err != nil {
			t.Fatalf("recv: %v; screen %q", err, screen.Bytes())
		}
		screen.Write(ev.GetOutput())
	}
	cancel()
	// The session survives the client.
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := c.ListSessions(ctx, &agentv1.ListSessionsRequest{Name: "att"})
		if err != nil {
			t.Fatal(err)
		}
		if list.Sessions[0].AttachedClients == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still attached: %v", list)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cp, err := c.CapturePane(ctx, &agentv1.CapturePaneRequest{Target: &agentv1.PaneTarget{Session: "att"}})
	if err != nil || !bytes.Contains(cp.Content, []byte("42x")) {
		t.Errorf("capture after detach: %q %v", cp.GetContent(), err)
	}
}

func TestServicesRPC(t *testing.T) {
	c := newSessionAgent(t, "")
	ctx := ctxT(t)
	req := &agentv1.ApplyServicesRequest{Services: []*agentv1.ServiceSpec{{Name: "web", Command: &agentv1.CommandSpec{Argv: []string{"sleep", "600"}}}}}
	r1, err := c.ApplyServices(ctx, req)
	if err != nil || r1.Services[0].Action != "started" || r1.Services[0].State != agentv1.ServiceState_SERVICE_STATE_RUNNING {
		t.Fatalf("apply: %v %v", r1, err)
	}
	r2, err := c.ApplyServices(ctx, req)
	if err != nil || r2.Services[0].Action != "unchanged" || r2.Services[0].Pid != r1.Services[0].Pid {
		t.Fatalf("apply again: %v %v", r2, err)
	}
	if _, err := c.StopServices(ctx, &agentv1.StopServicesRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StopServices(ctx, &agentv1.StopServicesRequest{}); err != nil {
		t.Fatalf("stop twice: %v", err)
	}
}

func durationpbNew(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// Input to a dead pane is FailedPrecondition with the PANE_DEAD reason.
func TestSendInputDeadPaneRPC(t *testing.T) {
	c := newSessionAgent(t, "")
	ctx := ctxT(t)
	if _, err := c.CreateSession(ctx, &agentv1.CreateSessionRequest{Name: "d", Command: &agentv1.CommandSpec{Argv: []string{"sh", "-c", "exit 7"}}}); err != nil {
		t.Fatal(err)
	}
	var pane *agentv1.PaneInfo
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		r, err := c.ListSessions(ctx, &agentv1.ListSessionsRequest{Name: "d"})
		if err != nil {
			t.Fatal(err)
		}
		if pane = r.Sessions[0].Windows[0].Panes[0]; pane.Dead && pane.ExitCode == 7 {
			break
		}
	}
	_, err := c.SendInput(ctx, &agentv1.SendInputRequest{Target: &agentv1.PaneTarget{Session: "d"}, Text: "lost"})
	want := "pane " + pane.GetId() + " of session d is dead (exit status 7): nothing was sent"
	if status.Code(err) != codes.FailedPrecondition || status.Convert(err).Message() != want || errinfo.Reason(err) != errinfo.PaneDead {
		t.Errorf("send to a dead pane: %v (reason %q), want FailedPrecondition %q with reason %s", err, errinfo.Reason(err), want, errinfo.PaneDead)
	}
}
