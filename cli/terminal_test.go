package cli

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// AttachSession echoes: it greets, reports resizes, detaches on "q" and
// fails on "x". Only session "dbg" exists.
func (f *fakeController) AttachSession(stream agentv1.AgentService_AttachSessionServer) error {
	if err := f.workspace(stream.Context()); err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start.GetSession() != "dbg" {
		return status.Errorf(codes.NotFound, "session %q not found", start.GetSession())
	}
	out := func(s string) error {
		return stream.Send(&agentv1.AttachSessionResponse{Event: &agentv1.AttachSessionResponse_Output{Output: []byte(s)}})
	}
	if err := out("welcome " + formatSize(start.GetSize()) + "\r\n"); err != nil {
		return err
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		in := string(m.GetInput())
		switch {
		case strings.Contains(in, "q"):
			return stream.Send(&agentv1.AttachSessionResponse{Event: &agentv1.AttachSessionResponse_Detached{Detached: "detached (from session dbg)"}})
		case strings.Contains(in, "x"):
			return status.Error(codes.Unavailable, "agent went away")
		case in != "":
			if err := out("got " + in + "\r\n"); err != nil {
				return err
			}
		}
	}
}

// ptyApp is an App whose stdin and stdout are the terminal end of a new
// pty; the test drives the other end.
func ptyApp(t *testing.T, addr string) (*App, *os.File, *os.File, *bytes.Buffer) {
	t.Helper()
	ptm, pts, err := pty.Open()
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	t.Cleanup(func() { ptm.Close(); pts.Close() })
	if err := pty.Setsize(pts, &pty.Winsize{Rows: 30, Cols: 100}); err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	env := map[string]string{"DTMUX_CONTROLLER": addr, "TERM": "xterm-test"}
	return &App{Stdin: pts, Stdout: pts, Stderr: &errb, Getenv: func(k string) string { return env[k] }}, ptm, pts, &errb
}

// expect reads the pty master until want appears.
func expect(t *testing.T, ptm *os.File, want string) {
	t.Helper()
	var got []byte
	buf := make([]byte, 1024)
	_ = ptm.SetReadDeadline(time.Now().Add(20 * time.Second))
	for !bytes.Contains(got, []byte(want)) {
		n, err := ptm.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("waiting for %q: %v; got %q", want, err, got)
		}
	}
}

// readUntil reads the pty master until want appears and returns what
// was read.
func readUntil(t *testing.T, ptm *os.File, want string) string {
	t.Helper()
	var got []byte
	buf := make([]byte, 1024)
	for !bytes.Contains(got, []byte(want)) {
		n, err := ptm.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("waiting for %q: %v; got %q", want, err, got)
		}
	}
	return string(got)
}

func termios(t *testing.T, f *os.File) *unix.Termios {
	t.Helper()
	tio, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	return tio
}

func TestAttachRestoresTerminal(t *testing.T) {
	addr, _ := startFake(t)
	for _, tt := range []struct {
		name, key string
		code      int
		stderr    string
	}{
		{"detach", "q", 0, "[detached (from session dbg)]\n"},
		{"agent lost", "x", ExitFailure, "dtmux: lost the connection to workspace ws's agent while attached to session dbg (tmux sessions outlive the agent; reattach once it is back: dtmux attach ws dbg)\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			app, ptm, pts, errb := ptyApp(t, addr)
			before := termios(t, pts)
			if before.Lflag&unix.ICANON == 0 {
				t.Fatal("the test terminal is not in canonical mode to begin with")
			}
			done := make(chan int, 1)
			go func() { done <- Main(context.Background(), app, []string{"attach", "ws", "dbg"}) }()
			expect(t, ptm, "welcome 100x30")
			if termios(t, pts).Lflag&unix.ICANON != 0 {
				t.Error("terminal not raw while attached")
			}
			if _, err := io.WriteString(ptm, "hi"); err != nil {
				t.Fatal(err)
			}
			expect(t, ptm, "got hi")
			if _, err := io.WriteString(ptm, tt.key); err != nil {
				t.Fatal(err)
			}
			code := <-done
			if code != tt.code || errb.String() != tt.stderr {
				t.Errorf("exit %d stderr %q; want %d %q", code, errb.String(), tt.code, tt.stderr)
			}
			// Everything dtmux wrote is in the pty by now; a marker ends
			// it, so that reading never waits for bytes that won't come.
			if _, err := io.WriteString(pts, "END-MARK"); err != nil {
				t.Fatal(err)
			}
			rest := readUntil(t, ptm, "END-MARK")
			if hasReset := strings.Contains(rest, terminalReset); hasReset != (tt.code != 0) {
				// After an abnormal end tmux could not undo its screen
				// setup, so dtmux must; after a detach tmux did.
				t.Errorf("terminal reset written: %v, want %v (output %q)", hasReset, tt.code != 0, rest)
			}
			if after := termios(t, pts); *after != *before {
				t.Errorf("terminal not restored:\nbefore %+v\nafter  %+v", before, after)
			}
		})
	}
	t.Run("unknown session leaves the terminal alone", func(t *testing.T) {
		app, _, pts, errb := ptyApp(t, addr)
		before := termios(t, pts)
		code := Main(context.Background(), app, []string{"attach", "ws", "nope"})
		if code != ExitFailure || errb.String() != "dtmux: session \"nope\" not found\n" {
			t.Errorf("exit %d stderr %q", code, errb.String())
		}
		if after := termios(t, pts); *after != *before {
			t.Error("terminal changed")
		}
	})
	t.Run("not a terminal", func(t *testing.T) {
		r := dtmux(t, addr, "", "attach", "ws", "dbg")
		if r.code != ExitUsage || !strings.Contains(r.stderr, "terminal") {
			t.Errorf("got %+v", r)
		}
	})
}

func TestExecTTYRestoresTerminal(t *testing.T) {
	addr, f := startFake(t)
	app, _, pts, errb := ptyApp(t, addr)
	before := termios(t, pts)
	if code := Main(context.Background(), app, []string{"exec", "-t", "ws", "--", "exit", "5"}); code != 5 {
		t.Errorf("exit %d (stderr %q), want 5", code, errb.String())
	}
	if after := termios(t, pts); *after != *before {
		t.Error("terminal not restored")
	}
	p := f.starts[0].GetPty()
	if p.GetRows() != 30 || p.GetCols() != 100 || p.GetTerm() != "xterm-test" {
		t.Errorf("pty = %v, want the local terminal's 100x30 and TERM", p)
	}
}
