package main

import (
	"fmt"
	"io"
	"os"

	"github.com/egressd/egressd/proxy"
)

// runSuggest is egressd suggest: decision lines from FILE or stdin in,
// proxy.Suggest's HCL out.
func runSuggest(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := newFlags("suggest", "suggest [FILE|-]   (stdin when no FILE or -)", stderr)
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return exitUsage
	}
	in := stdin
	if name := fs.Arg(0); name != "" && name != "-" {
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintln(stderr, "egressd suggest:", err)
			return exitFail
		}
		defer f.Close()
		in = f
	}
	out, err := proxy.Suggest(in)
	if err != nil {
		fmt.Fprintln(stderr, "egressd suggest:", err)
		return exitFail
	}
	if _, err := stdout.Write(out); err != nil {
		return exitFail
	}
	return exitOK
}
