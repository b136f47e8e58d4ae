package fleet

import (
	"errors"
	"fmt"
	"testing"

	"github.com/dtmux/dtmux/controller/provider"
)

func TestSelectFrom(t *testing.T) {
	list := []provider.Workspace{
		{Name: "a", State: provider.StateStarted, Labels: map[string]string{"team": "web", "env": "dev"}},
		{Name: "b", State: provider.StateStopped, Labels: map[string]string{"team": "web"}},
		{Name: "c", State: provider.StateStarted, Labels: map[string]string{"team": "api"}},
		{Name: "d", State: provider.StateStarted},
	}
	for _, tc := range []struct {
		sel     Selector
		want    string
		wantErr error
	}{
		{Selector{All: true}, "[{a } {c } {d }]", nil},
		{Selector{Labels: []string{"team=web"}}, "[{a } {b workspace is stopped}]", nil},
		{Selector{Labels: []string{"team=web", "env=dev"}}, "[{a }]", nil},
		{Selector{Workspaces: []string{"d", "b"}}, "[{b workspace is stopped} {d }]", nil},
		{Selector{Workspaces: []string{"d"}, Labels: []string{"team=api"}}, "[{c } {d }]", nil},
		{Selector{Workspaces: []string{"zz"}}, "", provider.ErrNotFound},
		{Selector{Labels: []string{"team"}}, "", ErrInvalid},
	} {
		got, err := SelectFrom(list, tc.sel)
		if tc.wantErr != nil {
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("%+v: err %v, want %v", tc.sel, err, tc.wantErr)
			}
			continue
		}
		if err != nil || fmt.Sprint(got) != tc.want {
			t.Errorf("%+v: %v %v, want %s", tc.sel, got, err, tc.want)
		}
	}
}
