package cli

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

func TestRenderRuns(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var out bytes.Buffer
	a := &App{Stdout: &out}
	runs := []*agentv1.RunInfo{
		{RunId: "a", Argv: []string{"sh", "-c", "echo hi; exit 3"}, State: agentv1.RunState_RUN_STATE_FINISHED, Pid: 10,
			StartedAt: timestamppb.New(now.Add(-90 * time.Second)),
			Trailer:   &agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_EXITED, ExitCode: 3}},
		{RunId: "b", Argv: []string{"sleep", "9"}, State: agentv1.RunState_RUN_STATE_RUNNING, Pid: 11, Detached: true,
			StartedAt: timestamppb.New(now.Add(-5 * time.Second))},
		{RunId: "c", Argv: []string{"x"}, State: agentv1.RunState_RUN_STATE_FINISHED, Pid: 12,
			Trailer: &agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_TIMED_OUT, ExitCode: -1, Signal: 15}},
	}
	if err := renderRuns(a, runs, now); err != nil {
		t.Fatal(err)
	}
	want := "RUN  STATE             EXIT     PID  AGE  COMMAND\n" +
		"a    exited            3        10   1m   sh -c \"echo hi; exit 3\"\n" +
		"b    running,detached  -        11   5s   sleep 9\n" +
		"c    timed_out         SIGTERM  12   -    x\n"
	if out.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestFormatWindows(t *testing.T) {
	ws := []*agentv1.WindowInfo{
		{Index: 0, Name: "main", Panes: []*agentv1.PaneInfo{{}}},
		{Index: 1, Name: "build", Panes: []*agentv1.PaneInfo{{Dead: true, ExitCode: 3}}},
		{Index: 2, Name: "k", Panes: []*agentv1.PaneInfo{{Dead: true, ExitCode: -1, Signal: 9}}},
	}
	if got, want := formatWindows(ws), "0:main 1:build(exit 3) 2:k(SIGKILL)"; got != want {
		t.Errorf("formatWindows = %q, want %q", got, want)
	}
}

func TestTableFlattensCells(t *testing.T) {
	var out bytes.Buffer
	tb := newTable(&out, "A", "B")
	tb.row("x\ty", "line1\nline2")
	if err := tb.flush(); err != nil {
		t.Fatal(err)
	}
	if strings.Count(out.String(), "\n") != 2 {
		t.Errorf("a cell broke the layout:\n%s", out.String())
	}
}

func TestProgressBarTerminal(t *testing.T) {
	var out bytes.Buffer
	p := newProgressBar(&out, true)
	p.redraw() // nothing before the first value
	p.set(50)
	p.redraw()
	p.set(250) // clamped
	p.clear()
	p.redraw()
	p.done()
	want := "\r\x1b[K[" + strings.Repeat("#", 15) + strings.Repeat("-", 15) + "]  50%" +
		"\r\x1b[K" + "\r\x1b[K[" + strings.Repeat("#", 30) + "] 100%" + "\n"
	if out.String() != want {
		t.Errorf("got %q\nwant %q", out.String(), want)
	}
}

func TestOutputWatcher(t *testing.T) {
	var out bytes.Buffer
	w := &outputWatcher{waitFor: regexp.MustCompile(`listening on :\d+`), progress: regexp.MustCompile(`(\d+(?:\.\d+)?)%`), bar: newProgressBar(&out, false)}
	for _, chunk := range []string{"12.5%\r", "40", "%\r\n", "noise\n", "listening on :80"} {
		matched := w.feed([]byte(chunk))
		if matched != (chunk == "listening on :80") {
			t.Errorf("feed(%q) = %v", chunk, matched)
		}
	}
	if out.String() != "progress: 12%\nprogress: 40%\n" {
		t.Errorf("progress lines = %q", out.String())
	}
	// A line longer than the buffer keeps only its tail and still matches.
	w2 := &outputWatcher{waitFor: regexp.MustCompile(`END$`), bar: newProgressBar(&out, false)}
	if w2.feed([]byte(strings.Repeat("x", 3*maxLine))) || !w2.feed([]byte("END")) || len(w2.line) > maxLine {
		t.Error("long line not handled")
	}
}

func TestTrailerExit(t *testing.T) {
	a := &App{}
	tests := []struct {
		tr   *agentv1.RunTrailer
		code int
		msg  string
	}{
		{&agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_EXITED, ExitCode: 0}, 0, ""},
		{&agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_EXITED, ExitCode: 42}, 42, ""},
		{&agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_SIGNALED, ExitCode: -1, Signal: 2}, 130, ""},
		{&agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_KILLED, ExitCode: -1, Signal: 9}, 137, "was killed"},
		{&agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_TIMED_OUT, ExitCode: -1, Signal: 9}, ExitTimedOut, "timed out"},
		{&agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_AGENT_LOST, ExitCode: -1}, ExitFailure, "agent was lost"},
		{&agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_LIMIT_EXCEEDED, ExitCode: -1, Signal: 9, Detail: "memory"}, 137, "memory"},
	}
	for _, tt := range tests {
		err := a.trailerExit("r", tt.tr)
		if ErrorCode(err) != tt.code && !(err == nil && tt.code == 0) {
			t.Errorf("%v: code %d, want %d", tt.tr, ErrorCode(err), tt.code)
		}
		if tt.msg != "" && (err == nil || !strings.Contains(err.Error(), tt.msg)) {
			t.Errorf("%v: error %v, want %q", tt.tr, err, tt.msg)
		}
		if tt.msg == "" && err != nil && err.Error() != "" && !strings.HasPrefix(err.Error(), "exit status") {
			t.Errorf("%v: unexpected message %q", tt.tr, err)
		}
	}
}

// Input over gRPC's message limit is the user's to fix: exit 254 and one
// line saying so with the sizes; a response over it is dtmux's failure.
func TestRequestTooLarge(t *testing.T) {
	err := status.Error(codes.ResourceExhausted, "grpc: trying to send message larger than max (10000047 vs. 4194304)")
	if got := ErrorCode(err); got != ExitUsage {
		t.Errorf("exit %d, want %d", got, ExitUsage)
	}
	if got, want := errorLine(err, ""), "dtmux: the request is too large (10000047 bytes; at most 4194304 in one message)"; !strings.HasPrefix(got, want) {
		t.Errorf("line %q, want it to start with %q", got, want)
	}
	recv := status.Error(codes.ResourceExhausted, "grpc: received message larger than max (5000000 vs. 4194304)")
	if got := ErrorCode(recv); got != ExitFailure {
		t.Errorf("received too large: exit %d, want %d", got, ExitFailure)
	}
}

// A provider that cannot do something says so once, not behind "not
// implemented by the server".
func TestUnsupportedByProviderSaysItOnce(t *testing.T) {
	err := status.Error(codes.Unimplemented, "not supported by this provider: ssh hosts are listed in the hosts file")
	if got, want := errorLine(err, ""), "dtmux: not supported by this provider: ssh hosts are listed in the hosts file"; got != want {
		t.Errorf("line %q, want %q", got, want)
	}
	if got := errorLine(status.Error(codes.Unimplemented, "unknown method Frob"), ""); got != "dtmux: not implemented by the server: unknown method Frob" {
		t.Errorf("line %q", got)
	}
}

// An error state's detail is shown once, without the state word again.
func TestWorkspaceStateDetail(t *testing.T) {
	for _, tt := range []struct{ detail, want string }{
		{"error: devcontainer build failed: exit 1", "error (devcontainer build failed: exit 1)"},
		{"build failed", "error (build failed)"},
	} {
		w := &controllerv1.Workspace{State: controllerv1.WorkspaceState_WORKSPACE_STATE_ERROR, StateDetail: tt.detail}
		if got := workspaceState(w); got != tt.want {
			t.Errorf("detail %q: %q, want %q", tt.detail, got, tt.want)
		}
	}
}

// ws ls shows an agent's failure by its cause: the last part of the
// reason, with the one before it when both fit.
func TestShortReason(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{`workspace "b": agent unreachable: ssh root@h (host b) exited before the agent started (exit status 255): command-line: line 0: Bad configuration option: nosuchoption`,
			"Bad configuration option: nosuchoption"},
		{`workspace "b": agent unreachable: ssh root@127.0.0.1 (host b) exited before the agent started (exit status 255): root@127.0.0.1: Permission denied (publickey).`,
			"Permission denied (publickey)."},
		{`workspace "b": agent unreachable: ssh h (host b) exited before the agent started (exit status 255): ssh: connect to host 10.255.255.1 port 22: Connection timed out`,
			"Connection timed out"},
		{`install agent over ssh h (host b): exit status 1: mkdir: cannot create directory '/proc/nope': No such file or directory`,
			"No such file or directory"},
		{"connection refused", "connection refused"},
		{"Bad configuration option: nosuchoption", "Bad configuration option: nosuchoption"},
		{"dial unix /run/x.sock: ECONNREFUSED", "dial unix /run/x.sock: ECONNREFUSED"},
	} {
		if got := shortReason(tt.in); got != tt.want {
			t.Errorf("shortReason(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
