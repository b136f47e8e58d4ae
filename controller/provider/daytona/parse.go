package daytona

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/dtmux/dtmux/controller/provider"
)

// Only the fields dtmux uses are decoded: apiKey and envVars never are,
// so they cannot reach a log or a response.

// legacyWorkspace is one element of `daytona list -f json` (v0.20–v0.53).
type legacyWorkspace struct {
	ID         string            `json:"id"`
	Name       string            `json:"name"`
	Image      string            `json:"image"`
	User       string            `json:"user"`
	Labels     map[string]string `json:"labels"`
	Repository *repository       `json:"repository"`
	// State is v0.52+.
	State *struct {
		Name  string `json:"name"`
		Error string `json:"error"`
	} `json:"state"`
	// Target is a name before v0.52 and an object after.
	Target json.RawMessage `json:"target"`
	// Projects are v0.20–v0.51.
	Projects []legacyProject `json:"projects"`
}

type repository struct {
	URL    string `json:"url"`
	Branch string `json:"branch"`
}

type legacyProject struct {
	Name       string      `json:"name"`
	Image      string      `json:"image"`
	User       string      `json:"user"`
	Repository *repository `json:"repository"`
	State      *struct {
		Uptime json.Number `json:"uptime"`
	} `json:"state"`
}

// sandbox is one sandbox of `daytona sandbox list/info -f json` (v0.100+).
type sandbox struct {
	ID               string            `json:"id"`
	Name             string            `json:"name"`
	State            string            `json:"state"`
	DesiredState     string            `json:"desiredState"`
	Labels           map[string]string `json:"labels"`
	Target           string            `json:"target"`
	Snapshot         string            `json:"snapshot"`
	User             string            `json:"user"`
	ErrorReason      string            `json:"errorReason"`
	AutoStopInterval *json.Number      `json:"autoStopInterval"`
	CPU              json.Number       `json:"cpu"`
	Memory           json.Number       `json:"memory"`
	Disk             json.Number       `json:"disk"`
}

// sandboxPage is a page of `sandbox list -f json`: {items, nextCursor}
// (v0.180+) or {items, page, totalPages} (v0.108–v0.179).
type sandboxPage struct {
	Items      []sandbox   `json:"items"`
	NextCursor *string     `json:"nextCursor"`
	Page       json.Number `json:"page"`
	TotalPages json.Number `json:"totalPages"`
}

// ParseList reads `daytona list` JSON of any legacy version, or a page of
// `daytona sandbox list`, into workspaces sorted by name. Unknown fields
// are ignored; deleted or destroyed entries are left out.
func ParseList(data []byte) ([]provider.Workspace, error) {
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] == '{' {
		p, err := parseSandboxPage(data)
		if err != nil {
			return nil, err
		}
		return sandboxWorkspaces(p.Items), nil
	}
	ws, err := parseLegacy(data)
	if err != nil {
		return nil, err
	}
	return legacyWorkspaces(ws), nil
}

func parseLegacy(data []byte) ([]legacyWorkspace, error) {
	var ws []legacyWorkspace
	if err := json.Unmarshal(data, &ws); err != nil {
		return nil, fmt.Errorf("daytona list output: %w", err)
	}
	return ws, nil
}

func parseSandboxPage(data []byte) (sandboxPage, error) {
	data = bytes.TrimSpace(data)
	var p sandboxPage
	if len(data) > 0 && data[0] == '[' {
		// Tolerate a bare array (releases before paging).
		if err := json.Unmarshal(data, &p.Items); err != nil {
			return p, fmt.Errorf("daytona sandbox list output: %w", err)
		}
		return p, nil
	}
	if err := json.Unmarshal(data, &p); err != nil {
		return p, fmt.Errorf("daytona sandbox list output: %w", err)
	}
	return p, nil
}

func parseSandbox(data []byte) (sandbox, error) {
	var s sandbox
	if err := json.Unmarshal(bytes.TrimSpace(data), &s); err != nil {
		return s, fmt.Errorf("daytona sandbox info output: %w", err)
	}
	if s.ID == "" {
		return s, fmt.Errorf("daytona sandbox info output: no id")
	}
	return s, nil
}

// legacyState maps a v0.52+ state name.
func legacyState(name string) provider.State {
	switch name {
	case "started", "running", "run-successful":
		return provider.StateStarted
	case "stopped":
		return provider.StateStopped
	case "error":
		return provider.StateError
	case "unresponsive", "undefined", "":
		return provider.StateUnknown
	default:
		return provider.StatePending
	}
}

func legacyWorkspaces(in []legacyWorkspace) []provider.Workspace {
	out := make([]provider.Workspace, 0, len(in))
	for _, w := range in {
		if w.Name == "" {
			continue
		}
		ws := provider.Workspace{Name: w.Name, Labels: map[string]string{}, Attributes: map[string]string{}}
		for k, v := range w.Labels {
			ws.Labels[k] = v
		}
		attr := func(k, v string) {
			if v != "" {
				ws.Attributes[k] = v
			}
		}
		attr("id", w.ID)
		attr("image", w.Image)
		attr("user", w.User)
		if w.Repository != nil {
			attr("repository", redactUserinfo(w.Repository.URL))
			attr("branch", w.Repository.Branch)
		}
		var target string
		if json.Unmarshal(w.Target, &target) != nil {
			var t struct {
				Name string `json:"name"`
			}
			json.Unmarshal(w.Target, &t)
			target = t.Name
		}
		attr("target", target)
		switch {
		case w.State != nil:
			if w.State.Name == "deleted" {
				continue
			}
			ws.State = legacyState(w.State.Name)
			ws.StateDetail = w.State.Name
			if w.State.Error != "" {
				ws.StateDetail += ": " + redactUserinfo(w.State.Error)
			}
		case len(w.Projects) > 0:
			// v0.20–v0.51 have no status: a project with uptime > 0 runs
			// (what the CLI itself shows); no state at all means the
			// agent never reported, e.g. after a failed create.
			ws.State, ws.StateDetail = provider.StateUnknown, "no state reported"
			for _, p := range w.Projects {
				if p.State == nil {
					continue
				}
				if up, err := p.State.Uptime.Int64(); err == nil && up > 0 {
					ws.State, ws.StateDetail = provider.StateStarted, "running"
					break
				}
				ws.State, ws.StateDetail = provider.StateStopped, "stopped"
			}
			p := w.Projects[0]
			attr("project", p.Name)
			attr("image", p.Image)
			attr("user", p.User)
			if p.Repository != nil {
				attr("repository", redactUserinfo(p.Repository.URL))
				attr("branch", p.Repository.Branch)
			}
		default:
			ws.State = provider.StateUnknown
		}
		out = append(out, ws)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// sandboxState maps a sandbox state; unknown words are transitional.
func sandboxState(s string) provider.State {
	switch s {
	case "started":
		return provider.StateStarted
	case "stopped", "archived", "paused":
		return provider.StateStopped
	case "error", "build_failed":
		return provider.StateError
	default:
		return provider.StatePending
	}
}

func sandboxWorkspace(s sandbox) provider.Workspace {
	ws := provider.Workspace{
		Name:        s.Name,
		Labels:      map[string]string{},
		State:       sandboxState(s.State),
		StateDetail: s.State,
		Attributes:  map[string]string{},
	}
	if ws.Name == "" {
		ws.Name = s.ID
	}
	if s.ErrorReason != "" {
		ws.StateDetail += ": " + redactUserinfo(s.ErrorReason)
	}
	for k, v := range s.Labels {
		ws.Labels[k] = v
	}
	attr := func(k, v string) {
		if v != "" {
			ws.Attributes[k] = v
		}
	}
	attr("id", s.ID)
	attr("region", s.Target)
	attr("snapshot", s.Snapshot)
	attr("user", s.User)
	attr("desired_state", s.DesiredState)
	attr("cpu", s.CPU.String())
	attr("memory_gib", s.Memory.String())
	attr("disk_gib", s.Disk.String())
	if s.AutoStopInterval != nil {
		attr("auto_stop_minutes", s.AutoStopInterval.String())
	}
	return ws
}

func sandboxWorkspaces(in []sandbox) []provider.Workspace {
	out := make([]provider.Workspace, 0, len(in))
	for _, s := range in {
		if s.ID == "" && s.Name == "" || s.State == "destroyed" || s.State == "destroying" {
			continue
		}
		out = append(out, sandboxWorkspace(s))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Version is a parsed `daytona version`.
type Version struct{ Major, Minor, Patch int }

var versionRE = regexp.MustCompile(`v?(\d+)\.(\d+)\.(\d+)`)

// ParseVersion reads the version from `daytona version` output ("Daytona
// version v0.53.0" and later forms).
func ParseVersion(out string) (Version, error) {
	m := versionRE.FindStringSubmatch(out)
	if m == nil {
		return Version{}, fmt.Errorf("daytona version: cannot read %q", strings.TrimSpace(out))
	}
	a, _ := strconv.Atoi(m[1])
	b, _ := strconv.Atoi(m[2])
	c, _ := strconv.Atoi(m[3])
	return Version{a, b, c}, nil
}

// AtLeast reports v >= 0.minor (every Daytona release is 0.x).
func (v Version) AtLeast(minor int) bool { return v.Major > 0 || v.Minor >= minor }

// Sandboxes reports whether this CLI is the sandbox generation (v0.100+).
func (v Version) Sandboxes() bool { return v.AtLeast(100) }

func (v Version) String() string { return fmt.Sprintf("v%d.%d.%d", v.Major, v.Minor, v.Patch) }

// parseSSHCommand reads host, port and user (the token) from the API's
// sshCommand: "ssh [-p PORT] TOKEN@HOST".
func parseSSHCommand(s string) (user, host, port string, err error) {
	f := strings.Fields(s)
	if len(f) < 2 || f[0] != "ssh" {
		return "", "", "", fmt.Errorf("unexpected sshCommand shape")
	}
	for i := 1; i < len(f); i++ {
		switch {
		case f[i] == "-p" && i+1 < len(f):
			port = f[i+1]
			i++
		case strings.HasPrefix(f[i], "-p") && len(f[i]) > 2:
			port = f[i][2:]
		case strings.HasPrefix(f[i], "-"):
		default:
			u, h, ok := strings.Cut(f[i], "@")
			if !ok || u == "" || h == "" {
				return "", "", "", fmt.Errorf("unexpected sshCommand destination")
			}
			user, host = u, h
		}
	}
	if host == "" {
		return "", "", "", fmt.Errorf("sshCommand has no destination")
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
			return "", "", "", fmt.Errorf("sshCommand has a bad port")
		}
	}
	if strings.HasPrefix(host, "-") || strings.HasPrefix(user, "-") {
		return "", "", "", fmt.Errorf("unexpected sshCommand destination")
	}
	return user, host, port, nil
}

// userinfoRE matches the credentials of a URL (https://user:token@host).
var userinfoRE = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]+@`)

// redactUserinfo hides the credentials a repository URL may carry (a
// token as user or password), wherever s shows one: a private repository
// is often given as https://x-access-token:TOKEN@github.com/o/r.git.
func redactUserinfo(s string) string {
	return userinfoRE.ReplaceAllString(s, "${1}[redacted]@")
}
