// Package tmux drives the agent's private tmux server: sessions, windows,
// literal input, captures, and output followed through control-mode
// clients. It knows nothing of gRPC or proto types.
package tmux
