package proxy

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"

	"github.com/rs/zerolog"

	"github.com/egressd/egressd/policy"
)

// TestReloadRestartNeeded: a reload that changes settings the running
// server keeps (timeouts, limits) is applied for the policies and names
// those settings in restart_needed; one that changes nothing of them has
// no such field.
func TestReloadRestartNeeded(t *testing.T) {
	parse := func(server string) *policy.Config {
		t.Helper()
		cfg, diags := policy.Parse([]policy.File{{Name: "r.hcl", Src: []byte(server + `
policy "p" {
  allow "a" { hosts = ["a.example.com"] }
}
`)}})
		if diags.HasErrors() {
			t.Fatal(policy.FormatDiagnostics(diags))
		}
		return cfg
	}
	var buf bytes.Buffer
	s, err := New(parse(""), zerolog.New(&buf))
	if err != nil {
		t.Fatal(err)
	}
	last := func() map[string]any {
		t.Helper()
		lines := bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
		var m map[string]any
		if err := json.Unmarshal(lines[len(lines)-1], &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	if err := s.Reload(parse("")); err != nil {
		t.Fatal(err)
	}
	if l := last(); l["outcome"] != "ok" || l[fieldRestart] != nil {
		t.Errorf("reload of the same settings logged %v", l)
	}
	if err := s.Reload(parse("server {\n  hello_timeout = \"3s\"\n  shutdown_grace = \"5s\"\n  users_file = \"users\"\n}\n")); err != nil {
		t.Fatal(err)
	}
	l := last()
	got, _ := l[fieldRestart].([]any)
	var names []string
	for _, g := range got {
		names = append(names, g.(string))
	}
	if l["outcome"] != "ok" || !slices.Equal(names, []string{"hello_timeout", "shutdown_grace"}) {
		t.Errorf("reload changing hello_timeout, shutdown_grace and users_file logged %v, want restart_needed [hello_timeout shutdown_grace] (users_file takes effect)", l)
	}
}
