package local

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/dtmux/dtmux/controller/provider"
)

// Labels a listing or a selector could not show or match are refused
// before anything is made on disk or started.
func TestCreateRejectsBadLabels(t *testing.T) {
	dir := stateDir(t)
	p := newProvider(t, dir, true)
	defer p.Close()
	for name, labels := range map[string]map[string]string{
		"key-space":     {"a b": "v"},
		"key-equals":    {"a=b": "v"},
		"value-newline": {"k": "a\nb"},
		"value-long":    {"k": string(make([]byte, 257))},
	} {
		_, err := p.Create(ctxT(t), provider.CreateOptions{Name: name, Labels: labels})
		if !errors.Is(err, provider.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "workspaces", name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: workspace directory made: %v", name, err)
		}
	}
	if list, _ := p.List(ctxT(t)); len(list) != 0 {
		t.Errorf("refused creates left %v", list)
	}
}
