package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestWsLs(t *testing.T) {
	addr, _ := startFake(t)
	r := dtmux(t, addr, "", "ws", "ls")
	// An agent without a connection is idle (dialled on first use), not
	// down; a failed one shows why: the cause at the end of its first
	// line.
	want := "NAME   STATE    AGENT                      LABELS\n" +
		"ws     started  connected v1               a=1,team=web\n" +
		"other  stopped  idle                       -\n" +
		"far    started  error: connection refused  -\n"
	if r.code != 0 || r.stdout != want {
		t.Errorf("ws ls:\n%s\nwant:\n%s(code %d, stderr %q)", r.stdout, want, r.code, r.stderr)
	}
	r = dtmux(t, addr, "", "ws", "ls", "-o", "json")
	var got struct {
		Workspaces []struct {
			Name   string            `json:"name"`
			State  string            `json:"state"`
			Labels map[string]string `json:"labels"`
		} `json:"workspaces"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("ws ls -o json: %v\n%s", err, r.stdout)
	}
	if len(got.Workspaces) != 3 || got.Workspaces[0].Name != "ws" || got.Workspaces[0].State != "WORKSPACE_STATE_STARTED" || got.Workspaces[0].Labels["team"] != "web" {
		t.Errorf("json = %+v", got)
	}
	if r := dtmux(t, addr, "", "ws", "ls", "-o", "yaml"); r.code != ExitUsage {
		t.Errorf("-o yaml: %+v", r)
	}
	if r := dtmux(t, addr, "", "ws", "ls", "--label", "nolabel"); r.code != ExitUsage {
		t.Errorf("--label nolabel: %+v", r)
	}
}

func TestRunsLogsFromOffset(t *testing.T) {
	addr, _ := startFake(t)
	r := dtmux(t, addr, "", "runs", "logs", "ws", "r1", "--from", "4", "-f")
	if r.stdout != "456789" || r.code != 7 {
		t.Errorf("got %+v, want the rest from offset 4 and the run's exit code 7", r)
	}
	r = dtmux(t, addr, "", "runs", "logs", "ws", "r1")
	if r.stdout != "0123456789" || r.code != 0 {
		t.Errorf("without -f: %+v", r)
	}
	r = dtmux(t, addr, "", "runs", "logs", "ws", "nope")
	if r.code != ExitFailure || r.stderr != "dtmux: run \"nope\" not found\n" {
		t.Errorf("unknown run: %+v", r)
	}
	if r := dtmux(t, addr, "", "runs", "kill", "ws", "r1", "--signal", "BOGUS"); r.code != ExitUsage || !strings.Contains(r.stderr, "unknown signal") {
		t.Errorf("bad signal: %+v", r)
	}
}

func TestRunScript(t *testing.T) {
	addr, f := startFake(t)
	script := filepath.Join(t.TempDir(), "build.sh")
	body := "#!/bin/sh\necho hi\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}

	r := dtmux(t, addr, "", "run", "ws", script, "3")
	if r.code != 3 || !strings.Contains(r.stdout, "READY") {
		t.Errorf("run: %+v, want exit 3 and the output", r)
	}
	if strings.Contains(r.stderr, "stdin") {
		t.Errorf("run with empty stdin: stderr %q, want no note", r.stderr)
	}
	if len(f.files) != 1 {
		t.Fatalf("files = %v", f.files)
	}
	for p, data := range f.files {
		if !strings.HasPrefix(p, ".dtmux/scripts/") || !strings.HasSuffix(p, "-build.sh") || string(data) != body {
			t.Errorf("uploaded %q = %q", p, data)
		}
	}
	req := f.rins[0]
	if req.GetSession() != DefaultRunSession || !req.GetCreateSession() || !regexp.MustCompile(`^build-[0-9a-f]{4}$`).MatchString(req.GetWindowName()) || !req.GetCloseWindow() ||
		!strings.HasPrefix(req.GetCommand().GetArgv()[0], "/ws/.dtmux/scripts/") || req.GetCommand().GetArgv()[1] != "3" {
		t.Errorf("RunInSession request = %v", req)
	}

	// --wait-for matches across chunk boundaries ("RE" + "ADY") and returns
	// before the trailer's exit code 3; the hint names the run's own
	// window, which another run of the same script does not share.
	r = dtmux(t, addr, "", "run", "ws", "--keep-window", "--wait-for", "^READY$", script, "3")
	win := f.rins[1].GetWindowName()
	if r.code != 0 || strings.Contains(r.stdout, "step 100%") || !strings.Contains(r.stderr, "keeps running") ||
		!strings.Contains(r.stderr, "dtmux session logs ws "+DefaultRunSession+":"+win+" -f") {
		t.Errorf("--wait-for: %+v", r)
	}
	if f.rins[1].GetCloseWindow() || win == req.GetWindowName() {
		t.Errorf("--keep-window run: window %q (first run's %q), close_window %v", win, req.GetWindowName(), f.rins[1].GetCloseWindow())
	}

	// --progress without a terminal prints plain lines, split across chunks.
	r = dtmux(t, addr, "", "run", "ws", "--progress", `(\d+)%`, script, "0")
	if r.code != 0 || r.stderr != "progress: 10%\nprogress: 50%\nprogress: 100%\n" {
		t.Errorf("--progress: %+v", r)
	}

	for name, args := range map[string][]string{
		"no group":       {"run", "ws", "--progress", `\d+%`, script},
		"bad regex":      {"run", "ws", "--wait-for", `(`, script},
		"missing script": {"run", "ws", filepath.Join(t.TempDir(), "none.sh")},
	} {
		if r := dtmux(t, addr, "", args...); r.code != ExitUsage {
			t.Errorf("%s: %+v", name, r)
		}
	}
	if r := dtmux(t, addr, "input", "run", "ws", script, "3"); !strings.Contains(r.stderr, "the script reads its window's terminal, not this stdin") {
		t.Errorf("run with piped stdin: stderr %q, want a note that it is not read", r.stderr)
	}
}

func TestVersion(t *testing.T) {
	addr, _ := startFake(t)
	r := dtmux(t, addr, "", "version")
	if r.code != 0 || r.stdout != "dtmux dev\ncontroller v9.9.9 at "+addr+"\n" {
		t.Errorf("version: %+v", r)
	}
	r = dtmux(t, "unix:///nonexistent/c.sock", "", "version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "dtmux dev\ncontroller: not reachable (no controller at") {
		t.Errorf("version without controller: %+v", r)
	}
}

func TestUnimplementedIsOneLine(t *testing.T) {
	addr, _ := startFake(t)
	r := dtmux(t, addr, "", "ps", "ws")
	if r.code != ExitFailure || !strings.HasPrefix(r.stderr, "dtmux: not implemented by the server: ") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("got %+v", r)
	}
}

func TestCompletion(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		r := dtmux(t, "unix:///nonexistent", "", "completion", sh)
		if r.code != 0 || !strings.Contains(r.stdout, "dtmux") {
			t.Errorf("completion %s: code %d, %d bytes", sh, r.code, len(r.stdout))
		}
	}
}

func TestCompleteWorkspaces(t *testing.T) {
	addr, _ := startFake(t)
	r := dtmux(t, addr, "", "__complete", "exec", "")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "ws\nother\nfar\n:4\n") {
		t.Errorf("exec WS completion: %+v", r)
	}
	r = dtmux(t, addr, "", "__complete", "session", "ls", "o")
	if !strings.Contains(r.stdout, "other") {
		t.Errorf("session ls WS completion: %+v", r)
	}
	// The second argument: sessions of WS, or its runs with their state
	// and command; nothing after that, and nothing for a new name.
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"attach", "ws", ""}, "dbg\nscripts\n:4\n"},
		{[]string{"session", "kill", "ws", ""}, "dbg\nscripts\n:4\n"},
		{[]string{"session", "capture", "ws", "d"}, "dbg\nscripts\n:4\n"},
		{[]string{"runs", "logs", "ws", ""}, "r1\trunning: make test\nr2\texited: true\n:4\n"},
		{[]string{"runs", "kill", "ws", ""}, "r1\trunning: make test\nr2\texited: true\n:4\n"},
		{[]string{"runs", "kill", "ws", "r1", ""}, ":4\n"},
		{[]string{"session", "new", "ws", ""}, ":0\n"},
		{[]string{"attach", "nope", ""}, ":4\n"},
	} {
		r := dtmux(t, addr, "", append([]string{"__complete"}, tt.args...)...)
		if r.code != 0 || r.stdout != tt.want {
			t.Errorf("complete %q: %q, want %q (stderr %q)", tt.args, r.stdout, tt.want, r.stderr)
		}
	}
}

func TestSessionSend(t *testing.T) {
	addr, f := startFake(t)
	text := "a;b $(x) `y` ;"
	if r := dtmux(t, addr, "", "session", "send", "ws", "s1:build", "--enter", text, "two"); r.code != 0 {
		t.Fatalf("%+v", r)
	}
	if r := dtmux(t, addr, "raw\x00bytes", "session", "send", "ws", "s1", "--stdin", "--keys", "C-c", "Up"); r.code != 0 {
		t.Fatalf("%+v", r)
	}
	a, b := f.sent[0], f.sent[1]
	if a.GetTarget().GetSession() != "s1" || a.GetTarget().GetWindow() != "build" || a.GetText() != text+" two" || !a.GetEnter() || len(a.GetKeys()) != 0 {
		t.Errorf("text send = %v", a)
	}
	if string(b.GetData()) != "raw\x00bytes" || strings.Join(b.GetKeys(), ",") != "C-c,Up" || b.GetText() != "" || b.GetEnter() {
		t.Errorf("keys send = %v", b)
	}
	if r := dtmux(t, addr, "", "session", "send", "ws", "s1"); r.code != ExitUsage {
		t.Errorf("nothing to send: %+v", r)
	}
}

func TestUnknownSubcommands(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, "dtmux: unknown command \"bogus\" (did you mean \"logs\"?)\n"},
		{[]string{"ws", "bogus"}, "dtmux: unknown command \"bogus\" for \"dtmux ws\" (see dtmux ws --help)\n"},
		{[]string{"ws", "lss"}, "dtmux: unknown command \"lss\" for \"dtmux ws\" (did you mean \"ls\"?)\n"},
		{[]string{"session", "bogus"}, "dtmux: unknown command \"bogus\" for \"dtmux session\" (did you mean \"logs\"?)\n"},
		{[]string{"runs", "bogus"}, "dtmux: unknown command \"bogus\" for \"dtmux runs\" (did you mean \"logs\"?)\n"},
		{[]string{"fleet", "bogus"}, "dtmux: unknown command \"bogus\" for \"dtmux fleet\" (see dtmux fleet --help)\n"},
		{[]string{"completion", "fish2"}, "dtmux: unknown command \"fish2\" for \"dtmux completion\" (did you mean \"fish\"?)\n"},
	} {
		r := dtmux(t, "unix:///nonexistent", "", tt.args...)
		if r.code != ExitUsage || r.stderr != tt.want || r.stdout != "" {
			t.Errorf("dtmux %q: %+v, want exit %d and %q", tt.args, r, ExitUsage, tt.want)
		}
	}
	// Alone, a group prints its help.
	for _, args := range [][]string{{"ws"}, {"session"}, {}} {
		r := dtmux(t, "unix:///nonexistent", "", args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Available Commands") {
			t.Errorf("dtmux %q: %+v, want the help", args, r)
		}
	}
}

func TestTidyErrors(t *testing.T) {
	addr, _ := startFake(t)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"ws", "rm"}, "dtmux: ws rm: want NAME, got 0 argument(s)\n"},
		{[]string{"exec"}, "dtmux: exec: want WS -- CMD [ARGS...]\n"},
		{[]string{"ws", "ls", "--label", "bad"}, "dtmux: --label \"bad\": want KEY=VALUE\n"},
		{[]string{"ws", "create", "w", "--label", "bad"}, "dtmux: --label \"bad\": want KEY=VALUE\n"},
		{[]string{"ws", "create", "w", "--opt", "bad"}, "dtmux: --opt \"bad\": want KEY=VALUE\n"},
		{[]string{"fleet", "ls", "--label", "bad"}, "dtmux: --label \"bad\": want KEY=VALUE\n"},
		{[]string{"fleet", "exec", "--all", "-l", "team=web", "--", "true"}, "dtmux: --all selects every started workspace: give it alone, or --ws / --label without it\n"},
		{[]string{"exec", "ws", "ls", "-la"}, "dtmux: unknown shorthand flag: 'l' in -la (put -- before the command: dtmux exec WS -- CMD ARGS...)\n"},
		{[]string{"run", "ws", "x.sh", "--bogus"}, "dtmux: unknown flag: --bogus (put -- before the script's arguments: dtmux run WS SCRIPT -- ARGS...)\n"},
	} {
		r := dtmux(t, addr, "", tt.args...)
		if r.code != ExitUsage || r.stderr != tt.want {
			t.Errorf("dtmux %q: %+v, want exit %d and %q", tt.args, r, ExitUsage, tt.want)
		}
	}

	// A services file with a typo names the line and the field, not a Go
	// type.
	file := filepath.Join(t.TempDir(), "services.yaml")
	if err := os.WriteFile(file, []byte("services:\n  - name: a\n    command: x\nservics: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := dtmux(t, addr, "", "up", "ws", "-f", file)
	if want := "dtmux: " + file + " line 4: unknown field \"servics\"\n"; r.code != ExitUsage || r.stderr != want {
		t.Errorf("up with a typo: %+v, want %q", r, want)
	}
}

func TestLabelsValidated(t *testing.T) {
	addr, f := startFake(t)
	for _, args := range [][]string{
		{"ws", "create", "w3", "--label", "bad label=x"},
		{"ws", "create", "w3", "--label", "k=line\nbreak"},
		{"ws", "ls", "--label", strings.Repeat("k", 64) + "=v"},
		{"runs", "ls", "ws", "--label", "k=" + strings.Repeat("v", 257)},
	} {
		r := dtmux(t, addr, "", args...)
		if r.code != ExitUsage || !strings.HasPrefix(r.stderr, "dtmux: --label \"") || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("dtmux %q: %+v, want a one-line --label error, exit %d", args, r, ExitUsage)
		}
	}
	if n := f.callCount(); n != 0 {
		t.Errorf("%d calls reached the server; invalid labels must be refused before any call", n)
	}
}

func TestJSONOutput(t *testing.T) {
	addr, _ := startFake(t)
	decode := func(args []string, v any) {
		t.Helper()
		r := dtmux(t, addr, "", args...)
		if r.code != 0 {
			t.Fatalf("dtmux %q: %+v", args, r)
		}
		if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
			t.Fatalf("dtmux %q: not JSON: %v\n%s", args, err, r.stdout)
		}
	}

	var v struct {
		Client     string `json:"client"`
		Controller struct {
			Address string `json:"address"`
			Version string `json:"version"`
		} `json:"controller"`
	}
	decode([]string{"version", "-o", "json"}, &v)
	if v.Client != "dev" || v.Controller.Version != "v9.9.9" || v.Controller.Address != addr {
		t.Errorf("version -o json = %+v", v)
	}

	var run struct {
		RunID string `json:"run_id"`
	}
	decode([]string{"exec", "-d", "-o", "json", "ws", "--run-id", "bg-1", "--", "both"}, &run)
	if run.RunID != "bg-1" {
		t.Errorf("exec -d -o json = %+v", run)
	}

	var sess struct {
		Name    string `json:"name"`
		Windows []struct {
			Name string `json:"name"`
		} `json:"windows"`
	}
	decode([]string{"session", "new", "ws", "s1", "-o", "json"}, &sess)
	if sess.Name != "s1" || len(sess.Windows) != 1 || sess.Windows[0].Name != "main" {
		t.Errorf("session new -o json = %+v", sess)
	}

	var capture struct {
		Content     []byte `json:"content"`
		HistorySize int    `json:"history_size"`
	}
	decode([]string{"session", "capture", "ws", "s1", "-o", "json"}, &capture)
	if capture.HistorySize != fakePaneHistory || !strings.HasPrefix(string(capture.Content), "s1\n") {
		t.Errorf("session capture -o json = %+v", capture)
	}

	if r := dtmux(t, addr, "", "version", "-o", "yaml"); r.code != ExitUsage {
		t.Errorf("version -o yaml: %+v", r)
	}
}

func TestCaptureLines(t *testing.T) {
	addr, _ := startFake(t)
	for _, tt := range []struct {
		args []string
		want string
	}{
		// The last N lines of the content: screen lines first, then
		// scrollback above them; blank rows below the output don't count.
		{[]string{"--lines", "3"}, "s3\ns4\ns5\n"},
		{[]string{"-n", "7"}, "h49\nh50\ns1\ns2\ns3\ns4\ns5\n"},
		// --history is the old meaning: scrollback above the whole screen.
		{[]string{"--history", "2"}, "h49\nh50\ns1\ns2\ns3\ns4\ns5\n" + strings.Repeat("\n", 19)},
	} {
		r := dtmux(t, addr, "", append([]string{"session", "capture", "ws", "s1"}, tt.args...)...)
		if r.code != 0 || r.stdout != tt.want {
			t.Errorf("capture %q = %q (exit %d, %s), want %q", tt.args, r.stdout, r.code, r.stderr, tt.want)
		}
	}
	r := dtmux(t, addr, "", "session", "capture", "ws", "s1", "-n", "1000")
	if got := strings.Count(r.stdout, "\n"); got != fakePaneHistory+fakePaneScreen || !strings.HasPrefix(r.stdout, "h1\n") {
		t.Errorf("-n 1000: %d lines, want all %d", got, fakePaneHistory+fakePaneScreen)
	}
}
