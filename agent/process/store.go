package process

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// store persists run metadata (never secret values) as JSON beside the
// spools, so that a restarted agent still lists its runs.
type store struct{}

const metaFile = "meta.json"

// save writes info atomically into dir.
func (store) save(dir string, info Info) error {
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return fmt.Errorf("encode run %s: %w", info.ID, err)
	}
	tmp, err := os.CreateTemp(dir, ".meta-*")
	if err != nil {
		return fmt.Errorf("save run %s: %w", info.ID, err)
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, metaFile))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("save run %s: %w", info.ID, err)
	}
	return nil
}

func (store) load(dir string) (Info, error) {
	var info Info
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, fmt.Errorf("decode %s: %w", filepath.Join(dir, metaFile), err)
	}
	return info, nil
}
