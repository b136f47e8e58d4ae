package agent

import (
	"context"

	"github.com/dtmux/dtmux/agent/tmux"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

func serviceToProto(st tmux.ServiceStatus) *agentv1.ServiceStatus {
	out := &agentv1.ServiceStatus{Name: st.Name, Pid: int32(st.PID), ExitCode: -1, Argv: st.Argv, Action: st.Action,
		State: agentv1.ServiceState_SERVICE_STATE_RUNNING}
	if !st.Running {
		out.State = agentv1.ServiceState_SERVICE_STATE_EXITED
		out.ExitCode, out.Signal = int32(st.Exit.Code), int32(st.Exit.Signal)
	}
	return out
}

// ApplyServices starts or updates services, each in its own window.
func (s *Server) ApplyServices(ctx context.Context, req *agentv1.ApplyServicesRequest) (*agentv1.ApplyServicesResponse, error) {
	m, err := s.sessions()
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	specs := make([]tmux.ServiceSpec, 0, len(req.GetServices()))
	for _, sp := range req.GetServices() {
		specs = append(specs, tmux.ServiceSpec{Name: sp.GetName(), Command: commandFromProto(sp.GetCommand())})
	}
	sts, err := m.ApplyServices(ctx, req.GetSession(), specs)
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	resp := &agentv1.ApplyServicesResponse{}
	for _, st := range sts {
		resp.Services = append(resp.Services, serviceToProto(st))
	}
	return resp, nil
}

// ListServices lists services and their state.
func (s *Server) ListServices(ctx context.Context, req *agentv1.ListServicesRequest) (*agentv1.ListServicesResponse, error) {
	m, err := s.sessions()
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	sts, err := m.ListServices(ctx, req.GetSession())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	resp := &agentv1.ListServicesResponse{}
	for _, st := range sts {
		resp.Services = append(resp.Services, serviceToProto(st))
	}
	return resp, nil
}

// RestartService restarts one service with its last spec.
func (s *Server) RestartService(ctx context.Context, req *agentv1.RestartServiceRequest) (*agentv1.RestartServiceResponse, error) {
	m, err := s.sessions()
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	st, err := m.RestartService(ctx, req.GetSession(), req.GetName())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	return &agentv1.RestartServiceResponse{Service: serviceToProto(st)}, nil
}

// StopServices stops all services of a session and removes it.
func (s *Server) StopServices(ctx context.Context, req *agentv1.StopServicesRequest) (*agentv1.StopServicesResponse, error) {
	m, err := s.sessions()
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	grace, err := duration("grace", req.GetGrace())
	if err == nil {
		err = m.StopServices(ctx, req.GetSession(), grace)
	}
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	return &agentv1.StopServicesResponse{}, nil
}
