package daytona

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/controller/bootstrap"
	"github.com/dtmux/dtmux/controller/pool"
	"github.com/dtmux/dtmux/controller/provider"
	"github.com/dtmux/dtmux/internal/sshtest"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// bins builds the stand-in daytona CLI and the stand-in agent once.
func bins(t *testing.T) (daytona, agentDir string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "dtdaytona")
		if buildErr != nil {
			return
		}
		for _, b := range [][2]string{
			{"daytona", "github.com/dtmux/dtmux/controller/provider/daytona/testdata/daytona-standin"},
			{"agents/" + bootstrap.AgentName + "-" + runtime.GOOS + "-" + runtime.GOARCH, "github.com/dtmux/dtmux/controller/bootstrap/testdata/stubagent"},
		} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, b[0]), b[1]).CombinedOutput()
			if err != nil {
				buildErr = errors.New(string(out))
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatalf("build stand-ins: %v", buildErr)
	}
	return filepath.Join(binDir, "daytona"), filepath.Join(binDir, "agents")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// env is one test's Daytona: the stand-in CLI's state, the real sshd and
// the API stand-in.
type env struct {
	srv   *sshtest.Server
	state string
	api   *httptest.Server
	mints atomic.Int64
	p     *Provider
	pool  *pool.Pool
}

const testKey = "dtn-test-api-key-0123456789"

func newEnv(t *testing.T, version string, mutate func(st map[string]any), cfg func(*Config)) *env {
	t.Helper()
	daytona, agents := bins(t)
	e := &env{srv: sshtest.Start(t, sshtest.Options{})}
	e.state = filepath.Join(t.TempDir(), "daytona.json")
	st := map[string]any{
		"version": version,
		"ssh":     append(append([]string{"ssh"}, e.srv.Args()...), "-T", e.srv.Destination()),
	}
	if strings.HasPrefix(version, "v0.5") {
		data, _ := os.ReadFile(filepath.Join("testdata", "list-v0.53.json"))
		var ws []any
		json.Unmarshal(data, &ws)
		st["workspaces"] = ws
	} else {
		data, _ := os.ReadFile(filepath.Join("testdata", "list-sandbox.json"))
		var page map[string]any
		json.Unmarshal(data, &page)
		items := page["items"].([]any)
		items = append(items, map[string]any{"id": "9f9f9f9f-0000-4000-8000-000000000001", "name": "broken", "state": "error", "errorReason": "disk quota exceeded", "labels": map[string]any{}})
		st["sandboxes"] = items
	}
	if mutate != nil {
		mutate(st)
	}
	b, _ := json.Marshal(st)
	if err := os.WriteFile(e.state, b, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DAYTONA_STANDIN", e.state)

	e.api = httptest.NewServer(http.HandlerFunc(e.serveAPI))
	t.Cleanup(e.api.Close)
	t.Setenv("DAYTONA_API_URL", e.api.URL+"/api")
	t.Setenv("DAYTONA_API_KEY", testKey)

	c := Config{
		Binary:         daytona,
		Bootstrap:      bootstrap.Config{AgentDir: agents},
		SSHArgs:        e.srv.Args(),
		KnownHostsFile: filepath.Join(t.TempDir(), "known_hosts"),
		PollInterval:   10 * time.Millisecond,
		WaitTimeout:    time.Minute,
		Logger:         hclog.NewNullLogger(),
	}
	if cfg != nil {
		cfg(&c)
	}
	p, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	e.p = p
	e.pool = pool.New(pool.Config{Resolve: p.Endpoint, IdleTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { e.pool.Close() })
	return e
}

// serveAPI answers POST /api/sandbox/{id}/ssh-access like Daytona's API,
// with an sshCommand for the test's sshd (the token is the login name).
func (e *env) serveAPI(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+testKey {
		http.Error(w, `{"message":"Unauthorized"}`, http.StatusUnauthorized)
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if r.Method != http.MethodPost || len(parts) != 4 || parts[0] != "api" || parts[1] != "sandbox" || parts[3] != "ssh-access" {
		http.Error(w, `{"message":"no route"}`, http.StatusNotFound)
		return
	}
	data, _ := os.ReadFile(e.state)
	var st struct {
		Sandboxes []map[string]any `json:"sandboxes"`
	}
	json.Unmarshal(data, &st)
	for _, s := range st.Sandboxes {
		if s["id"] == parts[2] || s["name"] == parts[2] {
			e.mints.Add(1)
			json.NewEncoder(w).Encode(map[string]any{
				"id": "tok-" + strconv.FormatInt(e.mints.Load(), 10), "sandboxId": s["id"], "token": e.srv.User,
				"sshCommand": "ssh -p " + strconv.Itoa(e.srv.Port) + " " + e.srv.User + "@127.0.0.1",
			})
			return
		}
	}
	http.Error(w, `{"message":"Sandbox not found"}`, http.StatusNotFound)
}

func (e *env) check(ctx context.Context, name string) error {
	cc, err := e.pool.Conn(ctx, name)
	if err != nil {
		return err
	}
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// hops are the ssh processes carrying an agent to this test's sshd: the
// daytona stand-in's (with the test's ssh config) and the sandbox
// gateway's (with its port).
func (e *env) hops() []int { return sshHops(e.srv) }

func sshHops(srv *sshtest.Server) []int {
	pids := bootstrap.SSHProcesses(srv.Config, "--stdio")
	for _, pid := range bootstrap.SSHProcesses(fmt.Sprintf("\x00%d\x00", srv.Port), "--stdio") {
		if !slices.Contains(pids, pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// killAndRedial kills the one hop, then expects Unavailable (never a hang)
// until the pool has a new hop.
func (e *env) killAndRedial(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	old := e.hops()
	if len(old) != 1 {
		t.Fatalf("want one hop, got %v", old)
	}
	syscall.Kill(old[0], syscall.SIGKILL)
	var err error
	for i := 0; i < 50; i++ {
		if err = e.check(ctx, name); err == nil {
			break
		}
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call over a killed hop: want Unavailable, got %v", err)
		}
	}
	if err != nil {
		t.Fatalf("no redial: %v", err)
	}
	if now := e.hops(); len(now) != 1 || now[0] == old[0] {
		t.Fatalf("want one new hop: had %v, now %v", old, now)
	}
}

func TestLegacy(t *testing.T) {
	e := newEnv(t, "v0.53.0", nil, func(c *Config) { c.IdleTimeout = time.Hour })
	ctx := ctxT(t)
	ws, err := e.p.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 3 || ws[0].Name != "Hello-World" || ws[0].State != provider.StateStarted || ws[0].Labels["team"] != "platform" {
		t.Fatalf("List = %+v", ws)
	}

	// Create waits through "creating" until started.
	w, err := e.p.Create(ctx, provider.CreateOptions{Repository: "https://github.com/octocat/Spoon-Knife.git", Labels: map[string]string{"team": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	if w.Name != "Spoon-Knife" || w.State != provider.StateStarted || w.Labels["team"] != "web" {
		t.Fatalf("Create = %+v", w)
	}
	if _, err := e.p.Create(ctx, provider.CreateOptions{Name: "other", Repository: "https://github.com/o/x.git"}); !errors.Is(err, provider.ErrInvalid) {
		t.Fatalf("create with a name the CLI cannot set: %v", err)
	}

	// The agent through `daytona ssh WS --`: installed once, one hop for
	// many calls, redialled after the hop dies.
	for i := 0; i < 20; i++ {
		if err := e.check(ctx, "Spoon-Knife"); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if n := len(e.hops()); n != 1 {
		t.Fatalf("want one hop, got %d", n)
	}
	e.killAndRedial(t, ctx, "Spoon-Knife")

	// Unknown workspaces: the CLI exits 0, the provider says NotFound.
	if _, err := e.p.Start(ctx, "nope", 0); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("start unknown: %v", err)
	}
	if _, err := e.p.Endpoint(ctx, "nope"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("endpoint unknown: %v", err)
	}
	// A stopped or failed workspace has no endpoint.
	if _, err := e.p.Endpoint(ctx, "example"); !errors.Is(err, provider.ErrNotStarted) {
		t.Fatalf("endpoint of a stopped workspace: %v", err)
	}
	if _, err := e.p.Endpoint(ctx, "daytona"); !errors.Is(err, provider.ErrNotStarted) || !strings.Contains(err.Error(), "devcontainer") {
		t.Fatalf("endpoint of a failed workspace: %v", err)
	}
	if w, err := e.p.Stop(ctx, "Spoon-Knife"); err != nil || w.State != provider.StateStopped {
		t.Fatalf("stop: %+v %v", w, err)
	}
	if w, err := e.p.Start(ctx, "Spoon-Knife", 0); err != nil || w.State != provider.StateStarted {
		t.Fatalf("start: %+v %v", w, err)
	}
	if err := e.p.Delete(ctx, "Spoon-Knife", false); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.Get(ctx, "Spoon-Knife"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
}

func TestLegacyCreateError(t *testing.T) {
	e := newEnv(t, "v0.53.0", func(st map[string]any) {
		st["create_state"], st["create_error"] = "error", "unable to pull image"
	}, nil)
	_, err := e.p.Create(ctxT(t), provider.CreateOptions{Repository: "https://github.com/o/bad.git"})
	if !errors.Is(err, provider.ErrPrecondition) || !strings.Contains(err.Error(), "unable to pull image") {
		t.Fatalf("want a failed precondition with the error state's reason, got %v", err)
	}
}

func TestSandboxes(t *testing.T) {
	e := newEnv(t, "v0.190.0", func(st map[string]any) { st["page_size"] = 1 }, nil)
	ctx := ctxT(t)
	ws, err := e.p.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 4 || ws[1].Name != "dtmux-ws-alpha" || ws[1].Attributes["region"] != "us" || ws[1].Attributes["auto_stop_minutes"] != "15" {
		t.Fatalf("List (paged) = %+v", ws)
	}
	w, err := e.p.Create(ctx, provider.CreateOptions{Name: "sb1", Labels: map[string]string{"team": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	if w.State != provider.StateStarted || w.Labels["team"] != "web" {
		t.Fatalf("Create = %+v", w)
	}
	for i := 0; i < 20; i++ {
		if err := e.check(ctx, "sb1"); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if n := len(e.hops()); n != 1 {
		t.Fatalf("want one hop, got %d", n)
	}
	// The agent's stderr goes to a file in the sandbox.
	if _, err := os.Stat(filepath.Join(e.srv.Home, ".dtmux", "agent.log")); err != nil {
		t.Fatalf("agent log in the sandbox: %v", err)
	}
	before := e.mints.Load()
	e.killAndRedial(t, ctx, "sb1")
	if e.mints.Load() <= before {
		t.Fatal("redial did not mint a fresh token")
	}
	if _, err := e.p.Stop(ctx, "sb1"); err != nil {
		t.Fatal(err)
	}
	if w, err := e.p.Start(ctx, "sb1", 0); err != nil || w.State != provider.StateStarted {
		t.Fatalf("start: %+v %v", w, err)
	}
	if err := e.p.Delete(ctx, "sb1", false); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.Get(ctx, "sb1"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
}

func TestSandboxIdleClose(t *testing.T) {
	e := newEnv(t, "v0.190.0", nil, func(c *Config) { c.IdleTimeout = 300 * time.Millisecond })
	ctx := ctxT(t)
	if err := e.check(ctx, "dtmux-ws-alpha"); err != nil {
		t.Fatal(err)
	}
	if n := len(e.hops()); n != 1 {
		t.Fatalf("want one hop, got %d", n)
	}
	// Idle: the pool closes the hop so the sandbox can auto-stop.
	for len(e.hops()) != 0 {
		if ctx.Err() != nil {
			t.Fatal("idle hop never closed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	before := e.mints.Load()
	if err := e.check(ctx, "dtmux-ws-alpha"); err != nil {
		t.Fatal(err)
	}
	if e.mints.Load() != before+1 {
		t.Fatalf("mints %d -> %d, want one more", before, e.mints.Load())
	}
}

func TestSandboxDefaultIdleUnderAutoStop(t *testing.T) {
	e := newEnv(t, "v0.190.0", nil, nil)
	ep, err := e.p.Endpoint(ctxT(t), "dtmux-ws-alpha")
	if err != nil {
		t.Fatal(err)
	}
	// auto-stop is 15 minutes in the sample.
	if ep.IdleTimeout <= 0 || ep.IdleTimeout >= 15*time.Minute {
		t.Fatalf("idle timeout %v is not under the sandbox's auto-stop", ep.IdleTimeout)
	}
}

func TestSandboxErrors(t *testing.T) {
	e := newEnv(t, "v0.190.0", nil, nil)
	ctx := ctxT(t)
	if _, err := e.p.Endpoint(ctx, "dtmux-ws-gamma"); !errors.Is(err, provider.ErrNotStarted) || !strings.Contains(err.Error(), "archived") {
		t.Fatalf("archived: %v", err)
	}
	if _, err := e.p.Endpoint(ctx, "broken"); !errors.Is(err, provider.ErrNotStarted) || !strings.Contains(err.Error(), "disk quota exceeded") {
		t.Fatalf("error state: %v", err)
	}
	if _, err := e.p.Endpoint(ctx, "no-such-sandbox"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("unknown: %v", err)
	}
	if _, err := e.p.Get(ctx, "no-such-sandbox"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("unknown: %v", err)
	}

	t.Run("missing API key", func(t *testing.T) {
		t.Setenv("DAYTONA_API_KEY", "")
		if _, err := e.p.Endpoint(ctx, "dtmux-ws-alpha"); !errors.Is(err, ErrNoAPIKey) || !errors.Is(err, provider.ErrPrecondition) {
			t.Fatalf("want ErrNoAPIKey, got %v", err)
		}
	})
	t.Run("wrong API key", func(t *testing.T) {
		t.Setenv("DAYTONA_API_KEY", "wrong-key-value")
		err := e.check(ctx, "dtmux-ws-alpha")
		if err == nil || !strings.Contains(err.Error(), "refused the API key") || strings.Contains(err.Error(), "wrong-key-value") {
			t.Fatalf("want a refusal that does not echo the key, got %v", err)
		}
	})
	t.Run("API unreachable", func(t *testing.T) {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		dead := "http://" + l.Addr().String() + "/api"
		l.Close()
		p, _ := New(Config{Binary: e.p.cfg.Binary, APIURL: dead, Bootstrap: e.p.cfg.Bootstrap})
		pl := pool.New(pool.Config{Resolve: p.Endpoint})
		defer pl.Close()
		cc, err := pl.Conn(ctx, "dtmux-ws-alpha")
		if err == nil {
			_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		}
		if err == nil || !strings.Contains(err.Error(), "unreachable") || strings.Contains(err.Error(), testKey) {
			t.Fatalf("want API unreachable, got %v", err)
		}
	})
	t.Run("create into error", func(t *testing.T) {
		e := newEnv(t, "v0.190.0", func(st map[string]any) {
			st["create_state"], st["create_error"] = "build_failed", "snapshot not found"
		}, nil)
		_, err := e.p.Create(ctx, provider.CreateOptions{Name: "bad"})
		if !errors.Is(err, provider.ErrPrecondition) || !strings.Contains(err.Error(), "build_failed") {
			t.Fatalf("want the failed state, got %v", err)
		}
	})
}
