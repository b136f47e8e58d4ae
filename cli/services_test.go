package cli

import (
	"slices"
	"strings"
	"testing"
)

func TestParseServices(t *testing.T) {
	doc := `
session: dev
services:
  - name: backend
    command: [go, run, "./cmd/api"]
    cwd: backend
    env: {PORT: "8080", EMPTY: ""}
  - name: web_1
    command: npm run dev -- --port 3000 && echo done
`
	session, specs, err := ParseServices([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if session != "dev" || len(specs) != 2 {
		t.Fatalf("session %q, %d specs", session, len(specs))
	}
	b := specs[0]
	if b.GetName() != "backend" || b.GetCommand().GetShell() || !slices.Equal(b.GetCommand().GetArgv(), []string{"go", "run", "./cmd/api"}) ||
		b.GetCommand().GetCwd() != "backend" || b.GetCommand().GetEnv()["PORT"] != "8080" || len(b.GetCommand().GetEnv()) != 2 {
		t.Errorf("backend = %v", b)
	}
	w := specs[1]
	if !w.GetCommand().GetShell() || !slices.Equal(w.GetCommand().GetArgv(), []string{"npm run dev -- --port 3000 && echo done"}) {
		t.Errorf("a string command must run under the shell as one word: %v", w)
	}
}

func TestParseServicesErrors(t *testing.T) {
	tests := map[string]string{
		"":                                       "empty",
		"services: []":                           "no services",
		"servics: [{name: a, command: x}]":       `line 1: unknown field "servics"`,
		"services: [{name: a}]":                  "missing command",
		"services: [{command: x}]":               "missing name",
		"services: [{name: 'a b', command: x}]":  "name must be",
		"services: [{name: a, command: ''}]":     "empty command",
		"services: [{name: a, command: []}]":     "empty command",
		"services: [{name: a, command: [[x]]}]":  "must be strings",
		"services: [{name: a, command: {x: 1}}]": "list of words",
		"services: [{name: a, command: x}, {name: a, command: y}]": "twice",
		"services: [{name: a, command: x, env: {'': v}}]":          "env",
		"services: [{name: a, command: x, nope: 1}]":               "nope",
		"session: 'bad name'\nservices: [{name: a, command: x}]":   "session",
		"services: {name: a}":                                      "line 1: cannot use a mapping here",
		"services:\n  - name: a\n    comand: x":                    `line 3: unknown field "comand"`,
	}
	for doc, want := range tests {
		_, _, err := ParseServices([]byte(doc))
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "cli.") {
			t.Errorf("ParseServices(%q) error = %v, want one containing %q", doc, err, want)
		}
	}
}
