package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// startAgent starts w's agent in its own session, so that it outlives the
// controller, and records its pid. Callers hold p.mu.
func (p *Provider) startAgent(w *workspace) error {
	sock := socketPath(w.dir)
	// A stale socket from a dead agent would make the new one refuse to
	// listen only if something answers; remove it so the path is free.
	os.Remove(sock)
	args := []string{
		"--listen", "unix://" + sock,
		"--state-dir", filepath.Join(w.dir, "agent"),
		"--workspace", w.meta.Name,
		"--workdir", homeDir(w.dir),
		"--log-file", logPath(w.dir),
	}
	args = append(args, p.cfg.AgentArgs...)
	out, err := os.OpenFile(logPath(w.dir), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		w.lastErr = err.Error()
		return fmt.Errorf("start agent for %q: %w", w.meta.Name, err)
	}
	defer out.Close()
	cmd := exec.Command(p.cfg.AgentBinary, args...)
	cmd.Dir = homeDir(w.dir)
	cmd.Stdout, cmd.Stderr = out, out // early failures, before its logger is up
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = append(os.Environ(), "HOME="+homeDir(w.dir))
	if err := cmd.Start(); err != nil {
		w.lastErr = err.Error()
		return fmt.Errorf("start agent for %q: %w", w.meta.Name, err)
	}
	pid := cmd.Process.Pid
	// The supervisor reaps it with wait4 (no goroutine per agent), so the
	// os/exec handle is not needed.
	_ = cmd.Process.Release()
	w.pid, w.ours, w.since = pid, true, time.Now()
	if err := os.WriteFile(pidFile(w.dir), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		p.log.Warn("write pid file", "workspace", w.meta.Name, "error", err)
	}
	p.log.Info("agent started", "workspace", w.meta.Name, "pid", pid)
	return nil
}

// alive reports whether pid still runs, reaping it if it is our child.
func alive(pid int, ours bool) bool {
	if ours {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		switch {
		case got == pid:
			return false // exited, now reaped
		case err == nil:
			return true // our child, still running: one syscall per check
		case !errors.Is(err, syscall.ECHILD):
			return true
		}
		// ECHILD: reaped elsewhere or not ours after all; look it up.
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	// A zombie that is not ours is dead too (its parent will reap it).
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
		return false
	}
	return true
}

// isAgent reports whether pid is the agent of the workspace in dir, so
// that a recycled pid is never adopted or signalled.
func isAgent(pid int, dir string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	args := strings.Split(string(b), "\x00")
	want := "unix://" + socketPath(dir)
	for i, a := range args {
		if a == want || (a == "--listen" && i+1 < len(args) && args[i+1] == want) || a == "--listen="+want {
			return true
		}
	}
	return false
}

// terminate sends SIGTERM, waits up to grace, then SIGKILLs.
func terminate(pid int, ours bool, grace time.Duration) {
	terminateWith(syscall.SIGTERM, pid, ours, grace)
}

// terminateWith is terminate with another first signal: the agent takes
// SIGUSR1 as "stop with every run" (they end as killed, with that reason).
func terminateWith(sig syscall.Signal, pid int, ours bool, grace time.Duration) {
	if err := syscall.Kill(pid, sig); err != nil {
		alive(pid, ours) // reap
		return
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !alive(pid, ours) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for range 500 {
		if !alive(pid, ours) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// checkHealth asks the agent's health service once.
func checkHealth(ctx context.Context, sock string) error {
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("agent health is %s", r.GetStatus())
	}
	return nil
}
