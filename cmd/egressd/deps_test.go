package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyDirection keeps policy and sni pure (tailscale's deptest
// pattern): they must not reach sockets, logging or each other.
func TestDependencyDirection(t *testing.T) {
	forbidden := map[string]map[string]string{
		"github.com/egressd/egressd/policy": {
			"github.com/egressd/egressd/sni":   "policy and sni are independent; proxy copies hello fields into a policy.Request",
			"github.com/egressd/egressd/proxy": "policy is pure; proxy depends on it, not the reverse",
			"github.com/rs/zerolog":            "policy returns decisions; proxy logs them",
			"github.com/elazarl/goproxy":       "no HTTP proxy types in the policy",
			"github.com/miekg/dns":             "no DNS in the policy",
		},
		"github.com/egressd/egressd/sni": {
			"net":                               "sni parses bytes; it has no sockets",
			"github.com/egressd/egressd/policy": "policy and sni are independent",
			"github.com/egressd/egressd/proxy":  "sni is pure",
			"github.com/rs/zerolog":             "sni returns values; proxy logs them",
		},
	}
	// Direct imports only for net/http: x/net/publicsuffix pulls it in
	// transitively without any socket use.
	direct := map[string]map[string]string{
		"github.com/egressd/egressd/policy": {
			"net":      "policy takes netip values, never sockets",
			"net/http": "no HTTP types in the policy",
			"os/exec":  "policy runs nothing",
		},
	}
	for pkg, bad := range forbidden {
		for _, dep := range goList(t, "-deps", pkg) {
			if why, ok := bad[dep]; ok {
				t.Errorf("%s depends on %s: %s", pkg, dep, why)
			}
		}
	}
	for pkg, bad := range direct {
		for _, dep := range goList(t, "-f", `{{join .Imports "\n"}}`, pkg) {
			if why, ok := bad[dep]; ok {
				t.Errorf("%s imports %s: %s", pkg, dep, why)
			}
		}
	}
}

func goList(t *testing.T, args ...string) []string {
	t.Helper()
	out, err := exec.Command("go", append([]string{"list"}, args...)...).Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	return strings.Fields(string(out))
}
