package provider

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxLabelValue is the longest label value accepted, in bytes.
const MaxLabelValue = 256

var labelKeyRe = regexp.MustCompile(`^[A-Za-z0-9._/-]{1,63}$`)

// ValidateLabels checks workspace labels: keys are 1 to 63 letters,
// digits, '.', '_', '/' or '-'; values are valid UTF-8, at most
// MaxLabelValue bytes, without control characters (they would garble a
// listing or a selector). The error wraps ErrInvalid and names the first
// offending key in sorted order.
func ValidateLabels(labels map[string]string) error {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !labelKeyRe.MatchString(k) {
			return fmt.Errorf("%w: label key %q: want 1 to 63 letters, digits, '.', '_', '/' or '-'", ErrInvalid, k)
		}
		v := labels[k]
		switch {
		case len(v) > MaxLabelValue:
			return fmt.Errorf("%w: label %q: value is %d bytes, over the limit of %d", ErrInvalid, k, len(v), MaxLabelValue)
		case !utf8.ValidString(v):
			return fmt.Errorf("%w: label %q: value is not valid UTF-8", ErrInvalid, k)
		case strings.IndexFunc(v, unicode.IsControl) >= 0:
			return fmt.Errorf("%w: label %q: value holds a control character", ErrInvalid, k)
		}
	}
	return nil
}
