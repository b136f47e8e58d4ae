package fleet

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// testAgent is a small AgentService for the engine's tests: it runs real
// processes, spools their output in memory, makes run ids idempotent and
// serves Exec, AttachRun, GetRun, ListRuns and SignalRun over a real unix
// socket. It stands in for the agent package, which the engine must not
// import.
type testAgent struct {
	agentv1.UnimplementedAgentServiceServer
	name string

	// dropAfterStart makes that many Exec streams fail with Unavailable
	// right after starting the command (before RunStarted reaches the
	// client), as a connection lost at the worst moment.
	dropAfterStart atomic.Int32
	// dropAfterOutput makes that many Exec streams fail with Unavailable
	// after the first output event.
	dropAfterOutput atomic.Int32
	// starts counts commands actually started.
	starts atomic.Int32

	mu   sync.Mutex
	runs map[string]*testRun // guarded by mu
}

type testRun struct {
	id      string
	argv    []string
	labels  map[string]string
	started time.Time
	pid     int

	mu      sync.Mutex
	cond    *sync.Cond
	out     [3][]byte           // by agentv1.Stream; guarded by mu
	trailer *agentv1.RunTrailer // guarded by mu
	killed  bool                // guarded by mu
}

type streamWriter struct {
	r *testRun
	s agentv1.Stream
}

func (w streamWriter) Write(b []byte) (int, error) {
	w.r.mu.Lock()
	w.r.out[w.s] = append(w.r.out[w.s], b...)
	w.r.cond.Broadcast()
	w.r.mu.Unlock()
	return len(b), nil
}

func (a *testAgent) startRun(st *agentv1.ExecStart) (*testRun, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r, ok := a.runs[st.GetRunId()]; ok && st.GetRunId() != "" {
		return r, true, nil
	}
	argv := st.GetCommand().GetArgv()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "DTMUX_WORKSPACE="+a.name, "DTMUX_RUN_ID="+st.GetRunId())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r := &testRun{id: st.GetRunId(), argv: argv, labels: st.GetLabels(), started: time.Now()}
	r.cond = sync.NewCond(&r.mu)
	cmd.Stdout = streamWriter{r, agentv1.Stream_STREAM_STDOUT}
	cmd.Stderr = streamWriter{r, agentv1.Stream_STREAM_STDERR}
	if err := cmd.Start(); err != nil {
		return nil, false, status.Error(codes.NotFound, err.Error())
	}
	a.starts.Add(1)
	r.pid = cmd.Process.Pid
	if a.runs == nil {
		a.runs = map[string]*testRun{}
	}
	a.runs[r.id] = r
	go func() {
		err := cmd.Wait()
		tr := &agentv1.RunTrailer{ExitCode: -1, Duration: durationpb.New(time.Since(r.started)), EndedAt: timestamppb.Now()}
		var ee *exec.ExitError
		switch {
		case err == nil:
			tr.Reason, tr.ExitCode = agentv1.ExitReason_EXIT_REASON_EXITED, 0
		case errors.As(err, &ee) && ee.ExitCode() >= 0:
			tr.Reason, tr.ExitCode = agentv1.ExitReason_EXIT_REASON_EXITED, int32(ee.ExitCode())
		case errors.As(err, &ee):
			tr.Reason = agentv1.ExitReason_EXIT_REASON_SIGNALED
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok {
				tr.Signal = int32(ws.Signal())
			}
		}
		r.mu.Lock()
		if r.killed {
			tr.Reason = agentv1.ExitReason_EXIT_REASON_KILLED
		}
		tr.StdoutBytes, tr.StderrBytes = uint64(len(r.out[1])), uint64(len(r.out[2]))
		r.trailer = tr
		r.cond.Broadcast()
		r.mu.Unlock()
	}()
	return r, false, nil
}

// stream sends output from the offsets, then the trailer (or, without
// follow, returns when the spool is drained). afterFirst runs after the
// first output event and may end the stream.
func (r *testRun) stream(ctx context.Context, off [3]uint64, follow bool, send func(*agentv1.ExecResponse) error, afterFirst func() error) error {
	stop := context.AfterFunc(ctx, func() { r.mu.Lock(); r.cond.Broadcast(); r.mu.Unlock() })
	defer stop()
	first := true
	for {
		r.mu.Lock()
		for ctx.Err() == nil && r.trailer == nil && follow && uint64(len(r.out[1])) <= off[1] && uint64(len(r.out[2])) <= off[2] {
			r.cond.Wait()
		}
		if err := ctx.Err(); err != nil {
			r.mu.Unlock()
			return err
		}
		var evs []*agentv1.ExecResponse
		for s := agentv1.Stream_STREAM_STDOUT; s <= agentv1.Stream_STREAM_STDERR; s++ {
			if n := uint64(len(r.out[s])); n > off[s] {
				data := append([]byte(nil), r.out[s][off[s]:]...)
				evs = append(evs, &agentv1.ExecResponse{Event: &agentv1.ExecResponse_Output{Output: &agentv1.RunOutput{Stream: s, Offset: off[s], Data: data}}})
				off[s] = n
			}
		}
		tr := r.trailer
		r.mu.Unlock()
		for _, ev := range evs {
			if err := send(ev); err != nil {
				return err
			}
			if first && afterFirst != nil {
				first = false
				if err := afterFirst(); err != nil {
					return err
				}
			}
		}
		if len(evs) > 0 {
			continue // the trailer only after everything is sent
		}
		if tr != nil {
			return send(&agentv1.ExecResponse{Event: &agentv1.ExecResponse_Trailer{Trailer: tr}})
		}
		if !follow {
			return nil
		}
	}
}

func (a *testAgent) Exec(st agentv1.AgentService_ExecServer) error {
	m, err := st.Recv()
	if err != nil {
		return err
	}
	start := m.GetStart()
	if start == nil || len(start.GetCommand().GetArgv()) == 0 {
		return status.Error(codes.InvalidArgument, "first message must start a command")
	}
	go func() { // drain client messages; fleet sends none after start
		for {
			if _, err := st.Recv(); err != nil {
				return
			}
		}
	}()
	r, existing, err := a.startRun(start)
	if err != nil {
		return err
	}
	if a.dropAfterStart.Add(-1) >= 0 {
		return status.Error(codes.Unavailable, "connection dropped (test)")
	}
	if err := st.Send(&agentv1.ExecResponse{Event: &agentv1.ExecResponse_Started{Started: &agentv1.RunStarted{RunId: r.id, Pid: int32(r.pid), AttachedExisting: existing}}}); err != nil {
		return err
	}
	var afterFirst func() error
	if a.dropAfterOutput.Add(-1) >= 0 {
		afterFirst = func() error { return status.Error(codes.Unavailable, "connection dropped (test)") }
	}
	off := [3]uint64{0, start.GetStdoutOffset(), start.GetStderrOffset()}
	return r.stream(st.Context(), off, true, st.Send, afterFirst)
}

func (a *testAgent) run(id string) (*testRun, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.runs[id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "run %q not found", id)
	}
	return r, nil
}

func (a *testAgent) AttachRun(req *agentv1.AttachRunRequest, st agentv1.AgentService_AttachRunServer) error {
	r, err := a.run(req.GetRunId())
	if err != nil {
		return err
	}
	if err := st.Send(&agentv1.AttachRunResponse{Event: &agentv1.AttachRunResponse_Started{Started: &agentv1.RunStarted{RunId: r.id, Pid: int32(r.pid)}}}); err != nil {
		return err
	}
	send := func(ev *agentv1.ExecResponse) error {
		out := &agentv1.AttachRunResponse{}
		switch e := ev.Event.(type) {
		case *agentv1.ExecResponse_Output:
			out.Event = &agentv1.AttachRunResponse_Output{Output: e.Output}
		case *agentv1.ExecResponse_Trailer:
			out.Event = &agentv1.AttachRunResponse_Trailer{Trailer: e.Trailer}
		}
		return st.Send(out)
	}
	return r.stream(st.Context(), [3]uint64{0, req.GetStdoutOffset(), req.GetStderrOffset()}, req.GetFollow(), send, nil)
}

func (r *testRun) info() *agentv1.RunInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	ri := &agentv1.RunInfo{RunId: r.id, Argv: r.argv, Labels: r.labels, Pid: int32(r.pid), StartedAt: timestamppb.New(r.started), State: agentv1.RunState_RUN_STATE_RUNNING, Detached: true}
	if r.trailer != nil {
		ri.State, ri.Trailer = agentv1.RunState_RUN_STATE_FINISHED, r.trailer
	}
	return ri
}

func (a *testAgent) GetRun(_ context.Context, req *agentv1.GetRunRequest) (*agentv1.GetRunResponse, error) {
	r, err := a.run(req.GetRunId())
	if err != nil {
		return nil, err
	}
	return &agentv1.GetRunResponse{Run: r.info()}, nil
}

func (a *testAgent) ListRuns(context.Context, *agentv1.ListRunsRequest) (*agentv1.ListRunsResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	resp := &agentv1.ListRunsResponse{}
	for _, r := range a.runs {
		resp.Runs = append(resp.Runs, r.info())
	}
	return resp, nil
}

func (a *testAgent) SignalRun(_ context.Context, req *agentv1.SignalRunRequest) (*agentv1.SignalRunResponse, error) {
	r, err := a.run(req.GetRunId())
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	if req.GetSignal() == agentv1.Signal_SIGNAL_KILL {
		r.killed = true
	}
	r.mu.Unlock()
	_ = syscall.Kill(-r.pid, syscall.Signal(req.GetSignal()))
	return &agentv1.SignalRunResponse{}, nil
}

// killAll ends every process the agent started.
func (a *testAgent) killAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range a.runs {
		_ = syscall.Kill(-r.pid, syscall.SIGKILL)
	}
}

// testFleet is a set of agents on unix sockets and a Targets over them.
type testFleet struct {
	names  []string
	agents map[string]*testAgent
	conns  map[string]*grpc.ClientConn
	// clientCalls counts Targets.Client calls per workspace.
	mu          sync.Mutex
	clientCalls map[string]int // guarded by mu
	// clientHook, when set, runs at the start of every Client call.
	clientHook func(ctx context.Context, ws string, call int) error
}

// startFleet starts n agents named w00.., plus dead ones (a socket path
// nobody listens on).
func startFleet(t *testing.T, n int, dead ...string) *testFleet {
	t.Helper()
	dir, err := os.MkdirTemp("", "dtf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &testFleet{agents: map[string]*testAgent{}, conns: map[string]*grpc.ClientConn{}, clientCalls: map[string]int{}}
	for i := range n {
		name := wsName(i)
		sock := filepath.Join(dir, name+".sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		a := &testAgent{name: name}
		srv := grpc.NewServer()
		agentv1.RegisterAgentServiceServer(srv, a)
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(l) }()
		t.Cleanup(func() { a.killAll(); srv.Stop(); <-done })
		f.add(t, name, sock)
		f.agents[name] = a
	}
	for _, name := range dead {
		f.add(t, name, filepath.Join(dir, name+".sock"))
	}
	return f
}

func wsName(i int) string { return "w" + string(rune('0'+i/10)) + string(rune('0'+i%10)) }

func (f *testFleet) add(t *testing.T, name, sock string) {
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	f.names = append(f.names, name)
	f.conns[name] = cc
}

func (f *testFleet) Select(_ context.Context, sel Selector) ([]Target, error) {
	var out []Target
	for _, n := range f.names {
		for _, w := range sel.Workspaces {
			if w == n {
				out = append(out, Target{Name: n})
			}
		}
		if sel.All {
			out = append(out, Target{Name: n})
		}
	}
	return out, nil
}

func (f *testFleet) Client(ctx context.Context, ws string) (agentv1.AgentServiceClient, error) {
	f.mu.Lock()
	f.clientCalls[ws]++
	call := f.clientCalls[ws]
	hook := f.clientHook
	f.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, ws, call); err != nil {
			return nil, err
		}
	}
	cc, ok := f.conns[ws]
	if !ok {
		return nil, errors.New("no such workspace")
	}
	return agentv1.NewAgentServiceClient(cc), nil
}

func (f *testFleet) calls(ws string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.clientCalls[ws]
}

// collected is what a fleet call emitted, per workspace.
type collected struct {
	mu       sync.Mutex
	order    []Event // final events and started, in order
	stdout   map[string][]byte
	stderr   map[string][]byte
	finals   map[string]Event
	targets  map[string]int // KindTarget events
	onEvent  func(Event) error
	runID    string
	selected []string
}

func newCollected() *collected {
	return &collected{stdout: map[string][]byte{}, stderr: map[string][]byte{}, finals: map[string]Event{}, targets: map[string]int{}}
}

func (c *collected) emit(ev Event) error {
	c.mu.Lock()
	switch ev.Kind {
	case KindStarted:
		c.runID, c.selected = ev.RunID, ev.Workspaces
	case KindTarget:
		c.targets[ev.Workspace]++
	case KindOutput:
		if ev.Output.GetStream() == agentv1.Stream_STREAM_STDERR {
			c.stderr[ev.Workspace] = append(c.stderr[ev.Workspace], ev.Output.GetData()...)
		} else {
			c.stdout[ev.Workspace] = append(c.stdout[ev.Workspace], ev.Output.GetData()...)
		}
	case KindExited, KindUnreachable, KindSkipped:
		if _, dup := c.finals[ev.Workspace]; dup {
			c.mu.Unlock()
			return errors.New("second final event for " + ev.Workspace)
		}
		c.finals[ev.Workspace] = ev
		c.order = append(c.order, ev)
	}
	hook := c.onEvent
	c.mu.Unlock()
	if hook != nil {
		return hook(ev)
	}
	return nil
}

var _ io.Writer = streamWriter{}
