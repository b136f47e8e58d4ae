package provider

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
)

var nameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidName reports whether s can name a workspace, with every provider:
// letters, digits, '.', '_' and '-', at most 63 bytes, starting with a
// letter or digit.
func ValidName(s string) bool { return nameRe.MatchString(s) }

// ValidateName is ValidName as an error that wraps ErrInvalid.
func ValidateName(s string) error {
	if ValidName(s) {
		return nil
	}
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return fmt.Errorf("%w: workspace name %q: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalid, s)
}

// CheckOptions refuses provider options (ws create --opt KEY=VALUE) whose
// keys are not in known, naming the ones this provider takes: an option
// dropped silently is a workspace made other than asked.
func CheckOptions(opts map[string]string, known ...string) error {
	var unknown []string
	for k := range opts {
		if !slices.Contains(known, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	takes := "takes no options"
	if len(known) > 0 {
		takes = "takes " + strings.Join(known, ", ")
	}
	return fmt.Errorf("%w: unknown option %s: this provider %s", ErrInvalid, strings.Join(unknown, ", "), takes)
}
