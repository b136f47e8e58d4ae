package auth

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/hashicorp/go-hclog"
)

// Reloader is something that re-reads its file on request: a TokenFile, or
// any other credential kept on disk.
type Reloader interface {
	Reload() error
	Path() string
}

// ReloadOnSIGHUP re-reads every file in rs each time the process gets
// SIGHUP, so that an operator can rotate a token without a restart
// (`kill -HUP`). A file that fails to load keeps its last good value and
// the failure is logged. The signal handler is installed before
// ReloadOnSIGHUP returns; the goroutine it starts stops, and SIGHUP gets its
// default action back, when ctx is done. The returned channel is closed
// once that goroutine has exited.
func ReloadOnSIGHUP(ctx context.Context, log hclog.Logger, rs ...Reloader) <-chan struct{} {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	log = log.Named("reload")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer signal.Stop(sig)
		for {
			select {
			case <-ctx.Done():
				return
			case <-sig:
				for _, r := range rs {
					if err := r.Reload(); err != nil {
						log.Error("reload failed; keeping the previous value", "path", r.Path(), "error", err)
						continue
					}
					log.Info("reloaded", "path", r.Path())
				}
			}
		}
	}()
	return done
}
