package ssh

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dtmux/dtmux/controller/provider"
)

func TestParseHosts(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []Host
		wantErr string
	}{
		{name: "empty", in: "", want: nil},
		{name: "no hosts", in: "hosts: []\n", want: []Host{}},
		{
			name: "full",
			in: `hosts:
  - name: web1
    destination: deploy@web1.example.com
    labels: {team: web, env: prod}
    ssh_args: [-p, "2222", -o, "ProxyJump=bastion"]
  - name: db.1
    destination: db1
`,
			want: []Host{
				{Name: "web1", Destination: "deploy@web1.example.com", Labels: map[string]string{"team": "web", "env": "prod"}, SSHArgs: []string{"-p", "2222", "-o", "ProxyJump=bastion"}},
				{Name: "db.1", Destination: "db1"},
			},
		},
		{name: "bad name", in: "hosts: [{name: -x, destination: h}]", wantErr: "name must be"},
		{name: "long name", in: "hosts: [{name: " + strings.Repeat("a", 64) + ", destination: h}]", wantErr: "name must be"},
		{name: "slash in name", in: "hosts: [{name: a/b, destination: h}]", wantErr: "name must be"},
		{name: "duplicate", in: "hosts: [{name: a, destination: h}, {name: a, destination: g}]", wantErr: "duplicate"},
		{name: "no destination", in: "hosts: [{name: a}]", wantErr: "destination is required"},
		{name: "option as destination", in: "hosts: [{name: a, destination: -oProxyCommand=x}]", wantErr: "not a host"},
		{name: "space in destination", in: "hosts: [{name: a, destination: 'h x'}]", wantErr: "not a host"},
		{name: "unknown field", in: "hosts: [{name: a, destination: h, port: 22}]", wantErr: "line 1: field port not found"},
		{name: "two unknown fields", in: "hosts:\n  - {name: a, destination: h, port: 22}\n  - {name: b, destination: h, user: x}\n",
			wantErr: "line 2: field port not found; line 3: field user not found"},
		{name: "hosts a map", in: "hosts: {name: b, destination: x}\n", wantErr: "line 1: a map where a list of hosts belongs"},
		{name: "ssh_args a string", in: "hosts:\n  - {name: a, destination: h, ssh_args: -p 22}\n", wantErr: "line 2: a string -p 22 where a list of strings belongs"},
		{name: "labels a list", in: "hosts:\n  - {name: a, destination: h, labels: [x, y]}\n", wantErr: "line 2: a list where a map of strings belongs"},
		{name: "nested label", in: "hosts:\n  - {name: a, destination: h, labels: {k: {n: 1}}}\n", wantErr: "line 2: a map where a string belongs"},
		{name: "bad label", in: "hosts: [{name: a, destination: h, labels: {'a b': c}}]", wantErr: "label key"},
		{name: "not yaml", in: "hosts: [", wantErr: "line 1: did not find expected node content"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseHosts([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, provider.ErrInvalid) ||
					strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "ssh.Host") || strings.Contains(err.Error(), "!!") ||
					strings.Contains(err.Error(), "[]string") || strings.Contains(err.Error(), "invalid argument") {
					t.Fatalf("want one line of ErrInvalid containing %q, got %q", tt.wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %#v\nwant %#v", got, tt.want)
			}
		})
	}
}

func TestHostsSample(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "hosts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	hosts, err := ParseHosts(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 3 || hosts[0].Name != "web1" || hosts[2].Labels["team"] != "data" {
		t.Fatalf("sample parsed as %+v", hosts)
	}
}

// FuzzParseHosts: the parser never panics, and what it accepts is valid.
func FuzzParseHosts(f *testing.F) {
	if data, err := os.ReadFile(filepath.Join("testdata", "hosts.yaml")); err == nil {
		f.Add(data)
	}
	f.Add([]byte("hosts: [{name: a, destination: h}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		hosts, err := ParseHosts(data)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, h := range hosts {
			if !provider.ValidName(h.Name) || seen[h.Name] {
				t.Fatalf("accepted bad or duplicate name %q", h.Name)
			}
			if h.Destination == "" || strings.HasPrefix(h.Destination, "-") {
				t.Fatalf("accepted bad destination %q", h.Destination)
			}
			seen[h.Name] = true
		}
	})
}
