package provider

// Lifecycle is implemented by providers that can say up front whether
// they stop and delete workspaces. Callers use it to skip what they
// would do before a stop or delete that cannot happen, such as killing
// the workspace's runs.
type Lifecycle interface {
	// ManagesLifecycle is false when Stop and Delete always fail with
	// ErrUnsupported (ssh hosts, static agents).
	ManagesLifecycle() bool
}

// ManagesLifecycle reports whether p stops and deletes workspaces: true
// unless p implements Lifecycle and says otherwise.
func ManagesLifecycle(p Provider) bool {
	l, ok := p.(Lifecycle)
	return !ok || l.ManagesLifecycle()
}
