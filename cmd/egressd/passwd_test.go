package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/egressd/egressd/policy"
)

// TestPasswd: the printed user block loads, and the user authenticates with
// the password given on stdin and with no other.
func TestPasswd(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		stdin string
		code  int
	}{
		{"user block", []string{"passwd", "ci"}, "s3cret pass\n", exitOK},
		{"bare hash", []string{"passwd"}, "s3cret pass", exitOK},
		{"CRLF line end (Windows clients)", []string{"passwd", "ci"}, "s3cret pass\r\n", exitOK},
		{"only the first line", []string{"passwd", "ci"}, "s3cret pass\nsecond line\n", exitOK},
		{"empty password", []string{"passwd", "ci"}, "\n", exitFail},
		{"too many args", []string{"passwd", "a", "b"}, "x\n", exitUsage},
		{"a name a user block refuses", []string{"passwd", "ci bot"}, "s3cret pass\n", exitUsage},
		{"a name HCL would read as a template", []string{"passwd", "${x}"}, "s3cret pass\n", exitUsage},
		{"a short password", []string{"passwd", "ci"}, "s3cret\n", exitFail},
		{"a blank password", []string{"passwd", "ci"}, "          \n", exitFail},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, strings.NewReader(tt.stdin), &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("exit %d, want %d: %s", code, tt.code, stderr.String())
			}
			if strings.Contains(stdout.String()+stderr.String(), "s3cret") {
				t.Fatal("the password was echoed")
			}
			if code != exitOK {
				return
			}
			src := stdout.String()
			if len(tt.args) == 1 {
				src = "user \"ci\" {\n  password_hash = \"" + strings.TrimSpace(src) + "\"\n}\n"
			}
			dir := t.TempDir()
			src += "policy \"p\" {\n  clients { users = [\"ci\"] }\n  allow \"r\" { hosts = [\"a.test\"] }\n}\n"
			if err := os.WriteFile(filepath.Join(dir, "u.hcl"), []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, diags := policy.Load(dir)
			if diags.HasErrors() {
				t.Fatal(policy.FormatDiagnostics(diags))
			}
			if !cfg.Policy.Authenticate("ci", "s3cret pass") || cfg.Policy.Authenticate("ci", "s3cret") {
				t.Error("the hash does not verify the password it was made from (only)")
			}
		})
	}
}
