package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

func sh(script string) *agentv1.CommandSpec {
	return &agentv1.CommandSpec{Argv: []string{"/bin/sh", "-c", script}}
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestExecOutputAttributedAndSummarised(t *testing.T) {
	f := startFleet(t, 20)
	c := newCollected()
	script := `echo "out $DTMUX_WORKSPACE"; echo "err $DTMUX_WORKSPACE" >&2
case $DTMUX_WORKSPACE in w03) exit 3;; w07) exit 7;; esac`
	sum, err := New(f, nil).Exec(testCtx(t), Spec{Selector: Selector{All: true}, Command: sh(script), MaxParallel: 5}, c.emit)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range f.names {
		if got, want := string(c.stdout[n]), "out "+n+"\n"; got != want {
			t.Errorf("%s stdout = %q, want %q", n, got, want)
		}
		if got, want := string(c.stderr[n]), "err "+n+"\n"; got != want {
			t.Errorf("%s stderr = %q, want %q", n, got, want)
		}
		if c.finals[n].Kind != KindExited {
			t.Errorf("%s final event kind %v, want exited", n, c.finals[n].Kind)
		}
	}
	if got := ExitCode(c.finals["w07"].Trailer); got != 7 {
		t.Errorf("w07 exit code %d, want 7", got)
	}
	want := Summary{RunID: c.runID, Total: 20, Succeeded: 18, Failed: 2, WorstExitCode: 7, FailedWorkspaces: []string{"w03", "w07"}}
	sum.Duration = 0
	if fmt.Sprint(sum) != fmt.Sprint(want) {
		t.Errorf("summary\n got %+v\nwant %+v", sum, want)
	}
	if !slices.Equal(c.selected, f.names) {
		t.Errorf("started lists %v, want %v", c.selected, f.names)
	}
	// Every target carries the fleet run id as its run id and label, and
	// the number of targets.
	for _, n := range f.names {
		r, err := f.agents[n].run(c.runID)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		if r.labels[LabelKey] != c.runID || r.labels[TargetsLabelKey] != "20" {
			t.Errorf("%s run labels %v", n, r.labels)
		}
	}
}

func TestUnreachableRetriedWithoutHoldingASlot(t *testing.T) {
	f := startFleet(t, 4, "dead")
	// "dead" comes first in the order below and there is one slot: if the
	// engine kept the slot while backing off, the others could not run
	// and the hook would time out.
	f.names = append([]string{"dead"}, f.names[:4]...)
	othersDone := make(chan struct{})
	delayed := false
	f.clientHook = func(ctx context.Context, ws string, call int) error {
		if ws == "dead" && call == 2 {
			select {
			case <-othersDone:
			case <-time.After(20 * time.Second):
				delayed = true
			}
		}
		return nil
	}
	c := newCollected()
	exited := 0
	c.onEvent = func(ev Event) error {
		if ev.Kind == KindExited {
			if exited++; exited == 4 {
				close(othersDone)
			}
		}
		return nil
	}
	sum, err := New(f, nil).Exec(testCtx(t), Spec{Selector: Selector{All: true}, Command: sh("true"), MaxParallel: 1, Retries: 2, RetryBackoff: time.Millisecond}, c.emit)
	if err != nil {
		t.Fatal(err)
	}
	if delayed {
		t.Error("the unreachable target held its slot while retrying")
	}
	ev := c.finals["dead"]
	if ev.Kind != KindUnreachable || ev.Attempts != 3 || f.calls("dead") != 3 {
		t.Errorf("dead: kind %v attempts %d client calls %d, want unreachable after 3", ev.Kind, ev.Attempts, f.calls("dead"))
	}
	if sum.Succeeded != 4 || sum.Unreachable != 1 || sum.Failed != 0 || sum.WorstExitCode != 0 || len(sum.FailedWorkspaces) != 0 || !slices.Equal(sum.UnreachableWorkspaces, []string{"dead"}) {
		t.Errorf("summary %+v", sum)
	}
}

func TestFailFastStopsNewStarts(t *testing.T) {
	for _, tc := range []struct {
		name        string
		maxFailures int
		failing     string // workspaces that fail, as a case pattern
		wantFailed  int
		wantSkipped int
	}{
		{"fail-fast", 1, "w01", 1, 8},
		{"max-failures 2", 2, "w01|w02|w03", 2, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFleet(t, 10)
			c := newCollected()
			script := fmt.Sprintf(`case $DTMUX_WORKSPACE in %s) exit 5;; esac`, tc.failing)
			sum, err := New(f, nil).Exec(testCtx(t), Spec{Selector: Selector{All: true}, Command: sh(script), MaxParallel: 1, MaxFailures: tc.maxFailures}, c.emit)
			if err != nil {
				t.Fatal(err)
			}
			if sum.Failed != tc.wantFailed || sum.Skipped != tc.wantSkipped || sum.Succeeded != 1 || sum.WorstExitCode != 5 {
				t.Errorf("summary %+v", sum)
			}
			started := 0
			for _, n := range f.names {
				started += int(f.agents[n].starts.Load())
				if c.finals[n].Kind == KindSkipped && f.agents[n].starts.Load() != 0 {
					t.Errorf("%s reported skipped but started", n)
				}
			}
			if started != 1+tc.wantFailed {
				t.Errorf("%d commands started, want %d", started, 1+tc.wantFailed)
			}
		})
	}
}

func TestCancelRunningKillsTheRest(t *testing.T) {
	f := startFleet(t, 4)
	c := newCollected()
	script := `case $DTMUX_WORKSPACE in w02) exit 2;; esac; exec sleep 60`
	sum, err := New(f, nil).Exec(testCtx(t), Spec{Selector: Selector{All: true}, Command: sh(script), MaxParallel: 4, MaxFailures: 1, CancelRunning: true}, c.emit)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Failed != 1 || sum.Cancelled != 3 || sum.WorstExitCode != 2 || !slices.Equal(sum.FailedWorkspaces, []string{"w02"}) || !slices.Equal(sum.CancelledWorkspaces, []string{"w00", "w01", "w03"}) {
		t.Errorf("summary %+v", sum)
	}
	for _, n := range []string{"w00", "w01", "w03"} {
		if r := c.finals[n].Trailer.GetReason(); r != agentv1.ExitReason_EXIT_REASON_KILLED {
			t.Errorf("%s ended %v, want killed", n, r)
		}
	}
}

func TestTargetTimeoutKills(t *testing.T) {
	f := startFleet(t, 2)
	c := newCollected()
	script := `case $DTMUX_WORKSPACE in w01) exec sleep 60;; esac`
	sum, err := New(f, nil).Exec(testCtx(t), Spec{Selector: Selector{All: true}, Command: sh(script), TargetTimeout: 2 * time.Second}, c.emit)
	if err != nil {
		t.Fatal(err)
	}
	tr := c.finals["w01"].Trailer
	if tr.GetReason() != agentv1.ExitReason_EXIT_REASON_TIMED_OUT || ExitCode(tr) != 124 {
		t.Errorf("w01 trailer %v, want timed out (124)", tr)
	}
	if sum.Succeeded != 1 || sum.Failed != 1 || sum.WorstExitCode != 124 {
		t.Errorf("summary %+v", sum)
	}
}

// A target whose agent hangs (the call never answers) is reported
// unreachable at its target deadline; the kill sent in case the start got
// through does not hold the report or the summary.
func TestTargetTimeoutBeforeStartReportsAtOnce(t *testing.T) {
	f := startFleet(t, 1)
	killTried := make(chan struct{})
	f.clientHook = func(ctx context.Context, ws string, call int) error {
		if ws != "w00" {
			return nil
		}
		if call == 1 {
			<-ctx.Done() // hung
			return ctx.Err()
		}
		close(killTried)
		<-ctx.Done() // still hung for the kill, until its grace ends
		return ctx.Err()
	}
	e := New(f, nil)
	c := newCollected()
	began := time.Now()
	sum, err := e.Exec(testCtx(t), Spec{Selector: Selector{All: true}, Command: sh("true"), TargetTimeout: 300 * time.Millisecond}, c.emit)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > killGrace/2 {
		t.Errorf("fleet exec took %v with a 300ms target timeout (kill grace %v)", took, killGrace)
	}
	if c.finals["w00"].Kind != KindUnreachable || sum.Unreachable != 1 {
		t.Errorf("final event %+v, summary %+v; want w00 unreachable", c.finals["w00"], sum)
	}
	select {
	case <-killTried:
	case <-time.After(10 * time.Second):
		t.Error("no kill was tried on the hung target")
	}
	e.Close() // the kill's grace ends it
}

func TestRetryAfterLostStartNeverRunsTwice(t *testing.T) {
	f := startFleet(t, 1)
	f.agents["w00"].dropAfterStart.Store(1)
	c := newCollected()
	sum, err := New(f, nil).Exec(testCtx(t), Spec{Selector: Selector{All: true}, Command: sh("echo once"), Retries: 1, RetryBackoff: time.Millisecond}, c.emit)
	if err != nil {
		t.Fatal(err)
	}
	if n := f.agents["w00"].starts.Load(); n != 1 {
		t.Errorf("command started %d times, want 1", n)
	}
	if got := string(c.stdout["w00"]); got != "once\n" || sum.Succeeded != 1 {
		t.Errorf("stdout %q, summary %+v", got, sum)
	}
	if f.calls("w00") != 2 {
		t.Errorf("client calls %d, want 2", f.calls("w00"))
	}
}

func TestBrokenStreamResumesFromOffsets(t *testing.T) {
	f := startFleet(t, 1)
	f.agents["w00"].dropAfterOutput.Store(1)
	c := newCollected()
	script := `echo first; sleep 0.2; echo second; echo oops >&2; sleep 0.2; echo third`
	sum, err := New(f, nil).Exec(testCtx(t), Spec{Selector: Selector{All: true}, Command: sh(script), Retries: 3, RetryBackoff: time.Millisecond}, c.emit)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(c.stdout["w00"]); got != "first\nsecond\nthird\n" {
		t.Errorf("stdout %q", got)
	}
	if got := string(c.stderr["w00"]); got != "oops\n" {
		t.Errorf("stderr %q", got)
	}
	if sum.Succeeded != 1 || f.agents["w00"].starts.Load() != 1 {
		t.Errorf("summary %+v, starts %d", sum, f.agents["w00"].starts.Load())
	}
}

func TestAttachAfterCallerWentAway(t *testing.T) {
	f := startFleet(t, 3)
	e := New(f, nil)
	c := newCollected()
	gone := errors.New("client went away")
	seen := 0
	c.onEvent = func(ev Event) error {
		if ev.Kind == KindOutput {
			if seen++; seen == 3 {
				return gone
			}
		}
		return nil
	}
	script := `echo "a $DTMUX_WORKSPACE"; sleep 0.5; echo "b $DTMUX_WORKSPACE"; exit 4`
	if _, err := e.Exec(testCtx(t), Spec{Selector: Selector{All: true}, Command: sh(script), RunID: "fleet-attach-1"}, c.emit); !errors.Is(err, gone) {
		t.Fatalf("exec: %v, want the emit error", err)
	}

	runs, unreachable, err := e.List(testCtx(t), Selector{}, 0)
	if err != nil || len(unreachable) != 0 || len(runs) != 1 || runs[0].RunID != "fleet-attach-1" || runs[0].Targets != 3 {
		t.Fatalf("list: %+v %v %v", runs, unreachable, err)
	}

	a := newCollected()
	sum, err := e.Attach(testCtx(t), AttachSpec{RunID: "fleet-attach-1", Follow: true}, a.emit)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range f.names {
		if got, want := string(a.stdout[n]), fmt.Sprintf("a %s\nb %s\n", n, n); got != want {
			t.Errorf("%s: %q, want %q", n, got, want)
		}
	}
	if sum.Total != 3 || sum.Failed != 3 || sum.WorstExitCode != 4 {
		t.Errorf("summary %+v", sum)
	}
	if _, err := e.Attach(testCtx(t), AttachSpec{RunID: "no-such-run"}, a.emit); !errors.Is(err, ErrRunNotFound) {
		t.Errorf("attach unknown run: %v", err)
	}
}

func TestExecRejects(t *testing.T) {
	f := startFleet(t, 1)
	e := New(f, nil)
	for _, spec := range []Spec{
		{Selector: Selector{All: true}},
		{Command: sh("true")},
		{Selector: Selector{All: true}, Command: sh("true"), RunID: "bad id"},
	} {
		if _, err := e.Exec(testCtx(t), spec, func(Event) error { return nil }); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", spec, err)
		}
	}
	if _, err := e.Exec(testCtx(t), Spec{Selector: Selector{Workspaces: []string{"nope"}}, Command: sh("true")}, func(Event) error { return nil }); !errors.Is(err, ErrNoTargets) {
		t.Errorf("no targets: %v", err)
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		tr   *agentv1.RunTrailer
		want int
	}{
		{&agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_EXITED, ExitCode: 0}, 0},
		{&agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_EXITED, ExitCode: 42}, 42},
		{&agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_SIGNALED, ExitCode: -1, Signal: 2}, 130},
		{&agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_TIMED_OUT, ExitCode: -1}, 124},
		{&agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_TIMED_OUT, ExitCode: -1, Signal: 15}, 124},
		{&agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_TIMED_OUT, ExitCode: -1, Signal: 9}, 124},
		{&agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_KILLED, ExitCode: -1, Signal: 9}, 137},
		{&agentv1.RunTrailer{Reason: agentv1.ExitReason_EXIT_REASON_AGENT_LOST, ExitCode: -1}, 255},
		{nil, 1},
	} {
		if got := ExitCode(tc.tr); got != tc.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.tr, got, tc.want)
		}
	}
}

// An attach reports how long the run took on its targets (earliest start
// to latest end, as the agents recorded them), not how long collecting a
// finished run took.
func TestAttachDurationIsTheRunsSpan(t *testing.T) {
	f := startFleet(t, 2)
	e := New(f, nil)
	if _, err := e.Exec(testCtx(t), Spec{Selector: Selector{All: true}, Command: sh("sleep 1"), RunID: "fleet-span-1"}, newCollected().emit); err != nil {
		t.Fatal(err)
	}
	a := newCollected()
	sum, err := e.Attach(testCtx(t), AttachSpec{RunID: "fleet-span-1", Follow: true}, a.emit)
	if err != nil {
		t.Fatal(err)
	}
	var first, last time.Time
	for _, n := range f.names {
		c, err := f.Client(testCtx(t), n)
		if err != nil {
			t.Fatal(err)
		}
		r, err := c.GetRun(testCtx(t), &agentv1.GetRunRequest{RunId: "fleet-span-1"})
		if err != nil {
			t.Fatal(err)
		}
		if st := r.GetRun().GetStartedAt().AsTime(); first.IsZero() || st.Before(first) {
			first = st
		}
		if end := a.finals[n].Trailer.GetEndedAt().AsTime(); end.After(last) {
			last = end
		}
	}
	if want := last.Sub(first); sum.Duration != want || want < time.Second {
		t.Errorf("attach summary duration %v, want the run's span %v (the command slept 1s)", sum.Duration, want)
	}
}

// Attach counts the run's targets only: a workspace that was never a
// target, reachable or not, is not part of the run's result. Here the run
// had one target among six workspaces, four of them unreachable.
func TestAttachCountsOnlyTheRunsTargets(t *testing.T) {
	f := startFleet(t, 2, "dead1", "dead2", "dead3", "dead4")
	e := New(f, nil)
	if _, err := e.Exec(testCtx(t), Spec{Selector: Selector{Workspaces: []string{"w00"}}, Command: sh("echo done"), RunID: "fleet-only-1"}, newCollected().emit); err != nil {
		t.Fatal(err)
	}
	a := newCollected()
	sum, err := e.Attach(testCtx(t), AttachSpec{RunID: "fleet-only-1", Follow: true}, a.emit)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Total != 1 || sum.Succeeded != 1 || sum.Unreachable != 0 || sum.Failed != 0 || len(sum.FailedWorkspaces) != 0 {
		t.Errorf("summary %+v, want 1/1 succeeded and nothing else", sum)
	}
	if !slices.Equal(a.selected, []string{"w00"}) || len(a.finals) != 1 || a.finals["w00"].Kind != KindExited {
		t.Errorf("started lists %v, final events %v; want w00 only", a.selected, a.finals)
	}
	if string(a.stdout["w00"]) != "done\n" {
		t.Errorf("w00 stdout %q", a.stdout["w00"])
	}
}

// A run whose targets are not known (it carries no target count: started
// by an older controller or another client) counts the workspaces found
// to have it; the ones that could not be asked are reported not asked,
// never as failures of the run.
func TestAttachUnknownTargetsDoesNotCountNotAsked(t *testing.T) {
	f := startFleet(t, 2, "dead1", "dead2")
	e := New(f, nil)
	if _, _, err := f.agents["w00"].startRun(&agentv1.ExecStart{Command: sh("echo old"), RunId: "fleet-old-1", Detach: true, Labels: map[string]string{LabelKey: "fleet-old-1"}}); err != nil {
		t.Fatal(err)
	}
	a := newCollected()
	var notAsked []string
	a.onEvent = func(ev Event) error {
		if ev.Kind == KindNotAsked {
			notAsked = append(notAsked, ev.Workspace)
		}
		return nil
	}
	sum, err := e.Attach(testCtx(t), AttachSpec{RunID: "fleet-old-1", Follow: true}, a.emit)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Total != 1 || sum.Succeeded != 1 || sum.Unreachable != 0 || sum.NotFound != 0 || len(sum.FailedWorkspaces)+len(sum.UnreachableWorkspaces) != 0 {
		t.Errorf("summary %+v, want 1/1 succeeded", sum)
	}
	if want := []string{"dead1", "dead2"}; !slices.Equal(sum.NotAsked, want) || !slices.Equal(notAsked, want) {
		t.Errorf("not asked: summary %v, events %v; want %v", sum.NotAsked, notAsked, want)
	}
	if len(a.finals) != 1 {
		t.Errorf("final events %v, want w00's only", a.finals)
	}
}

// A target the run is known to have but no asked agent holds is counted
// (not found), while the workspaces that could not be asked, which may
// hold it, are reported not asked. An attach narrowed by a selector
// counts the targets it selects.
func TestAttachTargetsNotFound(t *testing.T) {
	f := startFleet(t, 3, "dead")
	e := New(f, nil)
	// dead is a target, unreachable: the run never started there.
	if _, err := e.Exec(testCtx(t), Spec{Selector: Selector{Workspaces: []string{"w00", "w01", "dead"}}, Command: sh("true"), RunID: "fleet-nf-1"}, newCollected().emit); err != nil {
		t.Fatal(err)
	}
	sum, err := e.Attach(testCtx(t), AttachSpec{RunID: "fleet-nf-1", Follow: true}, newCollected().emit)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Total != 3 || sum.Succeeded != 2 || sum.NotFound != 1 || sum.Unreachable != 0 || !slices.Equal(sum.NotAsked, []string{"dead"}) {
		t.Errorf("summary %+v, want 2/3 succeeded, 1 not found, dead not asked", sum)
	}
	sum, err = e.Attach(testCtx(t), AttachSpec{RunID: "fleet-nf-1", Selector: Selector{Workspaces: []string{"w01"}}, Follow: true}, newCollected().emit)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Total != 1 || sum.Succeeded != 1 || sum.NotFound != 0 || len(sum.NotAsked) != 0 {
		t.Errorf("attach --ws w01: summary %+v, want 1/1 succeeded", sum)
	}
	_, err = e.Attach(testCtx(t), AttachSpec{RunID: "fleet-nope"}, newCollected().emit)
	if !errors.Is(err, ErrRunNotFound) || !strings.Contains(err.Error(), "asked 3 workspaces; 1 could not be asked") {
		t.Errorf("attach unknown run: %v", err)
	}
}
