package auth_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	rpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/internal/auth"
	"github.com/dtmux/dtmux/internal/rpcserver"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// staticToken is a client token source.
type staticToken string

func (s staticToken) Token() []byte { return []byte(s) }

// call makes one authenticated call (reflection's ListServices, which goes
// through the auth interceptor) with the given token.
func call(t *testing.T, addr, token string) error {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.Bearer{Source: staticToken(token)}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := rpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		return err
	}
	// A stream the server already refused fails Send with io.EOF; its
	// status comes from Recv.
	if err := st.Send(&rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_ListServices{}}); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	_, err = st.Recv()
	return err
}

// writeToken replaces the token file's content but keeps its size and
// modification time, so that only an explicit reload can notice.
func writeToken(t *testing.T, path, token string, mtime time.Time) {
	t.Helper()
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func TestTokenRotationOnSIGHUP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	mtime := time.Now().Add(-time.Hour).Truncate(time.Second)
	writeToken(t, path, "old-token-AAAA", mtime)
	tf, err := auth.LoadTokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var logBuf syncBuffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logBuf, Level: hclog.Trace})

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := rpcserver.New(rpcserver.Config{Token: tf, Logger: log})
	served := make(chan struct{})
	go func() { _ = s.Serve(l); close(served) }()
	t.Cleanup(func() { s.Stop(); <-served })
	addr := l.Addr().String()

	ctx, cancel := context.WithCancel(context.Background())
	done := auth.ReloadOnSIGHUP(ctx, log, tf)
	t.Cleanup(func() { cancel(); <-done })

	if err := call(t, addr, "old-token-AAAA"); err != nil {
		t.Fatalf("old token before rotation: %v", err)
	}
	// Same size, same mtime: the on-change check cannot see it.
	writeToken(t, path, "new-token-BBBB", mtime)
	if err := call(t, addr, "new-token-BBBB"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("new token before SIGHUP: %v, want Unauthenticated (the rotation must come from the signal)", err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return call(t, addr, "new-token-BBBB") == nil }, "new token accepted after SIGHUP")
	if err := call(t, addr, "old-token-AAAA"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("old token after rotation: %v, want Unauthenticated", err)
	}
	if !strings.Contains(logBuf.String(), "reloaded") {
		t.Errorf("no reload log line:\n%s", logBuf.String())
	}
	for _, tok := range []string{"old-token-AAAA", "new-token-BBBB"} {
		if strings.Contains(logBuf.String(), tok) {
			t.Errorf("log contains token %q:\n%s", tok, logBuf.String())
		}
	}

	// A broken file keeps the last good token.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	before := strings.Count(logBuf.String(), "reload failed")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return strings.Count(logBuf.String(), "reload failed") > before }, "reload failure logged")
	if err := call(t, addr, "new-token-BBBB"); err != nil {
		t.Fatalf("last good token after a failed reload: %v", err)
	}

	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("reload goroutine did not stop after cancel")
	}
}

// fakeReloader counts reloads.
type fakeReloader struct {
	mu sync.Mutex
	n  int
}

func (f *fakeReloader) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if f.n == 2 {
		return errors.New("boom")
	}
	return nil
}

func (f *fakeReloader) Path() string { return "fake" }

func (f *fakeReloader) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

func TestReloadOnSIGHUPReloadsEveryFile(t *testing.T) {
	a, b := &fakeReloader{}, &fakeReloader{}
	ctx, cancel := context.WithCancel(context.Background())
	done := auth.ReloadOnSIGHUP(ctx, nil, a, b)
	defer func() { cancel(); <-done }()
	for i := 1; i <= 3; i++ {
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return a.count() >= i && b.count() >= i }, "both reloaded")
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
