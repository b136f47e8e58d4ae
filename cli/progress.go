package cli

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// progressBar shows a percentage: a redrawn bar on a terminal, or a plain
// "progress: N%" line each time the whole percentage changes.
type progressBar struct {
	w     io.Writer
	tty   bool
	shown bool    // a bar is drawn on the current line
	pct   float64 // last value, -1 before the first
	width int
}

func newProgressBar(w io.Writer, tty bool) *progressBar {
	return &progressBar{w: w, tty: tty, pct: -1, width: 30}
}

// set records a new percentage and shows it.
func (p *progressBar) set(pct float64) {
	if math.IsNaN(pct) {
		return
	}
	pct = math.Max(0, math.Min(100, pct))
	changed := math.Floor(pct) != math.Floor(p.pct)
	p.pct = pct
	// On a terminal the caller redraws when the cursor is at a line start.
	if !p.tty && changed {
		fmt.Fprintf(p.w, "progress: %d%%\n", int(pct))
	}
}

// render is the bar's text.
func (p *progressBar) render() string {
	filled := int(math.Round(p.pct / 100 * float64(p.width)))
	return fmt.Sprintf("[%s%s] %3d%%", strings.Repeat("#", filled), strings.Repeat("-", p.width-filled), int(p.pct))
}

// clear erases the bar before other output is written to the terminal.
func (p *progressBar) clear() {
	if p.tty && p.shown {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.shown = false
	}
}

// redraw draws the bar again after other output.
func (p *progressBar) redraw() {
	if !p.tty || p.pct < 0 {
		return
	}
	fmt.Fprint(p.w, "\r\x1b[K"+p.render())
	p.shown = true
}

// done leaves the bar on its own line.
func (p *progressBar) done() {
	if p.tty && p.shown {
		fmt.Fprintln(p.w)
		p.shown = false
	}
}
