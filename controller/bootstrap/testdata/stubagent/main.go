// Command stubagent stands in for dtmux-agent in bootstrap tests: it
// answers --version and serves gRPC health on stdin/stdout with --stdio.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/dtmux/dtmux/internal/rpcserver"
	"github.com/dtmux/dtmux/internal/transport"
)

var version = "stub-1"

func main() {
	showVersion := flag.Bool("version", false, "print the version")
	stdio := flag.Bool("stdio", false, "serve one connection on stdin/stdout")
	flag.Parse()
	if *showVersion {
		fmt.Println("dtmux-agent", version)
		return
	}
	if !*stdio {
		fmt.Fprintln(os.Stderr, "stubagent: want --stdio")
		os.Exit(2)
	}
	fmt.Fprintln(os.Stderr, "stubagent: serving on stdio")
	l := transport.NewStdioListener()
	s := rpcserver.New(rpcserver.Config{})
	s.MarkServing()
	go func() { <-l.Done(); s.Stop() }()
	s.Serve(l)
}
