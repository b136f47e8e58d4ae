// Package sessionbench measures keystroke-to-output latency of tmux
// sessions: a line typed into a shell in a session (SendInput) until the
// command's output reaches a client following the session (FollowSession),
// through the controller and straight to the agent, and with the whole
// CLI (`dtmux session send` to a `dtmux session logs -f` follower); beside,
// in the same run and on a private tmux server, the seed's method (exec'd
// `tmux send-keys`, then `tmux capture-pane` polled every 0.5 s and every
// 10 ms) and tmux's own floor (a control-mode client that types and reads
// `%output`).
//
// Run with `make bench`, or after `make build`:
//
//	DTMUX_BIN=$PWD/bin go test -run '^$' -bench . -benchtime 1x ./bench/session/
//
// Every variant types the same line, `echo $((N+1))` into `sh`, and waits
// for N+1, which the terminal's echo of the typed line never contains.
package sessionbench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/internal/benchenv"
	"github.com/dtmux/dtmux/internal/testbin"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// Sample sizes and patience.
const (
	apiIters   = 200 // API and control-mode samples
	cliIters   = 50  // whole CLI processes, 10 ms polling
	slowIters  = 20  // 0.5 s polling
	warmup     = 5
	waitOutput = 10 * time.Second // a marker later than this fails the run
)

// line is the n-th typed line and the output that answers it.
func line(n int) (typed, want string) {
	x := 10_000_000 + 2*n
	return fmt.Sprintf("echo $((%d+1))", x), strconv.Itoa(x + 1)
}

// results collects the figures of one run for the table.
type results struct {
	ctl, agent, cli, floor, poll10, poll500 latencies
	skipped                                 string // why the dtmux rows are missing
}

func BenchmarkSessionKeystroke(b *testing.B) {
	if _, err := exec.LookPath("tmux"); err != nil {
		b.Skip("tmux not installed")
	}
	var r results
	c := benchenv.StartController(b, wsName)
	ctx := context.Background()

	// One session for the API and CLI variants: a plain sh, wide enough
	// that a typed line never wraps.
	_, err := c.ViaController().CreateSession(ctx, &agentv1.CreateSessionRequest{
		Name:    "kb",
		Command: &agentv1.CommandSpec{Argv: []string{"sh"}, Env: map[string]string{"PS1": "$ "}},
		Size:    &agentv1.TerminalSize{Rows: 50, Cols: 200},
	})
	switch {
	case status.Code(err) == codes.Unimplemented:
		r.skipped = "the agent does not serve sessions yet (CreateSession: Unimplemented)"
		b.Log(r.skipped)
	case err != nil:
		b.Fatalf("create session: %v\n%s", err, c.ReadLog())
	default:
		b.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := c.ViaController().KillSession(ctx, &agentv1.KillSessionRequest{Name: "kb"}); err != nil {
				b.Errorf("kill session: %v", err)
			}
		})
	}
	target := &agentv1.PaneTarget{Session: "kb"}

	if r.skipped == "" {
		b.Run("follow-via-controller", func(b *testing.B) {
			for range b.N {
				r.ctl = followLatency(ctx, b, c.ViaController(), target, apiIters)
			}
			r.ctl.Report(b)
		})
		b.Run("follow-direct-to-agent", func(b *testing.B) {
			for range b.N {
				r.agent = followLatency(ctx, b, c.Direct(), target, apiIters)
			}
			r.agent.Report(b)
		})
		b.Run("cli-send-to-logs-f", func(b *testing.B) {
			for range b.N {
				r.cli = cliLatency(b, c, "kb")
			}
			r.cli.Report(b)
		})
	}

	// The seed's method and tmux's floor, on a private tmux server.
	sock := privateTmux(b)
	b.Run("tmux-control-mode-floor", func(b *testing.B) {
		for range b.N {
			r.floor = controlModeLatency(b, sock)
		}
		r.floor.Report(b)
	})
	b.Run("seed-send-keys-capture-pane-10ms", func(b *testing.B) {
		for range b.N {
			r.poll10 = pollLatency(b, sock, 10*time.Millisecond, cliIters)
		}
		r.poll10.Report(b)
	})
	b.Run("seed-send-keys-capture-pane-500ms", func(b *testing.B) {
		for range b.N {
			r.poll500 = pollLatency(b, sock, 500*time.Millisecond, slowIters)
		}
		r.poll500.Report(b)
	})

	table(b, &r)
}

// chunks delivers a stream's output as it arrives; it is closed when the
// stream ends.
type chunks <-chan []byte

// waitFor reads chunks until the accumulated bytes contain want.
func waitFor(b *testing.B, ch chunks, want string) {
	b.Helper()
	var got []byte
	timeout := time.NewTimer(waitOutput)
	defer timeout.Stop()
	for !bytes.Contains(got, []byte(want)) {
		select {
		case d, ok := <-ch:
			if !ok {
				b.Fatalf("output stream ended before %q arrived; got %q", want, tail(got))
			}
			got = append(got, d...)
		case <-timeout.C:
			b.Fatalf("%q did not arrive within %v; got %q", want, waitOutput, tail(got))
		}
	}
}

func tail(b []byte) []byte { return b[max(0, len(b)-300):] }

// followLatency follows the pane and, n times, types a line with
// SendInput and times until its output arrives on the Follow stream.
func followLatency(ctx context.Context, b *testing.B, ag agentv1.AgentServiceClient, target *agentv1.PaneTarget, n int) latencies {
	b.Helper()
	ctx, cancel := context.WithCancel(ctx)
	st, err := ag.FollowSession(ctx, &agentv1.FollowSessionRequest{Target: target, Snapshot: true})
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	ch := make(chan []byte, 1024)
	done := make(chan struct{})
	go func() { // ends when the stream does; cancel ends it
		defer close(done)
		defer close(ch)
		for {
			ev, err := st.Recv()
			if err != nil {
				return
			}
			switch e := ev.Event.(type) {
			case *agentv1.FollowSessionResponse_Output:
				ch <- e.Output.GetData()
			case *agentv1.FollowSessionResponse_Snapshot:
				ch <- nil // subscribed
			case *agentv1.FollowSessionResponse_Gap:
				b.Errorf("follow: gap %v", e.Gap)
			}
		}
	}()
	defer func() {
		cancel()
		for range ch {
		}
		<-done
	}()
	// The snapshot comes once the live stream is subscribed.
	select {
	case <-ch:
	case <-time.After(waitOutput):
		b.Fatal("no snapshot")
	}
	send := func(typed string) {
		if _, err := ag.SendInput(ctx, &agentv1.SendInputRequest{Target: target, Text: typed, Enter: true}); err != nil {
			b.Fatal(err)
		}
	}
	return measure(b, n, func(i int) {
		typed, want := line(i)
		send(typed)
		waitFor(b, ch, want)
	})
}

// seq numbers lines across variants so that no marker repeats in a pane.
var seq int

// measure runs warm-up rounds, then n timed rounds of f with fresh line
// numbers.
func measure(b *testing.B, n int, f func(i int)) latencies {
	b.Helper()
	for range warmup {
		seq++
		f(seq)
	}
	out := make(latencies, 0, n)
	for range n {
		seq++
		start := time.Now()
		f(seq)
		out = append(out, time.Since(start))
	}
	return out
}

// cliLatency runs a `dtmux session logs WS NAME -f` follower and, for each
// round, a `dtmux session send WS NAME --enter TEXT` process, timed from
// the send process's start until the follower prints the output.
func cliLatency(b *testing.B, c *benchenv.Controller, session string) latencies {
	b.Helper()
	cli := benchenv.BinPath(b, testbin.CLI)
	follower := exec.Command(cli, "session", "logs", c.WS, session, "-f")
	follower.Env = c.CLIEnv()
	out, err := follower.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	var stderr bytes.Buffer
	follower.Stderr = &stderr
	if err := follower.Start(); err != nil {
		b.Fatal(err)
	}
	ch := make(chan []byte, 1024)
	go func() { // ends at EOF, when the follower is killed
		defer close(ch)
		buf := make([]byte, 64<<10)
		for {
			n, err := out.Read(buf)
			if n > 0 {
				ch <- bytes.Clone(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		follower.Process.Kill()
		for range ch {
		}
		follower.Wait()
	}()
	send := func(typed string) {
		cmd := exec.Command(cli, "session", "send", c.WS, session, "--enter", "--", typed)
		cmd.Env = c.CLIEnv()
		if o, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("dtmux session send: %v\n%s", err, o)
		}
	}
	// The follower prints the scrollback first; once a line typed now
	// comes back, it is live.
	subscribed(b, ch, send)
	return measure(b, cliIters, func(i int) {
		typed, want := line(i)
		send(typed)
		waitFor(b, ch, want)
	})
}

// subscribed types lines until one's output comes back on ch, so that the
// follower is known to be live before the timed rounds.
func subscribed(b *testing.B, ch chunks, send func(string)) {
	b.Helper()
	deadline := time.Now().Add(waitOutput)
	var got []byte
	for time.Now().Before(deadline) {
		seq++
		typed, want := line(seq)
		send(typed)
		for wait := time.After(200 * time.Millisecond); ; {
			select {
			case d, ok := <-ch:
				if !ok {
					b.Fatalf("follower ended: %q", tail(got))
				}
				got = append(got, d...)
				if bytes.Contains(got, []byte(want)) {
					return
				}
				continue
			case <-wait:
			}
			break
		}
	}
	b.Fatalf("the follower never showed typed lines; got %q", tail(got))
}

// privateTmux starts a tmux server on its own socket with one session
// "seed" running sh, and kills it at cleanup.
func privateTmux(b *testing.B) string {
	b.Helper()
	dir, err := os.MkdirTemp("", "dtt")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "tmux.sock")
	cmd := exec.Command("tmux", "-S", sock, "-f", "/dev/null", "new-session", "-d", "-s", "seed", "-x", "200", "-y", "50", "sh")
	cmd.Env = append(os.Environ(), "PS1=$ ")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("tmux new-session: %v\n%s", err, out)
	}
	b.Cleanup(func() { exec.Command("tmux", "-S", sock, "kill-server").Run() })
	return sock
}

// pollLatency is the seed's method: exec `tmux send-keys` with the line
// and Enter, then exec `tmux capture-pane -p` every interval until the
// output shows on the screen.
func pollLatency(b *testing.B, sock string, interval time.Duration, n int) latencies {
	b.Helper()
	return measure(b, n, func(i int) {
		typed, want := line(i)
		if out, err := exec.Command("tmux", "-S", sock, "send-keys", "-t", "seed", typed, "Enter").CombinedOutput(); err != nil {
			b.Fatalf("send-keys: %v\n%s", err, out)
		}
		deadline := time.Now().Add(waitOutput)
		for {
			time.Sleep(interval)
			screen, err := exec.Command("tmux", "-S", sock, "capture-pane", "-p", "-t", "seed").Output()
			if err != nil {
				b.Fatalf("capture-pane: %v", err)
			}
			if bytes.Contains(screen, []byte(want)) {
				return
			}
			if time.Now().After(deadline) {
				b.Fatalf("%q never showed; screen:\n%s", want, screen)
			}
		}
	})
}

// controlModeLatency is tmux's own floor: one control-mode client that
// types with send-keys and reads the pane's %output notifications.
func controlModeLatency(b *testing.B, sock string) latencies {
	b.Helper()
	cmd := exec.Command("tmux", "-S", sock, "-C", "attach-session", "-t", "seed")
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	ready := make(chan struct{})
	ch := make(chan []byte, 1024)
	go func() { // ends at EOF, when the client exits
		defer close(ch)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		announced := false
		for sc.Scan() {
			l := sc.Text()
			if !announced && strings.HasPrefix(l, "%session-changed") {
				announced = true
				close(ready)
			}
			if rest, ok := strings.CutPrefix(l, "%output "); ok {
				if _, data, ok := strings.Cut(rest, " "); ok {
					ch <- unescape(data)
				}
			}
		}
		if !announced {
			close(ready)
		}
	}()
	defer func() {
		in.Close() // EOF on stdin detaches the client
		for range ch {
		}
		cmd.Wait()
	}()
	// TMUX.md: commands sent before the attach completes fail in 3.3a.
	select {
	case <-ready:
	case <-time.After(waitOutput):
		b.Fatal("control client did not attach")
	}
	return measure(b, apiIters, func(i int) {
		typed, want := line(i)
		if _, err := fmt.Fprintf(in, "send-keys -t seed -l '%s'\nsend-keys -t seed Enter\n", typed); err != nil {
			b.Fatal(err)
		}
		waitFor(b, ch, want)
	})
}

// unescape turns control mode's \ooo octal escapes back into bytes.
func unescape(s string) []byte {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				out = append(out, byte(v))
				i += 3
				continue
			}
		}
		out = append(out, s[i])
	}
	return out
}

// table prints every figure of this run beside the baselines and the
// targets.
func table(b *testing.B, r *results) {
	var sb strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&sb, format+"\n", a...) }
	lat := func(name string, l latencies) {
		if len(l) == 0 {
			return
		}
		w("  %-52s p50 %8.3f ms   p99 %8.3f ms  (n=%d)", name, ms(l.P50()), ms(l.P99()), len(l))
	}
	w("")
	w("dtmux session keystroke -> output benchmark (%s, %d CPUs)", benchenv.HostDesc(), benchenv.NumCPU())
	w("typed `echo $((N+1))` + Enter into sh; timed until N+1 reaches the client:")
	if r.skipped != "" {
		w("  dtmux rows missing: %s", r.skipped)
	}
	lat("SendInput -> FollowSession, via controller", r.ctl)
	lat("SendInput -> FollowSession, direct to agent", r.agent)
	lat("CLI: dtmux session send -> dtmux session logs -f", r.cli)
	lat("tmux control mode: send-keys -> %output (floor)", r.floor)
	lat("seed: exec send-keys, capture-pane every 10 ms", r.poll10)
	lat("seed: exec send-keys, capture-pane every 0.5 s", r.poll500)
	w("against the targets:")
	if len(r.ctl) > 0 {
		w("  via controller p50 %.2f ms (target <= 2 ms): %s", ms(r.ctl.P50()), verdict(r.ctl.P50() <= 2*time.Millisecond))
		if len(r.floor) > 0 {
			w("  via controller p50 = tmux floor %.2f ms + %.2f ms", ms(r.floor.P50()), ms(r.ctl.P50()-r.floor.P50()))
		}
		if len(r.poll500) > 0 {
			w("  via controller p50 is %.0fx faster than the seed's 0.5 s polling (%.0f ms)", float64(r.poll500.P50())/float64(r.ctl.P50()), ms(r.poll500.P50()))
		}
		if len(r.poll10) > 0 {
			w("  via controller p50 is %.1fx faster than polling every 10 ms (%.1f ms)", float64(r.poll10.P50())/float64(r.ctl.P50()), ms(r.poll10.P50()))
		}
	}
	if len(r.cli) > 0 {
		w("  whole CLI send -> logs -f p50 %.2f ms (target <= 10 ms): %s", ms(r.cli.P50()), verdict(r.cli.P50() <= 10*time.Millisecond))
	}
	fmt.Print(sb.String())
	b.Log(sb.String())
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
