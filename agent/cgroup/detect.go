package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// mount is one cgroup line of /proc/self/mountinfo.
type mount struct {
	root, point, fstype string
	opts                []string // super options: controller names for v1
}

func readMounts(path string) ([]mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		if qf[0] != "cgroup" && qf[0] != "cgroup2" {
			continue
		}
		out = append(out, mount{root: unescape(pf[3]), point: unescape(pf[4]), fstype: qf[0], opts: strings.Split(qf[2], ",")})
	}
	return out, sc.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOct(s[i+1]) && isOct(s[i+2]) && isOct(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOct(c byte) bool { return c >= '0' && c <= '7' }

// selfCgroup maps a hierarchy's controller list ("" for v2) to this
// process's path in it.
type selfCgroup map[string]string

func readSelf(path string) (selfCgroup, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := selfCgroup{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		out[parts[1]] = parts[2]
	}
	return out, nil
}

// pathFor returns this process's cgroup path in the v1 hierarchy that
// holds controller.
func (s selfCgroup) pathFor(controller string) (string, bool) {
	for ctrls, p := range s {
		if slices.Contains(strings.Split(ctrls, ","), controller) {
			return p, true
		}
	}
	return "", false
}

// dirOf joins a mount point with this process's path relative to the
// mount's root.
func dirOf(root string, m mount, self string) (string, bool) {
	rel := self
	if m.root != "/" {
		r, ok := strings.CutPrefix(self, m.root)
		if !ok || (r != "" && !strings.HasPrefix(r, "/")) {
			return "", false
		}
		rel = r
	}
	return filepath.Join(root, m.point, rel), true
}

// detectV2 returns the base directory (one for every usable controller)
// or why v2 cannot be used.
func detectV2(root, name string, mounts []mount, self selfCgroup) (map[string]string, string) {
	var m *mount
	for i := range mounts {
		if mounts[i].fstype == "cgroup2" {
			m = &mounts[i]
			break
		}
	}
	if m == nil {
		return nil, "cgroup2 is not mounted"
	}
	selfPath, ok := self[""]
	if !ok {
		return nil, "this process has no cgroup2 path"
	}
	dir, ok := dirOf(root, *m, selfPath)
	if !ok {
		return nil, fmt.Sprintf("cgroup2 path %s is outside the mount at %s", selfPath, m.point)
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Sprintf("cgroup2: %v", err)
	}
	offered := strings.Fields(string(b))
	var avail []string
	for _, c := range wanted {
		if slices.Contains(offered, c) {
			avail = append(avail, c)
		}
	}
	if len(avail) == 0 {
		what := strings.Join(offered, ",")
		if what == "" {
			what = "no controller"
		}
		return nil, fmt.Sprintf("cgroup2 at %s offers %s (need memory, pids or cpu)", m.point, what)
	}
	// Children of dir get a controller only when dir's subtree_control
	// enables it; the kernel refuses that while dir itself holds processes
	// (unless dir is the root), which is why a delegated subtree is needed.
	if err := enable(dir, avail); err != nil {
		return nil, fmt.Sprintf("cgroup2: cannot enable %s for children of %s (run the agent in a delegated cgroup whose subtree_control enables them): %v",
			strings.Join(avail, ","), dir, err)
	}
	base := filepath.Join(dir, name)
	if err := os.Mkdir(base, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Sprintf("cgroup2: %v", err)
	}
	if err := enable(base, avail); err != nil {
		_ = os.Remove(base)
		return nil, fmt.Sprintf("cgroup2: enable controllers in %s: %v", base, err)
	}
	out := map[string]string{}
	for _, c := range avail {
		out[c] = base
	}
	return out, ""
}

// enable writes "+c" for every controller not yet enabled in dir's
// cgroup.subtree_control.
func enable(dir string, ctrls []string) error {
	p := filepath.Join(dir, "cgroup.subtree_control")
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	on := strings.Fields(string(b))
	var add []string
	for _, c := range ctrls {
		if !slices.Contains(on, c) {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return nil
	}
	return writeFile(p, strings.Join(add, " "))
}

// detectV1 returns a base directory per usable controller, or why v1
// cannot be used.
func detectV1(root, name string, mounts []mount, self selfCgroup) (map[string]string, string) {
	out := map[string]string{}
	var why []string
	for _, c := range wanted {
		var m *mount
		for i := range mounts {
			if mounts[i].fstype == "cgroup" && slices.Contains(mounts[i].opts, c) {
				m = &mounts[i]
				break
			}
		}
		if m == nil {
			why = append(why, c+" not mounted")
			continue
		}
		p, ok := self.pathFor(c)
		if !ok {
			why = append(why, c+": no path in /proc/self/cgroup")
			continue
		}
		dir, ok := dirOf(root, *m, p)
		if !ok {
			why = append(why, c+": path outside its mount")
			continue
		}
		base := filepath.Join(dir, name)
		if err := os.Mkdir(base, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			why = append(why, fmt.Sprintf("%s: %v", c, err))
			continue
		}
		out[c] = base
	}
	if len(out) == 0 {
		return nil, "cgroup1: " + strings.Join(why, ", ")
	}
	if len(why) > 0 {
		return out, "cgroup1 without " + strings.Join(why, ", ")
	}
	return out, ""
}

// writeFile writes a cgroup control file (which exists already).
func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(value); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
