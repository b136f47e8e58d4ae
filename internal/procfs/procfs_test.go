package procfs

import (
	"os"
	"slices"
	"syscall"
	"testing"
)

func TestParseStatOddCommandName(t *testing.T) {
	line := "4242 (a) b (c)) S 1 4242 4000 34816 4300 4194560 0 0 0 0 0 0 0 0 20 0 1 0 987654 0 0\n"
	s, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := Stat{State: 'S', PPID: 1, PGRP: 4242, Session: 4000, TPGID: 4300, StartTime: 987654}
	if s != want {
		t.Errorf("got %+v, want %+v", s, want)
	}
	if _, err := parseStat([]byte("4242 (x S 1")); err == nil {
		t.Error("a truncated line parsed")
	}
}

func TestReadStatSelf(t *testing.T) {
	s, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.PPID != os.Getppid() || s.PGRP != syscall.Getpgrp() || s.StartTime == 0 {
		t.Errorf("stat of this process: %+v", s)
	}
	if !slices.Contains(Pids(), os.Getpid()) {
		t.Error("Pids lacks this process")
	}
}
