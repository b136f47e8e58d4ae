package controller

import (
	"context"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/dtmux/dtmux/controller/pool"
	"github.com/dtmux/dtmux/controller/provider"
	controllerv1 "github.com/dtmux/dtmux/proto/dtmux/controller/v1"
)

// DefaultWaitTimeout is how long Create and Start wait for a workspace
// when the request does not say.
const DefaultWaitTimeout = 10 * time.Minute

// WorkspaceService serves dtmux.controller.v1.WorkspaceService over a
// provider, with each workspace's agent status from the pool.
type WorkspaceService struct {
	controllerv1.UnimplementedWorkspaceServiceServer

	prov provider.Provider
	pool *pool.Pool
	log  hclog.Logger
}

// NewWorkspaceService returns the service.
func NewWorkspaceService(prov provider.Provider, p *pool.Pool, log hclog.Logger) *WorkspaceService {
	return &WorkspaceService{prov: prov, pool: p, log: log.Named("workspaces")}
}

// ListWorkspaces lists the provider's workspaces matching every selector.
func (s *WorkspaceService) ListWorkspaces(ctx context.Context, req *controllerv1.ListWorkspacesRequest) (*controllerv1.ListWorkspacesResponse, error) {
	sel, err := parseSelectors(req.GetLabelSelectors())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	wss, err := s.prov.List(ctx)
	if err != nil {
		return nil, toStatus(s.log, "", err)
	}
	resp := &controllerv1.ListWorkspacesResponse{}
	for _, w := range wss {
		if matchLabels(w.Labels, sel) {
			resp.Workspaces = append(resp.Workspaces, s.toProto(w))
		}
	}
	return resp, nil
}

// GetWorkspace describes one workspace.
func (s *WorkspaceService) GetWorkspace(ctx context.Context, req *controllerv1.GetWorkspaceRequest) (*controllerv1.GetWorkspaceResponse, error) {
	if err := needName(req.GetName()); err != nil {
		return nil, err
	}
	w, err := s.prov.Get(ctx, req.GetName())
	if err != nil {
		return nil, toStatus(s.log, req.GetName(), err)
	}
	return &controllerv1.GetWorkspaceResponse{Workspace: s.toProto(w)}, nil
}

// CreateWorkspace creates a workspace and waits until it is started.
func (s *WorkspaceService) CreateWorkspace(ctx context.Context, req *controllerv1.CreateWorkspaceRequest) (*controllerv1.CreateWorkspaceResponse, error) {
	if err := needName(req.GetName()); err != nil {
		return nil, err
	}
	// Every provider gets labels it can list and select by; the local one
	// checks again for callers that use it directly.
	if err := provider.ValidateLabels(req.GetLabels()); err != nil {
		return nil, toStatus(s.log, req.GetName(), err)
	}
	w, err := s.prov.Create(ctx, provider.CreateOptions{
		Name:        req.GetName(),
		Labels:      req.GetLabels(),
		Repository:  req.GetRepository(),
		Image:       req.GetImage(),
		WaitTimeout: waitTimeout(req.GetWaitTimeout().AsDuration()),
		Options:     req.GetOptions(),
	})
	if err != nil {
		return nil, toStatus(s.log, req.GetName(), err)
	}
	s.log.Info("workspace created", "workspace", w.Name)
	return &controllerv1.CreateWorkspaceResponse{Workspace: s.toProto(w)}, nil
}

// DeleteWorkspace kills the workspace's runs, drops the connection to its
// agent and deletes the workspace; a running one only with force.
func (s *WorkspaceService) DeleteWorkspace(ctx context.Context, req *controllerv1.DeleteWorkspaceRequest) (*controllerv1.DeleteWorkspaceResponse, error) {
	if err := needName(req.GetName()); err != nil {
		return nil, err
	}
	// Like docker rm: a running workspace goes only when forced, and
	// before anything in it is ended.
	if !req.GetForce() && provider.ManagesLifecycle(s.prov) {
		if w, err := s.prov.Get(ctx, req.GetName()); err == nil && w.State == provider.StateStarted {
			return nil, status.Errorf(codes.FailedPrecondition, "workspace %q: it is running; stop it first (dtmux ws stop %s) or delete it with --force", w.Name, w.Name)
		}
	}
	s.killRuns(ctx, req.GetName(), "workspace deleted")
	if provider.ManagesLifecycle(s.prov) {
		// Not for a provider that refuses (ssh hosts): calls on it go on.
		s.pool.Evict(req.GetName())
	}
	if err := s.prov.Delete(ctx, req.GetName(), req.GetForce()); err != nil {
		return nil, toStatus(s.log, req.GetName(), err)
	}
	s.log.Info("workspace deleted", "workspace", req.GetName())
	return &controllerv1.DeleteWorkspaceResponse{}, nil
}

// StartWorkspace starts a workspace and waits until it is started.
func (s *WorkspaceService) StartWorkspace(ctx context.Context, req *controllerv1.StartWorkspaceRequest) (*controllerv1.StartWorkspaceResponse, error) {
	if err := needName(req.GetName()); err != nil {
		return nil, err
	}
	w, err := s.prov.Start(ctx, req.GetName(), waitTimeout(req.GetWaitTimeout().AsDuration()))
	if err != nil {
		return nil, toStatus(s.log, req.GetName(), err)
	}
	return &controllerv1.StartWorkspaceResponse{Workspace: s.toProto(w)}, nil
}

// StopWorkspace kills the workspace's runs (as stopping a machine
// would), stops the workspace and drops the connection to its agent.
func (s *WorkspaceService) StopWorkspace(ctx context.Context, req *controllerv1.StopWorkspaceRequest) (*controllerv1.StopWorkspaceResponse, error) {
	if err := needName(req.GetName()); err != nil {
		return nil, err
	}
	s.killRuns(ctx, req.GetName(), "workspace stopped")
	w, err := s.prov.Stop(ctx, req.GetName())
	if provider.ManagesLifecycle(s.prov) {
		s.pool.Evict(req.GetName())
	}
	if err != nil {
		return nil, toStatus(s.log, req.GetName(), err)
	}
	return &controllerv1.StopWorkspaceResponse{Workspace: s.toProto(w)}, nil
}

func needName(name string) error {
	if name == "" {
		return status.Error(codes.InvalidArgument, "workspace name is required")
	}
	if err := provider.ValidateName(name); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return nil
}

func waitTimeout(d time.Duration) time.Duration {
	if d <= 0 {
		return DefaultWaitTimeout
	}
	return d
}

func (s *WorkspaceService) toProto(w provider.Workspace) *controllerv1.Workspace {
	ps := s.pool.Status(w.Name)
	agent := &controllerv1.AgentStatus{Connected: ps.Connected, Version: ps.Version, LastError: ps.LastError}
	if !ps.Since.IsZero() {
		agent.ConnectedSince = timestamppb.New(ps.Since)
	}
	return &controllerv1.Workspace{
		Name:        w.Name,
		Provider:    s.prov.Name(),
		Labels:      w.Labels,
		State:       stateToProto(w.State),
		StateDetail: w.StateDetail,
		Agent:       agent,
		Attributes:  w.Attributes,
	}
}

func stateToProto(s provider.State) controllerv1.WorkspaceState {
	switch s {
	case provider.StatePending:
		return controllerv1.WorkspaceState_WORKSPACE_STATE_PENDING
	case provider.StateStarted:
		return controllerv1.WorkspaceState_WORKSPACE_STATE_STARTED
	case provider.StateStopped:
		return controllerv1.WorkspaceState_WORKSPACE_STATE_STOPPED
	case provider.StateError:
		return controllerv1.WorkspaceState_WORKSPACE_STATE_ERROR
	default:
		return controllerv1.WorkspaceState_WORKSPACE_STATE_UNKNOWN
	}
}
