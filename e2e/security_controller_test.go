package e2e

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/internal/testbin"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// secController is a dtmux-controller started with the given flags, its
// log at trace level in LogFile.
type secController struct {
	dir, LogFile string
	cmd          *exec.Cmd
	stderr       *lockedBuffer
	done         chan struct{}
}

func startSecController(t *testing.T, extra ...string) *secController {
	t.Helper()
	dir := shortTempDir(t)
	c := &secController{dir: dir, LogFile: filepath.Join(dir, "controller.log"), stderr: &lockedBuffer{}, done: make(chan struct{})}
	args := append([]string{"--state-dir", filepath.Join(dir, "state"), "--log-level", "trace", "--log-file", c.LogFile}, extra...)
	c.cmd = exec.Command(testbin.Path(t, testbin.Controller), args...)
	c.cmd.Stdout, c.cmd.Stderr = c.stderr, c.stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-c.done
		}
	})
	return c
}

func (c *secController) Log() string {
	b, _ := os.ReadFile(c.LogFile)
	return string(b)
}

// The controller's doors hold like the agent's: on TCP every call needs
// the bearer token, a routed AgentService call included (and before the
// workspace is even looked up, so a stranger learns nothing), the token
// never reaches the log, and unsafe listeners are refused at start.
func TestSecurityControllerDoors(t *testing.T) {
	dir := shortTempDir(t)
	token := "ctl-" + randomHex(t, 16)
	tokFile := writeSecret(t, dir, "token", token+"\n")
	addr := freeTCPAddr(t)
	c := startSecController(t, "--listen", "tcp://"+addr, "--token-file", tokFile)

	dial := func(t *testing.T, header string) *grpc.ClientConn {
		t.Helper()
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		if header != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(rawToken(header)))
		}
		cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	list := func(cc *grpc.ClientConn) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := controllerv1.NewWorkspaceServiceClient(cc).ListWorkspaces(ctx, &controllerv1.ListWorkspacesRequest{})
		return err
	}
	routed := func(cc *grpc.ClientConn) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, "dtmux-workspace", "no-such-ws")
		_, err := agentv1.NewAgentServiceClient(cc).GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
		return err
	}

	good := dial(t, "Bearer "+token)
	waitUntil(t, 30*time.Second, "the controller serving", func() bool { return list(good) == nil })
	if err := routed(good); status.Code(err) != codes.NotFound {
		t.Fatalf("routed call with the token: %v, want NotFound for an unknown workspace", err)
	}
	for _, at := range []struct{ name, header string }{
		{"no token", ""},
		{"wrong token", "Bearer " + randomHex(t, 16)},
		{"token prefix", "Bearer " + token[:len(token)-1]},
		{"token without the Bearer scheme", token},
	} {
		t.Run(at.name, func(t *testing.T) {
			cc := dial(t, at.header)
			if err := list(cc); status.Code(err) != codes.Unauthenticated {
				t.Errorf("ListWorkspaces: %v, want Unauthenticated", err)
			}
			if err := routed(cc); status.Code(err) != codes.Unauthenticated {
				t.Errorf("routed GetAgentInfo: %v, want Unauthenticated (not a workspace lookup)", err)
			}
		})
	}
	if err := list(good); err != nil {
		t.Fatalf("the controller stopped serving after the attacks: %v", err)
	}
	if strings.Contains(c.Log(), token) || strings.Contains(c.stderr.String(), token) {
		t.Error("the controller's log contains the token")
	}

	refused := func(t *testing.T, want []string, args ...string) {
		t.Helper()
		cmd := exec.Command(testbin.Path(t, testbin.Controller), append([]string{"--state-dir", filepath.Join(shortTempDir(t), "state")}, args...)...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("controller %v: %v, want a refusal exit\n%s", args, err, out)
		}
		for _, w := range want {
			if !strings.Contains(string(out), w) {
				t.Errorf("controller %v: refusal %q does not say %q", args, out, w)
			}
		}
	}
	t.Run("plaintext off loopback", func(t *testing.T) {
		_, port, _ := net.SplitHostPort(freeTCPAddr(t))
		refused(t, []string{"--insecure-allow-plaintext", "TLS"}, "--listen", "tcp://0.0.0.0:"+port, "--token-file", tokFile)
	})
	t.Run("tcp without a token file", func(t *testing.T) {
		refused(t, []string{"token"}, "--listen", "tcp://"+freeTCPAddr(t))
	})
	t.Run("token on the command line is not a flag", func(t *testing.T) {
		refused(t, []string{"token"}, "--listen", "tcp://"+freeTCPAddr(t), "--token", token)
	})
}

// The controller's unix socket refuses another uid even when its file
// modes were opened up by mistake (SO_PEERCRED), as the agent's does.
func TestSecurityControllerUnixSocketOtherUID(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("switching to another uid needs root")
	}
	const nobody = 65534
	c := startSecController(t)
	sock := filepath.Join(c.dir, "state", "controller.sock")
	waitUntil(t, 30*time.Second, "the controller's socket", func() bool { _, err := os.Stat(sock); return err == nil })
	for _, p := range []string{c.dir, filepath.Dir(sock)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	out := callAsUID(t, sock, nobody)()
	if !strings.Contains(out, "uid=65534 code=PermissionDenied") {
		t.Fatalf("uid %d on the controller's open socket: %s, want PermissionDenied", nobody, out)
	}
}
