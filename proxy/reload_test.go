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
	if err := s.Reload(parse(""), nil); err != nil {
		t.Fatal(err)
	}
	if l := last(); l["outcome"] != "ok" || l[fieldRestart] != nil {
		t.Errorf("reload of the same settings logged %v", l)
	}
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"timeouts and users_file", "server {\n  hello_timeout = \"3s\"\n  shutdown_grace = \"5s\"\n  users_file = \"users\"\n}\n",
			[]string{"hello_timeout", "shutdown_grace"}}, // users_file takes effect
		{"log block", "log {\n  output = \"stderr\"\n}\n", []string{"log"}},
		{"resolver block", "resolver {\n  servers = [\"127.0.0.1:53\"]\n}\n", []string{"resolver"}},
	} {
		if err := s.Reload(parse(tc.src), nil); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		l := last()
		got, _ := l[fieldRestart].([]any)
		var names []string
		for _, g := range got {
			names = append(names, g.(string))
		}
		if l["outcome"] != "ok" || !slices.Equal(names, tc.want) {
			t.Errorf("reload changing the %s logged %v, want restart_needed %v", tc.name, l, tc.want)
		}
	}
}
