// Package logging builds the root hclog logger of a dtmux binary and adapts
// it to gRPC middleware.
package logging

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/hashicorp/go-hclog"
)

// Options configure the root logger.
type Options struct {
	// Name of the binary, such as "dtmux-agent".
	Name string
	// Level is trace, debug, info, warn or error (default info).
	Level string
	// JSON selects JSON lines instead of text.
	JSON bool
	// Output defaults to stderr. Never stdout: the stdio transport owns it.
	Output io.Writer
}

// New returns the root logger. An unknown level is an error so that a typo
// on the command line is not silently ignored.
func New(o Options) (hclog.Logger, error) {
	level := hclog.Info
	if o.Level != "" {
		level = hclog.LevelFromString(o.Level)
		if level == hclog.NoLevel {
			return nil, fmt.Errorf("unknown log level %q (want trace, debug, info, warn or error)", o.Level)
		}
	}
	out := o.Output
	if out == nil {
		out = os.Stderr
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       o.Name,
		Level:      level,
		JSONFormat: o.JSON,
		Output:     out,
	}), nil
}

// GRPC adapts an hclog logger to the go-grpc-middleware logging interceptor.
func GRPC(l hclog.Logger) logging.Logger {
	return logging.LoggerFunc(func(_ context.Context, lvl logging.Level, msg string, fields ...any) {
		switch lvl {
		case logging.LevelDebug:
			l.Debug(msg, fields...)
		case logging.LevelInfo:
			l.Info(msg, fields...)
		case logging.LevelWarn:
			l.Warn(msg, fields...)
		case logging.LevelError:
			l.Error(msg, fields...)
		default:
			l.Info(msg, fields...)
		}
	})
}
