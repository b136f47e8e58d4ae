package static

import "github.com/dtmux/dtmux/controller/provider"

var _ provider.Lifecycle = (*Provider)(nil)

// ManagesLifecycle implements provider.Lifecycle: the agents are listed,
// never stopped or deleted, so their runs are never killed ahead of a
// stop or delete that cannot happen.
func (p *Provider) ManagesLifecycle() bool { return false }
