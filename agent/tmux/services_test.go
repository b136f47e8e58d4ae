package tmux

import (
	"errors"
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

// Before the first apply and after a stop there are no services, which is
// not an error; a service that does not exist is named as a service, not
// as a window.
func TestServicesMissing(t *testing.T) {
	m := newManager(t)
	check := func(when string) {
		t.Helper()
		if list, err := m.ListServices(ctx(t), ""); err != nil || len(list) != 0 {
			t.Errorf("%s: list = %+v, %v; want no services", when, list, err)
		}
		for _, tg := range []Target{{Session: DefaultServicesSession, Window: "nosuch"}} {
			_, err := m.Capture(ctx(t), tg, CaptureOptions{})
			if !errors.Is(err, ErrServiceNotFound) || err.Error() != `service "nosuch" not found` {
				t.Errorf("%s: capture of a missing service: %v", when, err)
			}
			_, err = m.Follow(ctx(t), tg, true, 0)
			if !errors.Is(err, ErrServiceNotFound) || err.Error() != `service "nosuch" not found` {
				t.Errorf("%s: follow of a missing service: %v", when, err)
			}
			if _, err := m.RestartService(ctx(t), "", "nosuch"); !errors.Is(err, ErrServiceNotFound) {
				t.Errorf("%s: restart of a missing service: %v", when, err)
			}
		}
	}
	check("before apply")
	if _, err := m.ApplyServices(ctx(t), "", []ServiceSpec{{Name: "web", Command: Command{Argv: []string{"sleep", "600"}}}}); err != nil {
		t.Fatal(err)
	}
	if list, err := m.ListServices(ctx(t), ""); err != nil || len(list) != 1 {
		t.Fatalf("after apply: %+v %v", list, err)
	}
	// Named session with specs on file: the same.
	if _, err := m.ApplyServices(ctx(t), "mine", []ServiceSpec{{Name: "web", Command: Command{Argv: []string{"sleep", "600"}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Capture(ctx(t), Target{Session: "mine", Window: "nosuch"}, CaptureOptions{}); !errors.Is(err, ErrServiceNotFound) {
		t.Errorf("capture of a missing service in a named services session: %v", err)
	}
	// A plain session keeps its window errors.
	mustCreate(t, m, "plain", "sleep", "600")
	if _, err := m.Capture(ctx(t), Target{Session: "plain", Window: "nosuch"}, CaptureOptions{}); !errors.Is(err, ErrWindowNotFound) {
		t.Errorf("capture of a missing window: %v", err)
	}
	for _, s := range []string{"", "mine"} {
		if err := m.StopServices(ctx(t), s, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	check("after stop")
}
