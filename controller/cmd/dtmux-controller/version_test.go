package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestVersionReachesCLI builds the controller and the CLI with a version
// stamped in (as `make build` does), starts the controller, and checks
// that `dtmux version` prints the controller's version, which travels in
// the dtmux-version response header.
func TestVersionReachesCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two binaries")
	}
	const stamp = "v0.0.0-headertest"
	bin := t.TempDir()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..", "..")
	build := exec.Command("go", "build", "-o", bin+string(os.PathSeparator),
		"-ldflags", "-X github.com/dtmux/dtmux/internal/version.Version="+stamp,
		"./controller/cmd/dtmux-controller", "./cli/cmd/dtmux")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}

	state, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	addr := "unix://" + filepath.Join(state, "controller.sock")
	logs := filepath.Join(state, "controller.log")
	ctl := exec.Command(filepath.Join(bin, "dtmux-controller"),
		"--state-dir", state, "--listen", addr, "--log-file", logs,
		"--provider", "static", "--agent", "w=unix://"+filepath.Join(state, "none.sock"))
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { ctl.Wait(); close(exited) }()
	t.Cleanup(func() {
		ctl.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			ctl.Process.Kill()
			<-exited
		}
	})
	waitServing(t, addr, exited, logs)

	cli := exec.Command(filepath.Join(bin, "dtmux"), "version")
	cli.Env = append(os.Environ(), "DTMUX_CONTROLLER="+addr)
	out, err := cli.CombinedOutput()
	if err != nil {
		t.Fatalf("dtmux version: %v\n%s", err, out)
	}
	want := "controller " + stamp + " at " + addr
	if !strings.Contains(string(out), want) {
		t.Errorf("dtmux version printed:\n%s\nwant a line %q", out, want)
	}
}

func waitServing(t *testing.T, addr string, exited chan struct{}, logFile string) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-exited:
			log, _ := os.ReadFile(logFile)
			t.Fatalf("controller exited:\n%s", log)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return
		}
	}
	log, _ := os.ReadFile(logFile)
	t.Fatalf("controller did not serve:\n%s", log)
}
