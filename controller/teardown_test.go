package controller

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/dtmux/dtmux/controller/pool"
	"github.com/dtmux/dtmux/controller/provider"
	"github.com/dtmux/dtmux/internal/transport"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// runsAgent lists a fixed set of runs and records the signals it gets; a
// killed running run is finished on the next GetRun.
type runsAgent struct {
	agentv1.UnimplementedAgentServiceServer

	mu     sync.Mutex
	runs   []*agentv1.RunInfo // guarded by mu
	killed []string           // guarded by mu
}

func (a *runsAgent) ListRuns(context.Context, *agentv1.ListRunsRequest) (*agentv1.ListRunsResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return &agentv1.ListRunsResponse{Runs: a.runs}, nil
}

func (a *runsAgent) SignalRun(_ context.Context, req *agentv1.SignalRunRequest) (*agentv1.SignalRunResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if req.GetSignal() != agentv1.Signal_SIGNAL_KILL || req.GetReason() != "workspace stopped" {
		return nil, status.Errorf(codes.InvalidArgument, "signal %v reason %q, want SIGKILL because the workspace stopped", req.GetSignal(), req.GetReason())
	}
	a.killed = append(a.killed, req.GetRunId())
	return &agentv1.SignalRunResponse{}, nil
}

func (a *runsAgent) GetRun(_ context.Context, req *agentv1.GetRunRequest) (*agentv1.GetRunResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range a.runs {
		if r.GetRunId() == req.GetRunId() {
			if slices.Contains(a.killed, r.GetRunId()) {
				r.State = agentv1.RunState_RUN_STATE_FINISHED
			}
			return &agentv1.GetRunResponse{Run: r}, nil
		}
	}
	return nil, status.Error(codes.NotFound, "no such run")
}

// Stopping a workspace first kills, through its agent, the runs still
// running and those an earlier agent lost (their processes may live on),
// and leaves finished runs alone.
func TestStopWorkspaceKillsRuns(t *testing.T) {
	dir, err := os.MkdirTemp("", "dt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "w.sock")
	l, err := transport.Listen(transport.Address{Network: "unix", Addr: sock})
	if err != nil {
		t.Fatal(err)
	}
	finished := func(r agentv1.ExitReason) *agentv1.RunTrailer { return &agentv1.RunTrailer{Reason: r} }
	agent := &runsAgent{runs: []*agentv1.RunInfo{
		{RunId: "running", State: agentv1.RunState_RUN_STATE_RUNNING},
		{RunId: "exited", State: agentv1.RunState_RUN_STATE_FINISHED, Trailer: finished(agentv1.ExitReason_EXIT_REASON_EXITED)},
		{RunId: "lost", State: agentv1.RunState_RUN_STATE_FINISHED, Trailer: finished(agentv1.ExitReason_EXIT_REASON_AGENT_LOST)},
		{RunId: "detached", State: agentv1.RunState_RUN_STATE_RUNNING, Detached: true},
	}}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	agentv1.RegisterAgentServiceServer(srv, agent)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Stop(); <-done })

	prov := &fakeProvider{
		wss: map[string]provider.Workspace{"w": {Name: "w", State: provider.StateStarted}},
		eps: map[string]string{"w": sock},
	}
	log := hclog.NewNullLogger()
	pl := pool.New(pool.Config{Resolve: prov.Endpoint, Logger: log})
	t.Cleanup(func() { pl.Close() })
	// A provider that never stops or deletes (ssh hosts, static agents)
	// fails the call and leaves the runs, and the connection they use,
	// alone.
	cc, err := pl.Conn(ctxFor(t, ""), "w")
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewWorkspaceService(fixedProvider{prov}, pl, log).StopWorkspace(ctxFor(t, ""), &controllerv1.StopWorkspaceRequest{Name: "w"})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("stop on a fixed provider: %v, want Unimplemented", err)
	}
	if s := cc.GetState(); s == connectivity.Shutdown {
		t.Error("a stop that cannot happen closed the workspace's connection")
	}
	agent.mu.Lock()
	n := len(agent.killed)
	agent.mu.Unlock()
	if n != 0 {
		t.Fatalf("a stop that cannot happen killed %d runs", n)
	}

	svc := NewWorkspaceService(prov, pl, log)
	if _, err := svc.StopWorkspace(ctxFor(t, ""), &controllerv1.StopWorkspaceRequest{Name: "w"}); err != nil {
		t.Fatal(err)
	}
	agent.mu.Lock()
	killed := slices.Sorted(slices.Values(agent.killed))
	agent.mu.Unlock()
	if want := []string{"detached", "lost", "running"}; !slices.Equal(killed, want) {
		t.Errorf("killed %v, want %v", killed, want)
	}
}

// fixedProvider is a provider whose workspaces cannot be stopped.
type fixedProvider struct{ *fakeProvider }

func (fixedProvider) ManagesLifecycle() bool { return false }

func (fixedProvider) Stop(context.Context, string) (provider.Workspace, error) {
	return provider.Workspace{}, provider.ErrUnsupported
}
