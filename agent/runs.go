package agent

import (
	"context"
	"fmt"
	"unicode/utf8"

	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// maxSignalReason bounds SignalRunRequest.reason.
const maxSignalReason = 200

// AttachRun replays a run's output from the requested offsets, then (with
// follow) streams it live to the trailer.
func (s *Server) AttachRun(req *agentv1.AttachRunRequest, stream agentv1.AgentService_AttachRunServer) error {
	run, err := s.runs.Get(req.GetRunId())
	if err != nil {
		return toStatus(s.log, err)
	}
	release := run.AddClient(false)
	defer release()
	if err := stream.Send(&agentv1.AttachRunResponse{Event: &agentv1.AttachRunResponse_Started{Started: startedToProto(run.Info(), true)}}); err != nil {
		return err
	}
	rd := run.NewReader(req.GetStdoutOffset(), req.GetStderrOffset())
	defer rd.Close()
	ctx, cancel := s.streamContext(stream.Context())
	defer cancel()
	return toStatus(s.log, ended(ctx, pump(ctx, run, rd, req.GetFollow(), attachEvents{stream})))
}

// ListRuns lists running runs and finished ones within retention.
func (s *Server) ListRuns(_ context.Context, req *agentv1.ListRunsRequest) (*agentv1.ListRunsResponse, error) {
	infos := s.runs.List(req.GetLabels())
	resp := &agentv1.ListRunsResponse{Runs: make([]*agentv1.RunInfo, 0, len(infos))}
	for _, in := range infos {
		resp.Runs = append(resp.Runs, infoToProto(in))
	}
	return resp, nil
}

// GetRun describes one run.
func (s *Server) GetRun(_ context.Context, req *agentv1.GetRunRequest) (*agentv1.GetRunResponse, error) {
	run, err := s.runs.Get(req.GetRunId())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	return &agentv1.GetRunResponse{Run: infoToProto(run.Info())}, nil
}

// SignalRun signals a run's process group.
func (s *Server) SignalRun(_ context.Context, req *agentv1.SignalRunRequest) (*agentv1.SignalRunResponse, error) {
	sig, err := signalOf(req.GetSignal())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	reason := req.GetReason()
	if len(reason) > maxSignalReason || !utf8.ValidString(reason) {
		return nil, toStatus(s.log, fmt.Errorf("signal reason: want valid UTF-8 of at most %d bytes: %w", maxSignalReason, errInvalid))
	}
	run, err := s.runs.Get(req.GetRunId())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	if err := run.Signal(sig, reason); err != nil {
		return nil, toStatus(s.log, err)
	}
	return &agentv1.SignalRunResponse{}, nil
}

type attachEvents struct {
	stream agentv1.AgentService_AttachRunServer
}

func (e attachEvents) output(o *agentv1.RunOutput) error {
	return e.stream.Send(&agentv1.AttachRunResponse{Event: &agentv1.AttachRunResponse_Output{Output: o}})
}

func (e attachEvents) gap(g *agentv1.RunGap) error {
	return e.stream.Send(&agentv1.AttachRunResponse{Event: &agentv1.AttachRunResponse_Gap{Gap: g}})
}

func (e attachEvents) trailer(t *agentv1.RunTrailer) error {
	return e.stream.Send(&agentv1.AttachRunResponse{Event: &agentv1.AttachRunResponse_Trailer{Trailer: t}})
}
