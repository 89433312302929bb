package policy

import "testing"

const nameAllowedConfig = decideConfig + `
policy "sni-only" {
  allow "cidr-sni" {
    cidrs = ["192.0.2.0/24"]
    sni   = ["sni-only.test"]
  }
}

policy "dns-denies" {
  deny "blocked" {
    hosts = ["blocked.example.com"]
  }
  deny "blocked-wild" {
    hosts = ["*.bad.wild.test"]
  }
}

policy "dns-open" {
  allow "names" {
    hosts = ["scoped.test", "quic-denied.test", "audit-denied.test"]
  }
}

# Deny rules that refuse some connections to a name but not all: the name
# is still answered.
policy "dns-scoped" {
  clients {
    cidrs = ["10.99.0.0/16"]
  }
  deny "scoped" {
    hosts = ["scoped.test"]
  }
}

policy "dns-quic" {
  deny "quic-only" {
    hosts     = ["quic-denied.test"]
    protocols = ["quic"]
  }
}

policy "dns-audit" {
  mode = "audit"
  deny "audited" {
    hosts = ["audit-denied.test"]
  }
}
`

func TestNameAllowed(t *testing.T) {
	p := mustParse(t, nameAllowedConfig).Policy
	tests := []struct {
		name         string
		policy, rule string
		ok           bool
	}{
		// hosts, exact and wildcard
		{"example.com", "web", "example", true},
		{"www.example.com", "web", "example", true},
		{"api.example.com", "web", "example", true},
		{"a.b.wild.test", "web", "wild", true},
		{"wild.test", "", "", false}, // "*.wild.test" does not match its apex
		{"ports.test", "web", "ports", true},
		{"xn--bcher-kva.example", "web", "idn", true},
		{"trailing.test", "web", "trailing", true},
		// the cloudflare-tunnel preset's names: hosts and the sni list
		{"region1.v2.argotunnel.com", "cloudflare-tunnel", "tunnel-http2", true},
		{"region2.v2.argotunnel.com", "cloudflare-tunnel", "tunnel-http2", true},
		{"h2.cftunnel.com", "cloudflare-tunnel", "tunnel-http2", true},
		{"cftunnel.com", "cloudflare-tunnel", "tunnel-http2", true},
		{"_v2-origintunneld._tcp.argotunnel.com", "cloudflare-tunnel", "tunnel-http2", true},
		{"argotunnel.com", "", "", false},
		{"region3.v2.argotunnel.com", "", "", false},
		// a rule with cidrs and sni but no hosts
		{"sni-only.test", "sni-only", "cidr-sni", true},
		// a rule with a ja3 condition could still allow the name
		{"x.enforce.dev", "chainguard-enforce", "enforce-api", true},
		// deny rules without conditions win; with conditions or ports they do not
		{"legacy.enforce.dev", "denies", "legacy", false},
		{"blocked.example.com", "dns-denies", "blocked", false},
		{"x.bad.wild.test", "dns-denies", "blocked-wild", false},
		// deny rules for some clients, for QUIC only or in audit mode
		{"scoped.test", "dns-open", "names", true},
		{"quic-denied.test", "dns-open", "names", true},
		{"audit-denied.test", "dns-open", "names", true},
		// names no rule lists
		{"exfil.data.attacker.test", "", "", false},
		{"com", "", "", false},
		// not normalized or not a name
		{"Example.com", "", "", false},
		{"example.com.", "", "", false},
		{"", "", "", false},
		{"a..b", "", "", false},
	}
	for _, tt := range tests {
		pol, rule, ok := p.NameAllowed(tt.name)
		if pol != tt.policy || rule != tt.rule || ok != tt.ok {
			t.Errorf("NameAllowed(%q) = %q, %q, %v; want %q, %q, %v", tt.name, pol, rule, ok, tt.policy, tt.rule, tt.ok)
		}
	}
	var nilPol *Policy
	if _, _, ok := nilPol.NameAllowed("example.com"); ok {
		t.Error("nil policy allowed a name")
	}
}

func TestNameAllowedAllocs(t *testing.T) {
	p := mustParse(t, nameAllowedConfig).Policy
	for _, name := range []string{"www.example.com", "_v2-origintunneld._tcp.argotunnel.com", "blocked.example.com", "exfil.data.attacker.test"} {
		if n := testing.AllocsPerRun(100, func() { _, _, _ = p.NameAllowed(name) }); n != 0 {
			t.Errorf("NameAllowed(%q): %v allocations, want 0", name, n)
		}
	}
}
