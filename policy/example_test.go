package policy_test

import (
	"fmt"
	"net/netip"

	"github.com/egressd/egressd/policy"
)

func ExamplePolicy_Decide() {
	src := `
policy "chainguard-images" {
  allow "registry" {
    hosts = ["cgr.dev", "*.r2.cloudflarestorage.com"]
  }
}
policy "cloudflare-tunnel" {
  allow "tunnel-http2" {
    cidrs = ["198.41.192.0/24"]
    sni   = ["h2.cftunnel.com"]
    ports = [7844]
  }
}
`
	cfg, diags := policy.Parse([]policy.File{{Name: "egressd.hcl", Src: []byte(src)}})
	if diags.HasErrors() {
		fmt.Print(policy.FormatDiagnostics(diags))
		return
	}
	host, _ := policy.NormalizeHost("CGR.dev.")

	// CONNECT pre-check, before the ClientHello is read.
	d := cfg.Policy.Decide(&policy.Request{Host: host, Port: 443, Hello: policy.HelloPending})
	fmt.Println(d.Allow, d.Reason, d.Policy, d.Rule)

	// The ClientHello names another server.
	d = cfg.Policy.Decide(&policy.Request{Host: host, Port: 443, Hello: policy.HelloTLS, SNI: "evil.example"})
	fmt.Println(d.Allow, d.Reason)

	// A transparent connection: only the original address and the SNI.
	d = cfg.Policy.Decide(&policy.Request{
		Addr: netip.MustParseAddr("198.41.192.7"), Port: 7844,
		Hello: policy.HelloTLS, SNI: "h2.cftunnel.com",
	})
	fmt.Println(d.Allow, d.Reason, d.Policy, d.Rule)

	// Dialing: the name resolved to a private address.
	fmt.Println(d.AddrAllowed(netip.MustParseAddr("169.254.169.254")))
	// Output:
	// true allowed chainguard-images registry
	// false sni_mismatch
	// true allowed cloudflare-tunnel tunnel-http2
	// false
}

func ExampleFormatDiagnostics() {
	src := `policy "p" {
  allow "r" {
    hosts = ["*.com", "a.*.example"]
    ports = ["9-3"]
  }
}
`
	_, diags := policy.Parse([]policy.File{{Name: "egressd.hcl", Src: []byte(src)}})
	fmt.Print(policy.FormatDiagnostics(diags))
	// Output:
	// egressd.hcl:3:14: error: Wildcard over a public suffix: "*.com" matches every name under "com", which is a public suffix: names there belong to unrelated owners. Name the domain you mean, for example "*.example.com", or set allow_public_suffix = true in this rule if this is really intended.
	// egressd.hcl:3:23: error: Invalid wildcard: "a.*.example" in hosts: "*" may only be the whole first label: "*.example.com" matches every name below example.com (at any depth, but not example.com itself), and "*" alone matches every name. Write for example hosts = ["*.example.com"].
	// egressd.hcl:4:14: error: Invalid port: port range "9-3" is backwards (low-high); write "3-9". Ports are numbers from 1 to 65535 or "lo-hi" ranges, for example ports = [443, "8000-8080"].
}
