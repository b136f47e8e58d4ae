package daemon

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// differs says why the daemon pid is not the one this pump would start
// ("" when it is): another build of the agent (a re-bootstrapped binary
// must take over, even one with the same version string, so builds are
// compared by their Go build ID) or other arguments.
//
// When the daemon's executable cannot be read (hardened /proc), the daemon
// is kept: replacing it kills attached runs, and a mismatch we cannot see
// is better logged than acted on blindly.
func differs(pid int, args []string) string {
	mine, err := buildID("/proc/self/exe")
	if err != nil {
		return ""
	}
	theirs, err := buildID("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return ""
	}
	if mine != theirs {
		return fmt.Sprintf("another build (%s, want %s)", short(theirs), short(mine))
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(b) == 0 {
		return ""
	}
	argv := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	if !slices.Equal(argv[1:], args) {
		return fmt.Sprintf("other arguments (%q, want %q)", argv[1:], args)
	}
	return ""
}

// buildID is the Go build ID of an executable, or the sha256 of the file
// when it has none.
func buildID(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if ef, err := elf.NewFile(f); err == nil {
		if s := ef.Section(".note.go.buildid"); s != nil {
			if id, err := goNote(s); err == nil {
				return id, nil
			}
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// goNote reads the ELF note the Go linker writes: name "Go", type 4, the
// build ID as its descriptor.
func goNote(s *elf.Section) (string, error) {
	d, err := s.Data()
	if err != nil {
		return "", err
	}
	if len(d) < 16 {
		return "", errors.New("short note")
	}
	namesz := binary.LittleEndian.Uint32(d[0:])
	descsz := binary.LittleEndian.Uint32(d[4:])
	typ := binary.LittleEndian.Uint32(d[8:])
	nameEnd := 12 + (namesz+3)&^3
	if namesz != 4 || typ != 4 || !bytes.Equal(d[12:14], []byte("Go")) || uint64(nameEnd)+uint64(descsz) > uint64(len(d)) {
		return "", errors.New("not a Go build ID note")
	}
	return string(d[nameEnd : nameEnd+descsz]), nil
}

func short(id string) string {
	if len(id) > 16 {
		return id[len(id)-16:]
	}
	return id
}
