package policy

import (
	"net/netip"
	"reflect"
	"testing"
)

// mustParse parses one configuration file and fails the test on any error.
func mustParse(t testing.TB, src string) *Config {
	t.Helper()
	cfg, diags := Parse([]File{{Name: "test.hcl", Src: []byte(src)}})
	if diags.HasErrors() {
		t.Fatalf("Parse: unexpected errors:\n%s", FormatDiagnostics(diags))
	}
	if cfg.Policy == nil {
		t.Fatal("Parse: no errors but Config.Policy is nil")
	}
	return cfg
}

const (
	ja3Good = "3fed133de60c35724739b913924b6c24"
	ja3Bad  = "0123456789abcdef0123456789abcdef"
	ja4Good = "t13d1516h2_8daaf6152771_e5627efa2ab1"
	ja4Bad  = "t13d1516h2_000000000000_000000000000"
)

const decideConfig = `
policy "web" {
  allow "example" {
    hosts = ["example.com", "*.example.com"]
  }
  allow "wild" {
    hosts = ["*.wild.test"]
  }
  allow "idn" {
    hosts = ["bücher.example"]
  }
  allow "ports" {
    hosts = ["ports.test"]
    ports = [80, "8000-8080"]
  }
  allow "trailing" {
    hosts = ["Trailing.Test."]
  }
}

policy "later" {
  allow "api" {
    hosts = ["api.example.com"]
  }
}

policy "cloudflare-tunnel" {
  allow "tunnel-http2" {
    hosts = ["region1.v2.argotunnel.com", "region2.v2.argotunnel.com"]
    cidrs = ["198.41.192.0/24", "2606:4700:a0::/48"]
    sni   = ["h2.cftunnel.com", "cftunnel.com", "_v2-origintunneld._tcp.argotunnel.com"]
    ports = [7844]
  }
  allow "mixed" {
    hosts = ["mixed.test"]
    cidrs = ["192.0.2.0/24"]
  }
}

policy "chainguard-enforce" {
  allow "enforce-api" {
    hosts = ["*.enforce.dev"]
    ja3   = ["3FED133DE60C35724739B913924B6C24"]
  }
  allow "ja4" {
    hosts = ["ja4.test"]
    ja4   = ["T13D1516H2_8DAAF6152771_E5627EFA2AB1"]
  }
}

policy "plain" {
  allow "ssh" {
    hosts       = ["git.test"]
    ports       = [22]
    require_tls = false
  }
}

policy "order" {
  allow "first" {
    hosts = ["order.test"]
    ja3   = ["` + ja3Good + `"]
  }
  allow "second" {
    hosts = ["order.test"]
  }
}

policy "nets" {
  allow "v4" {
    cidrs = ["203.0.113.0/24"]
  }
  allow "v6" {
    cidrs = ["2001:db8::/32"]
  }
  allow "internal" {
    cidrs = ["10.1.0.0/16"]
  }
  allow "everything" {
    cidrs = ["0.0.0.0/0", "::/0"]
    ports = [8443]
  }
}

policy "denies" {
  deny "legacy" {
    hosts = ["legacy.enforce.dev"]
  }
  deny "bad-ja3" {
    hosts = ["*.example.com"]
    ja3   = ["` + ja3Bad + `"]
  }
  deny "fronting" {
    hosts = ["*"]
    sni   = ["evil.test"]
  }
  deny "net" {
    cidrs = ["203.0.113.66"]
  }
  deny "alt-port" {
    hosts = ["ports.test"]
    ports = ["8080"]
  }
}
`

func host(t *testing.T, s string) string {
	t.Helper()
	n, err := NormalizeHost(s)
	if err != nil {
		t.Fatalf("NormalizeHost(%q): %v", s, err)
	}
	return n
}

func TestDecide(t *testing.T) {
	p := mustParse(t, decideConfig).Policy
	ip := netip.MustParseAddr
	tls := func(h string, port uint16, sni string) Request {
		return Request{Host: h, Port: port, Hello: HelloTLS, SNI: sni, JA3: ja3Good, JA4: ja4Good}
	}
	tests := []struct {
		name   string
		req    Request
		allow  bool
		reason Reason
		policy string
		rule   string
	}{
		// Wildcard depth and apex.
		{"apex exact", tls("example.com", 443, "example.com"), true, ReasonAllowed, "web", "example"},
		{"one level below wildcard", tls("a.example.com", 443, "a.example.com"), true, ReasonAllowed, "web", "example"},
		{"two levels below wildcard", tls("a.b.example.com", 443, "a.b.example.com"), true, ReasonAllowed, "web", "example"},
		{"wildcard does not match apex", tls("wild.test", 443, "wild.test"), false, ReasonNoRule, "", ""},
		{"wildcard matches below", tls("x.y.wild.test", 443, "x.y.wild.test"), true, ReasonAllowed, "web", "wild"},
		{"suffix without dot boundary", tls("xwild.test", 443, "xwild.test"), false, ReasonNoRule, "", ""},
		{"unknown host", tls("unknown.test", 443, "unknown.test"), false, ReasonNoRule, "", ""},

		// Case, trailing dot, IDN: rules and SNI are normalized.
		{"rule with case and trailing dot", tls("trailing.test", 443, "trailing.test"), true, ReasonAllowed, "web", "trailing"},
		{"SNI upper case and trailing dot", tls("example.com", 443, "EXAMPLE.Com."), true, ReasonAllowed, "web", "example"},
		{"IDN host in punycode", tls(host(t, "BÜCHER.example"), 443, "xn--bcher-kva.example"), true, ReasonAllowed, "web", "idn"},
		{"IDN SNI in its xn-- form", tls("xn--bcher-kva.example", 443, "XN--BCHER-KVA.example"), true, ReasonAllowed, "web", "idn"},
		// RFC 6066 §3: the SNI is ASCII; the server gets the bytes as sent.
		{"IDN SNI in Unicode never matches", tls("xn--bcher-kva.example", 443, "bücher.example"), false, ReasonSNIMismatch, "web", "idn"},

		// Ports.
		{"default port is 443 only", tls("example.com", 80, "example.com"), false, ReasonNoRule, "", ""},
		{"listed port", tls("ports.test", 80, "ports.test"), true, ReasonAllowed, "web", "ports"},
		{"range low end", tls("ports.test", 8000, "ports.test"), true, ReasonAllowed, "web", "ports"},
		{"range high end is denied by a later deny", tls("ports.test", 8080, "ports.test"), false, ReasonDeniedByRule, "denies", "alt-port"},
		{"range inside", tls("ports.test", 8079, "ports.test"), true, ReasonAllowed, "web", "ports"},
		{"outside range", tls("ports.test", 8081, "ports.test"), false, ReasonNoRule, "", ""},
		{"443 not default when ports set", tls("ports.test", 443, "ports.test"), false, ReasonNoRule, "", ""},

		// Deny precedence: the deny is in a later policy than the allow.
		{"deny in later policy wins (pending)", Request{Host: "legacy.enforce.dev", Port: 443}, false, ReasonDeniedByRule, "denies", "legacy"},
		{"deny in later policy wins (tls)", tls("legacy.enforce.dev", 443, "legacy.enforce.dev"), false, ReasonDeniedByRule, "denies", "legacy"},
		{"deny without ports matches every port", Request{Host: "legacy.enforce.dev", Port: 8443}, false, ReasonDeniedByRule, "denies", "legacy"},
		{"deny hosts checked against SNI (transparent)", Request{Addr: ip("203.0.113.5"), Port: 443, Hello: HelloTLS, SNI: "legacy.enforce.dev"}, false, ReasonDeniedByRule, "denies", "legacy"},
		{"deny hosts checked against SNI (fronting)", tls("example.com", 443, "legacy.enforce.dev"), false, ReasonDeniedByRule, "denies", "legacy"},
		{"deny by cidr", Request{Addr: ip("203.0.113.66"), Port: 443}, false, ReasonDeniedByRule, "denies", "net"},
		{"deny cidr holds for its NAT64 form", Request{Addr: ip("64:ff9b::cb00:7142"), Port: 8443}, false, ReasonDeniedByRule, "denies", "net"},
		{"deny cidr holds for its 6to4 form", Request{Addr: ip("2002:cb00:7142::1"), Port: 8443}, false, ReasonDeniedByRule, "denies", "net"},
		{"NAT64 form of an undenied address", Request{Addr: ip("64:ff9b::cb00:7143"), Port: 8443}, true, ReasonAllowed, "nets", "everything"},
		{"v4 allow cidr does not match the NAT64 form", Request{Addr: ip("64:ff9b::cb00:7105"), Port: 443, Hello: HelloTLS}, false, ReasonNoRule, "", ""},
		{"deny sni condition", tls("example.com", 443, "evil.test"), false, ReasonDeniedByRule, "denies", "fronting"},
		{"deny ja3 condition matches", Request{Host: "a.example.com", Port: 443, Hello: HelloTLS, SNI: "a.example.com", JA3: ja3Bad}, false, ReasonDeniedByRule, "denies", "bad-ja3"},
		{"deny ja3 condition not yet applied when pending", Request{Host: "a.example.com", Port: 443}, true, ReasonAllowed, "web", "example"},
		{"deny ja3 condition not met", tls("a.example.com", 443, "a.example.com"), true, ReasonAllowed, "web", "example"},

		// First allow wins, in configuration order.
		{"first policy wins over later one", tls("api.example.com", 443, "api.example.com"), true, ReasonAllowed, "web", "example"},
		{"first rule passes", tls("order.test", 443, "order.test"), true, ReasonAllowed, "order", "first"},
		{"first fails, second passes", Request{Host: "order.test", Port: 443, Hello: HelloTLS, SNI: "order.test", JA3: ja3Bad}, true, ReasonAllowed, "order", "second"},
		{"both fail: reason of the first", Request{Host: "order.test", Port: 443, Hello: HelloNotTLS}, false, ReasonNotTLS, "order", "first"},

		// CIDRs.
		{"v4 cidr", Request{Addr: ip("203.0.113.5"), Port: 443, Hello: HelloTLS}, true, ReasonAllowed, "nets", "v4"},
		{"v6 cidr", Request{Addr: ip("2001:db8::1"), Port: 443, Hello: HelloTLS}, true, ReasonAllowed, "nets", "v6"},
		{"IPv4-mapped addr is unmapped", Request{Addr: ip("::ffff:203.0.113.5"), Port: 443, Hello: HelloTLS}, true, ReasonAllowed, "nets", "v4"},
		{"v4 outside cidr", Request{Addr: ip("203.0.114.5"), Port: 443}, false, ReasonNoRule, "", ""},
		{"private addr granted by private cidr", Request{Addr: ip("10.1.2.3"), Port: 443}, true, ReasonAllowed, "nets", "internal"},
		{"private addr not granted by 0.0.0.0/0", Request{Addr: ip("10.2.0.1"), Port: 8443}, false, ReasonPrivateDestination, "nets", "everything"},
		{"metadata not granted by 0.0.0.0/0", Request{Addr: ip("169.254.169.254"), Port: 8443}, false, ReasonPrivateDestination, "nets", "everything"},
		{"mapped metadata not granted", Request{Addr: ip("::ffff:169.254.169.254"), Port: 8443}, false, ReasonPrivateDestination, "nets", "everything"},
		{"public addr allowed by 0.0.0.0/0", Request{Addr: ip("8.8.8.8"), Port: 8443}, true, ReasonAllowed, "nets", "everything"},
		{"public v6 allowed by ::/0", Request{Addr: ip("2606:4700::1"), Port: 8443}, true, ReasonAllowed, "nets", "everything"},

		// SNI rules.
		{"sni list", tls("region1.v2.argotunnel.com", 7844, "h2.cftunnel.com"), true, ReasonAllowed, "cloudflare-tunnel", "tunnel-http2"},
		{"sni with underscores", tls("region1.v2.argotunnel.com", 7844, "_v2-origintunneld._tcp.argotunnel.com"), true, ReasonAllowed, "cloudflare-tunnel", "tunnel-http2"},
		{"sni equal to host", tls("region2.v2.argotunnel.com", 7844, "region2.v2.argotunnel.com"), true, ReasonAllowed, "cloudflare-tunnel", "tunnel-http2"},
		{"sni list mismatch", tls("region1.v2.argotunnel.com", 7844, "other.test"), false, ReasonSNIMismatch, "cloudflare-tunnel", "tunnel-http2"},
		{"sni list missing", tls("region1.v2.argotunnel.com", 7844, ""), false, ReasonSNIMissing, "cloudflare-tunnel", "tunnel-http2"},
		{"transparent: addr + sni list", Request{Addr: ip("198.41.192.7"), Port: 7844, Hello: HelloTLS, SNI: "h2.cftunnel.com"}, true, ReasonAllowed, "cloudflare-tunnel", "tunnel-http2"},
		{"transparent: v6 addr + sni list", Request{Addr: ip("2606:4700:a0::7"), Port: 7844, Hello: HelloTLS, SNI: "cftunnel.com"}, true, ReasonAllowed, "cloudflare-tunnel", "tunnel-http2"},
		{"transparent: addr + wrong sni", Request{Addr: ip("198.41.192.7"), Port: 7844, Hello: HelloTLS, SNI: "example.com"}, false, ReasonSNIMismatch, "cloudflare-tunnel", "tunnel-http2"},
		{"CONNECT host vs different SNI", tls("example.com", 443, "other.example.com"), false, ReasonSNIMismatch, "web", "example"},
		{"empty SNI", tls("example.com", 443, ""), false, ReasonSNIMissing, "web", "example"},
		{"invalid SNI never matches", tls("example.com", 443, "exa mple.com"), false, ReasonSNIMismatch, "web", "example"},
		{"IP SNI never matches", tls("example.com", 443, "1.2.3.4"), false, ReasonSNIMismatch, "web", "example"},
		{"SNI that IDNA maps to the host never matches", tls("example.com", 443, "ｅｘａｍｐｌｅ.com"), false, ReasonSNIMismatch, "web", "example"},
		{"uppercase SNI with a trailing dot matches", tls("example.com", 443, "EXAMPLE.com."), true, ReasonAllowed, "web", "example"},
		{"transparent: hosts checked against SNI", Request{Addr: ip("192.0.2.9"), Port: 443, Hello: HelloTLS, SNI: "mixed.test"}, true, ReasonAllowed, "cloudflare-tunnel", "mixed"},
		{"transparent: hosts vs wrong SNI", Request{Addr: ip("192.0.2.9"), Port: 443, Hello: HelloTLS, SNI: "other.test"}, false, ReasonSNIMismatch, "cloudflare-tunnel", "mixed"},
		{"transparent: hosts, no SNI", Request{Addr: ip("192.0.2.9"), Port: 443, Hello: HelloTLS}, false, ReasonSNIMissing, "cloudflare-tunnel", "mixed"},
		{"cidrs-only rule accepts any SNI", Request{Addr: ip("203.0.113.5"), Port: 443, Hello: HelloTLS, SNI: "anything.test"}, true, ReasonAllowed, "nets", "v4"},

		// JA3 / JA4.
		{"ja3 match", tls("api.enforce.dev", 443, "api.enforce.dev"), true, ReasonAllowed, "chainguard-enforce", "enforce-api"},
		{"ja3 match, request upper case", Request{Host: "api.enforce.dev", Port: 443, Hello: HelloTLS, SNI: "api.enforce.dev", JA3: "3FED133DE60C35724739B913924B6C24"}, true, ReasonAllowed, "chainguard-enforce", "enforce-api"},
		{"ja3 mismatch", Request{Host: "api.enforce.dev", Port: 443, Hello: HelloTLS, SNI: "api.enforce.dev", JA3: ja3Bad}, false, ReasonJA3Mismatch, "chainguard-enforce", "enforce-api"},
		{"ja3 missing", Request{Host: "api.enforce.dev", Port: 443, Hello: HelloTLS, SNI: "api.enforce.dev"}, false, ReasonJA3Mismatch, "chainguard-enforce", "enforce-api"},
		{"ja4 match", tls("ja4.test", 443, "ja4.test"), true, ReasonAllowed, "chainguard-enforce", "ja4"},
		{"ja4 mismatch", Request{Host: "ja4.test", Port: 443, Hello: HelloTLS, SNI: "ja4.test", JA4: ja4Bad}, false, ReasonJA4Mismatch, "chainguard-enforce", "ja4"},

		// require_tls = false.
		{"plain TCP allowed by require_tls=false", Request{Host: "git.test", Port: 22, Hello: HelloNotTLS}, true, ReasonAllowed, "plain", "ssh"},
		{"TLS also allowed by require_tls=false", tls("git.test", 22, "git.test"), true, ReasonAllowed, "plain", "ssh"},
		{"plain TCP refused by default", Request{Host: "example.com", Port: 443, Hello: HelloNotTLS}, false, ReasonNotTLS, "web", "example"},

		// HelloHTTP.
		{"http: require_tls does not apply", Request{Host: "ports.test", Port: 80, Hello: HelloHTTP}, true, ReasonAllowed, "web", "ports"},
		{"http: ja3 rule cannot apply", Request{Host: "api.enforce.dev", Port: 443, Hello: HelloHTTP}, false, ReasonNotTLS, "chainguard-enforce", "enforce-api"},
		{"http: sni rule cannot apply", Request{Host: "region1.v2.argotunnel.com", Port: 7844, Hello: HelloHTTP}, false, ReasonNotTLS, "cloudflare-tunnel", "tunnel-http2"},

		// HelloPending: could a rule allow this?
		{"pending: ja3 rule tentatively allows", Request{Host: "api.enforce.dev", Port: 443}, true, ReasonAllowed, "chainguard-enforce", "enforce-api"},
		{"pending: sni rule tentatively allows", Request{Host: "region1.v2.argotunnel.com", Port: 7844}, true, ReasonAllowed, "cloudflare-tunnel", "tunnel-http2"},
		{"pending: nothing matches", Request{Host: "unknown.test", Port: 443}, false, ReasonNoRule, "", ""},
		{"pending: wrong port", Request{Host: "api.enforce.dev", Port: 80}, false, ReasonNoRule, "", ""},

		// Odd requests.
		{"unknown Hello fails closed", Request{Host: "example.com", Port: 443, Hello: Hello(99)}, false, ReasonNotTLS, "web", "example"},
		{"no host, no addr", Request{Port: 443, Hello: HelloTLS, SNI: "example.com"}, false, ReasonNoRule, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.req
			d := p.Decide(&r)
			if d.Allow != tt.allow || d.Reason != tt.reason || d.Policy != tt.policy || d.Rule != tt.rule {
				t.Errorf("Decide(%+v) = {Allow:%v Reason:%s Policy:%q Rule:%q}, want {Allow:%v Reason:%s Policy:%q Rule:%q}",
					tt.req, d.Allow, d.Reason, d.Policy, d.Rule, tt.allow, tt.reason, tt.policy, tt.rule)
			}
		})
	}
}

func TestDecideNil(t *testing.T) {
	var p *Policy
	if d := p.Decide(&Request{Host: "example.com", Port: 443}); d.Allow || d.Reason != ReasonNoRule {
		t.Errorf("nil Policy: Decide = %+v, want deny no_rule", d)
	}
	p = mustParse(t, decideConfig).Policy
	if d := p.Decide(nil); d.Allow || d.Reason != ReasonBadRequest {
		t.Errorf("nil Request: Decide = %+v, want deny bad_request", d)
	}
	var zero Policy
	if d := zero.Decide(&Request{Host: "example.com", Port: 443}); d.Allow || d.Reason != ReasonNoRule {
		t.Errorf("zero Policy: Decide = %+v, want deny no_rule", d)
	}
}

func TestAddrAllowed(t *testing.T) {
	p := mustParse(t, decideConfig).Policy
	ip := netip.MustParseAddr
	byName := p.Decide(&Request{Host: "example.com", Port: 443})
	internal := p.Decide(&Request{Addr: ip("10.1.2.3"), Port: 443})
	everything := p.Decide(&Request{Addr: ip("8.8.8.8"), Port: 8443})
	denied := p.Decide(&Request{Host: "legacy.enforce.dev", Port: 443})
	if !byName.Allow || !internal.Allow || !everything.Allow || denied.Allow {
		t.Fatalf("setup decisions wrong: %+v %+v %+v %+v", byName, internal, everything, denied)
	}

	open := mustParse(t, `
server { allow_private_destinations = true }
policy "p" {
  allow "r" { hosts = ["example.com"] }
}`).Policy
	openD := open.Decide(&Request{Host: "example.com", Port: 443})

	// An audit-mode deny rule listing the metadata address lets the
	// connection through (would_deny), but does not open that address.
	audit := mustParse(t, `
policy "p" {
  mode = "audit"
  deny "metadata" { cidrs = ["169.254.169.254/32"] }
}`).Policy
	auditD := audit.Decide(&Request{Addr: ip("169.254.169.254"), Port: 80, Hello: HelloHTTP})
	if !auditD.Allow || !auditD.WouldDeny || auditD.Rule != "metadata" {
		t.Fatalf("setup: audited deny decision %+v", auditD)
	}
	// But an allow rule that opens an address still opens it when an
	// audit-mode deny rule decides: audit mode lets through what the deny
	// would refuse.
	auditAllow := mustParse(t, `
policy "p" {
  mode = "audit"
  allow "db" {
    cidrs       = ["10.0.0.0/8"]
    ports       = [5432]
    require_tls = false
  }
  deny "legacy-db" { cidrs = ["10.1.2.3/32"] }
}`).Policy
	auditAllowD := auditAllow.Decide(&Request{Addr: ip("10.1.2.3"), Port: 5432, Hello: HelloNotTLS})
	if !auditAllowD.Allow || !auditAllowD.WouldDeny || auditAllowD.Rule != "legacy-db" {
		t.Fatalf("setup: audited deny over an allow %+v", auditAllowD)
	}

	tests := []struct {
		name string
		d    Decision
		a    netip.Addr
		want bool
	}{
		{"public addr under a name rule", byName, ip("93.184.216.34"), true},
		{"public v6 addr", byName, ip("2606:4700::1"), true},
		{"private refused", byName, ip("10.0.0.1"), false},
		{"loopback refused", byName, ip("127.0.0.1"), false},
		{"metadata refused", byName, ip("169.254.169.254"), false},
		{"mapped private refused", byName, ip("::ffff:10.0.0.1"), false},
		{"NAT64 metadata refused", byName, ip("64:ff9b::a9fe:a9fe"), false},
		{"ULA refused", byName, ip("fd00:ec2::254"), false},
		{"allowed by the rule's cidr", internal, ip("10.1.200.1"), true},
		{"mapped, allowed by the rule's cidr", internal, ip("::ffff:10.1.200.1"), true},
		{"private outside the rule's cidr", internal, ip("10.2.0.1"), false},
		{"0.0.0.0/0 does not grant private", everything, ip("10.2.0.1"), false},
		{"deny decision never dials", denied, ip("93.184.216.34"), false},
		{"invalid addr", byName, netip.Addr{}, false},
		{"an audited deny rule's cidr does not grant private", auditD, ip("169.254.169.254"), false},
		{"under an audited deny, the allow rule's cidr grants", auditAllowD, ip("10.1.2.3"), true},
		{"allow_private_destinations", openD, ip("10.0.0.1"), true},
		{"allow_private_destinations, metadata", openD, ip("169.254.169.254"), true},
		{"zero decision", Decision{}, ip("93.184.216.34"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.d.AddrAllowed(tt.a); got != tt.want {
				t.Errorf("AddrAllowed(%s/%s, %s) = %v, want %v", tt.d.Policy, tt.d.Rule, tt.a, got, tt.want)
			}
		})
	}

	// With allow_private_destinations, Decide does not refuse private
	// addresses either.
	if d := open.Decide(&Request{Addr: ip("10.0.0.1"), Port: 443}); d.Allow || d.Reason != ReasonNoRule {
		t.Errorf("open policy, unmatched private addr: %+v, want no_rule", d)
	}
	openCIDR := mustParse(t, `
server { allow_private_destinations = true }
policy "p" {
  allow "all" {
    cidrs = ["0.0.0.0/0"]
  }
}`).Policy
	if d := openCIDR.Decide(&Request{Addr: ip("10.0.0.1"), Port: 443}); !d.Allow {
		t.Errorf("allow_private_destinations with 0.0.0.0/0: %+v, want allowed", d)
	}
}

func TestPolicyAccessors(t *testing.T) {
	p := mustParse(t, decideConfig).Policy
	if got, want := p.Rules(), 22; got != want {
		t.Errorf("Rules() = %d, want %d", got, want)
	}
	names := p.Names()
	want := []string{"web", "later", "cloudflare-tunnel", "chainguard-enforce", "plain", "order", "nets", "denies"}
	if len(names) != len(want) {
		t.Fatalf("Names() = %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("Names() = %v, want %v", names, want)
		}
	}
	names[0] = "changed"
	if p.Names()[0] != "web" {
		t.Error("Names() returned the policy's own slice")
	}
	var nilP *Policy
	if nilP.Rules() != 0 || nilP.Names() != nil || nilP.AllowPrivateDestinations() {
		t.Error("nil Policy accessors should return zero values")
	}
}

func TestReasonsUnique(t *testing.T) {
	seen := map[Reason]bool{}
	for _, r := range Reasons() {
		if r == "" || seen[r] {
			t.Errorf("reason %q empty or duplicated", r)
		}
		seen[r] = true
	}
	if len(seen) != 21 {
		t.Errorf("Reasons() has %d entries, want 21", len(seen))
	}
	for _, h := range []Hello{HelloPending, HelloTLS, HelloNotTLS, HelloHTTP, 42} {
		if h.String() == "" {
			t.Errorf("Hello(%d).String() is empty", h)
		}
	}
}

func TestDestinationVerificationHelpers(t *testing.T) {
	cfg := mustParse(t, `
server {
  verify_destination = "refuse"
}
policy "p" {
  allow "cf" {
    hosts = ["region1.v2.argotunnel.com", "*.cftunnel.com"]
    cidrs = ["198.41.192.0/24"]
    sni   = ["h2.cftunnel.com"]
    ports = [7844]
    verify_destination = "redirect"
  }
  allow "web" {
    hosts = ["a.test"]
  }
  allow "addr-only" {
    cidrs = ["192.0.2.0/24"]
    sni   = ["only.test"]
  }
}
`)
	p := cfg.Policy
	cf := p.Decide(&Request{Addr: netip.MustParseAddr("198.41.192.7"), Port: 7844, Hello: HelloTLS, SNI: "h2.cftunnel.com"})
	if !cf.Allow || cf.Rule != "cf" {
		t.Fatalf("cf decision = %+v", cf)
	}
	if !cf.RuleHasCIDR(netip.MustParseAddr("198.41.192.7")) || !cf.RuleHasCIDR(netip.MustParseAddr("::ffff:198.41.192.8")) {
		t.Error("RuleHasCIDR false for an address inside the rule's cidrs")
	}
	if cf.RuleHasCIDR(netip.MustParseAddr("198.41.193.1")) {
		t.Error("RuleHasCIDR true for an address outside the rule's cidrs")
	}
	if got := cf.RuleHosts(); !reflect.DeepEqual(got, []string{"region1.v2.argotunnel.com"}) {
		t.Errorf("RuleHosts = %q, want only the exact host", got)
	}
	if got := cf.VerifyDestination(); got != VerifyRedirect {
		t.Errorf("rule VerifyDestination = %q, want redirect", got)
	}
	web := p.Decide(&Request{Addr: netip.MustParseAddr("203.0.113.1"), Port: 443, Hello: HelloTLS, SNI: "a.test"})
	if web.Allow {
		t.Fatalf("an address-only request matched hosts rule: %+v", web)
	}
	tr := p.Decide(&Request{Addr: netip.MustParseAddr("203.0.113.1"), Port: 443, Hello: HelloTLS, SNI: "A.test", Transparent: true})
	if !tr.Allow || tr.Rule != "web" {
		t.Errorf("transparent request with an allowed SNI = %+v, want allow by web", tr)
	}
	tr = p.Decide(&Request{Addr: netip.MustParseAddr("203.0.113.1"), Port: 7844, Hello: HelloTLS, SNI: "h2.cftunnel.com", Transparent: true})
	if !tr.Allow || tr.Rule != "cf" {
		t.Errorf("transparent request outside cidrs with a listed sni of a rule with hosts = %+v, want allow by cf (verified later)", tr)
	}
	tr = p.Decide(&Request{Addr: netip.MustParseAddr("203.0.113.1"), Port: 443, Hello: HelloTLS, SNI: "only.test", Transparent: true})
	if tr.Allow {
		t.Errorf("a cidrs-only rule's sni list matched outside its cidrs: %+v", tr)
	}
	tr = p.Decide(&Request{Addr: netip.MustParseAddr("203.0.113.1"), Port: 443, Hello: HelloNotTLS, Transparent: true})
	if tr.Allow {
		t.Errorf("transparent non-TLS request = %+v, want deny", tr)
	}
	web = p.Decide(&Request{Host: "a.test", Port: 443, Hello: HelloTLS, SNI: "a.test"})
	if got := web.VerifyDestination(); got != VerifyRefuse {
		t.Errorf("server default VerifyDestination = %q, want refuse", got)
	}
	if web.RuleHasCIDR(netip.MustParseAddr("198.41.192.7")) || (&Decision{}).RuleHasCIDR(netip.MustParseAddr("198.41.192.7")) {
		t.Error("RuleHasCIDR true for a rule without cidrs / no rule")
	}
	if (&Decision{}).VerifyDestination() != VerifyRefuse {
		t.Error("a zero decision's VerifyDestination is not refuse")
	}
}

// TestDecideProtocols: a rule applies to the transports its protocols list
// (both by default); the Cloudflare Tunnel shape opens 7844 to the region
// addresses over QUIC for quic.cftunnel.com and over TCP for h2.cftunnel.com.
func TestDecideProtocols(t *testing.T) {
	p := mustParse(t, `
policy "tunnel" {
  allow "http2" {
    cidrs     = ["198.41.192.0/24"]
    sni       = ["h2.cftunnel.com"]
    ports     = [7844]
    protocols = ["tcp"]
  }
  allow "quic" {
    cidrs     = ["198.41.192.0/24"]
    sni       = ["quic.cftunnel.com"]
    ports     = [7844]
    protocols = ["quic"]
  }
  allow "both" {
    hosts = ["both.test"]
  }
  allow "raw-udp" {
    cidrs       = ["203.0.113.0/24"]
    ports       = [443]
    require_tls = false
    protocols   = ["quic"]
  }
  deny "no-tcp-to-bad" {
    hosts     = ["bad.both.test"]
    protocols = ["tcp"]
  }
}
policy "more" {
  allow "bad-over-quic" {
    hosts = ["bad.both.test"]
  }
}
`).Policy
	region := netip.MustParseAddr("198.41.192.7")
	tests := []struct {
		name   string
		r      Request
		allow  bool
		reason Reason
		rule   string
	}{
		{"h2 over tcp", Request{Addr: region, Port: 7844, Hello: HelloTLS, SNI: "h2.cftunnel.com", Transparent: true}, true, ReasonAllowed, "http2"},
		{"quic sni over quic", Request{Addr: region, Port: 7844, Hello: HelloTLS, SNI: "quic.cftunnel.com", Protocol: ProtocolQUIC, Transparent: true}, true, ReasonAllowed, "quic"},
		{"quic sni over tcp", Request{Addr: region, Port: 7844, Hello: HelloTLS, SNI: "quic.cftunnel.com", Transparent: true}, false, ReasonSNIMismatch, "http2"},
		{"h2 sni over quic", Request{Addr: region, Port: 7844, Hello: HelloTLS, SNI: "h2.cftunnel.com", Protocol: ProtocolQUIC, Transparent: true}, false, ReasonSNIMismatch, "quic"},
		{"default both: tcp", Request{Host: "both.test", Port: 443, Hello: HelloTLS, SNI: "both.test"}, true, ReasonAllowed, "both"},
		{"default both: quic", Request{Addr: netip.MustParseAddr("192.0.2.1"), Port: 443, Hello: HelloTLS, SNI: "both.test", Protocol: ProtocolQUIC, Transparent: true}, true, ReasonAllowed, "both"},
		{"raw udp allowed", Request{Addr: netip.MustParseAddr("203.0.113.9"), Port: 443, Hello: HelloNotTLS, Protocol: ProtocolQUIC, Transparent: true}, true, ReasonAllowed, "raw-udp"},
		{"raw udp other port", Request{Addr: netip.MustParseAddr("203.0.113.9"), Port: 7844, Hello: HelloNotTLS, Protocol: ProtocolQUIC, Transparent: true}, false, ReasonNoRule, ""},
		{"raw udp to tls rule", Request{Addr: region, Port: 7844, Hello: HelloNotTLS, Protocol: ProtocolQUIC, Transparent: true}, false, ReasonNotTLS, "quic"},
		{"raw tcp not opened by a quic rule", Request{Addr: netip.MustParseAddr("203.0.113.9"), Port: 443, Hello: HelloNotTLS, Transparent: true}, false, ReasonNoRule, ""},
		{"deny over tcp only: tcp", Request{Host: "bad.both.test", Port: 443, Hello: HelloTLS, SNI: "bad.both.test"}, false, ReasonDeniedByRule, "no-tcp-to-bad"},
		{"deny over tcp only: quic", Request{Addr: netip.MustParseAddr("192.0.2.1"), Port: 443, Hello: HelloTLS, SNI: "bad.both.test", Protocol: ProtocolQUIC, Transparent: true}, true, ReasonAllowed, "bad-over-quic"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Decide(&tt.r)
			if d.Allow != tt.allow || d.Reason != tt.reason || d.Rule != tt.rule {
				t.Errorf("Decide = %+v, want allow=%v reason=%s rule=%q", d, tt.allow, tt.reason, tt.rule)
			}
		})
	}
}

// TestDenyRuleCatchesNonASCIISNI: an SNI that is not ASCII matches no
// allow rule, but a deny rule still refuses a name IDNA maps to one it
// lists: under an allow that accepts any SNI (cidrs only), the fullwidth
// form of a denied name must not get through where the ASCII form is
// refused.
func TestDenyRuleCatchesNonASCIISNI(t *testing.T) {
	p := mustParse(t, `
policy "office" {
  allow "net" { cidrs = ["192.0.2.0/24"] }
  deny "no-evil-host" { hosts = ["evil.test"] }
  deny "no-evil-sni" {
    cidrs = ["192.0.2.0/24"]
    sni   = ["*.bad.test"]
  }
}
`).Policy
	a := netip.MustParseAddr("192.0.2.5")
	for _, sni := range []string{"evil.test", "ｅｖｉｌ.test", "x.bad.test", "x.ｂａｄ.test"} {
		for _, transparent := range []bool{false, true} {
			r := Request{Addr: a, Port: 443, Hello: HelloTLS, SNI: sni, Transparent: transparent}
			if d := p.Decide(&r); d.Allow || d.Reason != ReasonDeniedByRule {
				t.Errorf("SNI %q (transparent %v): %s, want denied_by_rule", sni, transparent, DescribeDecision(d))
			}
		}
	}
}
