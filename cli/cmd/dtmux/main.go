// Command dtmux is the dtmux command line client.
package main

import (
	"context"
	"os"

	"github.com/dtmux/dtmux/cli"
)

func main() {
	os.Exit(cli.Main(context.Background(), cli.NewApp(), os.Args[1:]))
}
