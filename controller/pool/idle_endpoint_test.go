package pool

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/dtmux/dtmux/controller/provider"
)

// An endpoint's own idle timeout, shorter than the pool's, is honoured
// without waiting for a sweep planned for the pool's (which is at most a
// minute away: longer than waitFor allows).
func TestIdleEvictionEndpointShorterThanPool(t *testing.T) {
	sock := filepath.Join(sockDir(t), "a.sock")
	serve(t, sock, "v")
	p := newPool(t, Config{IdleTimeout: time.Hour, Resolve: func(ctx context.Context, name string) (provider.Endpoint, error) {
		ep := unixEndpoint(sock)
		if name == "short" {
			ep.IdleTimeout = 50 * time.Millisecond
		}
		return ep, nil
	}})
	ctx := ctxT(t)
	for _, n := range []string{"long", "short"} {
		if _, err := p.Conn(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the short-idle connection to close", func() bool { return p.Len() == 1 })
	p.mu.Lock()
	_, long := p.entries["long"]
	p.mu.Unlock()
	if !long {
		t.Fatal("evicted the connection under the pool's hour-long idle timeout")
	}
}
