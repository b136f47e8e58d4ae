package e2e

// Attacks on the agent's doors and limits, against the real dtmux-agent
// binary: bad tokens and certificates, other uids on the unix socket,
// secrets looked for everywhere they could leak, malformed requests, and a
// flood of streams.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/dtmux/dtmux/internal/auth"
	"github.com/dtmux/dtmux/internal/testbin"
	"github.com/dtmux/dtmux/internal/tlsconfig"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// secAgent is a dtmux-agent process started by a security test.
type secAgent struct {
	Addr    string // listen address as given (unix:// or tcp://)
	Target  string // gRPC dial target
	LogFile string
	PID     int
	creds   credentials.TransportCredentials
	cmd     *exec.Cmd
	done    chan struct{}
	stderr  *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startSecAgent starts dtmux-agent with --listen listen and extra flags on
// a private state dir, at trace level, and waits for its health service
// (reached with creds). The agent is stopped at cleanup.
func startSecAgent(t *testing.T, listen string, creds credentials.TransportCredentials, extra ...string) *secAgent {
	t.Helper()
	dir := shortTempDir(t)
	a := &secAgent{Addr: listen, LogFile: filepath.Join(dir, "agent.log"), creds: creds, stderr: &lockedBuffer{}}
	addr := strings.TrimPrefix(strings.TrimPrefix(listen, "tcp://"), "unix://")
	if strings.HasPrefix(listen, "tcp://") {
		a.Target = "passthrough:///" + addr
	} else {
		a.Target = "unix://" + addr
	}
	args := append([]string{
		"--listen", listen,
		"--state-dir", filepath.Join(dir, "state"),
		"--workdir", dir,
		"--workspace", "sec",
		"--log-level", "trace",
		"--log-file", a.LogFile,
	}, extra...)
	cmd := exec.Command(testbin.Path(t, testbin.Agent), args...)
	cmd.Stdout, cmd.Stderr = a.stderr, a.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a.cmd, a.PID, a.done = cmd, cmd.Process.Pid, make(chan struct{})
	go func() { _ = cmd.Wait(); close(a.done) }()
	t.Cleanup(func() { a.stop() })
	if err := a.waitServing(30 * time.Second); err != nil {
		t.Fatalf("agent did not come up: %v\nstderr:\n%s\nlog:\n%s", err, a.stderr.String(), a.Log())
	}
	return a
}

func (a *secAgent) stop() {
	select {
	case <-a.done:
		return
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-a.PID, syscall.SIGKILL)
		<-a.done
	}
}

func (a *secAgent) alive() bool {
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}

func (a *secAgent) waitServing(timeout time.Duration) error {
	cc, err := grpc.NewClient(a.Target, grpc.WithTransportCredentials(a.creds))
	if err != nil {
		return err
	}
	defer cc.Close()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if !a.alive() {
			return errors.New("agent exited")
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("timeout; last error: %v", last)
}

// Log returns the agent's log so far.
func (a *secAgent) Log() string {
	b, _ := os.ReadFile(a.LogFile)
	return string(b)
}

// client dials the agent with the given options (added to its transport
// credentials) and closes the connection at cleanup.
func (a *secAgent) client(t *testing.T, opts ...grpc.DialOption) agentv1.AgentServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(a.Target, append([]grpc.DialOption{grpc.WithTransportCredentials(a.creds)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return agentv1.NewAgentServiceClient(cc)
}

func freeTCPAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func writeSecret(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// rawToken sends exactly the header value given, unlike auth.Bearer.
type rawToken string

func (r rawToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{auth.MetadataKey: string(r)}, nil
}
func (rawToken) RequireTransportSecurity() bool { return false }

func infoCall(c agentv1.AgentServiceClient) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.GetAgentInfo(ctx, &agentv1.GetAgentInfoRequest{})
	return err
}

func TestSecurityTokenAttacks(t *testing.T) {
	dir := shortTempDir(t)
	token := "tok-" + randomHex(t, 16)
	tokFile := writeSecret(t, dir, "token", token+"\n")
	a := startSecAgent(t, "tcp://"+freeTCPAddr(t), insecure.NewCredentials(), "--token-file", tokFile)

	if err := infoCall(a.client(t, grpc.WithPerRPCCredentials(rawToken("Bearer "+token)))); err != nil {
		t.Fatalf("right token refused: %v", err)
	}
	attacks := []struct {
		name   string
		header string // "" sends no authorization header at all
	}{
		{"no token", ""},
		{"wrong token", "Bearer " + randomHex(t, 16)},
		{"token with a trailing space", "Bearer " + token + " "},
		{"token prefix", "Bearer " + token[:len(token)-1]},
		{"token without the Bearer scheme", token},
		{"lower-case scheme", "bearer " + token},
	}
	for _, at := range attacks {
		t.Run(at.name, func(t *testing.T) {
			var opts []grpc.DialOption
			if at.header != "" {
				opts = append(opts, grpc.WithPerRPCCredentials(rawToken(at.header)))
			}
			before := strings.Count(a.Log(), "refused call")
			err := infoCall(a.client(t, opts...))
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("got %v, want Unauthenticated", err)
			}
			if got := strings.Count(a.Log(), "refused call") - before; got != 1 {
				t.Errorf("agent logged %d refusals for one bad call, want 1", got)
			}
		})
	}
	t.Run("token with a trailing newline", func(t *testing.T) {
		// HTTP/2 header values cannot carry a newline: grpc-go refuses to
		// send it, so it never reaches the agent. What a user sees is the
		// client's own refusal.
		err := infoCall(a.client(t, grpc.WithPerRPCCredentials(rawToken("Bearer "+token+"\n"))))
		if err == nil {
			t.Fatal("a token with a trailing newline was accepted")
		}
		if c := status.Code(err); c != codes.Unauthenticated && c != codes.Internal {
			t.Fatalf("got %v, want Unauthenticated or a client-side refusal", err)
		}
	})
	if strings.Contains(a.Log(), token) {
		t.Errorf("the agent log contains the token")
	}
	if err := infoCall(a.client(t, grpc.WithPerRPCCredentials(rawToken("Bearer "+token)))); err != nil {
		t.Fatalf("agent stopped serving after the attacks: %v", err)
	}
}

func TestSecurityTokenRotationOnSIGHUP(t *testing.T) {
	dir := shortTempDir(t)
	oldTok, newTok := "old-"+randomHex(t, 8), "new-"+randomHex(t, 8)
	tokFile := writeSecret(t, dir, "token", oldTok)
	a := startSecAgent(t, "tcp://"+freeTCPAddr(t), insecure.NewCredentials(), "--token-file", tokFile)
	withTok := func(tok string) agentv1.AgentServiceClient {
		return a.client(t, grpc.WithPerRPCCredentials(rawToken("Bearer "+tok)))
	}
	if err := infoCall(withTok(oldTok)); err != nil {
		t.Fatal(err)
	}
	// Same size and modification time: only the signal can reveal it.
	fi, err := os.Stat(tokFile)
	if err != nil {
		t.Fatal(err)
	}
	writeSecret(t, dir, "token", newTok)
	if err := os.Chtimes(tokFile, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(a.PID, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 15*time.Second, "new token accepted after SIGHUP", func() bool { return infoCall(withTok(newTok)) == nil })
	if err := infoCall(withTok(oldTok)); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("old token after rotation: %v, want Unauthenticated", err)
	}
	if !a.alive() {
		t.Fatal("the agent died on SIGHUP")
	}
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func TestSecurityMutualTLS(t *testing.T) {
	dir := shortTempDir(t)
	// The deployment path: the real controller's certs init.
	certDir := filepath.Join(dir, "certs")
	if out, err := exec.Command(testbin.Path(t, testbin.Controller), "certs", "init", certDir, "--host", "agent.test").CombinedOutput(); err != nil {
		t.Fatalf("certs init: %v\n%s", err, out)
	}
	f := tlsconfig.FilesIn(certDir)
	token := randomHex(t, 16)
	tokFile := writeSecret(t, dir, "token", token)
	good, err := tlsconfig.Client(tlsconfig.ClientOptions{CAFile: f.CACert, CertFile: f.ClientCert, KeyFile: f.ClientKey})
	if err != nil {
		t.Fatal(err)
	}
	a := startSecAgent(t, "tcp://"+freeTCPAddr(t), credentials.NewTLS(good),
		"--token-file", tokFile, "--tls-cert", f.ServerCert, "--tls-key", f.ServerKey, "--tls-client-ca", f.CACert)
	bearer := grpc.WithPerRPCCredentials(auth.Bearer{Source: rawSource(token), Secure: true})

	if err := infoCall(a.client(t, bearer)); err != nil {
		t.Fatalf("good client refused: %v", err)
	}

	ca, err := tlsconfig.LoadCA(f.CACert, f.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	expCert, expKey, err := ca.Issue(tlsconfig.Leaf{CommonName: "expired", Client: true,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	other, err := tlsconfig.NewCA("other", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	othCert, othKey, err := other.Issue(tlsconfig.Leaf{CommonName: "stranger", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	pair := func(certPEM, keyPEM []byte) tls.Certificate {
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	withCert := func(c tls.Certificate) credentials.TransportCredentials {
		cfg := good.Clone()
		cfg.Certificates = nil
		// Present it whatever CAs the server names, as a hostile client
		// would.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
		return credentials.NewTLS(cfg)
	}
	noCert := good.Clone()
	noCert.Certificates = nil

	for _, tc := range []struct {
		name  string
		creds credentials.TransportCredentials
		why   string
	}{
		{"no client certificate", credentials.NewTLS(noCert), "client certificate required"},
		{"expired client certificate", withCert(pair(expCert, expKey)), "expired"},
		{"client certificate from another CA", withCert(pair(othCert, othKey)), "unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := strings.Count(a.Log(), "refused TLS client")
			cc, err := grpc.NewClient(a.Target, grpc.WithTransportCredentials(tc.creds), bearer)
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			err = infoCall(agentv1.NewAgentServiceClient(cc))
			// The handshake fails, so the user sees Unavailable with the
			// TLS alert in the message, never a served call.
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("got %v, want Unavailable from the refused handshake", err)
			}
			waitUntil(t, 10*time.Second, "refusal logged", func() bool {
				return strings.Count(a.Log(), "refused TLS client") > before
			})
			lines := grepLines(a.Log(), "refused TLS client")
			if got := len(lines) - before; got != 1 {
				t.Errorf("agent logged %d refusals for one connection, want 1", got)
			}
			if last := lines[len(lines)-1]; !strings.Contains(last, tc.why) {
				t.Errorf("refusal %q does not say %q", last, tc.why)
			}
		})
	}
	t.Run("plaintext client", func(t *testing.T) {
		cc, err := grpc.NewClient(a.Target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		if err := infoCall(agentv1.NewAgentServiceClient(cc)); status.Code(err) != codes.Unavailable {
			t.Fatalf("plaintext client: %v, want Unavailable", err)
		}
	})
	t.Run("good certificate, no token", func(t *testing.T) {
		if err := infoCall(a.client(t)); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("got %v, want Unauthenticated", err)
		}
	})
	if err := infoCall(a.client(t, bearer)); err != nil {
		t.Fatalf("agent stopped serving after the attacks: %v", err)
	}
}

type rawSource string

func (r rawSource) Token() []byte { return []byte(r) }

func grepLines(s, sub string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return out
}

func TestSecurityPlaintextOffLoopbackRefused(t *testing.T) {
	dir := shortTempDir(t)
	tokFile := writeSecret(t, dir, "token", randomHex(t, 8))
	_, port, _ := net.SplitHostPort(freeTCPAddr(t))
	cmd := exec.Command(testbin.Path(t, testbin.Agent), "--listen", "tcp://0.0.0.0:"+port, "--token-file", tokFile,
		"--state-dir", filepath.Join(dir, "state"), "--workdir", dir)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("agent on 0.0.0.0 without TLS: %v, want a refusal exit\n%s", err, out)
	}
	if !strings.Contains(string(out), "--insecure-allow-plaintext") || !strings.Contains(string(out), "TLS") {
		t.Errorf("refusal does not explain itself: %s", out)
	}
	t.Run("tcp without a token file", func(t *testing.T) {
		out, err := exec.Command(testbin.Path(t, testbin.Agent), "--listen", "tcp://"+freeTCPAddr(t),
			"--state-dir", filepath.Join(dir, "state2"), "--workdir", dir).CombinedOutput()
		if !errors.As(err, &ee) || !strings.Contains(string(out), "token") {
			t.Fatalf("agent on tcp without a token: %v\n%s", err, out)
		}
	})
	t.Run("token file readable by others", func(t *testing.T) {
		open := filepath.Join(dir, "open-token")
		if err := os.WriteFile(open, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(open, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(testbin.Path(t, testbin.Agent), "--listen", "tcp://"+freeTCPAddr(t), "--token-file", open,
			"--state-dir", filepath.Join(dir, "state3"), "--workdir", dir).CombinedOutput()
		if !errors.As(err, &ee) || !strings.Contains(string(out), "too open") {
			t.Fatalf("agent with a 0644 token file: %v\n%s", err, out)
		}
	})
}

// uidHelperEnv makes the test binary dial a unix socket and print the
// status code of one AgentService call (run as another uid).
const uidHelperEnv = "DTMUX_E2E_UID_HELPER_SOCKET"

func init() {
	sock := os.Getenv(uidHelperEnv)
	if sock == "" {
		return
	}
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println("dial-error", err)
		os.Exit(0)
	}
	err = infoCall(agentv1.NewAgentServiceClient(cc))
	fmt.Printf("uid=%d code=%s msg=%s\n", os.Getuid(), status.Code(err), status.Convert(err).Message())
	os.Exit(0)
}

// callAsUID returns a function that makes one AgentService call on the
// unix socket sock as uid (and gid) and returns what the caller printed:
// "uid=N code=CODE msg=...". The other uid runs a copy of this test
// binary it can execute (see uidHelperEnv).
func callAsUID(t *testing.T, sock string, uid uint32) func() string {
	t.Helper()
	binDir := shortTempDir(t)
	if err := os.Chmod(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(binDir, "helper")
	copyFile(t, os.Args[0], bin, 0o755)
	return func() string {
		t.Helper()
		cmd := exec.Command(bin)
		cmd.Env = []string{uidHelperEnv + "=" + sock, "PATH=/usr/bin:/bin"}
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper as uid %d: %v\n%s", uid, err, out)
		}
		return string(out)
	}
}

func TestSecurityUnixSocketOtherUID(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("switching to another uid needs root")
	}
	const nobody = 65534
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "run", "agent.sock")
	a := startSecAgent(t, "unix://"+sock, insecure.NewCredentials())

	asNobody := callAsUID(t, sock, nobody)

	// Layer one: the 0700 directory and 0600 socket keep others out.
	for _, p := range []struct {
		path string
		mode os.FileMode
	}{{filepath.Dir(sock), 0o700}, {sock, 0o600}} {
		fi, err := os.Stat(p.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != p.mode {
			t.Errorf("%s mode %#o, want %#o", p.path, fi.Mode().Perm(), p.mode)
		}
	}
	if out := asNobody(); !strings.Contains(out, "code=Unavailable") || !strings.Contains(out, "permission denied") {
		t.Errorf("uid %d through the private directory: %s, want a refused connect", nobody, out)
	}

	// Layer two: even with the file modes opened up (a mistaken chmod),
	// the peer uid check refuses the call.
	for _, p := range []string{dir, filepath.Dir(sock)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	before := strings.Count(a.Log(), "refused unix peer")
	out := asNobody()
	if !strings.Contains(out, "uid=65534 code=PermissionDenied") {
		t.Fatalf("uid %d on an open socket: %s, want PermissionDenied", nobody, out)
	}
	if got := strings.Count(a.Log(), "refused unix peer") - before; got != 1 {
		t.Errorf("agent logged %d refusals, want 1", got)
	}
	if err := infoCall(a.client(t)); err != nil {
		t.Fatalf("owner refused after the attack: %v", err)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// startExec sends a start message and returns the stream and the first
// event (started) or the error.
func startExec(ctx context.Context, c agentv1.AgentServiceClient, start *agentv1.ExecStart) (agentv1.AgentService_ExecClient, *agentv1.RunStarted, error) {
	st, err := c.Exec(ctx)
	if err != nil {
		return nil, nil, err
	}
	// A stream the server already refused fails Send with io.EOF; its
	// status comes from Recv.
	if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: start}}); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	ev, err := st.Recv()
	if err != nil {
		return nil, nil, err
	}
	if ev.GetStarted() == nil {
		return nil, nil, fmt.Errorf("first event %v, want started", ev)
	}
	return st, ev.GetStarted(), nil
}

// drain reads a stream to its trailer.
func drain(st agentv1.AgentService_ExecClient) (stdout string, tr *agentv1.RunTrailer, err error) {
	var out strings.Builder
	for {
		ev, err := st.Recv()
		if err != nil {
			return out.String(), nil, err
		}
		if o := ev.GetOutput(); o != nil && o.GetStream() == agentv1.Stream_STREAM_STDOUT {
			out.Write(o.GetData())
		}
		if tr := ev.GetTrailer(); tr != nil {
			return out.String(), tr, nil
		}
	}
}

func TestSecuritySecretsNeverLeak(t *testing.T) {
	dir := shortTempDir(t)
	a := startSecAgent(t, "unix://"+filepath.Join(dir, "a.sock"), insecure.NewCredentials())
	c := a.client(t)
	secret := "S3CRET-" + randomHex(t, 12)
	sum := sha256.Sum256([]byte(secret))
	wantSum := hex.EncodeToString(sum[:])
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Two runs: a plain one and one through the rlimit helper (a re-exec
	// of the agent, whose command line must not carry the secret either).
	// Each proves the secret reached its environment by printing its
	// hash, then waits for us to look at every process.
	prog := `printf %s "$DTMUX_TEST_SECRET" | sha256sum; read _ || true`
	var streams []agentv1.AgentService_ExecClient
	for i, lim := range []*agentv1.RunLimits{nil, {OpenFiles: 512}} {
		st, _, err := startExec(ctx, c, &agentv1.ExecStart{
			RunId: fmt.Sprintf("secret-%d", i),
			Command: &agentv1.CommandSpec{
				Argv:      []string{"sh", "-c", prog},
				Env:       map[string]string{"PLAIN": "visible"},
				SecretEnv: map[string]string{"DTMUX_TEST_SECRET": secret},
			},
			Limits: lim,
		})
		if err != nil {
			t.Fatalf("start run %d: %v", i, err)
		}
		streams = append(streams, st)
	}
	// Wait until both printed the hash (so the processes are up), without
	// consuming the trailer yet.
	var outs []string
	for _, st := range streams {
		var got strings.Builder
		for !strings.Contains(got.String(), wantSum) {
			ev, err := st.Recv()
			if err != nil {
				t.Fatalf("run output: %v (so far %q)", err, got.String())
			}
			got.Write(ev.GetOutput().GetData())
		}
		outs = append(outs, got.String())
	}

	// Every process's command line.
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range cmdlines {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), secret) {
			t.Errorf("%s carries the secret: %q", p, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	// The listings, while running and after.
	checkListings := func(when string) {
		t.Helper()
		lr, err := c.ListRuns(ctx, &agentv1.ListRunsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := protojson.Marshal(lr); strings.Contains(string(b), secret) {
			t.Errorf("ListRuns %s shows the secret: %s", when, b)
		}
		var sawKey bool
		for _, r := range lr.GetRuns() {
			for _, k := range r.GetSecretEnvKeys() {
				sawKey = sawKey || k == "DTMUX_TEST_SECRET"
			}
		}
		if !sawKey {
			t.Errorf("ListRuns %s does not name the secret's key; the check proves nothing", when)
		}
		for i := range streams {
			gr, err := c.GetRun(ctx, &agentv1.GetRunRequest{RunId: fmt.Sprintf("secret-%d", i)})
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := protojson.Marshal(gr); strings.Contains(string(b), secret) {
				t.Errorf("GetRun %s shows the secret: %s", when, b)
			}
		}
	}
	checkListings("while running")
	for _, st := range streams {
		if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_CloseStdin{CloseStdin: &agentv1.ExecStdinClose{}}}); err != nil {
			t.Fatal(err)
		}
		if _, tr, err := drain(st); err != nil || tr.GetExitCode() != 0 {
			t.Fatalf("run end: %v %v", tr, err)
		}
	}
	checkListings("after the end")

	// A rejected request with a secret must not echo it in its error.
	_, _, err := startExec(ctx, c, &agentv1.ExecStart{Command: &agentv1.CommandSpec{
		Argv:      []string{"true"},
		SecretEnv: map[string]string{"BAD=KEY": secret, "NUL": "x\x00" + secret},
	}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad secret env: %v, want InvalidArgument", err)
	}
	if err != nil && strings.Contains(err.Error(), secret) {
		t.Errorf("error message carries the secret: %v", err)
	}
	// The run's files on disk (metadata is persisted for restarts).
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || strings.HasSuffix(p, "stdout") || strings.HasSuffix(p, "stderr") {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), secret) {
			t.Errorf("%s carries the secret", p)
		}
		return nil
	})
	// Every log line, at trace level.
	log := a.Log()
	if log == "" {
		t.Fatal("empty agent log; the check proves nothing")
	}
	if strings.Contains(log, secret) {
		for _, l := range grepLines(log, secret) {
			t.Errorf("log line carries the secret: %s", l)
		}
	}
	_ = outs
}

// rawCodec sends pre-encoded bytes, so a test can put on the wire what a
// well-behaved client library refuses to encode (invalid UTF-8).
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	if b, ok := v.(*[]byte); ok {
		return *b, nil
	}
	return nil, fmt.Errorf("rawCodec: %T", v)
}
func (rawCodec) Unmarshal(data []byte, v any) error {
	if b, ok := v.(*[]byte); ok {
		*b = append((*b)[:0], data...)
		return nil
	}
	return fmt.Errorf("rawCodec: %T", v)
}
func (rawCodec) Name() string { return "proto" }

func TestSecurityBadInputBattery(t *testing.T) {
	dir := shortTempDir(t)
	a := startSecAgent(t, "unix://"+filepath.Join(dir, "a.sock"), insecure.NewCredentials(), "--max-runs", "8")
	c := a.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	huge := strings.Repeat("x", 5<<20) // above the 4 MiB message cap
	startCases := []struct {
		name  string
		start *agentv1.ExecStart
		want  codes.Code
	}{
		{"no command", &agentv1.ExecStart{}, codes.InvalidArgument},
		{"empty argv", &agentv1.ExecStart{Command: &agentv1.CommandSpec{}}, codes.InvalidArgument},
		{"empty argv[0]", &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{""}}}, codes.InvalidArgument},
		{"NUL in argv", &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"echo", "a\x00b"}}}, codes.InvalidArgument},
		{"NUL in env key", &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"true"}, Env: map[string]string{"A\x00B": "1"}}}, codes.InvalidArgument},
		{"= in env key", &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"true"}, Env: map[string]string{"A=B": "1"}}}, codes.InvalidArgument},
		{"empty env key", &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"true"}, Env: map[string]string{"": "1"}}}, codes.InvalidArgument},
		{"NUL in cwd", &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"true"}, Cwd: "/tmp\x00/x"}}, codes.InvalidArgument},
		{"missing cwd", &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"true"}, Cwd: "/nonexistent/dtmux"}}, codes.InvalidArgument},
		{"unknown program", &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"dtmux-no-such-program"}}}, codes.InvalidArgument},
		{"run id with a slash", &agentv1.ExecStart{RunId: "../../etc", Command: &agentv1.CommandSpec{Argv: []string{"true"}}}, codes.InvalidArgument},
		{"run id too long", &agentv1.ExecStart{RunId: strings.Repeat("a", 65), Command: &agentv1.CommandSpec{Argv: []string{"true"}}}, codes.InvalidArgument},
		{"run id with NUL", &agentv1.ExecStart{RunId: "a\x00b", Command: &agentv1.CommandSpec{Argv: []string{"true"}}}, codes.InvalidArgument},
		{"negative timeout", &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"true"}}, Timeout: &durationpb.Duration{Seconds: -5}}, codes.InvalidArgument},
		{"invalid duration", &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"true"}}, IdleTimeout: &durationpb.Duration{Seconds: 1, Nanos: -1}}, codes.InvalidArgument},
		{"huge pty", &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"true"}}, Pty: &agentv1.PtySpec{Rows: 1 << 30, Cols: 1 << 30}}, codes.InvalidArgument},
		{"oversized argv", &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"echo", huge}}}, codes.ResourceExhausted},
	}
	for _, tc := range startCases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := startExec(ctx, c, tc.start)
			if status.Code(err) != tc.want {
				t.Fatalf("got %v, want %s", err, tc.want)
			}
			if msg := status.Convert(err).Message(); msg == "" || strings.Contains(msg, "internal error") {
				t.Errorf("unclear message %q", msg)
			}
		})
	}

	t.Run("input before start", func(t *testing.T) {
		for _, first := range []*agentv1.ExecRequest{
			{Msg: &agentv1.ExecRequest_Stdin{Stdin: []byte("rm -rf /\n")}},
			{Msg: &agentv1.ExecRequest_CloseStdin{CloseStdin: &agentv1.ExecStdinClose{}}},
			{Msg: &agentv1.ExecRequest_Signal{Signal: &agentv1.ExecSignal{Signal: agentv1.Signal_SIGNAL_KILL}}},
			{},
		} {
			st, err := c.Exec(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(first); err != nil {
				t.Fatal(err)
			}
			_, err = st.Recv()
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("first message %v: %v, want InvalidArgument", first, err)
			}
		}
	})
	t.Run("stream closed before start", func(t *testing.T) {
		st, err := c.Exec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = st.CloseSend()
		if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("got %v, want InvalidArgument", err)
		}
	})
	t.Run("second start and unknown signal on a live run", func(t *testing.T) {
		st, _, err := startExec(ctx, c, &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"cat"}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Signal{Signal: &agentv1.ExecSignal{Signal: agentv1.Signal(77)}}}); err != nil {
			t.Fatal(err)
		}
		_, _, err = drain(st)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("unknown signal on a live stream: %v, want InvalidArgument", err)
		}
	})
	t.Run("unary", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			call func() error
			want codes.Code
		}{
			{"GetRun empty id", func() error { _, err := c.GetRun(ctx, &agentv1.GetRunRequest{}); return err }, codes.InvalidArgument},
			{"GetRun bad id", func() error { _, err := c.GetRun(ctx, &agentv1.GetRunRequest{RunId: "../x"}); return err }, codes.InvalidArgument},
			{"GetRun unknown id", func() error { _, err := c.GetRun(ctx, &agentv1.GetRunRequest{RunId: "nope"}); return err }, codes.NotFound},
			{"SignalRun unknown enum", func() error {
				_, err := c.SignalRun(ctx, &agentv1.SignalRunRequest{RunId: "nope", Signal: agentv1.Signal(1234)})
				return err
			}, codes.InvalidArgument},
			{"SignalRun unspecified", func() error {
				_, err := c.SignalRun(ctx, &agentv1.SignalRunRequest{RunId: "nope"})
				return err
			}, codes.InvalidArgument},
			{"AttachRun huge offset on unknown run", func() error {
				st, err := c.AttachRun(ctx, &agentv1.AttachRunRequest{RunId: "nope", StdoutOffset: ^uint64(0)})
				if err != nil {
					return err
				}
				_, err = st.Recv()
				return err
			}, codes.NotFound},
			{"ListRuns oversized label", func() error {
				_, err := c.ListRuns(ctx, &agentv1.ListRunsRequest{Labels: map[string]string{"k": huge}})
				return err
			}, codes.ResourceExhausted},
		} {
			if err := tc.call(); status.Code(err) != tc.want {
				t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
			}
		}
	})
	t.Run("invalid UTF-8 on the wire", func(t *testing.T) {
		// GetRunRequest{run_id: "\xff\xfe"} encoded by hand.
		msg := protowire.AppendTag(nil, 1, protowire.BytesType)
		msg = protowire.AppendBytes(msg, []byte("\xff\xfe"))
		cc, err := grpc.NewClient(a.Target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		var reply []byte
		err = cc.Invoke(ctx, "/dtmux.agent.v1.AgentService/GetRun", &msg, &reply, grpc.ForceCodec(rawCodec{}))
		if c := status.Code(err); c == codes.OK || c == codes.Unavailable {
			t.Fatalf("invalid UTF-8 run id: %v, want a refusal", err)
		}
	})

	// After all of it, the agent still serves a real run.
	out, _, tr, err := Exec(ctx, c, nil, "echo", "still-serving")
	if err != nil || tr.GetExitCode() != 0 || strings.TrimSpace(string(out)) != "still-serving" {
		t.Fatalf("agent after the battery: %q %v %v\nlog:\n%s", out, tr, err, a.Log())
	}
	if strings.Contains(a.Log(), "panic") {
		t.Errorf("agent log mentions a panic:\n%s", strings.Join(grepLines(a.Log(), "panic"), "\n"))
	}
}

func countFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func threads(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

func TestSecurityExecFloodCapsHold(t *testing.T) {
	const streams, maxRuns = 1000, 16
	dir := shortTempDir(t)
	a := startSecAgent(t, "unix://"+filepath.Join(dir, "a.sock"), insecure.NewCredentials(),
		"--max-runs", strconv.Itoa(maxRuns), "--log-level", "info",
		// Finished runs keep their two spool files open until retention
		// drops them; a short retention lets the test see the agent come
		// back to its baseline.
		"--retention", "2s")
	c := a.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()

	// Warm up: the connection and one run exist before the baseline.
	if _, _, tr, err := Exec(ctx, c, nil, "true"); err != nil || tr.GetExitCode() != 0 {
		t.Fatalf("warm-up: %v %v", tr, err)
	}
	waitUntil(t, 30*time.Second, "warm-up run forgotten", func() bool { return knownRuns(ctx, c) == 0 })
	baseFDs := countFDs(t, a.PID)

	var (
		mu       sync.Mutex
		started  int
		refused  int
		other    []error
		live     []agentv1.AgentService_ExecClient
		wg       sync.WaitGroup
		floodCtx context.Context
	)
	floodCtx, stopFlood := context.WithCancel(ctx)
	for i := 0; i < streams; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, _, err := startExec(floodCtx, c, &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: []string{"sleep", "120"}}})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				started++
				live = append(live, st)
			case status.Code(err) == codes.ResourceExhausted:
				refused++
				if !strings.Contains(status.Convert(err).Message(), "run") {
					other = append(other, fmt.Errorf("ResourceExhausted without saying what: %v", err))
				}
			default:
				other = append(other, err)
			}
		}()
	}
	wg.Wait()
	if len(other) > 0 {
		t.Errorf("%d streams failed otherwise; first: %v", len(other), other[0])
	}
	if started > maxRuns {
		t.Errorf("%d runs started with --max-runs %d", started, maxRuns)
	}
	if started == 0 || refused == 0 {
		t.Errorf("started %d, refused %d: the cap was not exercised", started, refused)
	}
	if got := runningRuns(ctx, c); got > maxRuns {
		t.Errorf("agent reports %d running runs, cap %d", got, maxRuns)
	}
	t.Logf("started %d, refused %d, agent fds %d (baseline %d), threads %d", started, refused, countFDs(t, a.PID), baseFDs, threads(a.PID))

	// The clients go away: attached runs are hung up and killed.
	stopFlood()
	waitUntil(t, 60*time.Second, "every flooded run ended", func() bool { return runningRuns(ctx, c) == 0 })
	waitUntil(t, 60*time.Second, "every flooded run forgotten after retention", func() bool { return knownRuns(ctx, c) == 0 })
	// No fd outlives its run (pipes, spool files, stream state).
	var fds int
	deadline := time.Now().Add(30 * time.Second)
	for {
		fds = countFDs(t, a.PID)
		if fds <= baseFDs || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if fds > baseFDs {
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", a.PID))
		var links []string
		for _, e := range ents {
			l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", a.PID, e.Name()))
			links = append(links, l)
		}
		t.Errorf("agent holds %d fds after the flood, %d before: %v", fds, baseFDs, links)
	}
	// And it still serves.
	if out, _, tr, err := Exec(ctx, c, nil, "echo", "ok"); err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("agent after the flood: %q %v %v", out, tr, err)
	}
}

func runningRuns(ctx context.Context, c agentv1.AgentServiceClient) int {
	lr, err := c.ListRuns(ctx, &agentv1.ListRunsRequest{})
	if err != nil {
		return -1
	}
	n := 0
	for _, r := range lr.GetRuns() {
		if r.GetState() == agentv1.RunState_RUN_STATE_RUNNING {
			n++
		}
	}
	return n
}

func knownRuns(ctx context.Context, c agentv1.AgentServiceClient) int {
	lr, err := c.ListRuns(ctx, &agentv1.ListRunsRequest{})
	if err != nil {
		return -1
	}
	return len(lr.GetRuns())
}
