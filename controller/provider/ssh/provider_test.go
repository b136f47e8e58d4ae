package ssh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
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
	agentOnce sync.Once
	agentDir  string
	agentErr  error
)

// agents builds the stand-in agent (health over --stdio) once, as the
// cross-built binary for this platform.
func agents(t *testing.T) string {
	t.Helper()
	agentOnce.Do(func() {
		agentDir, agentErr = os.MkdirTemp("", "dtagents")
		if agentErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(agentDir, bootstrap.AgentName+"-"+runtime.GOOS+"-"+runtime.GOARCH),
			"github.com/dtmux/dtmux/controller/bootstrap/testdata/stubagent").CombinedOutput()
		if err != nil {
			agentErr = errors.New(string(out))
		}
	})
	if agentErr != nil {
		t.Fatalf("build stand-in agent: %v", agentErr)
	}
	return agentDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if agentDir != "" {
		os.RemoveAll(agentDir)
	}
	os.Exit(code)
}

func newPool(t *testing.T, hosts []Host, connectTimeout time.Duration) (*Provider, *pool.Pool) {
	t.Helper()
	p, err := New(Config{Hosts: hosts, Bootstrap: bootstrap.New(bootstrap.Config{AgentDir: agents(t)}), Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	pl := pool.New(pool.Config{Resolve: p.Endpoint, ConnectTimeout: connectTimeout})
	t.Cleanup(func() { pl.Close() })
	return p, pl
}

func check(ctx context.Context, pl *pool.Pool, name string) error {
	cc, err := pl.Conn(ctx, name)
	if err != nil {
		return err
	}
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func host(name string, srv *sshtest.Server) Host {
	return Host{Name: name, Destination: srv.Destination(), SSHArgs: srv.Args(), Labels: map[string]string{"team": "web"}}
}

func TestOneHopManyCalls(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	_, pl := newPool(t, []Host{host("web1", srv)}, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	installed := filepath.Join(srv.Home, ".dtmux", "bin", bootstrap.AgentName)
	for i := 0; i < 100; i++ {
		if err := check(ctx, pl, "web1"); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if i == 0 {
			if _, err := os.Stat(installed); err != nil {
				t.Fatalf("agent not installed by the first call: %v", err)
			}
		}
	}
	if pids := bootstrap.SSHProcesses(srv.Config, "--stdio"); len(pids) != 1 {
		t.Fatalf("want exactly one ssh process for the workspace, got %v", pids)
	}
	// Logins: probe, upload, start; then nothing more for 99 calls.
	if n := strings.Count(readLog(t, srv), "Accepted publickey"); n != 3 {
		t.Fatalf("want 3 ssh logins (probe, upload, start), got %d", n)
	}
}

func TestHopKilledRedials(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	_, pl := newPool(t, []Host{host("web1", srv)}, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := check(ctx, pl, "web1"); err != nil {
		t.Fatal(err)
	}
	installed := filepath.Join(srv.Home, ".dtmux", "bin", bootstrap.AgentName)
	st1, _ := os.Stat(installed)
	old := bootstrap.SSHProcesses(srv.Config, "--stdio")
	if len(old) != 1 {
		t.Fatalf("want one hop, got %v", old)
	}
	syscall.Kill(old[0], syscall.SIGKILL)
	// Calls fail fast with Unavailable (never hang) until the pool has
	// redialled, then succeed.
	var err error
	for i := 0; i < 50; i++ {
		if err = check(ctx, pl, "web1"); err == nil {
			break
		}
		if c := status.Code(err); c != codes.Unavailable {
			t.Fatalf("call over a dead hop: want Unavailable, got %v", err)
		}
	}
	if err != nil {
		t.Fatalf("pool never redialled: %v", err)
	}
	now := bootstrap.SSHProcesses(srv.Config, "--stdio")
	if len(now) != 1 || now[0] == old[0] {
		t.Fatalf("want one new hop, had %v, now %v", old, now)
	}
	st2, _ := os.Stat(installed)
	if !os.SameFile(st1, st2) {
		t.Fatal("agent re-uploaded on redial")
	}
}

func TestAuthRefusedNamesHost(t *testing.T) {
	deny := sshtest.Start(t, sshtest.Options{RejectAll: true})
	_, pl := newPool(t, []Host{host("locked", deny)}, 0)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := check(ctx, pl, "locked")
	if err == nil || !strings.Contains(err.Error(), "locked") || !strings.Contains(err.Error(), "Permission denied") || strings.ContainsAny(err.Error(), "\r\n") {
		t.Fatalf("want one line naming the host and the refusal, got %q", err)
	}
}

func TestUnreachableHostDoesNotBlockOthers(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	// A host that accepts TCP and then says nothing: ssh waits for its
	// banner until the test lets go.
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	port := hole.Addr().(*net.TCPAddr).Port
	dead := Host{Name: "dead", Destination: "127.0.0.1", SSHArgs: []string{"-F", "/dev/null", "-p", itoa(port), "-o", "ConnectTimeout=600"}}
	_, pl := newPool(t, []Host{host("web1", srv), dead}, 10*time.Minute)

	deadDone := make(chan error, 1)
	go func() { deadDone <- check(context.Background(), pl, "dead") }()
	var c net.Conn
	select {
	case c = <-accepted:
	case <-time.After(time.Minute):
		t.Fatal("the dead host was never dialled")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < 20; i++ {
		if err := check(ctx, pl, "web1"); err != nil {
			t.Fatalf("call to a healthy host while another hangs: %v", err)
		}
	}
	select {
	case err := <-deadDone:
		t.Fatalf("the dead host's call finished before it was let go: %v", err)
	default:
	}
	c.Close()
	hole.Close()
	if err := <-deadDone; err == nil {
		t.Fatal("call to the dead host succeeded")
	}
}

func TestListGet(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "hosts.yaml")
	os.WriteFile(file, []byte("hosts: [{name: b, destination: hb}, {name: a, destination: ha, labels: {team: web}}]\n"), 0o600)
	p, err := New(Config{HostsFile: file, Bootstrap: bootstrap.New(bootstrap.Config{})})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ws, err := p.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 2 || ws[0].Name != "a" || ws[0].Labels["team"] != "web" || ws[0].State != provider.StateStarted {
		t.Fatalf("List = %+v", ws)
	}
	if _, err := p.Get(ctx, "zz"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("Get unknown: %v", err)
	}
	if _, err := p.Create(ctx, provider.CreateOptions{Name: "c"}); !errors.Is(err, provider.ErrUnsupported) {
		t.Fatalf("Create: %v", err)
	}
	if _, err := p.Stop(ctx, "a"); !errors.Is(err, provider.ErrUnsupported) {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := p.Stop(ctx, "zz"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("Stop of an unknown host: %v, want not found", err)
	}
	if err := p.Delete(ctx, "zz", true); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("Delete of an unknown host: %v, want not found", err)
	}
	// The file is read again when it changes.
	os.WriteFile(file, []byte("hosts: [{name: c, destination: hc}]\n"), 0o600)
	future := time.Now().Add(time.Hour)
	os.Chtimes(file, future, future)
	if w, err := p.Get(ctx, "c"); err != nil || w.Attributes["destination"] != "hc" {
		t.Fatalf("Get after reload: %+v %v", w, err)
	}
	// A broken file at startup fails it, with the reason; so does a
	// missing one.
	os.WriteFile(file, []byte("hosts: [{name: -bad, destination: h}]\n"), 0o600)
	if _, err := New(Config{HostsFile: file, Bootstrap: bootstrap.New(bootstrap.Config{})}); !errors.Is(err, provider.ErrInvalid) || !strings.Contains(err.Error(), `host "-bad": name must be`) {
		t.Fatalf("New with a broken hosts file: %v", err)
	}
	if _, err := New(Config{HostsFile: filepath.Join(dir, "missing"), Bootstrap: bootstrap.New(bootstrap.Config{})}); err == nil {
		t.Fatal("New with a missing hosts file succeeded")
	}
}

// Once a good hosts file was read, a broken, empty or missing one (an
// editor saving, a typo) keeps the last good list, with one warning per
// bad version that says why; a good file is taken up again.
func TestBadHostsFileKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "hosts.yaml")
	var logs bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Warn})
	write := func(data string, at time.Time) {
		t.Helper()
		if err := os.WriteFile(file, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(file, at, at)
	}
	at := time.Now()
	write("hosts: [{name: a, destination: ha}, {name: b, destination: hb}]\n", at)
	p, err := New(Config{HostsFile: file, Bootstrap: bootstrap.New(bootstrap.Config{}), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	names := func() string {
		t.Helper()
		ws, err := p.List(ctx)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		var n []string
		for _, w := range ws {
			n = append(n, w.Name)
		}
		return strings.Join(n, ",")
	}
	warnings := func() int { return strings.Count(logs.String(), "keeping the last good host list") }

	for i, bad := range []struct{ data, why string }{
		{"hosts: [{name: a, destination: ha}\n", "yaml"},                                    // mid-save
		{"hosts: [{name: a, destination: ha, lables: {x: y}}]\n", "field lables not found"}, // a typo
		{"", "hosts file is empty"},                                                         // truncated
		{"", "no such file"},                                                                // removed
	} {
		at = at.Add(time.Minute)
		if bad.why == "no such file" {
			os.Remove(file)
		} else {
			write(bad.data, at)
		}
		for range 3 {
			if got := names(); got != "a,b" {
				t.Fatalf("bad file %d: List = %s, want the last good a,b", i, got)
			}
			if _, err := p.Endpoint(ctx, "b"); err != nil {
				t.Fatalf("bad file %d: Endpoint(b): %v", i, err)
			}
		}
		if got := warnings(); got != i+1 {
			t.Fatalf("bad file %d: %d warnings, want one per bad version:\n%s", i, got, logs.String())
		}
		if !strings.Contains(logs.String(), bad.why) {
			t.Errorf("bad file %d: the warning does not say %q:\n%s", i, bad.why, logs.String())
		}
	}
	at = at.Add(time.Minute)
	write("hosts: [{name: c, destination: hc}]\n", at)
	if got := names(); got != "c" {
		t.Fatalf("List after a good file = %s, want c", got)
	}
	if _, err := p.Get(ctx, "a"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("Get(a) after it left the file: %v", err)
	}
}

func readLog(t *testing.T, srv *sshtest.Server) string {
	b, _ := os.ReadFile(srv.Log)
	return string(b)
}

func itoa(i int) string { return strconv.Itoa(i) }

// An edit of the hosts file reaches a hop that is open and healthy: a host
// moved is reached at its new destination by the next call (the old hop
// closed), a host removed is not found and keeps no ssh process.
func TestEditedHostsFileReachesOpenHops(t *testing.T) {
	srvA := sshtest.Start(t, sshtest.Options{})
	srvB := sshtest.Start(t, sshtest.Options{})
	file := filepath.Join(t.TempDir(), "hosts.yaml")
	version := 0
	write := func(hosts ...Host) {
		t.Helper()
		var sb strings.Builder
		sb.WriteString("hosts:\n")
		for _, h := range hosts {
			fmt.Fprintf(&sb, "  - {name: %s, destination: %q, ssh_args: [%s]}\n", h.Name, h.Destination, `"`+strings.Join(h.SSHArgs, `", "`)+`"`)
		}
		if err := os.WriteFile(file, []byte(sb.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		version++ // a new modification time, however fast the edits
		at := time.Now().Add(time.Duration(version) * time.Hour)
		os.Chtimes(file, at, at)
	}
	write(host("web1", srvA))
	p, err := New(Config{HostsFile: file, Bootstrap: bootstrap.New(bootstrap.Config{AgentDir: agents(t)}), Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	pl := pool.New(pool.Config{Resolve: p.Endpoint, CurrentKey: p.EndpointKey})
	t.Cleanup(func() { pl.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if err := check(ctx, pl, "web1"); err != nil {
		t.Fatal(err)
	}
	if hops := bootstrap.SSHProcesses(srvA.Config, "--stdio"); len(hops) != 1 {
		t.Fatalf("hops to A: %v, want one", hops)
	}
	write(host("web1", srvB))
	if err := check(ctx, pl, "web1"); err != nil {
		t.Fatalf("call after web1 moved to B: %v", err)
	}
	if hops := bootstrap.SSHProcesses(srvB.Config, "--stdio"); len(hops) != 1 {
		t.Errorf("hops to B after the move: %v, want one", hops)
	}
	waitGoneHops(t, srvA, "the hop to web1's old destination")

	write()
	if err := check(ctx, pl, "web1"); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("call after web1 was removed: %v, want not found", err)
	}
	waitGoneHops(t, srvB, "the hop of the removed host")
}

func waitGoneHops(t *testing.T, srv *sshtest.Server, what string) {
	t.Helper()
	for range 100 {
		if len(bootstrap.SSHProcesses(srv.Config, "--stdio")) == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("%s is still running: %v", what, bootstrap.SSHProcesses(srv.Config, "--stdio"))
}
