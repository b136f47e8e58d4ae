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
		return nil, fmt.Errorf("%w: hosts file: %s", provider.ErrInvalid, yamlError(err))
	}
	seen := map[string]bool{}
	for i, h := range f.Hosts {
		where := fmt.Sprintf("hosts[%d]", i)
		if h.Name != "" {
			where = fmt.Sprintf("host %q", h.Name)
		}
		switch {
		case !provider.ValidName(h.Name):
			return nil, fmt.Errorf("%w: %s: name must be letters, digits, '-', '_' or '.', at most 63 bytes, starting with a letter or digit", provider.ErrInvalid, where)
		case seen[h.Name]:
			return nil, fmt.Errorf("%w: %s: duplicate name", provider.ErrInvalid, where)
		case strings.TrimSpace(h.Destination) == "":
			return nil, fmt.Errorf("%w: %s: destination is required", provider.ErrInvalid, where)
		case strings.HasPrefix(h.Destination, "-") || strings.ContainsAny(h.Destination, " \t\r\n\x00"):
			return nil, fmt.Errorf("%w: %s: destination %q is not a host", provider.ErrInvalid, where, h.Destination)
		}
		for k := range h.Labels {
			if !labelRE.MatchString(k) {
				return nil, fmt.Errorf("%w: %s: label key %q: want an optional DNS prefix and '/', then up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit", provider.ErrInvalid, where, k)
			}
		}
		for _, a := range h.SSHArgs {
			if strings.ContainsRune(a, 0) {
				return nil, fmt.Errorf("%w: %s: ssh_args contain a NUL byte", provider.ErrInvalid, where)
			}
		}
		seen[h.Name] = true
	}
	return f.Hosts, nil
}

// yamlTypeRE matches the Go types yaml.v3 names in its errors.
var yamlTypeRE = regexp.MustCompile(` in type [A-Za-z0-9_.\[\]*]+`)

// yamlError is err on one line, without Go type names: yaml.v3 lists each
// mistake on a line of its own ("yaml: unmarshal errors:\n  line 4: field
// bogus not found in type ssh.Host").
func yamlError(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.Replace(msg, "unmarshal errors:\n", "", 1)
	msg = yamlTypeRE.ReplaceAllString(msg, "")
	var parts []string
	for _, l := range strings.Split(msg, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}
