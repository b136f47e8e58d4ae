// Package procfs reads the few facts dtmux needs about processes from
// Linux's /proc: which processes exist, and the fields of /proc/PID/stat
// that tell their state, process group, session and terminal.
package procfs

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
)

// ErrMalformed is a stat line that does not parse (any other error of
// ReadStat is reading it: the process is usually gone).
var ErrMalformed = errors.New("malformed /proc stat")

// Stat is the part of /proc/PID/stat dtmux uses.
type Stat struct {
	State     byte   // R, S, D, Z, T, ...
	PPID      int    // parent
	PGRP      int    // process group
	Session   int    // session id
	TPGID     int    // foreground process group of its terminal (-1: none)
	StartTime uint64 // clock ticks after boot, immune to pid reuse
}

// ReadStat reads /proc/PID/stat.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, err
	}
	return parseStat(b)
}

func parseStat(b []byte) (Stat, error) {
	// The command name may hold spaces and parentheses: fields start
	// after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Stat{}, ErrMalformed
	}
	// f[0] is field 3 (state), then ppid, pgrp, session, tty_nr, tpgid;
	// f[19] is field 22 (starttime).
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || len(f[0]) != 1 {
		return Stat{}, ErrMalformed
	}
	var s Stat
	s.State = f[0][0]
	ints := []*int{&s.PPID, &s.PGRP, &s.Session, nil, &s.TPGID}
	for k, p := range ints {
		if p == nil {
			continue
		}
		n, err := strconv.Atoi(f[1+k])
		if err != nil {
			return Stat{}, ErrMalformed
		}
		*p = n
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return Stat{}, ErrMalformed
	}
	s.StartTime = start
	return s, nil
}

// Pids lists the processes in /proc (nil when it cannot be read).
func Pids() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	pids := make([]int, 0, len(ents))
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
