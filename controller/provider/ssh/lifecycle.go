package ssh

import "github.com/dtmux/dtmux/controller/provider"

var _ provider.Lifecycle = (*Provider)(nil)

// ManagesLifecycle implements provider.Lifecycle: hosts come from the
// hosts file and are never stopped or deleted, so their runs are never
// killed ahead of a stop or delete that cannot happen.
func (p *Provider) ManagesLifecycle() bool { return false }
