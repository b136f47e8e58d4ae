package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/internal/errinfo"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// TestExecProgramReasons: a program that cannot run is InvalidArgument
// with a reason the CLI turns into a shell's 127 (not found) or 126
// (found but not executable).
func TestExecProgramReasons(t *testing.T) {
	a := newTestAgent(t, nil)
	bin := filepath.Join(a.workdir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, body string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(bin, name), []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	write("plain", "echo hi\n", 0o644)
	write("badinterp", "#!/no/such/interpreter\necho hi\n", 0o755)
	write("garbage", "\x7fELF\x00\x00not really\n", 0o755)

	tests := []struct {
		name      string
		argv      []string
		env       map[string]string
		reason    string
		fragments []string
	}{
		{"unknown in PATH", []string{"no-such-dtmux-program"}, nil, errinfo.ProgramNotFound, []string{"program not found"}},
		{"missing path", []string{"./bin/nope"}, nil, errinfo.ProgramNotFound, []string{"no such file"}},
		{"not executable by path", []string{"./bin/plain"}, nil, errinfo.ProgramNotExecutable, []string{"permission denied", "not executable"}},
		{"not executable in PATH", []string{"plain"}, map[string]string{"PATH": bin}, errinfo.ProgramNotExecutable, []string{"permission denied", "not executable"}},
		{"directory", []string{"./bin"}, nil, errinfo.ProgramNotExecutable, []string{"is a directory"}},
		{"missing interpreter", []string{"./bin/badinterp"}, nil, errinfo.ProgramNotExecutable, []string{"bad interpreter"}},
		{"unknown format", []string{"./bin/garbage"}, nil, errinfo.ProgramNotExecutable, []string{"exec format error"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := a.exec(t, &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: &agentv1.ExecStart{
				Command: &agentv1.CommandSpec{Argv: tt.argv, Env: tt.env},
			}}})
			if status.Code(r.err) != codes.InvalidArgument {
				t.Fatalf("err = %v, want InvalidArgument", r.err)
			}
			if got := errinfo.Reason(r.err); got != tt.reason {
				t.Errorf("reason %q, want %q (%v)", got, tt.reason, r.err)
			}
			for _, f := range tt.fragments {
				if !strings.Contains(status.Convert(r.err).Message(), f) {
					t.Errorf("message %q lacks %q", status.Convert(r.err).Message(), f)
				}
			}
		})
	}
	// An executable found after a non-executable one in PATH runs.
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, "plain"), []byte("#!/bin/sh\necho ran\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := a.exec(t, &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: &agentv1.ExecStart{
		Command: &agentv1.CommandSpec{Argv: []string{"plain"}, Env: map[string]string{"PATH": bin + ":" + other}},
	}}})
	if r.err != nil || r.stdout != "ran\n" {
		t.Errorf("executable later in PATH: %v %q", r.err, r.stdout)
	}
}

// TestExecRunIDConflict: a run id reused with another command is
// AlreadyExists with RUN_ID_CONFLICT; the same command attaches.
func TestExecRunIDConflict(t *testing.T) {
	a := newTestAgent(t, nil)
	start := func(argv ...string) *agentv1.ExecRequest {
		return &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: &agentv1.ExecStart{Command: &agentv1.CommandSpec{Argv: argv}, RunId: "r1"}}}
	}
	if r := a.exec(t, start("echo", "one")); r.err != nil || r.stdout != "one\n" {
		t.Fatalf("first: %v %q", r.err, r.stdout)
	}
	if r := a.exec(t, start("echo", "one")); r.err != nil || !r.started.GetAttachedExisting() || r.stdout != "one\n" {
		t.Errorf("same command: %v %v %q", r.err, r.started, r.stdout)
	}
	r := a.exec(t, start("echo", "two"))
	wantCode(t, r.err, codes.AlreadyExists, "run id r1 already exists with a different command")
	if got := errinfo.Reason(r.err); got != errinfo.RunIDConflict {
		t.Errorf("reason %q, want %q", got, errinfo.RunIDConflict)
	}
}
