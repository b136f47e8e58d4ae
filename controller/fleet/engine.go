package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Engine runs fleet commands against Targets.
type Engine struct {
	targets Targets
	log     hclog.Logger
	// bg tracks work a fleet run leaves behind when it reports (kills of
	// targets that timed out before their command started); Close waits.
	bg sync.WaitGroup
}

// Close waits for the work fleet runs left behind (each bounded by the
// kill grace).
func (e *Engine) Close() { e.bg.Wait() }

// New returns an engine. log may be nil.
func New(targets Targets, log hclog.Logger) *Engine {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Engine{targets: targets, log: log}
}

var runIDRe = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// NewRunID returns a fresh fleet run id: "f-" and a time-ordered,
// random suffix that agents accept as a run id.
func NewRunID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("f-%s-%s", time.Now().UTC().Format("20060102T150405"), hex.EncodeToString(b[:]))
}

// ValidRunID reports whether id is acceptable as a run id on agents.
func ValidRunID(id string) bool { return runIDRe.MatchString(id) }

// result is how a target ended.
type result int

const (
	resNone result = iota // not finished (attach without follow, or abandoned)
	resSucceeded
	resFailed
	resUnreachable
	resSkipped
	resCancelled
)

// tally collects the targets' results for the summary. Safe for
// concurrent use.
type tally struct {
	mu      sync.Mutex
	names   []string       // selection order
	results []result       // guarded by mu
	codes   []int          // guarded by mu
	index   map[string]int // immutable after newTally
}

func newTally(names []string) *tally {
	t := &tally{names: names, results: make([]result, len(names)), codes: make([]int, len(names)), index: make(map[string]int, len(names))}
	for i, n := range names {
		t.index[n] = i
	}
	return t
}

// set records a target's result and returns the number of targets that
// failed or were unreachable so far.
func (t *tally) set(name string, r result, code int) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := t.index[name]
	t.results[i], t.codes[i] = r, code
	n := 0
	for _, r := range t.results {
		if r == resFailed || r == resUnreachable {
			n++
		}
	}
	return n
}

func (t *tally) summary(runID string, d time.Duration) Summary {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := Summary{RunID: runID, Total: len(t.names), Duration: d}
	for i, r := range t.results {
		switch r {
		case resSucceeded:
			s.Succeeded++
		case resFailed:
			s.Failed++
			s.WorstExitCode = max(s.WorstExitCode, t.codes[i])
			s.FailedWorkspaces = append(s.FailedWorkspaces, t.names[i])
		case resUnreachable:
			s.Unreachable++
			s.UnreachableWorkspaces = append(s.UnreachableWorkspaces, t.names[i])
		case resSkipped:
			s.Skipped++
		case resCancelled:
			s.Cancelled++
			s.CancelledWorkspaces = append(s.CancelledWorkspaces, t.names[i])
		}
	}
	return s
}

// emitter serialises Emit calls and remembers the first error, after
// which it cancels the fleet call.
type emitter struct {
	mu     sync.Mutex
	fn     Emit
	err    error // guarded by mu
	cancel context.CancelFunc
}

func (e *emitter) send(ev Event) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return e.err
	}
	if err := e.fn(ev); err != nil {
		e.err = err
		e.cancel()
	}
	return e.err
}

func (e *emitter) failed() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}
