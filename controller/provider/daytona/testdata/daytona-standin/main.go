// Command daytona-standin stands in for the daytona CLI in tests: it
// answers the legacy (v0.20–v0.53: list, and ssh with the project name
// before v0.52) and sandbox (v0.100+) commands dtmux uses
// with JSON of the real shapes, keeping its state in the JSON file named
// by $DAYTONA_STANDIN, and runs `ssh WS CMD...` through the real ssh.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type state struct {
	// Version is what `daytona version` reports, e.g. v0.53.0.
	Version string `json:"version"`
	// SSH is the argv that reaches every workspace (legacy ssh).
	SSH []string `json:"ssh"`
	// CreateState is where created things end up (default started).
	CreateState string `json:"create_state"`
	// CreateError is the error reason when CreateState is error.
	CreateError string `json:"create_error"`
	// PageSize pages sandbox list (default 100).
	PageSize int `json:"page_size"`
	// Pending holds the state a name moves to after it was seen once.
	Pending    map[string]string `json:"pending"`
	Workspaces []map[string]any  `json:"workspaces"`
	Sandboxes  []map[string]any  `json:"sandboxes"`
}

var (
	file string
	st   state
	lock *os.File
)

func main() {
	file = os.Getenv("DAYTONA_STANDIN")
	if file == "" {
		fatal("DAYTONA_STANDIN not set")
	}
	var err error
	lock, err = os.OpenFile(file+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		fatal(err.Error())
	}
	syscall.Flock(int(lock.Fd()), syscall.LOCK_EX)
	data, err := os.ReadFile(file)
	if err != nil {
		fatal(err.Error())
	}
	if err := json.Unmarshal(data, &st); err != nil {
		fatal(err.Error())
	}
	if st.Pending == nil {
		st.Pending = map[string]string{}
	}
	args := os.Args[1:]
	if len(args) == 0 {
		fatal("no command")
	}
	switch args[0] {
	case "version":
		fmt.Printf("Daytona version %s\n", st.Version)
	case "sandbox":
		sandboxCmd(args[1:])
	case "list", "ls":
		printJSON(st.Workspaces)
		advance(st.Workspaces, func(w map[string]any, s string) { w["state"] = map[string]any{"name": s, "updatedAt": now()} })
	case "create":
		legacyCreate(args[1:])
	case "start", "stop":
		w := legacyFind(arg(args, 1))
		if w == nil {
			logError(fmt.Sprintf("[ %s ] : failed to find workspace: workspace not found", arg(args, 1)))
			break
		}
		to := map[string]string{"start": "started", "stop": "stopped"}[args[0]]
		w["state"] = map[string]any{"name": to, "updatedAt": now()}
		fmt.Printf("\n Workspace '%s' %s successfully\n\n", arg(args, 1), to)
	case "delete", "remove", "rm":
		name := arg(args, 1)
		if legacyFind(name) == nil {
			logError(fmt.Sprintf("[ %s ] : failed to find workspace: workspace not found", name))
			break
		}
		var keep []map[string]any
		for _, w := range st.Workspaces {
			if w["name"] != name {
				keep = append(keep, w)
			}
		}
		st.Workspaces = keep
		fmt.Printf("\n Workspace '%s' successfully deleted\n\n", name)
	case "ssh":
		legacySSH(args[1:])
	default:
		fatal("unknown command " + args[0])
	}
	save()
}

func legacyCreate(args []string) {
	var url string
	labels := map[string]any{}
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--label" && i+1 < len(args):
			k, v, _ := strings.Cut(args[i+1], "=")
			labels[k] = v
			i++
		case a == "--":
		case strings.HasPrefix(a, "-"):
		default:
			url = a
		}
	}
	if url == "" {
		fmt.Println("Error: requires a repository URL")
		return
	}
	name := strings.TrimSuffix(path.Base(url), ".git")
	if legacyFind(name) != nil {
		fatal("workspace " + name + " already exists")
	}
	w := map[string]any{
		"apiKey": "sk-standin-workspace-secret", "envVars": map[string]any{"STANDIN_SECRET": "standin-env-secret"},
		"id": fmt.Sprintf("%012x", time.Now().UnixNano()&0xffffffffffff), "image": "daytonaio/workspace-project:latest",
		"labels": labels, "name": name, "user": "daytona",
		"repository": map[string]any{"branch": "main", "url": url},
		"state":      map[string]any{"name": "creating", "updatedAt": now()},
		"target":     map[string]any{"name": "local", "default": true},
	}
	st.Workspaces = append(st.Workspaces, w)
	st.Pending[name] = createState()
	fmt.Println("\n Run 'daytona code' when you're ready to start developing")
}

func createState() string {
	if st.CreateState == "" {
		return "started"
	}
	return st.CreateState
}

// advance moves things seen once in a transitional state to their next one.
func advance(items []map[string]any, set func(map[string]any, string)) {
	for _, it := range items {
		name, _ := it["name"].(string)
		if to, ok := st.Pending[name]; ok {
			set(it, to)
			if to == "error" {
				if s, ok := it["state"].(map[string]any); ok {
					s["error"] = st.CreateError
				} else {
					it["errorReason"] = st.CreateError
				}
			}
			delete(st.Pending, name)
		}
	}
}

func legacyFind(name string) map[string]any {
	for _, w := range st.Workspaces {
		if w["name"] == name {
			return w
		}
	}
	return nil
}

func legacySSH(args []string) {
	if len(args) == 0 {
		fatal("no workspace")
	}
	w := legacyFind(args[0])
	if w == nil {
		fatal("failed to get workspace: workspace not found")
	}
	rest := args[1:]
	if projects, ok := w["projects"].([]any); ok {
		// v0.28–v0.51: `ssh WORKSPACE PROJECT CMD...`; a project runs
		// while its uptime is above 0.
		if len(rest) == 0 {
			fatal("no project")
		}
		var project map[string]any
		for _, p := range projects {
			if pm, _ := p.(map[string]any); pm["name"] == rest[0] {
				project = pm
			}
		}
		if project == nil {
			fatal("project " + rest[0] + " not found")
		}
		state, _ := project["state"].(map[string]any)
		if up, _ := state["uptime"].(float64); up <= 0 {
			fatal("project is not running")
		}
		rest = rest[1:]
	} else {
		if s, _ := w["state"].(map[string]any); s["name"] != "started" {
			fatal("workspace is not running")
		}
		if len(rest) > 0 && rest[0] == "--" {
			rest = rest[1:]
		}
	}
	argv := append(append([]string{}, st.SSH...), rest...)
	bin, err := exec.LookPath(argv[0])
	if err != nil {
		fatal(err.Error())
	}
	syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	// Replace this process, as the real CLI's child ssh owns the pipes.
	if err := syscall.Exec(bin, argv, os.Environ()); err != nil {
		fatal(err.Error())
	}
}

func sandboxCmd(args []string) {
	if len(args) == 0 {
		fatal("no sandbox command")
	}
	switch args[0] {
	case "list":
		size := st.PageSize
		if size <= 0 {
			size = 100
		}
		start := 0
		for i := 1; i < len(args)-1; i++ {
			if args[i] == "-c" || args[i] == "--cursor" {
				start, _ = strconv.Atoi(args[i+1])
			}
		}
		end := min(start+size, len(st.Sandboxes))
		if start > end {
			start = end
		}
		var next any
		if end < len(st.Sandboxes) {
			next = strconv.Itoa(end)
		}
		items := st.Sandboxes[start:end]
		if items == nil {
			items = []map[string]any{}
		}
		printJSON(map[string]any{"items": items, "nextCursor": next})
		advance(items, func(s map[string]any, to string) { s["state"] = to })
	case "info":
		s := sandboxFind(arg(args, 1))
		if s == nil {
			fatal("Sandbox with ID or name " + arg(args, 1) + " not found")
		}
		printJSON(s)
		advance([]map[string]any{s}, func(s map[string]any, to string) { s["state"] = to })
	case "create":
		name := ""
		labels := map[string]any{}
		snapshot := "daytona-small"
		for i := 1; i < len(args)-1; i++ {
			switch args[i] {
			case "--name":
				name = args[i+1]
			case "-l", "--label":
				k, v, _ := strings.Cut(args[i+1], "=")
				labels[k] = v
			case "--snapshot":
				snapshot = args[i+1]
			}
		}
		if name == "" {
			name = fmt.Sprintf("sb-%d", time.Now().UnixNano())
		}
		if sandboxFind(name) != nil {
			fatal("Sandbox with name " + name + " already exists")
		}
		id := fmt.Sprintf("%08x-0000-4000-8000-%012x", time.Now().Unix()&0xffffffff, time.Now().UnixNano()&0xffffffffffff)
		st.Sandboxes = append(st.Sandboxes, map[string]any{
			"autoArchiveInterval": 10080, "autoDeleteInterval": -1, "autoStopInterval": 15,
			"cpu": 1, "createdAt": now(), "desiredState": "started", "disk": 3, "gpu": 0, "id": id,
			"labels": labels, "memory": 1, "name": name, "public": false, "snapshot": snapshot,
			"state": "creating", "target": "us", "updatedAt": now(), "user": "daytona",
			"env": map[string]any{"STANDIN_SECRET": "standin-env-secret"},
		})
		st.Pending[name] = createState()
		fmt.Printf("Sandbox '%s' created successfully\n", name)
	case "start", "stop":
		s := sandboxFind(arg(args, 1))
		if s == nil {
			fatal("Sandbox with ID or name " + arg(args, 1) + " not found")
		}
		to := map[string]string{"start": "started", "stop": "stopped"}[args[0]]
		// Like the real API for archived sandboxes: return at once and get
		// there later.
		s["state"] = map[string]string{"start": "starting", "stop": "stopping"}[args[0]]
		s["desiredState"] = to
		st.Pending[s["name"].(string)] = to
		fmt.Printf("Sandbox '%s' %s\n", arg(args, 1), to)
	case "delete":
		name := arg(args, 1)
		if sandboxFind(name) == nil {
			fatal("Sandbox with ID or name " + name + " not found")
		}
		var keep []map[string]any
		for _, s := range st.Sandboxes {
			if s["name"] != name && s["id"] != name {
				keep = append(keep, s)
			}
		}
		st.Sandboxes = keep
		fmt.Printf("Sandbox '%s' deleted\n", name)
	default:
		fatal("unknown sandbox command " + args[0])
	}
}

func sandboxFind(key string) map[string]any {
	for _, s := range st.Sandboxes {
		if s["name"] == key || s["id"] == key {
			return s
		}
	}
	return nil
}

func arg(args []string, i int) string {
	if i < len(args) {
		return args[i]
	}
	return ""
}

func printJSON(v any) {
	b, _ := json.MarshalIndent(v, "", "  ")
	fmt.Println(string(b))
}

func save() {
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		fatal(err.Error())
	}
}

func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }

func logError(msg string) {
	fmt.Fprintf(os.Stderr, "time=%q level=error msg=%q\n", now(), msg)
}

func fatal(msg string) {
	fmt.Fprintf(os.Stderr, "time=%q level=fatal msg=%q\n", now(), msg)
	os.Exit(1)
}
