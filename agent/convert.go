package agent

import (
	"fmt"
	"math"
	"syscall"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/dtmux/dtmux/agent/process"
	agentv1 "github.com/dtmux/dtmux/proto/dtmux/agent/v1"
)

// specFromStart converts an ExecStart, checking what only the proto can
// get wrong (missing command, bad durations, sizes out of range).
func specFromStart(st *agentv1.ExecStart) (process.Spec, error) {
	c := st.GetCommand()
	if c == nil {
		return process.Spec{}, fmt.Errorf("start.command is required: %w", errInvalid)
	}
	timeout, err := duration("timeout", st.GetTimeout())
	if err != nil {
		return process.Spec{}, err
	}
	idle, err := duration("idle_timeout", st.GetIdleTimeout())
	if err != nil {
		return process.Spec{}, err
	}
	spec := process.Spec{
		ID:          st.GetRunId(),
		Argv:        c.GetArgv(),
		Shell:       c.GetShell(),
		Env:         c.GetEnv(),
		SecretEnv:   c.GetSecretEnv(),
		Cwd:         c.GetCwd(),
		Detach:      st.GetDetach(),
		NoStdin:     st.GetNoStdin(),
		Timeout:     timeout,
		IdleTimeout: idle,
		Labels:      st.GetLabels(),
	}
	if p := st.GetPty(); p != nil {
		if p.GetRows() > math.MaxUint16 || p.GetCols() > math.MaxUint16 {
			return process.Spec{}, fmt.Errorf("pty size %dx%d is too large: %w", p.GetCols(), p.GetRows(), errInvalid)
		}
		spec.PTY = &process.PTY{Rows: uint16(p.GetRows()), Cols: uint16(p.GetCols()), Term: p.GetTerm()}
	}
	spec.Limits = limitsFromProto(st.GetLimits())
	return spec, nil
}

func limitsFromProto(l *agentv1.RunLimits) process.Limits {
	return process.Limits{
		MaxOutputBytes:    l.GetMaxOutputBytes(),
		CPUSeconds:        l.GetCpuSeconds(),
		AddressSpaceBytes: l.GetAddressSpaceBytes(),
		OpenFiles:         l.GetOpenFiles(),
		Processes:         l.GetProcesses(),
		MemoryBytes:       l.GetMemoryBytes(),
		Pids:              l.GetPids(),
		CPUMillis:         l.GetCpuMillis(),
	}
}

func duration(name string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, fmt.Errorf("%s: %v: %w", name, err, errInvalid)
	}
	if v := d.AsDuration(); v < 0 {
		return 0, fmt.Errorf("%s is negative: %w", name, errInvalid)
	} else {
		return v, nil
	}
}

// signalOf converts a proto signal. Unknown values are refused rather than
// passed on as raw numbers.
func signalOf(s agentv1.Signal) (syscall.Signal, error) {
	switch s {
	case agentv1.Signal_SIGNAL_HUP, agentv1.Signal_SIGNAL_INT, agentv1.Signal_SIGNAL_QUIT,
		agentv1.Signal_SIGNAL_KILL, agentv1.Signal_SIGNAL_USR1, agentv1.Signal_SIGNAL_USR2,
		agentv1.Signal_SIGNAL_TERM, agentv1.Signal_SIGNAL_CONT, agentv1.Signal_SIGNAL_STOP,
		agentv1.Signal_SIGNAL_WINCH:
		return syscall.Signal(s), nil
	}
	return 0, fmt.Errorf("signal %d is not one of the supported signals: %w", int32(s), errInvalid)
}

func streamToProto(s process.Stream) agentv1.Stream {
	if s == process.Stderr {
		return agentv1.Stream_STREAM_STDERR
	}
	return agentv1.Stream_STREAM_STDOUT
}

func trailerToProto(t *process.Trailer) *agentv1.RunTrailer {
	if t == nil {
		return nil
	}
	return &agentv1.RunTrailer{
		Reason:      agentv1.ExitReason(t.Reason),
		ExitCode:    int32(t.ExitCode),
		Signal:      int32(t.Signal),
		StdoutBytes: t.StdoutBytes,
		StderrBytes: t.StderrBytes,
		Duration:    durationpb.New(t.Duration),
		Detail:      t.Detail,
		EndedAt:     timestamppb.New(t.EndedAt),
	}
}

// infoToProto never sees secret values: process.Info holds only their keys.
func infoToProto(in process.Info) *agentv1.RunInfo {
	return &agentv1.RunInfo{
		RunId:           in.ID,
		Argv:            in.Argv,
		Shell:           in.Shell,
		Cwd:             in.Cwd,
		Env:             in.Env,
		SecretEnvKeys:   in.SecretEnvKeys,
		State:           agentv1.RunState(in.State),
		Pid:             int32(in.PID),
		StartedAt:       timestamppb.New(in.StartedAt),
		Trailer:         trailerToProto(in.Trailer),
		Detached:        in.Detached,
		Pty:             in.PTY,
		StdoutBytes:     in.StdoutBytes,
		StderrBytes:     in.StderrBytes,
		AttachedClients: uint32(in.AttachedClients),
		Labels:          in.Labels,
	}
}

func startedToProto(in process.Info, existing bool) *agentv1.RunStarted {
	return &agentv1.RunStarted{
		RunId:            in.ID,
		Pid:              int32(in.PID),
		StartedAt:        timestamppb.New(in.StartedAt),
		AttachedExisting: existing,
	}
}
