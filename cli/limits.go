package cli

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// limitKeys documents --limit; the order is the help's.
const limitKeys = `memory=SIZE (cgroup; the OOM killer ends the run), pids=N (cgroup; the first refused fork ends the run), cpus=N.N (cgroup quota), ` +
	`cpu-time=DURATION (RLIMIT_CPU), as=SIZE (RLIMIT_AS), nofile=N (RLIMIT_NOFILE), nproc=N (RLIMIT_NPROC)`

// addLimitFlag registers the repeatable --limit KEY=VALUE flag.
func addLimitFlag(f *pflag.FlagSet, dst *[]string, what string) {
	f.StringArrayVar(dst, "limit", nil, "resource limit for "+what+", KEY=VALUE (repeatable): "+limitKeys)
}

// parseLimits turns --limit values into RunLimits (nil when none). Errors
// are usage errors naming the bad value.
func parseLimits(values []string) (*agentv1.RunLimits, error) {
	if len(values) == 0 {
		return nil, nil
	}
	l := &agentv1.RunLimits{}
	for _, v := range values {
		key, val, ok := strings.Cut(v, "=")
		if !ok || val == "" {
			return nil, usageErrorf("--limit %q: want KEY=VALUE, with KEY one of memory, pids, cpus, cpu-time, as, nofile, nproc", v)
		}
		count := func() (uint64, error) {
			n, err := strconv.ParseUint(val, 10, 64)
			if err != nil || n == 0 {
				return 0, usageErrorf("--limit %s: want a positive whole number, got %q", key, val)
			}
			return n, nil
		}
		size := func() (uint64, error) {
			n, err := ParseSize(val)
			if err != nil || n == 0 {
				return 0, usageErrorf("--limit %s: want a positive size such as 512M, got %q", key, val)
			}
			return n, nil
		}
		var err error
		switch key {
		case "memory":
			l.MemoryBytes, err = size()
		case "as":
			l.AddressSpaceBytes, err = size()
		case "pids":
			l.Pids, err = count()
		case "nofile":
			l.OpenFiles, err = count()
		case "nproc":
			l.Processes, err = count()
		case "cpus":
			f, perr := strconv.ParseFloat(val, 64)
			if perr != nil || !(f > 0) || f > 1e6 {
				return nil, usageErrorf("--limit cpus: want a positive number of CPUs such as 0.5, got %q", val)
			}
			l.CpuMillis = uint64(math.Ceil(f * 1000))
		case "cpu-time":
			l.CpuSeconds, err = cpuSeconds(val)
		default:
			return nil, usageErrorf("--limit %q: unknown limit %q; want one of memory, pids, cpus, cpu-time, as, nofile, nproc", v, key)
		}
		if err != nil {
			return nil, err
		}
	}
	return l, nil
}

// cpuSeconds reads a CPU time limit: a duration (90s, 5m) or whole
// seconds, rounded up to a second.
func cpuSeconds(val string) (uint64, error) {
	if n, err := strconv.ParseUint(val, 10, 64); err == nil && n > 0 {
		return n, nil
	}
	d, err := time.ParseDuration(val)
	if err != nil || d <= 0 {
		return 0, usageErrorf("--limit cpu-time: want a duration such as 90s or whole seconds, got %q", val)
	}
	return uint64(math.Ceil(d.Seconds())), nil
}

// withMaxOutput adds the spool size to limits (which may be nil).
func withMaxOutput(l *agentv1.RunLimits, maxOutput uint64) *agentv1.RunLimits {
	if maxOutput == 0 {
		return l
	}
	if l == nil {
		l = &agentv1.RunLimits{}
	}
	l.MaxOutputBytes = maxOutput
	return l
}
