package agent

import (
	"context"
	"os"
	"runtime"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/dtmux/dtmux/internal/version"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// GetAgentInfo reports the agent's version and platform.
func (s *Server) GetAgentInfo(ctx context.Context, _ *agentv1.GetAgentInfoRequest) (*agentv1.GetAgentInfoResponse, error) {
	host, _ := os.Hostname()
	resp := &agentv1.GetAgentInfoResponse{
		Version:   version.Version,
		Workspace: s.opts.Workspace,
		Hostname:  host,
		Os:        runtime.GOOS,
		Arch:      runtime.GOARCH,
		Pid:       int32(os.Getpid()),
		StartedAt: timestamppb.New(s.opts.StartedAt),
		Isolation: s.opts.Isolation,
	}
	if s.opts.TmuxVersion != nil {
		v, err := s.opts.TmuxVersion(ctx)
		if err != nil {
			resp.TmuxError = err.Error()
		} else {
			resp.TmuxVersion = v
		}
	} else {
		resp.TmuxError = "sessions are not served by this agent"
	}
	return resp, nil
}
