// Package provider defines where workspaces come from: a Provider lists,
// creates, starts, stops and deletes them, and says how to reach each
// workspace's agent. Implementations live in subpackages (local, ssh,
// daytona, static) and know nothing of gRPC services.
package provider

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/dtmux/dtmux/internal/transport"
)

// Sentinel errors; the RPC layer maps them to status codes.
var (
	// ErrNotFound: no workspace by that name.
	ErrNotFound = errors.New("workspace not found")
	// ErrAlreadyExists: a workspace by that name exists.
	ErrAlreadyExists = errors.New("workspace already exists")
	// ErrUnsupported: the provider cannot do that (e.g. create an ssh host).
	ErrUnsupported = errors.New("not supported by this provider")
	// ErrNotStarted: the workspace is not started, so its agent cannot be
	// reached.
	ErrNotStarted = errors.New("workspace is not started")
	// ErrInvalid: a bad name, label or option.
	ErrInvalid = errors.New("invalid argument")
)

// State is where a workspace is in its life.
type State int

// States, mapped from each provider's own words.
const (
	StateUnknown State = iota
	StatePending
	StateStarted
	StateStopped
	StateError
)

func (s State) String() string {
	switch s {
	case StatePending:
		return "pending"
	case StateStarted:
		return "started"
	case StateStopped:
		return "stopped"
	case StateError:
		return "error"
	default:
		return "unknown"
	}
}

// Workspace is what a provider knows about one workspace.
type Workspace struct {
	// Name is unique within the provider.
	Name string
	// Labels are used by selectors.
	Labels map[string]string
	// State is the mapped lifecycle state.
	State State
	// StateDetail is the provider's own word and error, if any.
	StateDetail string
	// Attributes are provider-specific facts; never secrets.
	Attributes map[string]string
}

// CreateOptions describe a new workspace.
type CreateOptions struct {
	Name        string
	Labels      map[string]string
	Repository  string
	Image       string
	WaitTimeout time.Duration
	Options     map[string]string
}

// Endpoint says how to reach a workspace's agent. Either Address is set
// (a listening agent), or Dial (a connection the provider opens itself,
// such as a stdio hop over ssh, bootstrapping the agent first if needed).
type Endpoint struct {
	// Address of a listening agent.
	Address transport.Address
	// Dial, when set, opens the connection; the pool uses it for every
	// (re)connect. The returned conn's Close must end the hop.
	Dial func(ctx context.Context) (net.Conn, error)
	// DialConfig holds the token and TLS settings for Address.
	DialConfig transport.DialConfig
	// IdleTimeout, when non-zero, closes the connection after that long
	// without calls (so that e.g. Daytona sandboxes can auto-stop).
	IdleTimeout time.Duration
	// ConnectTimeout, when non-zero, bounds one connection attempt through
	// Dial instead of the pool's default: a hop that installs the agent
	// first needs minutes on a slow link.
	ConnectTimeout time.Duration
	// Key identifies the endpoint; the pool redials when it changes.
	Key string
}

// KeyReporter is implemented by providers that can say, as cheaply as a
// stat and without a lookup that costs (a CLI call), whether a workspace
// is still there and which endpoint Key it has now. The pool asks before
// it reuses a connection, and now and then for idle ones, so that a host
// edited or removed in the ssh hosts file is not reached over its old hop.
type KeyReporter interface {
	// EndpointKey returns the Key Endpoint would return for name, or
	// ErrNotFound.
	EndpointKey(name string) (string, error)
}

// Provider is a source of workspaces.
type Provider interface {
	// Name is "local", "ssh", "daytona" or "static".
	Name() string
	// List returns all workspaces, sorted by name.
	List(ctx context.Context) ([]Workspace, error)
	// Get returns one workspace or ErrNotFound.
	Get(ctx context.Context, name string) (Workspace, error)
	// Create creates a workspace and waits until it is started.
	Create(ctx context.Context, o CreateOptions) (Workspace, error)
	// Delete removes a workspace.
	Delete(ctx context.Context, name string, force bool) error
	// Start starts a workspace and waits until it is started.
	Start(ctx context.Context, name string, wait time.Duration) (Workspace, error)
	// Stop stops a workspace.
	Stop(ctx context.Context, name string) (Workspace, error)
	// Endpoint says how to reach the agent of a started workspace.
	Endpoint(ctx context.Context, name string) (Endpoint, error)
	// Close releases what the provider holds (local agents keep running so
	// that a restarted controller adopts them).
	Close() error
}
