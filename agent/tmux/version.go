package tmux

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
)

// MinVersion is the oldest tmux the driver supports.
const MinVersion = "3.2"

// Version is a parsed `tmux -V`.
type Version struct {
	// Raw is the output of tmux -V, such as "tmux 3.3a".
	Raw          string
	Major, Minor int
}

func (v Version) String() string { return v.Raw }

// AtLeast reports whether v >= major.minor.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

var versionRE = regexp.MustCompile(`^tmux (?:next-)?(\d+)\.(\d+)[a-z]?`)

// ParseVersion parses the output of `tmux -V`. "tmux master" counts as new.
func ParseVersion(out string) (Version, error) {
	v := Version{Raw: out}
	if out == "tmux master" {
		v.Major, v.Minor = 99, 0
		return v, nil
	}
	m := versionRE.FindStringSubmatch(out)
	if m == nil {
		return v, fmt.Errorf("unrecognised tmux version %q", out)
	}
	v.Major, _ = strconv.Atoi(m[1])
	v.Minor, _ = strconv.Atoi(m[2])
	return v, nil
}

// ErrUnsupported is returned (wrapped, with the reason) when tmux is
// missing or older than MinVersion.
var ErrUnsupported = errors.New("tmux unavailable")
