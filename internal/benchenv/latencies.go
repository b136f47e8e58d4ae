package benchenv

import (
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// Latencies is a sample of durations.
type Latencies []time.Duration

// Pct is the p-th percentile (nearest rank), 0 for an empty sample.
func (l Latencies) Pct(p int) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := append(Latencies(nil), l...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100 // nearest rank
	return s[min(max(i-1, 0), len(s)-1)]
}

// P50 is the median.
func (l Latencies) P50() time.Duration { return l.Pct(50) }

// P99 is the 99th percentile.
func (l Latencies) P99() time.Duration { return l.Pct(99) }

// Report sets p50/p99 metrics on b.
func (l Latencies) Report(b *testing.B) {
	b.ReportMetric(MS(l.P50()), "p50-ms")
	b.ReportMetric(MS(l.P99()), "p99-ms")
	b.ReportMetric(float64(len(l)), "samples")
}

// Median is the middle value of xs (the upper of the two middle ones for
// an even count), 0 for none: the figure of a comparison made in rounds.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// MS is d in milliseconds.
func MS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// NumCPU is the number of CPUs, for the tables.
func NumCPU() int { return runtime.NumCPU() }

// HostDesc names the machine's CPU model and the OS, for the tables.
func HostDesc() string {
	model := runtime.GOARCH
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return runtime.GOOS + ", " + model
}
