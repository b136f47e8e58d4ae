package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/internal/errinfo"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// fakeController serves the controller's WorkspaceService and a scripted
// AgentService on a real unix socket, for testing the CLI's streaming,
// rendering and exit codes without the real agent. Its "workspace" is
// "ws"; any other name is NotFound, as the real router answers.
type fakeController struct {
	agentv1.UnimplementedAgentServiceServer
	controllerv1.UnimplementedWorkspaceServiceServer

	mu     sync.Mutex // guards the fields below
	calls  int
	starts []*agentv1.ExecStart
	files  map[string][]byte
	rins   []*agentv1.RunInSessionRequest
	sent   []*agentv1.SendInputRequest
	// detachStdin has, per detached Exec, whether the message after start
	// was close_stdin.
	detachStdin []bool
	// removed makes GetWorkspace say "ws" no longer exists.
	removed bool
}

// startFake serves a fakeController and returns its address.
func startFake(t *testing.T) (string, *fakeController) {
	t.Helper()
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "c.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeController{files: map[string][]byte{}}
	s := grpc.NewServer()
	agentv1.RegisterAgentServiceServer(s, f)
	controllerv1.RegisterWorkspaceServiceServer(s, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(l)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return "unix://" + sock, f
}

// workspace checks the routing metadata like the controller does.
func (f *fakeController) workspace(ctx context.Context) error {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	md, _ := metadata.FromIncomingContext(ctx)
	ws := md.Get(WorkspaceMetadataKey)
	if len(ws) != 1 || ws[0] != "ws" {
		return status.Errorf(codes.NotFound, "workspace %q not found", strings.Join(ws, ","))
	}
	return nil
}

func (f *fakeController) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeController) ListWorkspaces(ctx context.Context, req *controllerv1.ListWorkspacesRequest) (*controllerv1.ListWorkspacesResponse, error) {
	_ = grpc.SetHeader(ctx, metadata.Pairs(VersionHeader, "v9.9.9"))
	return &controllerv1.ListWorkspacesResponse{Workspaces: []*controllerv1.Workspace{
		{Name: "ws", Provider: "local", State: controllerv1.WorkspaceState_WORKSPACE_STATE_STARTED,
			Labels: map[string]string{"team": "web", "a": "1"}, Agent: &controllerv1.AgentStatus{Connected: true, Version: "v1"}},
		{Name: "other", Provider: "local", State: controllerv1.WorkspaceState_WORKSPACE_STATE_STOPPED},
		{Name: "far", Provider: "ssh", State: controllerv1.WorkspaceState_WORKSPACE_STATE_STARTED,
			Agent: &controllerv1.AgentStatus{LastError: "dial: ssh: connect to host far port 22: connection refused\nmore"}},
	}}, nil
}

// Exec plays a script chosen by argv[0]:
//
//	both        "out" on stdout, "err" on stderr, exit 0
//	exit N      exit N
//	signal N    killed by signal N
//	cat         echo stdin to stdout until EOF, exit 0
//	count       print the stdin byte count at EOF
//	timeout     trailer TIMED_OUT
//	gap         a gap of 10 stdout bytes, then "tail"
//	waitsig     wait for a signal message, die from it
func (f *fakeController) Exec(stream agentv1.AgentService_ExecServer) error {
	if err := f.workspace(stream.Context()); err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return status.Error(codes.InvalidArgument, "first message must be start")
	}
	f.mu.Lock()
	f.starts = append(f.starts, start)
	f.mu.Unlock()
	argv := start.GetCommand().GetArgv()
	runID := start.GetRunId()
	// Refusals come before the run starts, as the agent's do.
	switch {
	case argv[0] == "nosuchcmd":
		return errinfo.New(codes.InvalidArgument, `"nosuchcmd": program not found in PATH`, errinfo.ProgramNotFound)
	case argv[0] == "noexec":
		return errinfo.New(codes.PermissionDenied, `"noexec": permission denied`, errinfo.ProgramNotExecutable)
	case runID == "taken":
		return errinfo.New(codes.AlreadyExists, `run "taken" exists with a different command`, errinfo.RunIDConflict)
	case strings.Contains(runID, " "):
		return status.Errorf(codes.InvalidArgument, "run id %q: want 1 to 64 letters, digits, '.', '_' or '-'", runID)
	}
	if runID == "" {
		runID = "r1"
	}
	send := func(r *agentv1.ExecResponse) error { return stream.Send(r) }
	if err := send(&agentv1.ExecResponse{Event: &agentv1.ExecResponse_Started{Started: &agentv1.RunStarted{RunId: runID, Pid: 42}}}); err != nil {
		return err
	}
	if start.GetDetach() {
		// Record whether the client closed the detached run's stdin; a
		// client that does not gets here only when it hangs up.
		m, err := stream.Recv()
		f.mu.Lock()
		f.detachStdin = append(f.detachStdin, err == nil && m.GetCloseStdin() != nil)
		f.mu.Unlock()
		return nil
	}
	out := func(s agentv1.Stream, off uint64, data string) error {
		return send(&agentv1.ExecResponse{Event: &agentv1.ExecResponse_Output{Output: &agentv1.RunOutput{Stream: s, Offset: off, Data: []byte(data)}}})
	}
	exited := func(code int32) error {
		return send(&agentv1.ExecResponse{Event: &agentv1.ExecResponse_Trailer{Trailer: &agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_EXITED, ExitCode: code}}})
	}
	arg := func(i int) int32 {
		n, _ := strconv.Atoi(argv[i])
		return int32(n)
	}
	switch argv[0] {
	case "both":
		if err := out(agentv1.Stream_STREAM_STDOUT, 0, "out"); err != nil {
			return err
		}
		if err := out(agentv1.Stream_STREAM_STDERR, 0, "err"); err != nil {
			return err
		}
		return exited(0)
	case "exit":
		return exited(arg(1))
	case "agentlost":
		// What the controller's proxy says when the agent's connection
		// breaks mid-stream.
		if err := out(agentv1.Stream_STREAM_STDOUT, 0, "partial"); err != nil {
			return err
		}
		return status.Error(codes.Unavailable, "error reading from server: EOF")
	case "removed":
		f.mu.Lock()
		f.removed = true
		f.mu.Unlock()
		return status.Error(codes.Canceled, "context canceled")
	case "notrailer":
		return out(agentv1.Stream_STREAM_STDOUT, 0, "partial")
	case "signal":
		return send(&agentv1.ExecResponse{Event: &agentv1.ExecResponse_Trailer{Trailer: &agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_SIGNALED, ExitCode: -1, Signal: arg(1)}}})
	case "timeout":
		return send(&agentv1.ExecResponse{Event: &agentv1.ExecResponse_Trailer{Trailer: &agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_TIMED_OUT, ExitCode: -1, Signal: 15, Detail: "wall-clock timeout 1s"}}})
	case "gap":
		if err := send(&agentv1.ExecResponse{Event: &agentv1.ExecResponse_Gap{Gap: &agentv1.RunGap{Stream: agentv1.Stream_STREAM_STDOUT, Offset: 0, Bytes: 10}}}); err != nil {
			return err
		}
		if err := out(agentv1.Stream_STREAM_STDOUT, 10, "tail"); err != nil {
			return err
		}
		return exited(0)
	case "cat", "count":
		var got bytes.Buffer
		for {
			m, err := stream.Recv()
			if err != nil {
				return err
			}
			if m.GetCloseStdin() != nil {
				break
			}
			got.Write(m.GetStdin())
		}
		if argv[0] == "count" {
			if err := out(agentv1.Stream_STREAM_STDOUT, 0, strconv.Itoa(got.Len())); err != nil {
				return err
			}
		} else if got.Len() > 0 {
			if err := out(agentv1.Stream_STREAM_STDOUT, 0, got.String()); err != nil {
				return err
			}
		}
		return exited(0)
	default:
		return status.Errorf(codes.InvalidArgument, "fake: unknown command %q", argv[0])
	}
}

func (f *fakeController) AttachRun(req *agentv1.AttachRunRequest, stream agentv1.AgentService_AttachRunServer) error {
	if err := f.workspace(stream.Context()); err != nil {
		return err
	}
	if req.GetRunId() != "r1" {
		return status.Errorf(codes.NotFound, "run %q not found", req.GetRunId())
	}
	const all = "0123456789"
	if err := stream.Send(&agentv1.AttachRunResponse{Event: &agentv1.AttachRunResponse_Started{Started: &agentv1.RunStarted{RunId: "r1"}}}); err != nil {
		return err
	}
	if off := req.GetStdoutOffset(); off < uint64(len(all)) {
		if err := stream.Send(&agentv1.AttachRunResponse{Event: &agentv1.AttachRunResponse_Output{Output: &agentv1.RunOutput{
			Stream: agentv1.Stream_STREAM_STDOUT, Offset: off, Data: []byte(all[off:])}}}); err != nil {
			return err
		}
	}
	return stream.Send(&agentv1.AttachRunResponse{Event: &agentv1.AttachRunResponse_Trailer{Trailer: &agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_EXITED, ExitCode: 7}}})
}

func (f *fakeController) PutFile(stream agentv1.AgentService_PutFileServer) error {
	if err := f.workspace(stream.Context()); err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hdr := first.GetHeader()
	var data bytes.Buffer
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		data.Write(m.GetData())
	}
	if uint64(data.Len()) != hdr.GetSize() || hdr.GetMode() != 0o755 {
		return status.Errorf(codes.InvalidArgument, "size %d != %d or mode %o", data.Len(), hdr.GetSize(), hdr.GetMode())
	}
	f.mu.Lock()
	f.files[hdr.GetPath()] = data.Bytes()
	f.mu.Unlock()
	return stream.SendAndClose(&agentv1.PutFileResponse{Path: "/ws/" + hdr.GetPath(), Size: uint64(data.Len())})
}

// RunInSession prints the script's path, then the lines "step 10%",
// "step 50%", "READY", "step 100%", and exits with the first argument.
func (f *fakeController) RunInSession(req *agentv1.RunInSessionRequest, stream agentv1.AgentService_RunInSessionServer) error {
	if err := f.workspace(stream.Context()); err != nil {
		return err
	}
	f.mu.Lock()
	f.rins = append(f.rins, req)
	f.mu.Unlock()
	argv := req.GetCommand().GetArgv()
	if err := stream.Send(&agentv1.RunInSessionResponse{Event: &agentv1.RunInSessionResponse_Started{Started: &agentv1.WindowStarted{Session: req.GetSession(), Window: req.GetWindowName()}}}); err != nil {
		return err
	}
	var off uint64
	for _, chunk := range []string{"step 10%\r\n", "step 5", "0%\r\nRE", "ADY\r\n", "step 100%\r\n"} {
		if err := stream.Send(&agentv1.RunInSessionResponse{Event: &agentv1.RunInSessionResponse_Output{Output: &agentv1.RunOutput{Stream: agentv1.Stream_STREAM_STDOUT, Offset: off, Data: []byte(chunk)}}}); err != nil {
			return err
		}
		off += uint64(len(chunk))
	}
	code := 0
	if len(argv) > 1 {
		code, _ = strconv.Atoi(argv[1])
	}
	return stream.Send(&agentv1.RunInSessionResponse{Event: &agentv1.RunInSessionResponse_Trailer{Trailer: &agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_EXITED, ExitCode: int32(code)}}})
}

// result is what one dtmux invocation printed and returned.
type result struct {
	stdout, stderr string
	code           int
}

// dtmux runs the CLI in-process against addr with stdin.
func dtmux(t *testing.T, addr, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	env := map[string]string{"DTMUX_CONTROLLER": addr, "HOME": t.TempDir()}
	app := &App{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return env[k] }}
	code := Main(context.Background(), app, args)
	return result{out.String(), errb.String(), code}
}

// SendInput records the request for the test to check.
func (f *fakeController) SendInput(ctx context.Context, req *agentv1.SendInputRequest) (*agentv1.SendInputResponse, error) {
	if err := f.workspace(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.sent = append(f.sent, req)
	f.mu.Unlock()
	return &agentv1.SendInputResponse{}, nil
}

// CreateSession answers with the session it would create; a name with a
// space is InvalidArgument, as the agent says.
func (f *fakeController) CreateSession(ctx context.Context, req *agentv1.CreateSessionRequest) (*agentv1.CreateSessionResponse, error) {
	if err := f.workspace(ctx); err != nil {
		return nil, err
	}
	if strings.Contains(req.GetName(), " ") {
		return nil, status.Errorf(codes.InvalidArgument, "session name %q: use letters, digits, '-' and '_'", req.GetName())
	}
	return &agentv1.CreateSessionResponse{Session: &agentv1.SessionInfo{
		Name: req.GetName(), Windows: []*agentv1.WindowInfo{{Index: 0, Name: "main"}}, Size: &agentv1.TerminalSize{Rows: 24, Cols: 80}}}, nil
}

// fakePaneHistory and fakePaneScreen are the fake pane: 50 lines of
// scrollback ("h1".."h50") above a 24-row screen showing "s1".."s5" and
// then blank rows, as tmux renders it.
const fakePaneHistory, fakePaneScreen = 50, 5

// CapturePane renders the fake pane as tmux's capture-pane would:
// history_lines of scrollback (or all of it), then the whole screen.
func (f *fakeController) CapturePane(ctx context.Context, req *agentv1.CapturePaneRequest) (*agentv1.CapturePaneResponse, error) {
	if err := f.workspace(ctx); err != nil {
		return nil, err
	}
	if req.GetTarget().GetSession() != "s1" {
		return nil, status.Errorf(codes.NotFound, "session %q not found", req.GetTarget().GetSession())
	}
	var b strings.Builder
	from := fakePaneHistory - min(int(req.GetHistoryLines()), fakePaneHistory)
	if req.GetAllHistory() {
		from = 0
	}
	for i := from + 1; i <= fakePaneHistory; i++ {
		b.WriteString("h" + strconv.Itoa(i) + "\n")
	}
	for i := 1; i <= 24; i++ {
		if i <= fakePaneScreen {
			b.WriteString("s" + strconv.Itoa(i))
		}
		b.WriteString("\n")
	}
	return &agentv1.CapturePaneResponse{Content: []byte(b.String()), CursorY: fakePaneScreen, HistorySize: fakePaneHistory,
		Size: &agentv1.TerminalSize{Rows: 24, Cols: 80}}, nil
}

// GetWorkspace knows "ws" (until an Exec of "removed") and nothing else.
func (f *fakeController) GetWorkspace(ctx context.Context, req *controllerv1.GetWorkspaceRequest) (*controllerv1.GetWorkspaceResponse, error) {
	f.mu.Lock()
	removed := f.removed
	f.mu.Unlock()
	if req.GetName() != "ws" || removed {
		return nil, status.Errorf(codes.NotFound, "workspace %q not found", req.GetName())
	}
	return &controllerv1.GetWorkspaceResponse{Workspace: &controllerv1.Workspace{Name: "ws", State: controllerv1.WorkspaceState_WORKSPACE_STATE_STARTED}}, nil
}

// ListSessions lists two sessions.
func (f *fakeController) ListSessions(ctx context.Context, _ *agentv1.ListSessionsRequest) (*agentv1.ListSessionsResponse, error) {
	if err := f.workspace(ctx); err != nil {
		return nil, err
	}
	return &agentv1.ListSessionsResponse{Sessions: []*agentv1.SessionInfo{{Name: "dbg"}, {Name: "scripts"}}}, nil
}

// ListRuns lists a running run and a finished one.
func (f *fakeController) ListRuns(ctx context.Context, _ *agentv1.ListRunsRequest) (*agentv1.ListRunsResponse, error) {
	if err := f.workspace(ctx); err != nil {
		return nil, err
	}
	return &agentv1.ListRunsResponse{Runs: []*agentv1.RunInfo{
		{RunId: "r1", State: agentv1.RunState_RUN_STATE_RUNNING, Argv: []string{"make", "test"}},
		{RunId: "r2", State: agentv1.RunState_RUN_STATE_FINISHED, Argv: []string{"true"},
			Trailer: &agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_EXITED}},
	}}, nil
}
