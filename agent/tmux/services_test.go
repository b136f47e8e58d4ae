package tmux

import (
	"testing"
	"time"
)

func TestServicesApplyIdempotent(t *testing.T) {
	m := newManager(t)
	specs := []ServiceSpec{
		{Name: "web", Command: Command{Argv: []string{"sleep", "600"}}},
		{Name: "worker", Command: Command{Argv: []string{"sh", "-c", "exit 4"}}},
	}
	st, err := m.ApplyServices(ctx(t), "", specs)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 || st[0].Action != "started" || st[1].Action != "started" || !st[0].Running {
		t.Fatalf("first apply: %+v", st)
	}
	webPID := st[0].PID
	st, err = m.ApplyServices(ctx(t), "", specs[:1])
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Action != "unchanged" || st[0].PID != webPID {
		t.Errorf("second apply: %+v (pid was %d)", st, webPID)
	}
	specs[0].Command.Argv = []string{"sleep", "601"}
	if st, err = m.ApplyServices(ctx(t), "", specs[:1]); err != nil || st[0].Action != "restarted" || st[0].PID == webPID {
		t.Errorf("changed spec: %+v %v", st, err)
	}
	// The worker exits; it shows as exited with its status.
	deadline := time.Now().Add(20 * time.Second)
	var w ServiceStatus
	for time.Now().Before(deadline) {
		list, err := m.ListServices(ctx(t), "")
		if err != nil || len(list) != 2 {
			t.Fatalf("list: %+v %v", list, err)
		}
		if w = list[1]; !w.Running && w.Exit.Code == 4 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if w.Running || w.Exit.Code != 4 {
		t.Fatalf("worker: %+v", w)
	}
	r, err := m.RestartService(ctx(t), "", "worker")
	if err != nil || r.Action != "restarted" {
		t.Fatalf("restart: %+v %v", r, err)
	}
	if _, err := m.RestartService(ctx(t), "", "nope"); err == nil {
		t.Error("restart of unknown service")
	}
	if err := m.StopServices(ctx(t), "", time.Second); err != nil {
		t.Fatal(err)
	}
	if err := m.StopServices(ctx(t), "", time.Second); err != nil {
		t.Fatalf("stop twice: %v", err)
	}
	if _, err := m.Session(ctx(t), DefaultServicesSession); err == nil {
		t.Error("session left after stop")
	}
}
