package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/agent/daemon"
	"github.com/dtmux/dtmux/controller/bootstrap"
	"github.com/dtmux/dtmux/internal/sshtest"
	"github.com/dtmux/dtmux/internal/testbin"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// The Daytona provider end to end: the real controller, agent and CLI, the
// stand-in daytona CLI (controller/provider/daytona/testdata), a loopback
// stand-in of the one Daytona API call (ssh-access), and the real sshd.

// Secrets the stand-ins hand out; none may reach the CLI's output or the
// controller's log.
const (
	daytonaAPIKey    = "dtn-e2e-api-key-5f3a9c"
	daytonaWSAPIKey  = "sk-e2e-workspace-apikey-77b1"
	daytonaEnvSecret = "e2e-envvar-secret-c0ffee"
)

var (
	standinOnce sync.Once
	standinPath string
	standinErr  error
)

// daytonaStandin builds the stand-in daytona CLI once per test process,
// next to the real binaries.
func daytonaStandin(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(testbin.Dir(t), "standin")
	standinOnce.Do(func() {
		standinPath = filepath.Join(dir, "daytona")
		cmd := exec.Command("go", "build", "-o", standinPath, "./controller/provider/daytona/testdata/daytona-standin")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			standinErr = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if standinErr != nil {
		t.Fatalf("build the daytona stand-in: %v", standinErr)
	}
	return standinPath
}

// daytonaEnv is one test's Daytona: the stand-in's state, the sshd its
// workspaces live on, the API stand-in, and the controller.
type daytonaEnv struct {
	c     *Controller
	srv   *sshtest.Server
	state string
	api   *httptest.Server
	mints atomic.Int64
}

// daytonaOptions tune startDaytona.
type daytonaOptions struct {
	// version is what `daytona version` reports.
	version string
	// mutate edits the stand-in's initial state.
	mutate func(st map[string]any)
	// args are extra controller flags.
	args []string
	// noAPIKey starts the controller without an API key.
	noAPIKey bool
	// keyFile passes the API key in --daytona-api-key-file, not the
	// environment.
	keyFile bool
	// apiURL replaces the API stand-in's URL.
	apiURL string
	// wrongAPIKey gives the controller a key the API refuses.
	wrongAPIKey bool
}

func startDaytona(t *testing.T, o daytonaOptions) *daytonaEnv {
	t.Helper()
	bin := daytonaStandin(t)
	d := &daytonaEnv{srv: sshtest.Start(t, sshtest.Options{})}
	// The agent daemon the hops start outlives them, and its tmux server
	// outlives it (both by design): stop them before the server's home
	// goes. Registered before the controller, so this runs after the
	// controller (and its hops) stopped.
	t.Cleanup(func() {
		if err := daemon.Stop(remoteStateDir(d.srv), 15*time.Second); err != nil {
			t.Errorf("stop the remote agent daemon: %v", err)
		}
		killTmuxServers(t, remoteStateDir(d.srv))
	})

	dir := shortTempDir(t)
	d.state = filepath.Join(dir, "daytona.json")
	st := map[string]any{
		"version": o.version,
		"ssh":     append(append([]string{"ssh"}, d.srv.Args()...), "-T", d.srv.Destination()),
	}
	sandboxes := !strings.HasPrefix(o.version, "v0.5") && !strings.HasPrefix(o.version, "v0.2")
	if sandboxes {
		var page struct {
			Items []map[string]any `json:"items"`
		}
		readSample(t, "list-sandbox.json", &page)
		page.Items = append(page.Items, map[string]any{
			"id": "9f9f9f9f-0000-4000-8000-000000000001", "name": "broken", "state": "error",
			"errorReason": "disk quota exceeded", "labels": map[string]any{"team": "ops"}, "target": "eu",
		})
		st["sandboxes"] = page.Items
	} else {
		var ws []map[string]any
		sample := "list-v0.53.json"
		switch {
		case strings.HasPrefix(o.version, "v0.26"):
			sample = "list-v0.26.json"
		case strings.HasPrefix(o.version, "v0.51"):
			sample = "list-v0.51.json"
		}
		readSample(t, sample, &ws)
		// The server blanks these for the CLI's own key; a stand-in that
		// does not shows that dtmux never passes them on.
		for _, w := range ws {
			if projects, ok := w["projects"].([]any); ok {
				// Before v0.52 the environment is the projects'.
				for _, p := range projects {
					p.(map[string]any)["envVars"] = map[string]any{"DB_PASSWORD": daytonaEnvSecret}
				}
				continue
			}
			w["apiKey"] = daytonaWSAPIKey
			w["envVars"] = map[string]any{"DB_PASSWORD": daytonaEnvSecret}
		}
		st["workspaces"] = ws
	}
	if o.mutate != nil {
		o.mutate(st)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.state, b, 0o600); err != nil {
		t.Fatal(err)
	}

	d.api = httptest.NewServer(http.HandlerFunc(d.serveAPI))
	t.Cleanup(d.api.Close)
	apiURL := d.api.URL + "/api"
	if o.apiURL != "" {
		apiURL = o.apiURL
	}
	key := daytonaAPIKey
	var args []string
	if o.noAPIKey || o.keyFile {
		key = ""
	}
	if o.wrongAPIKey {
		key = "dtn_revoked0123456789"
	}
	if o.keyFile {
		f := filepath.Join(dir, "api-key")
		if err := os.WriteFile(f, []byte(daytonaAPIKey+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--daytona-api-key-file", f)
	}
	env := []string{"DAYTONA_STANDIN=" + d.state, "DAYTONA_API_URL=" + apiURL, "DAYTONA_API_KEY=" + key}
	if sandboxes {
		// The gateway takes the token as the user name and no client
		// auth; the test's sshd wants the test's key. The user's ssh
		// config is where such things go, so a PATH entry stands in for
		// it: an ssh that reads the test's client config.
		real := testbin.RequireTool(t, "ssh")
		wrap := filepath.Join(dir, "bin")
		if err := os.MkdirAll(wrap, 0o700); err != nil {
			t.Fatal(err)
		}
		// A config given with -F (dtmux's for a sandbox, which includes
		// the user's) includes it as the user's would be.
		script := fmt.Sprintf(`#!/bin/sh
prev=
for a in "$@"; do
	if [ "$prev" = -F ]; then printf 'Include %%s\n' %s >>"$a"; fi
	prev=$a
done
exec %s -F %s "$@"
`, d.srv.Config, real, d.srv.Config)
		if err := os.WriteFile(filepath.Join(wrap, "ssh"), []byte(script), 0o700); err != nil {
			t.Fatal(err)
		}
		env = append(env, "PATH="+wrap+string(os.PathListSeparator)+os.Getenv("PATH"))
	}
	args = append(append(args, "--daytona", bin, "--agent-dir", testbin.Dir(t)), o.args...)
	d.c = StartController(t, ControllerOptions{Provider: "daytona", Args: args, Env: env})
	return d
}

func readSample(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "controller", "provider", "daytona", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// edit changes the stand-in's state under its lock.
func (d *daytonaEnv) edit(t *testing.T, f func(st map[string]any)) {
	t.Helper()
	err := d.locked(func() {
		var st map[string]any
		b, err := os.ReadFile(d.state)
		if err == nil {
			err = json.Unmarshal(b, &st)
		}
		if err != nil {
			t.Error(err)
			return
		}
		f(st)
		if b, err = json.Marshal(st); err == nil {
			err = os.WriteFile(d.state, b, 0o600)
		}
		if err != nil {
			t.Error(err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// locked runs f holding the stand-in's lock on its state.
func (d *daytonaEnv) locked(f func()) error {
	l, err := os.OpenFile(d.state+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer l.Close()
	if err := syscall.Flock(int(l.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	f()
	return nil
}

// serveAPI answers POST /api/sandbox/{id}/ssh-access as Daytona's API
// does, with an sshCommand for the test's sshd; the token is the login
// name there.
func (d *daytonaEnv) serveAPI(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+daytonaAPIKey {
		http.Error(w, `{"message":"Unauthorized","statusCode":401}`, http.StatusUnauthorized)
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if r.Method != http.MethodPost || len(parts) != 4 || parts[0] != "api" || parts[1] != "sandbox" || parts[3] != "ssh-access" {
		http.Error(w, `{"message":"Cannot `+r.Method+` `+r.URL.Path+`","statusCode":404}`, http.StatusNotFound)
		return
	}
	var st struct {
		Sandboxes []map[string]any `json:"sandboxes"`
	}
	var found map[string]any
	if err := d.locked(func() {
		b, _ := os.ReadFile(d.state)
		json.Unmarshal(b, &st)
	}); err != nil {
		http.Error(w, `{"message":"stand-in state unreadable","statusCode":500}`, http.StatusInternalServerError)
		return
	}
	for _, s := range st.Sandboxes {
		if s["id"] == parts[2] || s["name"] == parts[2] {
			found = s
		}
	}
	if found == nil {
		http.Error(w, `{"message":"Sandbox with ID or name `+parts[2]+` not found","statusCode":404}`, http.StatusNotFound)
		return
	}
	n := d.mints.Add(1)
	now := time.Now().UTC()
	json.NewEncoder(w).Encode(map[string]any{
		"id": fmt.Sprintf("tok-%d", n), "sandboxId": found["id"], "token": d.srv.User,
		"expiresAt": now.Add(time.Hour).Format(time.RFC3339Nano), "createdAt": now.Format(time.RFC3339Nano),
		"updatedAt":  now.Format(time.RFC3339Nano),
		"sshCommand": fmt.Sprintf("ssh -p %d %s@127.0.0.1", d.srv.Port, d.srv.User),
	})
}

// hops are the ssh processes carrying an agent to this test's sshd.
func (d *daytonaEnv) hops() []int {
	pids := bootstrap.SSHProcesses(d.srv.Config, "--stdio")
	for _, pid := range bootstrap.SSHProcesses(fmt.Sprintf("\x00%d\x00", d.srv.Port), "--stdio") {
		if !slices.Contains(pids, pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// noSecrets fails when a secret shows in s.
func noSecrets(t *testing.T, what, s string) {
	t.Helper()
	for _, secret := range []string{daytonaAPIKey, daytonaWSAPIKey, daytonaEnvSecret} {
		if strings.Contains(s, secret) {
			t.Errorf("%s shows a secret (%q)", what, secret)
		}
	}
}

// wsJSON is a workspace as `dtmux ws ls -o json` prints it.
type wsJSON struct {
	Name        string            `json:"name"`
	Provider    string            `json:"provider"`
	Labels      map[string]string `json:"labels"`
	State       string            `json:"state"`
	StateDetail string            `json:"state_detail"`
	Attributes  map[string]string `json:"attributes"`
}

func wsList(t *testing.T, c *Controller) map[string]wsJSON {
	t.Helper()
	r := mustCLI(t, c, "ws", "ls", "-o", "json")
	noSecrets(t, "ws ls -o json", r.stdout+r.stderr)
	var got struct {
		Workspaces []wsJSON `json:"workspaces"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("ws ls -o json: %v\n%s", err, r.stdout)
	}
	m := map[string]wsJSON{}
	for _, w := range got.Workspaces {
		m[w.Name] = w
	}
	return m
}

func wsOne(t *testing.T, r cliResult) wsJSON {
	t.Helper()
	var w wsJSON
	if err := json.Unmarshal([]byte(r.stdout), &w); err != nil {
		t.Fatalf("workspace JSON: %v\n%s", err, r.stdout)
	}
	return w
}

// execChecks runs the CLI's exec through the hop: exit codes, stdout and
// stderr apart, stdin; then many calls over the one hop.
func execChecks(t *testing.T, d *daytonaEnv, ws string) {
	t.Helper()
	r := dtmuxCLI(t, d.c, nil, "exec", ws, "--", "sh", "-c", "echo out; echo err >&2; echo out2; exit 3")
	if r.code != 3 || r.stdout != "out\nout2\n" || r.stderr != "err\n" {
		t.Fatalf("exec: exit %d stdout %q stderr %q\n%s", r.code, r.stdout, r.stderr, d.c.Log())
	}
	in := "piped\nstdin without newline"
	if r := dtmuxCLI(t, d.c, strings.NewReader(in), "exec", ws, "--", "cat"); r.code != 0 || r.stdout != in {
		t.Fatalf("stdin: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if r := dtmuxCLI(t, d.c, nil, "exec", ws, "--", "sh", "-c", "kill -TERM $$"); r.code != 128+int(syscall.SIGTERM) {
		t.Fatalf("signaled: exit %d, want %d", r.code, 128+int(syscall.SIGTERM))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := d.c.Agent(ws)
	for i := 0; i < 50; i++ {
		if out, _, tr, err := Exec(ctx, a, nil, "echo", strconv.Itoa(i)); err != nil || tr.GetExitCode() != 0 || string(out) != strconv.Itoa(i)+"\n" {
			t.Fatalf("exec %d: %q %v", i, out, err)
		}
	}
	if pids := d.hops(); len(pids) != 1 {
		t.Fatalf("want exactly one hop for %s after many execs, got %v", ws, pids)
	}
}

// hopKilledMidStream kills the hop while a detached run streams: the
// stream fails with Unavailable, the pool redials, and the run is
// reattached with all of its output from the same agent.
func hopKilledMidStream(t *testing.T, d *daytonaEnv, ws string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := d.c.Agent(ws)
	before, err := a.GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	old := d.hops()
	if len(old) != 1 {
		t.Fatalf("want one hop before the kill, got %v", old)
	}
	st, err := a.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	runID := "daytona-" + ws
	script := `for i in $(seq 1 40); do echo line$i; sleep 0.05; done`
	if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: &agentv1.ExecStart{
		Command: &agentv1.CommandSpec{Argv: []string{"sh", "-c", script}}, RunId: runID, Detach: true}}}); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := st.Recv()
		if err != nil {
			t.Fatalf("before the kill: %v", err)
		}
		if ev.GetOutput() != nil {
			break
		}
	}
	for _, pid := range old {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for {
		if _, err := st.Recv(); err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("stream over a killed hop: want Unavailable, got %v", err)
			}
			break
		}
	}
	var outb bytes.Buffer
	var tr *agentv1.RunTrailer
	for attempt := 0; tr == nil; attempt++ {
		if attempt > 100 || ctx.Err() != nil {
			t.Fatalf("could not reattach: %v\n%s", err, d.c.Log())
		}
		outb.Reset()
		var as agentv1.AgentService_AttachRunClient
		as, err = a.AttachRun(ctx, &agentv1.AttachRunRequest{RunId: runID, Follow: true})
		if err != nil {
			continue
		}
		for {
			ev, rerr := as.Recv()
			if rerr != nil {
				err = rerr
				break
			}
			if o := ev.GetOutput(); o != nil && o.GetStream() != agentv1.Stream_STREAM_STDERR {
				outb.Write(o.GetData())
			}
			if ev.GetTrailer() != nil {
				tr = ev.GetTrailer()
				break
			}
		}
		if tr == nil {
			if c := status.Code(err); c != codes.Unavailable {
				t.Fatalf("reattach: want Unavailable while redialling, got %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	var want strings.Builder
	for i := 1; i <= 40; i++ {
		fmt.Fprintf(&want, "line%d\n", i)
	}
	if outb.String() != want.String() || tr.GetExitCode() != 0 {
		t.Fatalf("reattached output incomplete (exit %d):\n%q", tr.GetExitCode(), outb.String())
	}
	now := d.hops()
	if len(now) != 1 || now[0] == old[0] {
		t.Fatalf("want one new hop after the redial: had %v, now %v", old, now)
	}
	after, err := a.GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
	if err != nil || after.GetPid() != before.GetPid() {
		t.Fatalf("agent after the redial: pid %d %v, want the same agent (pid %d)", after.GetPid(), err, before.GetPid())
	}
}

// wantCode checks a call through the controller fails with code and a
// message containing every word, and the CLI says so on one line.
func wantCode(t *testing.T, d *daytonaEnv, ws string, code codes.Code, words ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := d.c.Agent(ws).GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
	if status.Code(err) != code {
		t.Errorf("%s: want %v, got %v", ws, code, err)
	}
	r := dtmuxCLI(t, d.c, nil, "exec", ws, "--", "true")
	t.Logf("%s: %s", ws, strings.TrimSpace(r.stderr))
	if r.code != 255 {
		t.Errorf("%s: dtmux exec: exit %d, want 255", ws, r.code)
	}
	for _, w := range append([]string{ws}, words...) {
		if !strings.Contains(status.Convert(err).Message(), w) {
			t.Errorf("%s: status message %q does not say %q", ws, status.Convert(err).Message(), w)
		}
		oneLineError(t, r, w)
	}
	if strings.Contains(r.stderr, `\"`) {
		t.Errorf("%s: escaped quotes in %q", ws, r.stderr)
	}
	noSecrets(t, "error", r.stderr+status.Convert(err).Message())
}

// Before v0.52 the CLI nests projects in each workspace and its ssh takes
// the project's name: v0.51 lists, runs commands over its hop and
// survives a hop killed mid-stream; v0.26 lists, and says why it cannot
// run commands (its ssh has no command form).
func TestDaytonaBeforeV052(t *testing.T) {
	t.Run("v0.51", func(t *testing.T) {
		d := startDaytona(t, daytonaOptions{version: "v0.51.0"})
		ws := wsList(t, d.c)
		if w := ws["Hello-World"]; w.State != "WORKSPACE_STATE_STARTED" {
			t.Fatalf("Hello-World: %+v (all: %+v)", w, ws)
		}
		t.Run("exec over daytona ssh WS PROJECT", func(t *testing.T) { execChecks(t, d, "Hello-World") })
		t.Run("hop killed mid-stream", func(t *testing.T) { hopKilledMidStream(t, d, "Hello-World") })
		noSecrets(t, "controller log", d.c.Log())
	})
	t.Run("v0.26", func(t *testing.T) {
		d := startDaytona(t, daytonaOptions{version: "v0.26.0"})
		ws := wsList(t, d.c)
		if w := ws["Hello-World"]; w.State != "WORKSPACE_STATE_STARTED" {
			t.Fatalf("Hello-World: %+v (all: %+v)", w, ws)
		}
		r := dtmuxCLI(t, d.c, nil, "exec", "Hello-World", "--", "true")
		if r.code != 255 {
			t.Errorf("exec on v0.26: exit %d", r.code)
		}
		oneLineError(t, r, "v0.28 or later")
	})
}

func TestDaytonaLegacy(t *testing.T) {
	d := startDaytona(t, daytonaOptions{version: "v0.53.0"})
	ws := wsList(t, d.c)
	if len(ws) != 3 {
		t.Fatalf("ws ls: %+v", ws)
	}
	if w := ws["Hello-World"]; w.Provider != "daytona" || w.State != "WORKSPACE_STATE_STARTED" || w.Labels["team"] != "platform" || w.Labels["env"] != "dev" {
		t.Errorf("Hello-World: %+v", w)
	}
	if w := ws["example"]; w.State != "WORKSPACE_STATE_STOPPED" {
		t.Errorf("example: %+v", w)
	}
	if w := ws["daytona"]; w.State != "WORKSPACE_STATE_ERROR" || !strings.Contains(w.StateDetail, "devcontainer") || w.Labels["env"] != "ci" {
		t.Errorf("daytona: %+v", w)
	}

	// Create waits through "creating" until started.
	r := mustCLI(t, d.c, "ws", "create", "Spoon-Knife", "--repo", "https://github.com/octocat/Spoon-Knife.git", "-l", "team=web", "-o", "json")
	noSecrets(t, "ws create", r.stdout+r.stderr)
	if w := wsOne(t, r); w.Name != "Spoon-Knife" || w.State != "WORKSPACE_STATE_STARTED" || w.Labels["team"] != "web" {
		t.Fatalf("ws create: %+v", w)
	}
	if w := wsList(t, d.c)["Spoon-Knife"]; w.State != "WORKSPACE_STATE_STARTED" {
		t.Fatalf("created workspace listed as %+v", w)
	}

	t.Run("exec over daytona ssh", func(t *testing.T) { execChecks(t, d, "Spoon-Knife") })
	t.Run("hop killed mid-stream", func(t *testing.T) { hopKilledMidStream(t, d, "Spoon-Knife") })

	t.Run("create into error", func(t *testing.T) {
		d.edit(t, func(st map[string]any) { st["create_state"], st["create_error"] = "error", "unable to pull image" })
		r := dtmuxCLI(t, d.c, nil, "ws", "create", "bad", "--repo", "https://github.com/octocat/bad.git")
		if r.code != 255 {
			t.Errorf("create into error: exit %d", r.code)
		}
		oneLineError(t, r, "unable to pull image")
		oneLineError(t, r, "bad")
	})
	t.Run("errors", func(t *testing.T) {
		wantCode(t, d, "daytona", codes.FailedPrecondition, "error", "devcontainer")
		wantCode(t, d, "example", codes.FailedPrecondition, "stopped")
		wantCode(t, d, "nope", codes.NotFound)
	})
	t.Run("stop, start, rm", func(t *testing.T) {
		if w := wsOne(t, mustCLI(t, d.c, "ws", "stop", "Spoon-Knife", "-o", "json")); w.State != "WORKSPACE_STATE_STOPPED" {
			t.Fatalf("stop: %+v", w)
		}
		if pids := d.hops(); len(pids) != 0 {
			t.Fatalf("hop still open after stop: %v", pids)
		}
		if w := wsOne(t, mustCLI(t, d.c, "ws", "start", "Spoon-Knife", "-o", "json")); w.State != "WORKSPACE_STATE_STARTED" {
			t.Fatalf("start: %+v", w)
		}
		if r := mustCLI(t, d.c, "exec", "Spoon-Knife", "--", "echo", "back"); r.stdout != "back\n" {
			t.Fatalf("exec after start: %q", r.stdout)
		}
		// The CLI exits 0 for an unknown workspace here; dtmux does not.
		r := dtmuxCLI(t, d.c, nil, "ws", "start", "nope")
		if r.code != 255 {
			t.Errorf("start unknown: exit %d", r.code)
		}
		oneLineError(t, r, "not found")
		// Running: refused without --force, and still there.
		if r := dtmuxCLI(t, d.c, nil, "ws", "rm", "Spoon-Knife"); r.code != 255 || !strings.Contains(r.stderr, "--force") {
			t.Errorf("rm of a running workspace: exit %d stderr %q", r.code, r.stderr)
		}
		mustCLI(t, d.c, "exec", "Spoon-Knife", "--", "true")
		mustCLI(t, d.c, "ws", "rm", "--force", "Spoon-Knife")
		if _, ok := wsList(t, d.c)["Spoon-Knife"]; ok {
			t.Fatal("Spoon-Knife still listed after rm")
		}
		if pids := d.hops(); len(pids) != 0 {
			t.Fatalf("hop still open after rm: %v", pids)
		}
	})
	noSecrets(t, "controller log", d.c.Log())
}

func TestDaytonaSandboxes(t *testing.T) {
	d := startDaytona(t, daytonaOptions{version: "v0.190.0"})
	ws := wsList(t, d.c)
	if len(ws) != 4 {
		t.Fatalf("ws ls: %+v", ws)
	}
	if w := ws["dtmux-ws-alpha"]; w.State != "WORKSPACE_STATE_STARTED" || w.Labels["dtmux.workspace"] != "alpha" ||
		w.Attributes["region"] != "us" || w.Attributes["auto_stop_minutes"] != "15" {
		t.Errorf("alpha: %+v", w)
	}
	if w := ws["dtmux-ws-beta"]; w.State != "WORKSPACE_STATE_STOPPED" || w.Attributes["region"] != "eu" || w.Attributes["auto_stop_minutes"] != "0" {
		t.Errorf("beta: %+v", w)
	}
	if w := ws["broken"]; w.State != "WORKSPACE_STATE_ERROR" || !strings.Contains(w.StateDetail, "disk quota exceeded") {
		t.Errorf("broken: %+v", w)
	}

	// Create waits through "creating" until started.
	r := mustCLI(t, d.c, "ws", "create", "sb1", "-l", "team=web", "-o", "json")
	if w := wsOne(t, r); w.State != "WORKSPACE_STATE_STARTED" || w.Labels["team"] != "web" || w.Attributes["region"] == "" || w.Attributes["auto_stop_minutes"] == "" {
		t.Fatalf("ws create: %+v", w)
	}
	if d.mints.Load() != 0 {
		t.Fatalf("%d tokens minted before any call to an agent", d.mints.Load())
	}

	t.Run("exec over the gateway", func(t *testing.T) {
		execChecks(t, d, "sb1")
		// One dial, one token; its name is the ssh user.
		if n := d.mints.Load(); n != 1 {
			t.Fatalf("want one token minted for one hop, got %d", n)
		}
		// The token is the login name, which any local user could read
		// on a command line: it goes in a config file only the
		// controller's user can read, gone once ssh has read it.
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", d.hops()[0]))
		args := strings.Split(string(cmdline), "\x00")
		if bytes.Contains(cmdline, []byte(d.srv.User+"@")) || slices.Contains(args, "-l") {
			t.Fatalf("the token is on the hop's command line: %q", cmdline)
		}
		// (The last -F: the test's ssh stand-in puts its own first.)
		i := -1
		for j, a := range args {
			if a == "-F" {
				i = j
			}
		}
		if i < 0 || i+1 >= len(args) {
			t.Fatalf("hop without its login config: %q", cmdline)
		} else if _, err := os.Stat(args[i+1]); !os.IsNotExist(err) {
			t.Fatalf("the login config %s is still there: %v", args[i+1], err)
		}
		// The gateway drops stderr: the agent's goes to a file in the
		// sandbox.
		if _, err := os.Stat(filepath.Join(d.srv.Home, ".dtmux", "agent.log")); err != nil {
			t.Fatalf("agent log in the sandbox: %v", err)
		}
	})
	t.Run("hop killed, redialled with a fresh token", func(t *testing.T) {
		before := d.mints.Load()
		hopKilledMidStream(t, d, "sb1")
		if n := d.mints.Load(); n != before+1 {
			t.Fatalf("tokens minted %d -> %d across one redial, want one more", before, n)
		}
	})
	t.Run("errors", func(t *testing.T) {
		wantCode(t, d, "broken", codes.FailedPrecondition, "error", "disk quota exceeded")
		wantCode(t, d, "dtmux-ws-gamma", codes.FailedPrecondition, "archived")
		wantCode(t, d, "no-such-sandbox", codes.NotFound)
	})
	t.Run("stop, start, rm", func(t *testing.T) {
		if w := wsOne(t, mustCLI(t, d.c, "ws", "stop", "sb1", "-o", "json")); w.State != "WORKSPACE_STATE_STOPPED" {
			t.Fatalf("stop: %+v", w)
		}
		if pids := d.hops(); len(pids) != 0 {
			t.Fatalf("hop still open after stop: %v", pids)
		}
		if w := wsOne(t, mustCLI(t, d.c, "ws", "start", "sb1", "-o", "json")); w.State != "WORKSPACE_STATE_STARTED" {
			t.Fatalf("start: %+v", w)
		}
		mustCLI(t, d.c, "exec", "sb1", "--", "true")
		// Running: refused without --force, and still there.
		if r := dtmuxCLI(t, d.c, nil, "ws", "rm", "sb1"); r.code != 255 || !strings.Contains(r.stderr, "--force") {
			t.Errorf("rm of a running workspace: exit %d stderr %q", r.code, r.stderr)
		}
		mustCLI(t, d.c, "exec", "sb1", "--", "true")
		mustCLI(t, d.c, "ws", "rm", "--force", "sb1")
		if _, ok := wsList(t, d.c)["sb1"]; ok {
			t.Fatal("sb1 still listed after rm")
		}
		if pids := d.hops(); len(pids) != 0 {
			t.Fatalf("hop still open after rm: %v", pids)
		}
	})
	noSecrets(t, "controller log", d.c.Log())
}

func TestDaytonaSandboxIdleClose(t *testing.T) {
	// The key comes from a file here, the environment elsewhere.
	d := startDaytona(t, daytonaOptions{version: "v0.190.0", keyFile: true, args: []string{"--hop-idle-timeout", "1s"}})
	mustCLI(t, d.c, "exec", "dtmux-ws-alpha", "--", "true")
	if pids := d.hops(); len(pids) != 1 {
		t.Fatalf("want one hop, got %v", pids)
	}
	// Idle: the hop goes, so that the sandbox can auto-stop.
	eventually(t, "the idle hop closes", func() string {
		if pids := d.hops(); len(pids) != 0 {
			return fmt.Sprintf("hops %v", pids)
		}
		return ""
	})
	before := d.mints.Load()
	if r := mustCLI(t, d.c, "exec", "dtmux-ws-alpha", "--", "echo", "back"); r.stdout != "back\n" {
		t.Fatalf("exec after idle close: %q", r.stdout)
	}
	if n := d.mints.Load(); n != before+1 {
		t.Fatalf("tokens minted %d -> %d across the reconnect, want one more", before, n)
	}
	if pids := d.hops(); len(pids) != 1 {
		t.Fatalf("want one hop after the reconnect, got %v", pids)
	}
	noSecrets(t, "controller log", d.c.Log())
}

func TestDaytonaSandboxNoAPIKey(t *testing.T) {
	d := startDaytona(t, daytonaOptions{version: "v0.190.0", noAPIKey: true})
	// Listing needs the CLI only.
	if w := wsList(t, d.c)["dtmux-ws-alpha"]; w.State != "WORKSPACE_STATE_STARTED" {
		t.Fatalf("ws ls without an API key: %+v", w)
	}
	wantCode(t, d, "dtmux-ws-alpha", codes.FailedPrecondition, "DAYTONA_API_KEY")
	if pids := d.hops(); len(pids) != 0 {
		t.Fatalf("a hop without a token: %v", pids)
	}
}

// A key the API refuses is the user's configuration to fix, said as such
// (FailedPrecondition), not a transient Unavailable; the key is in no
// message and no hop starts.
func TestDaytonaSandboxAPIKeyRefused(t *testing.T) {
	d := startDaytona(t, daytonaOptions{version: "v0.190.0", wrongAPIKey: true})
	wantCode(t, d, "dtmux-ws-alpha", codes.FailedPrecondition, "refused the API key", "DAYTONA_API_KEY")
	if pids := d.hops(); len(pids) != 0 {
		t.Fatalf("a hop without a token: %v", pids)
	}
	if strings.Contains(d.c.Log(), "dtn_revoked0123456789") {
		t.Error("the refused key is in the controller log")
	}
}

func TestDaytonaSandboxAPIUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String() + "/api"
	l.Close()
	d := startDaytona(t, daytonaOptions{version: "v0.190.0", apiURL: dead})
	wantCode(t, d, "dtmux-ws-alpha", codes.Unavailable, "API unreachable", l.Addr().String())
	if pids := d.hops(); len(pids) != 0 {
		t.Fatalf("a hop without a token: %v", pids)
	}
	noSecrets(t, "controller log", d.c.Log())
}
