package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

func evStarted(runID string, ws ...string) *controllerv1.FleetEvent {
	return &controllerv1.FleetEvent{Event: &controllerv1.FleetEvent_Started{Started: &controllerv1.FleetStarted{RunId: runID, Workspaces: ws}}}
}

func evOut(ws string, stream agentv1.Stream, data string) *controllerv1.FleetEvent {
	return &controllerv1.FleetEvent{Workspace: ws, Event: &controllerv1.FleetEvent_Output{Output: &agentv1.RunOutput{Stream: stream, Data: []byte(data)}}}
}

func evExit(ws string, code int32) *controllerv1.FleetEvent {
	return &controllerv1.FleetEvent{Workspace: ws, Event: &controllerv1.FleetEvent_Exited{Exited: &agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_EXITED, ExitCode: code}}}
}

func evUnreachable(ws string) *controllerv1.FleetEvent {
	return &controllerv1.FleetEvent{Workspace: ws, Event: &controllerv1.FleetEvent_Unreachable{Unreachable: &controllerv1.TargetUnreachable{Reason: "connection refused", Attempts: 3}}}
}

func evSummary(s *controllerv1.FleetSummary) *controllerv1.FleetEvent {
	return &controllerv1.FleetEvent{Event: &controllerv1.FleetEvent_Summary{Summary: s}}
}

const (
	stdout = agentv1.Stream_STREAM_STDOUT
	stderr = agentv1.Stream_STREAM_STDERR
)

func feed(t *testing.T, r fleetRenderer, evs ...*controllerv1.FleetEvent) {
	t.Helper()
	var sum *controllerv1.FleetSummary
	for _, ev := range evs {
		if err := r.event(ev); err != nil {
			t.Fatal(err)
		}
		if s := ev.GetSummary(); s != nil {
			sum = s
		}
	}
	if err := r.finish(sum); err != nil {
		t.Fatal(err)
	}
}

// countingWriter records every Write as one chunk, to check that no
// line is split across writes.
type countingWriter struct{ chunks []string }

func (c *countingWriter) Write(b []byte) (int, error) {
	c.chunks = append(c.chunks, string(b))
	return len(b), nil
}

func TestPrefixRendererWholeLinesOnly(t *testing.T) {
	var out, errw countingWriter
	r := newPrefixRenderer(&out, &errw, false)
	feed(t, r,
		evStarted("f1", "web-1", "db"),
		evOut("web-1", stdout, "hel"),
		evOut("db", stdout, "one\ntw"),
		evOut("web-1", stderr, "warn"),
		evOut("web-1", stdout, "lo\nwor"),
		evOut("db", stdout, "o\n"),
		evOut("web-1", stderr, "ing\n"),
		evOut("db", stdout, "no newline at the end"),
		evExit("db", 3),
		evOut("web-1", stdout, "ld\n\nlast"),
	)
	wantOut := []string{
		"db    | one\n",
		"web-1 | hello\n",
		"db    | two\n",
		"db    | no newline at the end\n",
		"web-1 | world\n",
		"web-1 | \n",
		"web-1 | last\n", // flushed at the end
	}
	if strings.Join(out.chunks, "") != strings.Join(wantOut, "") {
		t.Errorf("stdout:\n%s\nwant:\n%s", strings.Join(out.chunks, ""), strings.Join(wantOut, ""))
	}
	for _, c := range out.chunks {
		if strings.Count(c, "\n") != 1 || !strings.HasSuffix(c, "\n") {
			t.Errorf("write %q is not exactly one line", c)
		}
	}
	wantErr := "web-1 | warning\ndb    | dtmux: exit 3\n"
	if got := strings.Join(errw.chunks, ""); got != wantErr {
		t.Errorf("stderr %q, want %q", got, wantErr)
	}
}

// Long lines are printed whole, never cut where an event ended, even
// while other workspaces print; only a line longer than maxPartialLine
// is printed in pieces, the rest marked as continuation ("name + ").
func TestPrefixRendererLongLines(t *testing.T) {
	var out bytes.Buffer
	r := newPrefixRenderer(&out, &bytes.Buffer{}, false)
	long := strings.Repeat("a", 200000)
	feed(t, r, evStarted("f", "f01", "f03"),
		evOut("f03", stdout, long[:65536]), evOut("f01", stdout, "short\n"),
		evOut("f03", stdout, long[65536:150000]), evOut("f01", stdout, "again\n"),
		evOut("f03", stdout, long[150000:]+"\n"))
	if want := "f01 | short\nf01 | again\nf03 | " + long + "\n"; out.String() != want {
		t.Errorf("200000-byte line: got %d bytes %q..., want %d", out.Len(), clipTest(out.String()), len(want))
	}

	out.Reset()
	exact := strings.Repeat("x", maxPartialLine)
	feed(t, r, evOut("f01", stdout, exact), evOut("f01", stdout, "\n"))
	if want := "f01 | " + exact + "\n"; out.String() != want {
		t.Errorf("line of exactly maxPartialLine: got %d bytes %q..., want %d", out.Len(), clipTest(out.String()), len(want))
	}

	out.Reset()
	huge := strings.Repeat("y", 2*maxPartialLine+10)
	var evs []*controllerv1.FleetEvent
	for i := 0; i < len(huge); i += 1 << 20 {
		evs = append(evs, evOut("f01", stdout, huge[i:min(len(huge), i+1<<20)]))
	}
	feed(t, r, append(evs, evOut("f01", stdout, "z\n"), evOut("f01", stdout, "next\n"))...)
	want := "f01 | " + huge[:maxPartialLine] + "\nf01 + " + huge[maxPartialLine:2*maxPartialLine] + "\nf01 + " + huge[2*maxPartialLine:] + "z\nf01 | next\n"
	if out.String() != want {
		t.Errorf("over-long line: got %d bytes %q..., want %d", out.Len(), clipTest(out.String()), len(want))
	}

	// Unfinished at exit: the rest is a continuation too.
	out.Reset()
	feed(t, r, evOut("f03", stdout, huge[:maxPartialLine+5]), evExit("f03", 0))
	if want := "f03 | " + huge[:maxPartialLine] + "\nf03 + " + huge[maxPartialLine:maxPartialLine+5] + "\n"; out.String() != want {
		t.Errorf("over-long unfinished line: got %d bytes %q..., want %d", out.Len(), clipTest(out.String()), len(want))
	}
}

func clipTest(s string) string { return s[:min(len(s), 80)] }

func TestPrefixRendererColorsNames(t *testing.T) {
	var out bytes.Buffer
	r := newPrefixRenderer(&out, &bytes.Buffer{}, true)
	feed(t, r, evStarted("f", "a"), evOut("a", stdout, "x\n"))
	if !strings.HasPrefix(out.String(), "\x1b[") || !strings.HasSuffix(out.String(), "\x1b[0m | x\n") {
		t.Errorf("%q", out.String())
	}
}

func TestGroupRendererMergesIdenticalOutput(t *testing.T) {
	var out bytes.Buffer
	feed(t, newGroupRenderer(&out),
		evStarted("f", "a", "b", "c", "d"),
		evOut("a", stdout, "same\n"),
		evOut("c", stdout, "same\n"),
		evOut("b", stdout, "other\n"),
		evOut("d", stdout, "same\n"),
		evExit("a", 0), evExit("b", 0), evExit("c", 0), evExit("d", 1),
	)
	want := "----------------\na,c\n----------------\nsame\n" +
		"----------------\nb\n----------------\nother\n" +
		"----------------\nd\n(exit 1)\n----------------\nsame\n"
	if out.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestJSONRendererIsNDJSON(t *testing.T) {
	var out bytes.Buffer
	sum := &controllerv1.FleetSummary{RunId: "f", Total: 2, Succeeded: 1, Unreachable: 1, Duration: durationpb.New(0), FailedWorkspaces: []string{"b"}}
	feed(t, &jsonRenderer{w: &out},
		evStarted("f", "a", "b"),
		evOut("a", stdout, "line with \"quotes\"\nand newline\n"),
		evExit("a", 0), evUnreachable("b"), evSummary(sum))
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d lines:\n%s", len(lines), out.String())
	}
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Errorf("not JSON: %s", l)
		}
	}
	var last controllerv1.FleetEvent
	if err := protojson.Unmarshal([]byte(lines[4]), &last); err != nil {
		t.Fatal(err)
	}
	if last.GetSummary().GetUnreachable() != 1 || last.GetSummary().GetTotal() != 2 {
		t.Errorf("summary %v", &last)
	}
	var o controllerv1.FleetEvent
	if err := protojson.Unmarshal([]byte(lines[1]), &o); err != nil || string(o.GetOutput().GetData()) != "line with \"quotes\"\nand newline\n" {
		t.Errorf("output line %s: %v", lines[1], err)
	}
}

func TestLogDirRenderer(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "logs")
	r, err := newLogDirRenderer(dir)
	if err != nil {
		t.Fatal(err)
	}
	started := func(ws string) *controllerv1.FleetEvent {
		return &controllerv1.FleetEvent{Workspace: ws, Event: &controllerv1.FleetEvent_TargetStarted{TargetStarted: &controllerv1.TargetStarted{Pid: 1, Attempt: 1}}}
	}
	feed(t, r,
		evStarted("f", "a", "b", "c"),
		started("a"), started("b"),
		evOut("a", stdout, "out a\n"), evOut("a", stderr, "err a\n"), evOut("b", stdout, "out b\n"),
		evExit("a", 0), evExit("b", 2), evUnreachable("c"),
		evSummary(&controllerv1.FleetSummary{Total: 3, Succeeded: 1, Failed: 1, Unreachable: 1, FailedWorkspaces: []string{"b"}, UnreachableWorkspaces: []string{"c"}}),
	)
	for name, want := range map[string]string{
		"a.stdout": "out a\n", "a.stderr": "err a\n", "b.stdout": "out b\n", "b.stderr": "",
		"succeeded": "a\n", "failed": "b\nc\n",
	} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", name, got, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "c.stdout")); err == nil {
		t.Error("an unreachable target got an output file")
	}
}

func TestFleetExit(t *testing.T) {
	for _, tc := range []struct {
		s    *controllerv1.FleetSummary
		want int
	}{
		{&controllerv1.FleetSummary{Total: 3, Succeeded: 3}, 0},
		{&controllerv1.FleetSummary{Total: 3, Succeeded: 1, Failed: 2, WorstExitCode: 7}, 7},
		{&controllerv1.FleetSummary{Total: 3, Succeeded: 1, Failed: 1, Unreachable: 1, WorstExitCode: 2}, 2},
		{&controllerv1.FleetSummary{Total: 3, Succeeded: 2, Unreachable: 1}, ExitUnreachable},
		{&controllerv1.FleetSummary{Total: 3, Succeeded: 1, Skipped: 2}, ExitUnreachable},
		{&controllerv1.FleetSummary{Total: 2, Failed: 1, Cancelled: 1, WorstExitCode: 137}, 137},
		{&controllerv1.FleetSummary{Total: 1, Failed: 1, WorstExitCode: 0}, 1},
		// Workspaces an attach could not ask are not counted; targets it
		// did not find are.
		{&controllerv1.FleetSummary{Total: 1, Succeeded: 1, NotAskedWorkspaces: []string{"b", "c", "d", "e"}}, 0},
		{&controllerv1.FleetSummary{Total: 3, Succeeded: 2, NotFound: 1, NotAskedWorkspaces: []string{"d"}}, ExitUnreachable},
		{nil, ExitFailure},
	} {
		if got := fleetExit(tc.s); got != tc.want {
			t.Errorf("fleetExit(%v) = %d, want %d", tc.s, got, tc.want)
		}
	}
}

// The summary line's lists agree with its counts: workspaces that could
// not be asked are named apart, never as not ok.
func TestSummaryLine(t *testing.T) {
	for _, tc := range []struct {
		s    *controllerv1.FleetSummary
		want string
	}{
		{&controllerv1.FleetSummary{RunId: "f", Total: 1, Succeeded: 1, Duration: durationpb.New(time.Second), NotAskedWorkspaces: []string{"b", "c"}},
			"dtmux: fleet f: 1/1 succeeded in 1s; could not ask (not counted): b c"},
		{&controllerv1.FleetSummary{RunId: "f", Total: 4, Succeeded: 1, Failed: 1, Unreachable: 1, NotFound: 1, WorstExitCode: 3, Duration: durationpb.New(0),
			FailedWorkspaces: []string{"b"}, UnreachableWorkspaces: []string{"c"}, NotAskedWorkspaces: []string{"d"}},
			"dtmux: fleet f: 1/4 succeeded, 1 failed, 1 unreachable, 1 not found in 0s; worst exit code 3; not ok: b c; could not ask (not counted): d"},
		// A controller that listed every not-ok target in failed_workspaces.
		{&controllerv1.FleetSummary{RunId: "f", Total: 2, Failed: 1, Unreachable: 1, WorstExitCode: 1, Duration: durationpb.New(0),
			FailedWorkspaces: []string{"a", "b"}, UnreachableWorkspaces: []string{"b"}},
			"dtmux: fleet f: 0/2 succeeded, 1 failed, 1 unreachable in 0s; worst exit code 1; not ok: a b"},
	} {
		if got := summaryLine(tc.s); got != tc.want {
			t.Errorf("got  %q\nwant %q", got, tc.want)
		}
	}
}
