package ssh

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/dtmux/dtmux/controller/provider"
)

// Host is one entry of the hosts file.
type Host struct {
	// Name is the workspace name.
	Name string `yaml:"name"`
	// Destination is anything ssh accepts: host, user@host, an alias
	// from ~/.ssh/config.
	Destination string `yaml:"destination"`
	// Labels are used by selectors.
	Labels map[string]string `yaml:"labels"`
	// SSHArgs are extra ssh arguments (-p, -i, -o ..., -J ...).
	SSHArgs []string `yaml:"ssh_args"`
}

type hostsFile struct {
	Hosts []Host `yaml:"hosts"`
}

var (
	labelRE = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9._-]{0,252}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,62})$`)
)

// invalid is a mistake in a hosts file: it reads as its own message (the
// file's name goes before it) and is provider.ErrInvalid.
type invalid string

func (e invalid) Error() string        { return string(e) }
func (e invalid) Is(target error) bool { return target == provider.ErrInvalid }

func invalidf(format string, a ...any) error { return invalid(fmt.Sprintf(format, a...)) }

// ParseHosts reads a hosts file:
//
//	hosts:
//	  - name: web1
//	    destination: deploy@web1.example.com
//	    labels: {team: web}
//	    ssh_args: [-p, "2222"]
//
// Names must be valid and unique; a destination must be present and must
// not look like an option (it is placed after the ssh options).
func ParseHosts(data []byte) ([]Host, error) {
	var f hostsFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, invalid(yamlError(err))
	}
	seen := map[string]bool{}
	for i, h := range f.Hosts {
		where := fmt.Sprintf("hosts[%d]", i)
		if h.Name != "" {
			where = fmt.Sprintf("host %q", h.Name)
		}
		switch {
		case !provider.ValidName(h.Name):
			return nil, invalidf("%s: name must be letters, digits, '-', '_' or '.', at most 63 bytes, starting with a letter or digit", where)
		case seen[h.Name]:
			return nil, invalidf("%s: duplicate name", where)
		case strings.TrimSpace(h.Destination) == "":
			return nil, invalidf("%s: destination is required", where)
		case strings.HasPrefix(h.Destination, "-") || strings.ContainsAny(h.Destination, " \t\r\n\x00"):
			return nil, invalidf("%s: destination %q is not a host", where, h.Destination)
		}
		for k := range h.Labels {
			if !labelRE.MatchString(k) {
				return nil, invalidf("%s: label key %q: want an optional DNS prefix and '/', then up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit", where, k)
			}
		}
		for _, a := range h.SSHArgs {
			if strings.ContainsRune(a, 0) {
				return nil, invalidf("%s: ssh_args contain a NUL byte", where)
			}
		}
		seen[h.Name] = true
	}
	return f.Hosts, nil
}

// yamlTypeRE matches the Go types yaml.v3 names in its errors.
var yamlTypeRE = regexp.MustCompile(` in type [A-Za-z0-9_.\[\]*]+`)

// yamlKindRE matches a value of the wrong kind: "cannot unmarshal !!str
// `-p 22` into []string".
var yamlKindRE = regexp.MustCompile("cannot unmarshal !!(\\w+)( `[^`]*`)? into (\\S+)")

// yamlKinds and goKinds name, for a user, what yaml.v3 names by tag and by
// Go type.
var (
	yamlKinds = map[string]string{"map": "a map", "seq": "a list", "str": "a string", "int": "a number",
		"float": "a number", "bool": "true or false", "null": "nothing"}
	goKinds = map[string]string{"[]ssh.Host": "a list of hosts", "[]string": "a list of strings",
		"map[string]string": "a map of strings", "string": "a string", "ssh.hostsFile": "a map with hosts:"}
)

// yamlError is err on one line, in the hosts file's terms: yaml.v3 lists
// each mistake on a line of its own, with Go types and YAML tags ("yaml:
// unmarshal errors:\n  line 4: field bogus not found in type ssh.Host",
// "line 2: cannot unmarshal !!map into []ssh.Host").
func yamlError(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.Replace(msg, "unmarshal errors:\n", "", 1)
	msg = yamlTypeRE.ReplaceAllString(msg, "")
	msg = yamlKindRE.ReplaceAllStringFunc(msg, func(m string) string {
		sub := yamlKindRE.FindStringSubmatch(m)
		got, ok := yamlKinds[sub[1]]
		if !ok {
			got = sub[1]
		}
		want, ok := goKinds[sub[3]]
		if !ok {
			want = "something else"
		}
		return got + strings.ReplaceAll(sub[2], "`", "") + " where " + want + " belongs"
	})
	var parts []string
	for _, l := range strings.Split(msg, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}
