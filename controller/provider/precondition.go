package provider

import "errors"

// ErrPrecondition: the workspace, or the provider's access to it, is not
// in a state the call can go on from, and only the user can change that:
// the workspace went into an error state, or the provider lacks something
// it needs (an API key). Wrap it as fmt.Errorf("%w: what and what to do",
// ErrPrecondition); the RPC layer maps it to FailedPrecondition and passes
// the text after the sentinel's on.
var ErrPrecondition = errors.New("failed precondition")
