package controller

import (
	"context"
	"errors"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/dtmux/dtmux/controller/fleet"
	"github.com/dtmux/dtmux/controller/pool"
	"github.com/dtmux/dtmux/controller/provider"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// FleetService serves controllerv1.FleetService: a thin layer over
// fleet.Engine that converts requests and events.
type FleetService struct {
	controllerv1.UnimplementedFleetServiceServer
	engine *fleet.Engine
	log    hclog.Logger
}

// NewFleetService returns the service over an engine; log is named
// "fleet".
func NewFleetService(engine *fleet.Engine, log hclog.Logger) *FleetService {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &FleetService{engine: engine, log: log.Named("fleet")}
}

// NewFleetEngine builds the fleet engine on a provider and the pool.
func NewFleetEngine(prov provider.Provider, p *pool.Pool, log hclog.Logger) *fleet.Engine {
	t := fleet.ProviderTargets{Provider: prov, Conn: func(ctx context.Context, ws string) (grpcConn, error) { return p.Conn(ctx, ws) }}
	return fleet.New(t, log.Named("fleet"))
}

// FleetExec implements controllerv1.FleetServiceServer.
func (s *FleetService) FleetExec(req *controllerv1.FleetExecRequest, stream controllerv1.FleetService_FleetExecServer) error {
	maxFailures := int(req.GetMaxFailures())
	if req.GetFailFast() {
		maxFailures = 1
	}
	spec := fleet.Spec{
		Selector:      selector(req.GetSelector()),
		Command:       req.GetCommand(),
		Limits:        req.GetLimits(),
		Timeout:       req.GetTimeout().AsDuration(),
		IdleTimeout:   req.GetIdleTimeout().AsDuration(),
		TargetTimeout: req.GetTargetTimeout().AsDuration(),
		MaxParallel:   int(req.GetMaxParallel()),
		Retries:       int(req.GetRetries()),
		RetryBackoff:  req.GetRetryBackoff().AsDuration(),
		MaxFailures:   maxFailures,
		CancelRunning: req.GetCancelRunning(),
		RunID:         req.GetRunId(),
	}
	sum, err := s.engine.Exec(stream.Context(), spec, func(ev fleet.Event) error {
		return stream.Send(&controllerv1.FleetExecResponse{Event: fleetEvent(ev)})
	})
	if err != nil {
		return s.fleetStatus(err)
	}
	return stream.Send(&controllerv1.FleetExecResponse{Event: summaryEvent(sum)})
}

// AttachFleetRun implements controllerv1.FleetServiceServer.
func (s *FleetService) AttachFleetRun(req *controllerv1.AttachFleetRunRequest, stream controllerv1.FleetService_AttachFleetRunServer) error {
	spec := fleet.AttachSpec{RunID: req.GetRunId(), Selector: selector(req.GetSelector()), Follow: req.GetFollow(), Retries: 3}
	sum, err := s.engine.Attach(stream.Context(), spec, func(ev fleet.Event) error {
		return stream.Send(&controllerv1.AttachFleetRunResponse{Event: fleetEvent(ev)})
	})
	if err != nil {
		return s.fleetStatus(err)
	}
	return stream.Send(&controllerv1.AttachFleetRunResponse{Event: summaryEvent(sum)})
}

// ListFleetRuns implements controllerv1.FleetServiceServer.
func (s *FleetService) ListFleetRuns(ctx context.Context, req *controllerv1.ListFleetRunsRequest) (*controllerv1.ListFleetRunsResponse, error) {
	runs, unreachable, err := s.engine.List(ctx, selector(req.GetSelector()), 0)
	if err != nil {
		return nil, s.fleetStatus(err)
	}
	resp := &controllerv1.ListFleetRunsResponse{UnreachableWorkspaces: unreachable}
	for _, r := range runs {
		info := &controllerv1.FleetRunInfo{
			RunId:     r.RunID,
			Argv:      r.Argv,
			Targets:   uint32(r.Targets),
			Running:   uint32(r.Running),
			Succeeded: uint32(r.Succeeded),
			Failed:    uint32(r.Failed),
		}
		if !r.StartedAt.IsZero() {
			info.StartedAt = timestamppb.New(r.StartedAt)
		}
		resp.Runs = append(resp.Runs, info)
	}
	return resp, nil
}

func selector(s *controllerv1.Selector) fleet.Selector {
	return fleet.Selector{Workspaces: s.GetWorkspaces(), Labels: s.GetLabelSelectors(), All: s.GetAll()}
}

func fleetEvent(ev fleet.Event) *controllerv1.FleetEvent {
	out := &controllerv1.FleetEvent{Workspace: ev.Workspace}
	switch ev.Kind {
	case fleet.KindStarted:
		out.Event = &controllerv1.FleetEvent_Started{Started: &controllerv1.FleetStarted{RunId: ev.RunID, Workspaces: ev.Workspaces}}
	case fleet.KindQueued:
		out.Event = &controllerv1.FleetEvent_Queued{Queued: &controllerv1.TargetQueued{}}
	case fleet.KindTarget:
		out.Event = &controllerv1.FleetEvent_TargetStarted{TargetStarted: &controllerv1.TargetStarted{Pid: ev.PID, Attempt: ev.Attempt}}
	case fleet.KindOutput:
		out.Event = &controllerv1.FleetEvent_Output{Output: ev.Output}
	case fleet.KindGap:
		out.Event = &controllerv1.FleetEvent_Gap{Gap: ev.Gap}
	case fleet.KindExited:
		out.Event = &controllerv1.FleetEvent_Exited{Exited: ev.Trailer}
	case fleet.KindUnreachable:
		out.Event = &controllerv1.FleetEvent_Unreachable{Unreachable: &controllerv1.TargetUnreachable{Reason: ev.Reason, Attempts: ev.Attempts}}
	case fleet.KindSkipped:
		out.Event = &controllerv1.FleetEvent_Skipped{Skipped: &controllerv1.TargetSkipped{Reason: ev.Reason}}
	case fleet.KindNotAsked:
		out.Event = &controllerv1.FleetEvent_NotAsked{NotAsked: &controllerv1.TargetNotAsked{Reason: ev.Reason}}
	}
	return out
}

func summaryEvent(s fleet.Summary) *controllerv1.FleetEvent {
	return &controllerv1.FleetEvent{Event: &controllerv1.FleetEvent_Summary{Summary: &controllerv1.FleetSummary{
		RunId:                 s.RunID,
		Total:                 uint32(s.Total),
		Succeeded:             uint32(s.Succeeded),
		Failed:                uint32(s.Failed),
		Unreachable:           uint32(s.Unreachable),
		Skipped:               uint32(s.Skipped),
		Cancelled:             uint32(s.Cancelled),
		Duration:              durationpb.New(s.Duration),
		WorstExitCode:         int32(s.WorstExitCode),
		FailedWorkspaces:      s.FailedWorkspaces,
		UnreachableWorkspaces: s.UnreachableWorkspaces,
		CancelledWorkspaces:   s.CancelledWorkspaces,
		NotFound:              uint32(s.NotFound),
		NotAskedWorkspaces:    s.NotAsked,
	}}}
}

// fleetStatus maps the fleet engine's errors to status codes. (The
// fleet's part of the package's error mapping.)
func (s *FleetService) fleetStatus(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "cancelled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, fleet.ErrInvalid), errors.Is(err, provider.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, fleet.ErrNoTargets), errors.Is(err, fleet.ErrRunNotFound), errors.Is(err, provider.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, pool.ErrUnreachable):
		return status.Error(codes.Unavailable, err.Error())
	}
	s.log.Error("fleet call failed", "error", err)
	return status.Error(codes.Internal, "internal error")
}

// grpcConn is what the pool hands out, as the fleet engine takes it.
type grpcConn = grpc.ClientConnInterface
