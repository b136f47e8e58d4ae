package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/dtmux/dtmux/agent/process"
	"github.com/dtmux/dtmux/internal/rpcserver"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// testAgent serves the runs of a fresh manager over bufconn.
type testAgent struct {
	client  agentv1.AgentServiceClient
	api     *Server
	workdir string
	logs    *lockedBuilder
}

func newTestAgent(t *testing.T, mod func(*process.Config)) *testAgent {
	t.Helper()
	logs := &lockedBuilder{}
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: logs})
	cfg := process.Config{
		StateDir:    t.TempDir(),
		Workspace:   "ws-unit",
		Workdir:     t.TempDir(),
		KillGrace:   200 * time.Millisecond,
		HangupGrace: 200 * time.Millisecond,
		DrainGrace:  200 * time.Millisecond,
		LimitHelper: []string{"/nonexistent/helper"},
		Logger:      log,
	}
	if mod != nil {
		mod(&cfg)
	}
	runs, err := process.NewManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := rpcserver.New(rpcserver.Config{Logger: log})
	api := New(Options{Logger: log, Runs: runs, Workspace: "ws-unit", Workdir: cfg.Workdir})
	agentv1.RegisterAgentServiceServer(srv.Server, api)
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
		if err := runs.Close(); err != nil {
			t.Error(err)
		}
		srv.GracefulStop(5 * time.Second)
		<-served
	})
	return &testAgent{client: agentv1.NewAgentServiceClient(cc), api: api, workdir: cfg.Workdir, logs: logs}
}

// lockedBuilder collects log lines written from many goroutines.
type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func startMsg(argv ...string) *agentv1.ExecRequest {
	return &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: argv}}}}
}

// execResult is what an Exec stream delivered.
type execResult struct {
	started        *agentv1.RunStarted
	stdout, stderr string
	trailer        *agentv1.RunTrailer
	err            error
}

// drain reads a stream to its end, checking that the trailer comes last.
func drain(t *testing.T, recv func() (*agentv1.ExecResponse, error)) execResult {
	t.Helper()
	var r execResult
	for {
		ev, err := recv()
		if errors.Is(err, io.EOF) {
			return r
		}
		if err != nil {
			r.err = err
			return r
		}
		if r.trailer != nil {
			t.Fatalf("event after the trailer: %v", ev)
		}
		if _, ok := ev.GetEvent().(*agentv1.ExecResponse_Started); !ok && r.started == nil {
			t.Fatalf("event before the started event: %v", ev)
		}
		switch e := ev.GetEvent().(type) {
		case *agentv1.ExecResponse_Started:
			r.started = e.Started
		case *agentv1.ExecResponse_Output:
			if e.Output.GetStream() == agentv1.Stream_STREAM_STDERR {
				r.stderr += string(e.Output.GetData())
			} else {
				r.stdout += string(e.Output.GetData())
			}
		case *agentv1.ExecResponse_Trailer:
			r.trailer = e.Trailer
		}
	}
}

func (a *testAgent) exec(t *testing.T, msgs ...*agentv1.ExecRequest) execResult {
	t.Helper()
	stream, err := a.client.Exec(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	return drain(t, stream.Recv)
}

func wantCode(t *testing.T, err error, code codes.Code, fragment string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), fragment) {
		t.Errorf("err = %v, want %v containing %q", err, code, fragment)
	}
}

func TestExecExitCodeAndStreams(t *testing.T) {
	a := newTestAgent(t, nil)
	r := a.exec(t, startMsg("sh", "-c", "echo out; echo err >&2; exit 3"))
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.started.GetRunId() == "" || r.started.GetPid() <= 0 {
		t.Errorf("started %v", r.started)
	}
	if r.stdout != "out\n" || r.stderr != "err\n" {
		t.Errorf("stdout %q stderr %q", r.stdout, r.stderr)
	}
	tr := r.trailer
	if tr.GetReason() != agentv1.ExitReason_EXIT_REASON_EXITED || tr.GetExitCode() != 3 || tr.GetStdoutBytes() != 4 || tr.GetStderrBytes() != 4 {
		t.Errorf("trailer %v", tr)
	}
}

// no_stdin gives the process /dev/null (as ssh -n): a command that reads
// stdin ends without any stdin message, and stdin messages are dropped.
func TestExecNoStdin(t *testing.T) {
	a := newTestAgent(t, nil)
	start := startMsg("sh", "-c", "readlink /proc/self/fd/0; cat; echo done")
	start.GetStart().NoStdin = true
	r := a.exec(t, start, &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Stdin{Stdin: []byte("dropped\n")}})
	if r.err != nil || r.trailer.GetExitCode() != 0 || r.stdout != "/dev/null\ndone\n" {
		t.Errorf("stdout %q trailer %v err %v; want /dev/null, then done", r.stdout, r.trailer, r.err)
	}
}

// The started event may wait a moment for the run's first event, never
// for a run that stays silent.
func TestExecStartedWhileSilent(t *testing.T) {
	a := newTestAgent(t, nil)
	stream, err := a.client.Exec(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(startMsg("sleep", "30")); err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil || ev.GetStarted() == nil || ev.GetStarted().GetPid() <= 0 {
		t.Fatalf("first event %v, %v; want started with a pid", ev, err)
	}
	if _, err := a.client.SignalRun(ctxT(t), &agentv1.SignalRunRequest{RunId: ev.GetStarted().GetRunId(), Signal: agentv1.Signal_SIGNAL_TERM}); err != nil {
		t.Fatal(err)
	}
	first := true
	r := drain(t, func() (*agentv1.ExecResponse, error) {
		if first {
			first = false
			return ev, nil
		}
		return stream.Recv()
	})
	if r.trailer == nil || r.trailer.GetReason() != agentv1.ExitReason_EXIT_REASON_SIGNALED {
		t.Errorf("trailer %v (err %v), want signaled", r.trailer, r.err)
	}
}

func TestExecBadRequests(t *testing.T) {
	a := newTestAgent(t, nil)
	start := func(c *agentv1.CommandSpec, mod func(*agentv1.ExecStart)) *agentv1.ExecRequest {
		s := &agentv1.ExecStart{Command: c}
		if mod != nil {
			mod(s)
		}
		return &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: s}}
	}
	tests := []struct {
		name     string
		msgs     []*agentv1.ExecRequest
		code     codes.Code
		fragment string
	}{
		{"stdin before start", []*agentv1.ExecRequest{{Msg: &agentv1.ExecRequest_Stdin{Stdin: []byte("x")}}}, codes.InvalidArgument, "first Exec message must be start"},
		{"no command", []*agentv1.ExecRequest{start(nil, nil)}, codes.InvalidArgument, "command is required"},
		{"empty argv", []*agentv1.ExecRequest{start(&agentv1.CommandSpec{}, nil)}, codes.InvalidArgument, "empty argv"},
		{"env key with =", []*agentv1.ExecRequest{start(&agentv1.CommandSpec{Argv: []string{"true"}, Env: map[string]string{"A=B": "1"}}, nil)}, codes.InvalidArgument, "env key"},
		{"NUL in argv", []*agentv1.ExecRequest{start(&agentv1.CommandSpec{Argv: []string{"echo", "\x00"}}, nil)}, codes.InvalidArgument, "NUL"},
		{"unknown program", []*agentv1.ExecRequest{start(&agentv1.CommandSpec{Argv: []string{"no-such-dtmux-program"}}, nil)}, codes.InvalidArgument, "program not found"},
		{"missing cwd", []*agentv1.ExecRequest{start(&agentv1.CommandSpec{Argv: []string{"true"}, Cwd: "/no/such/dir"}, nil)}, codes.InvalidArgument, "working directory"},
		{"bad run id", []*agentv1.ExecRequest{start(&agentv1.CommandSpec{Argv: []string{"true"}}, func(s *agentv1.ExecStart) { s.RunId = "../x" })}, codes.InvalidArgument, "run id"},
		{"negative timeout", []*agentv1.ExecRequest{start(&agentv1.CommandSpec{Argv: []string{"true"}}, func(s *agentv1.ExecStart) { s.Timeout = durationpb.New(-time.Second) })}, codes.InvalidArgument, "timeout"},
		{"cgroup limits", []*agentv1.ExecRequest{start(&agentv1.CommandSpec{Argv: []string{"true"}}, func(s *agentv1.ExecStart) { s.Limits = &agentv1.RunLimits{MemoryBytes: 1} })}, codes.InvalidArgument, "cgroups"},
		{"second start", []*agentv1.ExecRequest{startMsg("sleep", "1000"), startMsg("true")}, codes.InvalidArgument, "start may only be the first"},
		{"argument too long for the kernel", []*agentv1.ExecRequest{start(&agentv1.CommandSpec{Argv: []string{"true"}, Env: map[string]string{"BIG": strings.Repeat("x", 200<<10)}}, nil)}, codes.InvalidArgument, "too long"},
		{"unknown signal", []*agentv1.ExecRequest{startMsg("sleep", "1000"), {Msg: &agentv1.ExecRequest_Signal{Signal: &agentv1.ExecSignal{Signal: 77}}}}, codes.InvalidArgument, "signal 77"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := a.exec(t, tt.msgs...)
			wantCode(t, r.err, tt.code, tt.fragment)
		})
	}
	// The agent keeps serving.
	if r := a.exec(t, startMsg("true")); r.err != nil || r.trailer.GetExitCode() != 0 {
		t.Errorf("after bad requests: %v %v", r.err, r.trailer)
	}
}

func TestExecStdinSignalAndClientGone(t *testing.T) {
	a := newTestAgent(t, nil)
	t.Run("stdin", func(t *testing.T) {
		r := a.exec(t, startMsg("cat"),
			&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Stdin{Stdin: []byte("piped\n")}},
			&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_CloseStdin{CloseStdin: &agentv1.ExecStdinClose{}}})
		if r.err != nil || r.stdout != "piped\n" || r.trailer.GetExitCode() != 0 {
			t.Errorf("%v %q %v", r.err, r.stdout, r.trailer)
		}
	})
	t.Run("signal", func(t *testing.T) {
		r := a.exec(t, startMsg("sleep", "1000"),
			&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Signal{Signal: &agentv1.ExecSignal{Signal: agentv1.Signal_SIGNAL_INT}}})
		if r.err != nil || r.trailer.GetReason() != agentv1.ExitReason_EXIT_REASON_SIGNALED || r.trailer.GetSignal() != 2 || r.trailer.GetExitCode() != -1 {
			t.Errorf("%v %v", r.err, r.trailer)
		}
	})
	t.Run("client gone", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctxT(t))
		stream, err := a.client.Exec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(startMsg("sleep", "1000")); err != nil {
			t.Fatal(err)
		}
		ev, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		id := ev.GetStarted().GetRunId()
		cancel()
		run := a.waitFinished(t, id)
		if run.GetTrailer().GetReason() != agentv1.ExitReason_EXIT_REASON_KILLED || run.GetTrailer().GetSignal() != 1 {
			t.Errorf("attached run after its client left: %v", run.GetTrailer())
		}
	})
}

func (a *testAgent) waitFinished(t *testing.T, id string) *agentv1.RunInfo {
	t.Helper()
	for range 1000 {
		resp, err := a.client.GetRun(ctxT(t), &agentv1.GetRunRequest{RunId: id})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetRun().GetState() == agentv1.RunState_RUN_STATE_FINISHED {
			return resp.GetRun()
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("run %s never finished", id)
	return nil
}

func TestDetachedRunAttachAndSameID(t *testing.T) {
	a := newTestAgent(t, nil)
	st := &agentv1.ExecStart{
		Command: &agentv1.CommandSpec{Argv: []string{"sh", "-c", "seq 1 1000; read x; echo end"}},
		RunId:   "job-1",
		Detach:  true,
		Labels:  map[string]string{"team": "web"},
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	stream, err := a.client.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: st}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	// This stream stays until the end: when the last Exec stream goes,
	// stdin is closed (TestDetachedRunStdinClosedWhenClientsGone).
	defer cancel()

	// Not following: what is spooled, no trailer while it runs.
	for {
		info, err := a.client.GetRun(ctxT(t), &agentv1.GetRunRequest{RunId: "job-1"})
		if err != nil {
			t.Fatal(err)
		}
		if info.GetRun().GetStdoutBytes() == 3893 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	att, err := a.client.AttachRun(ctxT(t), &agentv1.AttachRunRequest{RunId: "job-1", StdoutOffset: 3888})
	if err != nil {
		t.Fatal(err)
	}
	r := drain(t, func() (*agentv1.ExecResponse, error) { return attachAsExec(att.Recv()) })
	if r.err != nil || r.stdout != "1000\n" || r.trailer != nil || r.started.GetRunId() != "job-1" {
		t.Errorf("no-follow attach: %v %q %v", r.err, r.stdout, r.trailer)
	}

	// Starting the same id again attaches and feeds the same process.
	st.StdoutOffset = 3888
	r = a.exec(t, &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: st}},
		&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Stdin{Stdin: []byte("go\n")}})
	if r.err != nil || !r.started.GetAttachedExisting() || r.stdout != "1000\nend\n" || r.trailer.GetExitCode() != 0 {
		t.Errorf("re-exec of the same id: %v %v %q %v", r.err, r.started, r.stdout, r.trailer)
	}

	list, err := a.client.ListRuns(ctxT(t), &agentv1.ListRunsRequest{Labels: map[string]string{"team": "web"}})
	if err != nil || len(list.GetRuns()) != 1 || list.GetRuns()[0].GetRunId() != "job-1" || !list.GetRuns()[0].GetDetached() {
		t.Errorf("list by label: %v %v", err, list)
	}
	list, err = a.client.ListRuns(ctxT(t), &agentv1.ListRunsRequest{Labels: map[string]string{"team": "db"}})
	if err != nil || len(list.GetRuns()) != 0 {
		t.Errorf("list by other label: %v %v", err, list)
	}
}

// TestDetachedRunStdinClosedWhenClientsGone: a detached run keeps going
// after its client, but with stdin at end-of-file, since nobody can write
// it any more: `echo hi | dtmux exec -d WS -- cat` ends.
func TestDetachedRunStdinClosedWhenClientsGone(t *testing.T) {
	a := newTestAgent(t, nil)
	ctx, cancel := context.WithCancel(ctxT(t))
	stream, err := a.client.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st := &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"cat"}}, RunId: "cat-1", Detach: true}
	for _, m := range []*agentv1.ExecRequest{{Msg: &agentv1.ExecRequest_Start{Start: st}}, {Msg: &agentv1.ExecRequest_Stdin{Stdin: []byte("hi\n")}}} {
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if string(ev.GetOutput().GetData()) == "hi\n" {
			break
		}
	}
	cancel() // without close_stdin
	run := a.waitFinished(t, "cat-1")
	if tr := run.GetTrailer(); tr.GetReason() != agentv1.ExitReason_EXIT_REASON_EXITED || tr.GetExitCode() != 0 || tr.GetStdoutBytes() != 3 {
		t.Errorf("detached cat after its client left: %v", tr)
	}
}

func attachAsExec(ev *agentv1.AttachRunResponse, err error) (*agentv1.ExecResponse, error) {
	if err != nil {
		return nil, err
	}
	switch e := ev.GetEvent().(type) {
	case *agentv1.AttachRunResponse_Started:
		return &agentv1.ExecResponse{Event: &agentv1.ExecResponse_Started{Started: e.Started}}, nil
	case *agentv1.AttachRunResponse_Output:
		return &agentv1.ExecResponse{Event: &agentv1.ExecResponse_Output{Output: e.Output}}, nil
	case *agentv1.AttachRunResponse_Gap:
		return &agentv1.ExecResponse{Event: &agentv1.ExecResponse_Gap{Gap: e.Gap}}, nil
	default:
		return &agentv1.ExecResponse{Event: &agentv1.ExecResponse_Trailer{Trailer: ev.GetTrailer()}}, nil
	}
}

func TestRunQueriesErrors(t *testing.T) {
	a := newTestAgent(t, func(c *process.Config) { c.MaxRuns = 1 })
	ctx := ctxT(t)
	_, err := a.client.GetRun(ctx, &agentv1.GetRunRequest{RunId: "nope"})
	wantCode(t, err, codes.NotFound, "run not found")
	_, err = a.client.SignalRun(ctx, &agentv1.SignalRunRequest{RunId: "nope", Signal: agentv1.Signal_SIGNAL_TERM})
	wantCode(t, err, codes.NotFound, "nope")
	_, err = a.client.SignalRun(ctx, &agentv1.SignalRunRequest{RunId: "nope"})
	wantCode(t, err, codes.InvalidArgument, "signal")
	_, err = a.client.SignalRun(ctx, &agentv1.SignalRunRequest{RunId: "nope", Signal: agentv1.Signal_SIGNAL_KILL, Reason: strings.Repeat("x", 201)})
	wantCode(t, err, codes.InvalidArgument, "signal reason")
	att, err := a.client.AttachRun(ctx, &agentv1.AttachRunRequest{RunId: "nope"})
	if err == nil {
		_, err = att.Recv()
	}
	wantCode(t, err, codes.NotFound, "run not found")

	// The cap on concurrent runs.
	stream, err := a.client.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st := &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"sleep", "1000"}}, RunId: "long", Detach: true}
	if err := stream.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: st}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	r := a.exec(t, startMsg("true"))
	wantCode(t, r.err, codes.ResourceExhausted, "max-runs")
	if _, err := a.client.SignalRun(ctx, &agentv1.SignalRunRequest{RunId: "long", Signal: agentv1.Signal_SIGNAL_KILL, Reason: "workspace stopped"}); err != nil {
		t.Fatal(err)
	}
	if run := a.waitFinished(t, "long"); run.GetTrailer().GetReason() != agentv1.ExitReason_EXIT_REASON_KILLED || run.GetTrailer().GetDetail() != "workspace stopped" {
		t.Errorf("killed run: %v", run.GetTrailer())
	}
	_, err = a.client.SignalRun(ctx, &agentv1.SignalRunRequest{RunId: "long", Signal: agentv1.Signal_SIGNAL_TERM})
	wantCode(t, err, codes.FailedPrecondition, "finished")
}

func TestSecretsNeverListed(t *testing.T) {
	const secret = "hunter2-secret-value"
	a := newTestAgent(t, nil)
	st := &agentv1.ExecStart{Command: &agentv1.CommandSpec{
		Argv:      []string{"sh", "-c", `printf %s "$PW" | sha256sum`},
		SecretEnv: map[string]string{"PW": secret},
		Env:       map[string]string{"PLAIN": "visible"},
	}, RunId: "sec"}
	r := a.exec(t, &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: st}})
	sum := sha256.Sum256([]byte(secret))
	if r.err != nil || !strings.HasPrefix(r.stdout, hex.EncodeToString(sum[:])) {
		t.Fatalf("the process did not get the secret: %v %q", r.err, r.stdout)
	}
	list, err := a.client.ListRuns(ctxT(t), &agentv1.ListRunsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := a.client.GetRun(ctxT(t), &agentv1.GetRunRequest{RunId: "sec"})
	for _, b := range []string{protojson.Format(list), protojson.Format(got), a.logs.String()} {
		if strings.Contains(b, secret) {
			t.Errorf("secret leaked: %s", b)
		}
	}
	if keys := got.GetRun().GetSecretEnvKeys(); len(keys) != 1 || keys[0] != "PW" || got.GetRun().GetEnv()["PLAIN"] != "visible" {
		t.Errorf("run info %v", got.GetRun())
	}
}

func TestPutFile(t *testing.T) {
	a := newTestAgent(t, nil)
	data := []byte(strings.Repeat("#!/bin/sh\necho hi\n", 1000))
	sum := sha256.Sum256(data)
	put := func(h *agentv1.PutFileHeader, chunks ...[]byte) (*agentv1.PutFileResponse, error) {
		stream, err := a.client.PutFile(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if h != nil {
			if err := stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Header{Header: h}}); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range chunks {
			if err := stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Data{Data: c}}); err != nil {
				t.Fatal(err)
			}
		}
		return stream.CloseAndRecv()
	}
	resp, err := put(&agentv1.PutFileHeader{Path: "bin/ci.sh", Mode: 0o755, Size: uint64(len(data)), Sha256: hex.EncodeToString(sum[:])}, data[:100], data[100:])
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(a.workdir, "bin", "ci.sh")
	if resp.GetPath() != want || resp.GetSize() != uint64(len(data)) || resp.GetSha256() != hex.EncodeToString(sum[:]) {
		t.Errorf("response %v", resp)
	}
	if fi, err := os.Stat(want); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("stat %v %v", fi, err)
	}

	bad := filepath.Join(a.workdir, "bad")
	_, err = put(&agentv1.PutFileHeader{Path: bad, Sha256: strings.Repeat("0", 64)}, data)
	wantCode(t, err, codes.FailedPrecondition, "sha256")
	_, err = put(&agentv1.PutFileHeader{Path: bad, Size: 5}, data)
	wantCode(t, err, codes.FailedPrecondition, "announced")
	_, err = put(nil, data)
	wantCode(t, err, codes.InvalidArgument, "header")
	_, err = put(&agentv1.PutFileHeader{Path: bad, Mode: 0o1000000})
	wantCode(t, err, codes.InvalidArgument, "mode")
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Errorf("failed upload left a file: %v", err)
	}
	entries, _ := os.ReadDir(a.workdir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".dtmux-put-") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
}

func TestGetAgentInfo(t *testing.T) {
	a := newTestAgent(t, nil)
	info, err := a.client.GetAgentInfo(ctxT(t), &agentv1.GetAgentInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetWorkspace() != "ws-unit" || info.GetPid() != int32(os.Getpid()) || info.GetVersion() == "" || info.GetOs() == "" || len(info.GetIsolation()) == 0 {
		t.Errorf("info %v", info)
	}
}

// TestShutdownEndsFollowers: a stopping agent ends the streams that follow
// a detached run (and sessions) at once, with Unavailable, rather than
// wait out its graceful stop; the run itself goes on.
func TestShutdownEndsFollowers(t *testing.T) {
	a := newTestAgent(t, nil)
	ctx := ctxT(t)
	stream, err := a.client.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st := &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"sleep", "1000"}}, RunId: "bg", Detach: true}
	if err := stream.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: st}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	att, err := a.client.AttachRun(ctx, &agentv1.AttachRunRequest{RunId: "bg", Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := att.Recv(); err != nil { // started
		t.Fatal(err)
	}
	a.api.Shutdown()
	for _, recv := range []func() error{
		func() error { _, err := att.Recv(); return err },
		func() error { _, err := stream.Recv(); return err },
	} {
		wantCode(t, recv(), codes.Unavailable, "shutting down")
	}
	if run, err := a.client.GetRun(ctx, &agentv1.GetRunRequest{RunId: "bg"}); err != nil || run.GetRun().GetState() != agentv1.RunState_RUN_STATE_RUNNING {
		t.Errorf("the detached run after the followers ended: %v %v", run, err)
	}
	if _, err := a.client.SignalRun(ctx, &agentv1.SignalRunRequest{RunId: "bg", Signal: agentv1.Signal_SIGNAL_KILL}); err != nil {
		t.Fatal(err)
	}
}
