package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/dtmux/dtmux/internal/tlsconfig"
)

// certsUsage is printed for a malformed `certs` command.
const certsUsage = "usage: dtmux-controller certs init DIR [--host NAME]..."

// runCerts implements `dtmux-controller certs init DIR [--host NAME]...`:
// a private CA, a server certificate for localhost, 127.0.0.1, ::1 and
// every --host, and a client certificate, all 0600 in a 0700 DIR.
func runCerts(args []string, out io.Writer) error {
	if len(args) == 0 || args[0] != "init" {
		return errors.New(certsUsage)
	}
	fs := flag.NewFlagSet("certs init", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var hosts listFlag
	fs.Var(&hosts, "host", "extra DNS name or IP address for the server certificate (repeatable)")
	// DIR may come before or after the flags.
	rest := args[1:]
	var dir string
	if len(rest) > 0 && len(rest[0]) > 0 && rest[0][0] != '-' {
		dir, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return fmt.Errorf("%v\n%s", err, certsUsage)
	}
	if dir == "" && fs.NArg() == 1 {
		dir = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q\n%s", fs.Arg(0), certsUsage)
	}
	if dir == "" {
		return errors.New(certsUsage)
	}
	f, err := tlsconfig.Init(dir, hosts)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, `wrote a CA and certificates to %s
serve TLS (controller or agent):
  --tls-cert %s --tls-key %s
require client certificates (mTLS):
  --tls-client-ca %s
clients verify the server with %s and present %s / %s
keep %s offline: it can mint certificates every server trusts
`, dir, f.ServerCert, f.ServerKey, f.CACert, f.CACert, f.ClientCert, f.ClientKey, f.CAKey)
	return nil
}
