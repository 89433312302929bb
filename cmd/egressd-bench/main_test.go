package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain lets the test binary serve as the reference relay, as the bench
// binary does: the bench starts os.Executable() with referenceEnv set.
func TestMain(m *testing.M) {
	if addr := os.Getenv(referenceEnv); addr != "" {
		os.Exit(referenceRelay(addr))
	}
	os.Exit(m.Run())
}

// TestQuickRun runs the whole bench in --quick mode with small numbers:
// it builds egressd, starts it with the generated 1,000-rule policy, and
// must print every row, with exactly one decision and one close line per
// tunnel.
func TestQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs egressd; skipped with -short")
	}
	out := filepath.Join(t.TempDir(), "table.md")
	var stdout, stderr bytes.Buffer
	code := run([]string{"--quick", "--tunnels", "50", "--duration", "200ms", "--transparent=false", "-o", out}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	table := stdout.String()
	if strings.Contains(table, "FAILED") {
		t.Fatalf("a measurement failed:\n%s", table)
	}
	for _, r := range newRows("CONNECT", true) {
		if !strings.Contains(table, "| CONNECT | "+r.name) {
			t.Errorf("no row %q in:\n%s", r.name, table)
		}
	}
	var logLine string
	for _, l := range strings.Split(table, "\n") {
		if strings.Contains(l, "decision-log lines") {
			logLine = l
		}
	}
	if !strings.Contains(logLine, "| 1.000 + 1.000 (") || !strings.HasSuffix(logLine, "| exactly 1 + 1 | met |") {
		t.Errorf("log-lines row is not 1 + 1: %q", logLine)
	}
	if written, err := os.ReadFile(out); err != nil || string(written) != table {
		t.Errorf("-o file differs from stdout (%v)", err)
	}
}
