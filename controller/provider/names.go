package provider

import (
	"fmt"
	"regexp"
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
