package bootstrap

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/internal/sshtest"
)

var (
	stubOnce sync.Once
	stubDir  string
	stubErr  error
)

// stub builds the stand-in agent once per test process and copies it into
// a fresh agent dir as dtmux-agent-<goos>-<goarch>.
func stub(t *testing.T) string {
	t.Helper()
	stubOnce.Do(func() {
		stubDir, stubErr = os.MkdirTemp("", "dtstub")
		if stubErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(stubDir, "stubagent"), "./testdata/stubagent").CombinedOutput()
		if err != nil {
			stubErr = errors.New(string(out))
		}
	})
	if stubErr != nil {
		t.Fatalf("build stub agent: %v", stubErr)
	}
	dir := t.TempDir()
	copyFile(t, filepath.Join(stubDir, "stubagent"), filepath.Join(dir, AgentName+"-"+runtime.GOOS+"-"+runtime.GOARCH))
	return dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if stubDir != "" {
		os.RemoveAll(stubDir)
	}
	os.Exit(code)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// healthy checks that conn carries a gRPC connection to a serving agent,
// and returns the client (closing it closes conn).
func healthy(t *testing.T, conn net.Conn) *grpc.ClientConn {
	t.Helper()
	used := false
	cc, err := grpc.NewClient("passthrough:///hop",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if used {
				return nil, errors.New("hop already used")
			}
			used = true
			return conn, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("health over the hop: %v", err)
	}
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v", resp.Status)
	}
	return cc
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("installed agent: %v", err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

func dial(t *testing.T, b *Bootstrapper, srv *sshtest.Server) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := b.Dial(ctx, "ws1", SSH{Args: srv.Args(), Destination: srv.Destination()})
	if conn != nil {
		t.Cleanup(func() { conn.Close() })
	}
	return conn, err
}

func TestInstallOnceThenReuse(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	// A chatty rc file must not confuse the start marker.
	os.WriteFile(filepath.Join(srv.Home, ".bashrc"), []byte("echo hello from bashrc\n"), 0o644)
	agents := stub(t)
	b := New(Config{AgentDir: agents, Version: "stub-1", Logger: hclog.NewNullLogger()})
	installed := filepath.Join(srv.Home, ".dtmux", "bin", AgentName)
	if _, err := os.Stat(installed); err == nil {
		t.Fatal("agent installed before the first dial")
	}

	conn, err := dial(t, b, srv)
	if err != nil {
		t.Fatal(err)
	}
	healthy(t, conn)
	first := inode(t, installed)
	conn.Close()

	for i := 0; i < 3; i++ {
		conn, err := dial(t, b, srv)
		if err != nil {
			t.Fatal(err)
		}
		healthy(t, conn)
		conn.Close()
	}
	if got := inode(t, installed); got != first {
		t.Fatalf("agent re-uploaded on a later dial (inode %d -> %d)", first, got)
	}

	// A different build (same platform) is installed on the next dial.
	bin := filepath.Join(agents, AgentName+"-"+runtime.GOOS+"-"+runtime.GOARCH)
	f, err := os.OpenFile(bin, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("trailing bytes change the checksum"))
	f.Close()
	conn, err = dial(t, b, srv)
	if err != nil {
		t.Fatal(err)
	}
	healthy(t, conn)
	if got := inode(t, installed); got == first {
		t.Fatal("changed binary was not uploaded")
	}
}

func TestCloseKillsHop(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	b := New(Config{AgentDir: stub(t)})
	conn, err := dial(t, b, srv)
	if err != nil {
		t.Fatal(err)
	}
	healthy(t, conn)
	pids := hopPIDs(t, srv)
	if len(pids) != 1 {
		t.Fatalf("want 1 hop process, got %v", pids)
	}
	conn.Close()
	if pids := hopPIDs(t, srv); len(pids) != 0 {
		t.Fatalf("hop processes left after Close: %v", pids)
	}
	// Closing the gRPC client closes the hop too.
	conn, err = dial(t, b, srv)
	if err != nil {
		t.Fatal(err)
	}
	cc := healthy(t, conn)
	if pids := hopPIDs(t, srv); len(pids) != 1 {
		t.Fatalf("want 1 hop process, got %v", pids)
	}
	cc.Close()
	if pids := hopPIDs(t, srv); len(pids) != 0 {
		t.Fatalf("hop processes left after Close: %v", pids)
	}
}

func TestHopKilled(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	b := New(Config{AgentDir: stub(t)})
	conn, err := dial(t, b, srv)
	if err != nil {
		t.Fatal(err)
	}
	cc := healthy(t, conn)
	for _, pid := range hopPIDs(t, srv) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call over a killed hop: want Unavailable, got %v", err)
	}
}

func TestErrors(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	t.Run("no binary for the platform", func(t *testing.T) {
		dir := t.TempDir()
		copyFile(t, filepath.Join(stub(t), AgentName+"-"+runtime.GOOS+"-"+runtime.GOARCH), filepath.Join(dir, AgentName+"-linux-riscv64"))
		_, err := dial(t, New(Config{AgentDir: dir}), srv)
		if !errors.Is(err, ErrNoBinary) || !strings.Contains(err.Error(), "x86_64") && !strings.Contains(err.Error(), runtime.GOARCH) {
			t.Fatalf("want ErrNoBinary naming the platform, got %v", err)
		}
	})
	t.Run("wrong version", func(t *testing.T) {
		_, err := dial(t, New(Config{AgentDir: stub(t), Version: "v9.9.9"}), srv)
		if err == nil || !strings.Contains(err.Error(), "v9.9.9") || !strings.Contains(err.Error(), "stub-1") {
			t.Fatalf("want a version error, got %v", err)
		}
	})
	t.Run("empty agent dir", func(t *testing.T) {
		_, err := dial(t, New(Config{AgentDir: t.TempDir()}), srv)
		if !errors.Is(err, ErrNoBinary) {
			t.Fatalf("want ErrNoBinary, got %v", err)
		}
	})
	t.Run("auth refused", func(t *testing.T) {
		deny := sshtest.Start(t, sshtest.Options{RejectAll: true})
		_, err := dial(t, New(Config{AgentDir: stub(t)}), deny)
		// The pool names the workspace; the error names the hop.
		if err == nil || !strings.Contains(err.Error(), "ssh "+deny.Destination()) || !strings.Contains(err.Error(), "Permission denied") {
			t.Fatalf("want an error naming the hop and the refusal, got %v", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := New(Config{AgentDir: stub(t)}).Dial(ctx, "ws1", SSH{Args: srv.Args(), Destination: srv.Destination()})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("want context.Canceled, got %v", err)
		}
	})
}

// hopPIDs lists the ssh processes started for this server's agent.
func hopPIDs(t *testing.T, srv *sshtest.Server) []int {
	t.Helper()
	return SSHProcesses(srv.Config, "--stdio")
}

// An upload cut off mid-file (a slow link that runs out of time, a hop
// that dies) leaves no partial file behind on the host: the script's
// cleanup runs however it ends.
func TestInterruptedUploadLeavesNoPartialFile(t *testing.T) {
	srv := sshtest.Start(t, sshtest.Options{})
	// A link that passes 100 KB of what it is given, then nothing (and
	// ends when its input does before that: the probe).
	argv := []string{"sh", "-c", `(head -c 100000; if [ -n "$(head -c 1)" ]; then exec sleep 60; fi) | exec ssh "$@"`, "sh"}
	hop := Exec{Argv: append(append(argv, srv.Args()...), srv.Destination(), "--")}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := New(Config{AgentDir: stub(t), UploadTimeout: 2 * time.Second})
	if conn, err := b.Dial(ctx, "ws1", hop); err == nil || !strings.Contains(err.Error(), "install agent") ||
		!strings.Contains(err.Error(), "took longer than the upload timeout, 2s (the controller's --agent-upload-timeout)") {
		if conn != nil {
			conn.Close()
		}
		t.Fatalf("an upload that cannot finish: %v, want it to name the timeout", err)
	}
	dir := filepath.Join(srv.Home, ".dtmux", "bin")
	for i := 0; ; i++ {
		left, _ := filepath.Glob(filepath.Join(dir, "."+AgentName+".*"))
		if len(left) == 0 {
			break
		}
		if i == 100 {
			t.Fatalf("partial uploads left: %v", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(dir, AgentName)); !os.IsNotExist(err) {
		t.Errorf("an agent was installed from a partial upload: %v", err)
	}

	// What a script killed outright (SIGKILL: no cleanup runs) left
	// behind is swept by the next upload once it is an hour old.
	stale := filepath.Join(dir, "."+AgentName+".4242")
	fresh := filepath.Join(dir, "."+AgentName+".4343") // another upload's, maybe under way
	for _, f := range []string{stale, fresh} {
		if err := os.WriteFile(f, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, New(Config{AgentDir: stub(t)}), srv); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("a partial upload two hours old is still there: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a recent partial upload (maybe under way) was removed: %v", err)
	}
}
