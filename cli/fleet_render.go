package cli

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// ExitUnreachable is dtmux fleet's exit code when no target failed but
// some could not be reached, were skipped (not started) or were
// cancelled: the command did not run everywhere. A target that failed
// wins: then the exit code is the worst exit code among failed targets.
// (255, ExitFailure, stays "the fleet call itself failed".)
const ExitUnreachable = 253

// fleetExit is the exit code for a fleet summary: 0 only when every
// target succeeded. Workspaces an attach could not ask (not known to be
// targets) do not count; targets it did not find do.
func fleetExit(s *controllerv1.FleetSummary) int {
	switch {
	case s == nil:
		return ExitFailure
	case s.GetFailed() > 0:
		if c := int(s.GetWorstExitCode()); c > 0 && c < 256 {
			return c
		}
		return 1
	case s.GetUnreachable()+s.GetSkipped()+s.GetCancelled()+s.GetNotFound() > 0 || s.GetSucceeded() < s.GetTotal():
		return ExitUnreachable
	}
	return 0
}

// fleetRenderer turns fleet events into output. Calls come from one
// goroutine.
type fleetRenderer interface {
	event(ev *controllerv1.FleetEvent) error
	// finish flushes what is buffered; sum is nil when the stream ended
	// without a summary.
	finish(sum *controllerv1.FleetSummary) error
}

// maxPartialLine bounds a buffered partial line per workspace and
// stream. Lines up to this long are printed whole; a longer one is
// printed in pieces of this size, the first after "name | " and the rest
// after "name + " (continuation), so that a target printing no newlines
// cannot make dtmux hold unbounded memory, and no byte is lost.
const maxPartialLine = 4 << 20

// prefixRenderer prints each whole line as "name | line", stdout lines to
// stdout and stderr lines to stderr. Partial lines wait in a buffer per
// workspace and stream until the newline comes, so lines from different
// workspaces never mix; the remainder is flushed when the target ends.
type prefixRenderer struct {
	stdout, stderr io.Writer
	color          bool
	width          int
	partial        map[string]*partialLine // key: stream + workspace
	line           bytes.Buffer            // scratch: one line, written in one Write
}

// partialLine is the unfinished line of one workspace and stream.
type partialLine struct {
	bytes.Buffer
	// cont: a piece of this line was printed already; what follows is a
	// continuation.
	cont bool
}

// Markers between a name and its text: a line (or a line's first piece),
// and the continuation of an over-long line.
const (
	markLine = " | "
	markCont = " + "
)

func newPrefixRenderer(stdout, stderr io.Writer, color bool) *prefixRenderer {
	return &prefixRenderer{stdout: stdout, stderr: stderr, color: color, partial: map[string]*partialLine{}}
}

// colors are the ANSI foregrounds names cycle through (no red: that
// means failure).
var colors = []string{"32", "33", "34", "35", "36", "92", "93", "94", "95", "96"}

func (p *prefixRenderer) prefix(ws, mark string) string {
	pad := strings.Repeat(" ", max(0, p.width-len(ws)))
	if !p.color {
		return ws + pad + mark
	}
	h := fnv.New32a()
	h.Write([]byte(ws))
	return "\x1b[" + colors[h.Sum32()%uint32(len(colors))] + "m" + ws + "\x1b[0m" + pad + mark
}

func (p *prefixRenderer) writeLine(w io.Writer, ws string, text []byte) error {
	return p.writeMarked(w, ws, markLine, text)
}

func (p *prefixRenderer) writeMarked(w io.Writer, ws, mark string, text []byte) error {
	p.line.Reset()
	p.line.WriteString(p.prefix(ws, mark))
	p.line.Write(text)
	if len(text) == 0 || text[len(text)-1] != '\n' {
		p.line.WriteByte('\n')
	}
	_, err := w.Write(p.line.Bytes())
	return err
}

func (p *prefixRenderer) note(ws, format string, args ...any) error {
	return p.writeLine(p.stderr, ws, []byte("dtmux: "+fmt.Sprintf(format, args...)))
}

func (p *prefixRenderer) event(ev *controllerv1.FleetEvent) error {
	ws := ev.GetWorkspace()
	switch e := ev.GetEvent().(type) {
	case *controllerv1.FleetEvent_Started:
		for _, n := range e.Started.GetWorkspaces() {
			p.width = max(p.width, len(n))
		}
	case *controllerv1.FleetEvent_Output:
		return p.output(ws, e.Output)
	case *controllerv1.FleetEvent_Gap:
		if err := p.flush(ws); err != nil {
			return err
		}
		return p.note(ws, "%d bytes of %s were evicted from the agent's spool and are lost", e.Gap.GetBytes(), streamName(e.Gap.GetStream()))
	case *controllerv1.FleetEvent_Exited:
		if err := p.flush(ws); err != nil {
			return err
		}
		if t := e.Exited; !trailerOK(t) {
			return p.note(ws, "%s", describeTrailer(t))
		}
	case *controllerv1.FleetEvent_Unreachable:
		return p.note(ws, "unreachable after %d attempt(s): %s", e.Unreachable.GetAttempts(), e.Unreachable.GetReason())
	case *controllerv1.FleetEvent_Skipped:
		return p.note(ws, "skipped: %s", e.Skipped.GetReason())
	case *controllerv1.FleetEvent_NotAsked:
		return p.note(ws, "could not be asked whether it has the run (not counted): %s", e.NotAsked.GetReason())
	}
	return nil
}

func (p *prefixRenderer) output(ws string, o *agentv1.RunOutput) error {
	w, key := p.stdout, "1"+ws
	if o.GetStream() == agentv1.Stream_STREAM_STDERR {
		w, key = p.stderr, "2"+ws
	}
	buf := p.partial[key]
	data := o.GetData()
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			if buf == nil {
				buf = &partialLine{}
				p.partial[key] = buf
			}
			for len(data) > 0 {
				// A full buffer is printed only when more of the line
				// comes: a line of exactly maxPartialLine stays whole.
				if buf.Len() >= maxPartialLine {
					if err := p.writePiece(w, ws, buf); err != nil {
						return err
					}
				}
				n := min(len(data), maxPartialLine-buf.Len())
				buf.Write(data[:n])
				data = data[n:]
			}
			return nil
		}
		line := data[:i+1]
		mark := markLine
		if buf != nil {
			if buf.cont {
				mark = markCont
			}
			if buf.Len() > 0 {
				buf.Write(line)
				line = buf.Bytes()
			}
		}
		if err := p.writeMarked(w, ws, mark, line); err != nil {
			return err
		}
		if buf != nil {
			buf.Reset()
			buf.cont = false
		}
		data = data[i+1:]
	}
	return nil
}

// writePiece prints a full buffer as a piece of an over-long line.
func (p *prefixRenderer) writePiece(w io.Writer, ws string, buf *partialLine) error {
	mark := markLine
	if buf.cont {
		mark = markCont
	}
	err := p.writeMarked(w, ws, mark, buf.Bytes())
	buf.Reset()
	buf.cont = true
	return err
}

// flush prints the workspace's partial lines.
func (p *prefixRenderer) flush(ws string) error {
	for _, s := range []struct {
		key string
		w   io.Writer
	}{{"1" + ws, p.stdout}, {"2" + ws, p.stderr}} {
		if buf := p.partial[s.key]; buf != nil {
			if buf.Len() > 0 {
				if err := p.writePiece(s.w, ws, buf); err != nil {
					return err
				}
			}
			delete(p.partial, s.key)
		}
	}
	return nil
}

func (p *prefixRenderer) finish(*controllerv1.FleetSummary) error {
	keys := make([]string, 0, len(p.partial))
	for k := range p.partial {
		keys = append(keys, k[1:])
	}
	slices.Sort(keys)
	for _, ws := range slices.Compact(keys) {
		if err := p.flush(ws); err != nil {
			return err
		}
	}
	return nil
}

// trailerOK reports whether a target succeeded.
func trailerOK(t *agentv1.RunTrailer) bool {
	return t.GetReason() == agentv1.ExitReason_EXIT_REASON_EXITED && t.GetExitCode() == 0
}

// describeTrailer says how a target ended, in a few words.
func describeTrailer(t *agentv1.RunTrailer) string {
	var s string
	switch t.GetReason() {
	case agentv1.ExitReason_EXIT_REASON_EXITED:
		s = fmt.Sprintf("exit %d", t.GetExitCode())
	case agentv1.ExitReason_EXIT_REASON_SIGNALED:
		s = "killed by " + signalName(t.GetSignal())
	case agentv1.ExitReason_EXIT_REASON_TIMED_OUT:
		s = "timed out"
	case agentv1.ExitReason_EXIT_REASON_KILLED:
		s = "killed"
	case agentv1.ExitReason_EXIT_REASON_AGENT_LOST:
		s = "agent lost"
	case agentv1.ExitReason_EXIT_REASON_LIMIT_EXCEEDED:
		s = "limit exceeded"
	default:
		s = "failed"
	}
	if d := t.GetDetail(); d != "" {
		s += ": " + d
	}
	return s
}

// groupRenderer collects each workspace's output (both streams, in
// arrival order) and prints, at the end, one block per distinct output
// and outcome with the names that produced it, as `dshbak -c` does.
type groupRenderer struct {
	w       io.Writer
	order   []string
	out     map[string]*bytes.Buffer
	outcome map[string]string
}

func newGroupRenderer(w io.Writer) *groupRenderer {
	return &groupRenderer{w: w, out: map[string]*bytes.Buffer{}, outcome: map[string]string{}}
}

func (g *groupRenderer) buf(ws string) *bytes.Buffer {
	b := g.out[ws]
	if b == nil {
		b = &bytes.Buffer{}
		g.out[ws] = b
	}
	return b
}

func (g *groupRenderer) event(ev *controllerv1.FleetEvent) error {
	ws := ev.GetWorkspace()
	switch e := ev.GetEvent().(type) {
	case *controllerv1.FleetEvent_Started:
		g.order = e.Started.GetWorkspaces()
	case *controllerv1.FleetEvent_Output:
		g.buf(ws).Write(e.Output.GetData())
	case *controllerv1.FleetEvent_Gap:
		fmt.Fprintf(g.buf(ws), "[dtmux: %d bytes lost]\n", e.Gap.GetBytes())
	case *controllerv1.FleetEvent_Exited:
		if !trailerOK(e.Exited) {
			g.outcome[ws] = describeTrailer(e.Exited)
		}
	case *controllerv1.FleetEvent_Unreachable:
		g.outcome[ws] = "unreachable: " + e.Unreachable.GetReason()
	case *controllerv1.FleetEvent_Skipped:
		g.outcome[ws] = "skipped: " + e.Skipped.GetReason()
	}
	return nil
}

func (g *groupRenderer) finish(*controllerv1.FleetSummary) error {
	type group struct {
		names   []string
		out     []byte
		outcome string
	}
	var groups []*group
	byKey := map[string]*group{}
	for _, ws := range g.order {
		var out []byte
		if b := g.out[ws]; b != nil {
			out = b.Bytes()
		}
		key := g.outcome[ws] + "\x00" + string(out)
		gr := byKey[key]
		if gr == nil {
			gr = &group{out: out, outcome: g.outcome[ws]}
			byKey[key] = gr
			groups = append(groups, gr)
		}
		gr.names = append(gr.names, ws)
	}
	var b bytes.Buffer
	for _, gr := range groups {
		names := strings.Join(gr.names, ",")
		rule := strings.Repeat("-", min(max(len(names), 16), 78))
		fmt.Fprintf(&b, "%s\n%s\n", rule, names)
		if gr.outcome != "" {
			fmt.Fprintf(&b, "(%s)\n", gr.outcome)
		}
		fmt.Fprintf(&b, "%s\n", rule)
		b.Write(gr.out)
		if len(gr.out) > 0 && gr.out[len(gr.out)-1] != '\n' {
			b.WriteByte('\n')
		}
	}
	_, err := g.w.Write(b.Bytes())
	return err
}

// jsonRenderer prints every event as one line of JSON (NDJSON), the
// summary event last. Output bytes are base64 in output.data, as protojson
// encodes bytes.
type jsonRenderer struct {
	w io.Writer
}

var ndjson = protojson.MarshalOptions{UseProtoNames: true, EmitDefaultValues: true}

func (j *jsonRenderer) event(ev *controllerv1.FleetEvent) error {
	b, err := ndjson.Marshal(ev)
	if err != nil {
		return err
	}
	_, err = j.w.Write(append(b, '\n'))
	return err
}

func (j *jsonRenderer) finish(*controllerv1.FleetSummary) error { return nil }

// logDirRenderer writes each workspace's output to DIR/NAME.stdout and
// DIR/NAME.stderr (files are open only while the target runs), and at the
// end DIR/succeeded and DIR/failed, one name a line. failed lists the
// failed, unreachable and cancelled workspaces.
type logDirRenderer struct {
	dir       string
	files     map[string]*os.File // key: stream + workspace
	order     []string
	succeeded map[string]bool
}

func newLogDirRenderer(dir string) (*logDirRenderer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	return &logDirRenderer{dir: dir, files: map[string]*os.File{}, succeeded: map[string]bool{}}, nil
}

func (l *logDirRenderer) file(ws, stream string) (*os.File, error) {
	key := stream + "\x00" + ws
	if f := l.files[key]; f != nil {
		return f, nil
	}
	f, err := os.Create(filepath.Join(l.dir, sanitizeFileName(ws)+"."+stream))
	if err != nil {
		return nil, err
	}
	l.files[key] = f
	return f, nil
}

func (l *logDirRenderer) closeFiles(ws string) error {
	var first error
	for _, s := range []string{"stdout", "stderr"} {
		key := s + "\x00" + ws
		if f := l.files[key]; f != nil {
			if err := f.Close(); err != nil && first == nil {
				first = err
			}
			delete(l.files, key)
		}
	}
	return first
}

func (l *logDirRenderer) event(ev *controllerv1.FleetEvent) error {
	ws := ev.GetWorkspace()
	switch e := ev.GetEvent().(type) {
	case *controllerv1.FleetEvent_Started:
		l.order = e.Started.GetWorkspaces()
	case *controllerv1.FleetEvent_TargetStarted:
		// Both files exist for every target that ran, empty or not.
		for _, s := range []string{"stdout", "stderr"} {
			if _, err := l.file(ws, s); err != nil {
				return err
			}
		}
	case *controllerv1.FleetEvent_Output:
		f, err := l.file(ws, streamName(e.Output.GetStream()))
		if err != nil {
			return err
		}
		_, err = f.Write(e.Output.GetData())
		return err
	case *controllerv1.FleetEvent_Exited:
		l.succeeded[ws] = trailerOK(e.Exited)
		return l.closeFiles(ws)
	case *controllerv1.FleetEvent_Unreachable, *controllerv1.FleetEvent_Skipped:
		return l.closeFiles(ws)
	}
	return nil
}

func (l *logDirRenderer) finish(sum *controllerv1.FleetSummary) error {
	for key, f := range l.files {
		f.Close()
		delete(l.files, key)
	}
	var ok []string
	for _, ws := range l.order {
		if l.succeeded[ws] {
			ok = append(ok, ws)
		}
	}
	err := os.WriteFile(filepath.Join(l.dir, "succeeded"), []byte(lines(ok)), 0o644)
	if sum != nil && err == nil {
		bad := notOK(sum)
		slices.SortStableFunc(bad, func(a, b string) int {
			return slices.Index(l.order, a) - slices.Index(l.order, b)
		})
		err = os.WriteFile(filepath.Join(l.dir, "failed"), []byte(lines(bad)), 0o644)
	}
	return err
}

// notOK lists the failed, unreachable and cancelled targets of a summary,
// each once (a controller before the separate lists put all three in
// failed_workspaces).
func notOK(s *controllerv1.FleetSummary) []string {
	var out []string
	for _, l := range [][]string{s.GetFailedWorkspaces(), s.GetUnreachableWorkspaces(), s.GetCancelledWorkspaces()} {
		for _, ws := range l {
			if !slices.Contains(out, ws) {
				out = append(out, ws)
			}
		}
	}
	return out
}

func lines(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return strings.Join(names, "\n") + "\n"
}

// sanitizeFileName keeps a workspace name usable as a file name.
func sanitizeFileName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == 0 {
			return '_'
		}
		return r
	}, s)
}

// fleetProgress is a one-line status on a terminal's stderr: done/total
// and failures. Callers clear it before printing anything and draw it
// after.
type fleetProgress struct {
	w                     io.Writer
	total, done, failures int
	shown                 bool
	last                  time.Time
}

func (p *fleetProgress) clear() {
	if p != nil && p.shown {
		io.WriteString(p.w, "\r\x1b[K")
		p.shown = false
	}
}

func (p *fleetProgress) update(ev *controllerv1.FleetEvent) {
	if p == nil {
		return
	}
	switch e := ev.GetEvent().(type) {
	case *controllerv1.FleetEvent_Started:
		p.total = len(e.Started.GetWorkspaces())
	case *controllerv1.FleetEvent_Exited:
		p.done++
		if !trailerOK(e.Exited) {
			p.failures++
		}
	case *controllerv1.FleetEvent_Unreachable:
		p.done++
		p.failures++
	case *controllerv1.FleetEvent_Skipped:
		p.done++
	}
}

func (p *fleetProgress) draw() {
	if p == nil || p.total == 0 {
		return
	}
	fmt.Fprintf(p.w, "\r\x1b[K[%d/%d done, %d failed]", p.done, p.total, p.failures)
	p.shown = true
}
