// Command egressd is an egress proxy that lets through only what its HCL
// policy allows. See README.md.
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
