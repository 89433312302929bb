package main

import (
	"fmt"
	"io"
	"strconv"

	"github.com/egressd/egressd/policy"
)

// runTest is "egressd test": it decides every test block of the
// configuration offline and reports the failures.
func runTest(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("test", "test [--config PATH] [-v]", stderr)
	path := fs.String("config", "", "HCL file or directory of *.hcl files (default: the embedded presets and their tests)")
	verbose := fs.Bool("v", false, "also print a line for every passing test")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "egressd test: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	cfg, ok := loadConfig(*path, stderr)
	if !ok {
		return exitFail
	}
	return reportTests(cfg, *path, *verbose, stdout)
}

// reportTests runs cfg's tests and prints one line per failure (and per
// pass with verbose) and a summary; it returns the exit code.
func reportTests(cfg *policy.Config, path string, verbose bool, w io.Writer) int {
	results := cfg.RunTests()
	if len(results) == 0 {
		if path == "" {
			path = "the embedded presets"
		}
		fmt.Fprintf(w, "0 tests: no test blocks in %s\n", path)
		return exitOK
	}
	failed := 0
	for _, r := range results {
		pos := fmt.Sprintf("%s:%d:%d", r.Test.Range.Filename, r.Test.Range.Start.Line, r.Test.Range.Start.Column)
		switch {
		case !r.OK:
			failed++
			fmt.Fprintf(w, "%s: test %s: %s\n", pos, strconv.Quote(r.Test.Name), r.Message)
		case verbose:
			fmt.Fprintf(w, "%s: test %s: ok: %s\n", pos, strconv.Quote(r.Test.Name), policy.DescribeDecision(r.Decision))
		}
	}
	fmt.Fprintf(w, "%d tests, %d failed\n", len(results), failed)
	if failed > 0 {
		return exitFail
	}
	return exitOK
}
