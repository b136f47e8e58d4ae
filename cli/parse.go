package cli

import (
	"bufio"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// ParseEnvEntry splits one "KEY=VALUE" environment entry. The key must be
// non-empty and hold no NUL; the value may be empty but holds no NUL; both
// must be valid UTF-8 (they travel as protobuf strings).
func ParseEnvEntry(s string) (key, value string, err error) {
	key, value, ok := strings.Cut(s, "=")
	switch {
	case !ok:
		return "", "", fmt.Errorf("env %q: want KEY=VALUE", clip(s))
	case key == "":
		return "", "", fmt.Errorf("env %q: empty name", clip(s))
	case strings.ContainsRune(s, 0):
		return "", "", fmt.Errorf("env %q: contains a NUL byte", clip(key))
	case !utf8.ValidString(s):
		return "", "", fmt.Errorf("env %q: not valid UTF-8", clip(key))
	}
	return key, value, nil
}

// ParseEnv reads "KEY=VALUE" entries into a map; a later entry for the
// same key wins, as in env(1).
func ParseEnv(entries []string) (map[string]string, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(entries))
	for _, e := range entries {
		k, v, err := ParseEnvEntry(e)
		if err != nil {
			return nil, err
		}
		m[k] = v
	}
	return m, nil
}

// ParseEnvFile reads a file of "KEY=VALUE" lines; blank lines and lines
// starting with '#' are skipped. Values are taken verbatim (no quotes are
// removed), and never appear in errors.
func ParseEnvFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if t := strings.TrimSpace(line); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		k, v, err := ParseEnvEntry(line)
		if err != nil {
			// The entry may be a secret: name the line, not its text.
			return nil, fmt.Errorf("%s:%d: want KEY=VALUE with a non-empty name, valid UTF-8 and no NUL", path, n)
		}
		m[k] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// Label limits, as Kubernetes has them for a label's name part (with
// '/' allowed for prefixes) and a generous bound on values.
const (
	maxLabelKey   = 63
	maxLabelValue = 256
)

// ParseLabel splits one "key=value" label. The key is 1 to 63 bytes of
// letters, digits, '.', '_', '/' and '-'; the value is at most 256 bytes
// of valid UTF-8 without control characters. Errors name the entry, not
// the flag ("\"bad\": want KEY=VALUE"): callers prefix the flag's name.
func ParseLabel(s string) (key, value string, err error) {
	key, value, err = parseKeyValue(s)
	if err != nil {
		return "", "", err
	}
	if len(key) > maxLabelKey {
		return "", "", fmt.Errorf("%q: key longer than %d bytes", clip(key), maxLabelKey)
	}
	for _, c := range []byte(key) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '/' || c == '-') {
			return "", "", fmt.Errorf("%q: the key may only hold letters, digits, '.', '_', '/' and '-'", clip(key))
		}
	}
	if len(value) > maxLabelValue {
		return "", "", fmt.Errorf("%q: value longer than %d bytes", clip(key), maxLabelValue)
	}
	for _, r := range value {
		if unicode.IsControl(r) {
			return "", "", fmt.Errorf("%q: the value holds a control character (%q)", clip(key), r)
		}
	}
	return key, value, nil
}

// parseKeyValue splits "key=value" with a non-empty key, both valid UTF-8
// without NUL: the rule for provider options, which are not labels.
func parseKeyValue(s string) (key, value string, err error) {
	key, value, ok := strings.Cut(s, "=")
	switch {
	case !ok:
		return "", "", fmt.Errorf("%q: want KEY=VALUE", clip(s))
	case strings.TrimSpace(key) == "":
		return "", "", fmt.Errorf("%q: empty key", clip(s))
	case strings.ContainsRune(s, 0):
		return "", "", fmt.Errorf("%q: contains a NUL byte", clip(key))
	case !utf8.ValidString(s):
		return "", "", fmt.Errorf("%q: not valid UTF-8", clip(key))
	}
	return key, value, nil
}

// parseOptions reads provider options ("key=value", repeatable; a later
// entry for the same key wins).
func parseOptions(entries []string) (map[string]string, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(entries))
	for _, e := range entries {
		k, v, err := parseKeyValue(e)
		if err != nil {
			return nil, err
		}
		m[k] = v
	}
	return m, nil
}

// ParseLabels reads "key=value" labels into a map; a key given twice is an
// error (it is almost always a typo).
func ParseLabels(entries []string) (map[string]string, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(entries))
	for _, e := range entries {
		k, v, err := ParseLabel(e)
		if err != nil {
			return nil, err
		}
		if old, dup := m[k]; dup && old != v {
			return nil, fmt.Errorf("%q given twice with different values", k)
		}
		m[k] = v
	}
	return m, nil
}

// signalNames maps names (without "SIG") to the signals a client may send.
var signalNames = map[string]agentv1.Signal{
	"HUP":   agentv1.Signal_SIGNAL_HUP,
	"INT":   agentv1.Signal_SIGNAL_INT,
	"QUIT":  agentv1.Signal_SIGNAL_QUIT,
	"KILL":  agentv1.Signal_SIGNAL_KILL,
	"USR1":  agentv1.Signal_SIGNAL_USR1,
	"USR2":  agentv1.Signal_SIGNAL_USR2,
	"TERM":  agentv1.Signal_SIGNAL_TERM,
	"CONT":  agentv1.Signal_SIGNAL_CONT,
	"STOP":  agentv1.Signal_SIGNAL_STOP,
	"WINCH": agentv1.Signal_SIGNAL_WINCH,
}

// ParseSignal reads a signal as kill(1) does: "TERM", "SIGTERM", "term"
// or "15".
func ParseSignal(s string) (agentv1.Signal, error) {
	name := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(s)), "SIG")
	if sig, ok := signalNames[name]; ok {
		return sig, nil
	}
	if n, err := strconv.Atoi(name); err == nil {
		for _, sig := range signalNames {
			if int(sig) == n {
				return sig, nil
			}
		}
	}
	names := make([]string, 0, len(signalNames))
	for n := range signalNames {
		names = append(names, n)
	}
	sort.Strings(names)
	return 0, fmt.Errorf("unknown signal %q (want one of %s, or its number)", clip(s), strings.Join(names, ", "))
}

// signalName is "SIGTERM" for 15, "SIGXCPU" for 24 (the name of any
// signal the platform knows), else "signal N".
func signalName(n int32) string {
	for name, sig := range signalNames {
		if int32(sig) == n {
			return "SIG" + name
		}
	}
	if name := unix.SignalName(syscall.Signal(n)); name != "" {
		return name
	}
	return fmt.Sprintf("signal %d", n)
}

// clip shortens s for an error message.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}

// ParseSize reads a byte count: "1048576", "64K", "100M", "2G" (powers of
// 1024; an optional trailing "B" or "iB" is allowed).
func ParseSize(s string) (uint64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := uint64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || n > (1<<64-1)/mult {
		return 0, fmt.Errorf("size %q: want a byte count such as 1048576, 64K, 100M or 2G", clip(s))
	}
	return n * mult, nil
}
