package proxy

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestConfigWatchRelevant(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "egressd.hcl")
	if err := os.WriteFile(file, []byte("policy \"p\" {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const noUsers, withUsers = "", "secrets/users"
	tests := []struct {
		name, path string
		usersFile  string
		event      string
		want       bool
	}{
		{"file itself", file, noUsers, file, true},
		{"file, other .hcl beside it", file, noUsers, filepath.Join(dir, "other.hcl"), false},
		{"file, log beside it", file, noUsers, filepath.Join(dir, "egressd.log"), false},
		{"file, ConfigMap swap", file, noUsers, filepath.Join(dir, "..data"), true},
		{"file, ConfigMap timestamp dir", file, noUsers, filepath.Join(dir, "..2026_11_23_01"), true},
		{"dir, an .hcl file", dir, noUsers, filepath.Join(dir, "b.hcl"), true},
		{"dir, a hidden .hcl file", dir, noUsers, filepath.Join(dir, ".b.hcl"), false},
		{"dir, a log", dir, noUsers, filepath.Join(dir, "egressd.log"), false},
		{"dir, .hcl in a subdirectory", dir, noUsers, filepath.Join(dir, "sub", "b.hcl"), false},
		{"users file", dir, withUsers, filepath.Join(dir, "secrets", "users"), true},
		{"beside the users file", dir, withUsers, filepath.Join(dir, "secrets", "other"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cw := newConfigWatch(tt.path, tt.usersFile)
			if got := cw.relevant(tt.event); got != tt.want {
				t.Errorf("relevant(%q) with --config %q = %v, want %v", tt.event, tt.path, got, tt.want)
			}
		})
	}
	// A users file in another directory is watched there too.
	cw := newConfigWatch(dir, withUsers)
	if want := []string{dir, filepath.Join(dir, "secrets")}; !slices.Equal(cw.dirs, want) {
		t.Errorf("watched directories %q, want %q", cw.dirs, want)
	}
}
