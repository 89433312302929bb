package configs_test

import (
	"crypto/md5"
	"encoding/hex"
	"io/fs"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/hashicorp/hcl/v2"

	"github.com/egressd/egressd/configs"
	"github.com/egressd/egressd/policy"
)

// The JA3 the Chainguard seed gives for *.enforce.dev client traffic
// ("Enforce JA3 Fingerprints"), as the full string and as its MD5 hash.
const (
	enforceJA3String = "771,49195-49199-49196-49200-52393-52392-49161-49171-49162-49172-156-157-47-53-49170-10-4865-4866-4867,0-5-10-11-13-65281-16-18-43-51,29-23-24-25,0"
	enforceJA3       = "3fed133de60c35724739b913924b6c24"
	otherJA3         = "e7d705a3286e19ea42f587b344ee6865"
)

// presets maps each preset file to the policies it must define, in order.
var presets = map[string][]string{
	"chainguard.hcl":        {"chainguard-images", "chainguard-enforce"},
	"cloudflare-tunnel.hcl": {"cloudflare-tunnel", "cloudflare-tunnel-optional"},
	"replicated.hcl":        {"replicated"},
}

// presetTests maps each preset's test file (test blocks, run by egressd
// test) to the least number of tests it must hold.
var presetTests = map[string]int{
	"chainguard.tests.hcl":        38,
	"cloudflare-tunnel.tests.hcl": 67,
	"replicated.tests.hcl":        29,
}

// requireClean fails the test on any diagnostic, warning or error.
func requireClean(t *testing.T, what string, cfg *policy.Config, diags hcl.Diagnostics) {
	t.Helper()
	if len(diags) > 0 {
		t.Fatalf("%s: want no diagnostics, got:\n%s", what, policy.FormatDiagnostics(diags))
	}
	if cfg == nil || cfg.Policy == nil {
		t.Fatalf("%s: no compiled policy", what)
	}
}

func loadDefault(t *testing.T) *policy.Config {
	t.Helper()
	cfg, diags := policy.LoadFS(configs.FS, ".")
	requireClean(t, "embedded default", cfg, diags)
	return cfg
}

func TestEmbeddedFilesAreThePresets(t *testing.T) {
	got, err := fs.Glob(configs.FS, "*")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for name := range presets {
		want = append(want, name)
	}
	for name := range presetTests {
		want = append(want, name)
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("embedded files = %q, want %q (a new preset needs entries in this test)", got, want)
	}
}

// TestPresetTestsPass runs every test block shipped with the presets, as
// egressd test does on the embedded default, and requires each preset's
// test file to hold at least its share of them.
func TestPresetTestsPass(t *testing.T) {
	cfg := loadDefault(t)
	results := cfg.RunTests()
	perFile := map[string]int{}
	for _, r := range results {
		perFile[r.Test.Range.Filename]++
		if !r.OK {
			t.Errorf("%s:%d: test %q: %s", r.Test.Range.Filename, r.Test.Range.Start.Line, r.Test.Name, r.Message)
		}
	}
	for name, least := range presetTests {
		if perFile[name] < least {
			t.Errorf("%s holds %d tests, want at least %d", name, perFile[name], least)
		}
	}
	if len(perFile) != len(presetTests) {
		t.Errorf("tests come from %v, want only the files of presetTests", perFile)
	}
	// Each preset's tests name only its own policies, so a preset and its
	// tests load (and pass) without the others.
	for name := range presets {
		tests := strings.TrimSuffix(name, ".hcl") + ".tests.hcl"
		m := fstest.MapFS{}
		for _, f := range []string{name, tests} {
			src, err := fs.ReadFile(configs.FS, f)
			if err != nil {
				t.Fatal(err)
			}
			m[f] = &fstest.MapFile{Data: src}
		}
		cfg, diags := policy.LoadFS(m, ".")
		requireClean(t, name+" with its tests", cfg, diags)
		for _, r := range cfg.RunTests() {
			if !r.OK {
				t.Errorf("%s alone: test %q: %s", name, r.Test.Name, r.Message)
			}
		}
	}
}

func TestDefaultConfigLoadsCleanly(t *testing.T) {
	cfg := loadDefault(t)

	// LoadFS reads files in name order; the policies follow file order.
	var want []string
	for _, name := range []string{"chainguard.hcl", "cloudflare-tunnel.hcl", "replicated.hcl"} {
		want = append(want, presets[name]...)
	}
	if got := cfg.Policy.Names(); !slices.Equal(got, want) {
		t.Errorf("policies = %q, want %q", got, want)
	}

	// The presets hold policy blocks only: everything else is the built-in
	// default.
	if cfg.Server.HTTPListen != policy.DefaultHTTPListen || cfg.Server.AllowPrivateDestinations {
		t.Errorf("server = %+v, want the built-in defaults", cfg.Server)
	}
	if len(cfg.Resolver.Servers) != 0 {
		t.Errorf("resolver servers = %q, want none (system resolver)", cfg.Resolver.Servers)
	}
	if cfg.Log.Format != policy.DefaultLogFormat || cfg.Log.Output != policy.DefaultLogOutput {
		t.Errorf("log = %+v, want the built-in defaults", cfg.Log)
	}
}

func TestEachPresetLoadsAlone(t *testing.T) {
	for name, policies := range presets {
		t.Run(name, func(t *testing.T) {
			cfg, diags := policy.LoadFS(configs.FS, name)
			requireClean(t, name+" via LoadFS", cfg, diags)
			if got := cfg.Policy.Names(); !slices.Equal(got, policies) {
				t.Errorf("policies = %q, want %q", got, policies)
			}

			src, err := fs.ReadFile(configs.FS, name)
			if err != nil {
				t.Fatal(err)
			}
			cfg, diags = policy.Parse([]policy.File{{Name: name, Src: src}})
			requireClean(t, name+" via Parse", cfg, diags)
		})
	}
}

// The seed's JA3 hash must be the MD5 of its full string: a check that the
// fingerprint was copied correctly.
func TestEnforceJA3MatchesFullString(t *testing.T) {
	sum := md5.Sum([]byte(enforceJA3String))
	if got := hex.EncodeToString(sum[:]); got != enforceJA3 {
		t.Fatalf("md5(full string) = %s, want %s", got, enforceJA3)
	}
}

// Request builders.

// tlsTo is a CONNECT to host:port whose ClientHello carries sni.
func tlsTo(host string, port uint16, sni string) policy.Request {
	return policy.Request{Host: host, Port: port, Hello: policy.HelloTLS, SNI: sni}
}

// https is a CONNECT to host:port with SNI = host, no fingerprint pinned.
func https(host string, port uint16) policy.Request {
	return tlsTo(host, port, host)
}

// withJA3 sets the ClientHello's JA3.
func withJA3(r policy.Request, ja3 string) policy.Request {
	r.JA3 = ja3
	return r
}

// toAddr is an IP-literal CONNECT or a transparent connection to addr:port.
func toAddr(addr string, port uint16, sni string) policy.Request {
	return policy.Request{Addr: netip.MustParseAddr(addr), Port: port, Hello: policy.HelloTLS, SNI: sni}
}

// quicTo is a flow on the QUIC gateway to addr:port whose Initial carried
// a ClientHello with sni.
func quicTo(addr string, port uint16, sni string) policy.Request {
	return policy.Request{Addr: netip.MustParseAddr(addr), Port: port, Hello: policy.HelloTLS, SNI: sni,
		Protocol: policy.ProtocolQUIC, Transparent: true}
}

func mustNormalize(t *testing.T, host string) string {
	t.Helper()
	n, err := policy.NormalizeHost(host)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

type verdict struct {
	name   string
	req    policy.Request
	allow  bool
	reason policy.Reason
	policy string // deciding policy; checked when set
	rule   string // deciding rule; checked when set
}

func allowed(name string, req policy.Request, pol, rule string) verdict {
	return verdict{name: name, req: req, allow: true, reason: policy.ReasonAllowed, policy: pol, rule: rule}
}

func denied(name string, req policy.Request, reason policy.Reason) verdict {
	return verdict{name: name, req: req, reason: reason}
}

func checkVerdicts(t *testing.T, p *policy.Policy, cases []verdict) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := c.req
			d := p.Decide(&req)
			if d.Allow != c.allow || d.Reason != c.reason {
				t.Fatalf("Decide(%+v) = allow=%v reason=%s (policy %q rule %q), want allow=%v reason=%s",
					c.req, d.Allow, d.Reason, d.Policy, d.Rule, c.allow, c.reason)
			}
			if c.allow && (d.Policy != c.policy || d.Rule != c.rule) {
				t.Fatalf("allowed by %s/%s, want %s/%s", d.Policy, d.Rule, c.policy, c.rule)
			}
			if !c.allow && c.policy != "" && (d.Policy != c.policy || d.Rule != c.rule) {
				t.Fatalf("denied by %s/%s, want %s/%s", d.Policy, d.Rule, c.policy, c.rule)
			}
			if c.allow {
				// No preset grants a private address: a name that
				// resolves to one is refused.
				for _, a := range []string{"127.0.0.1", "10.1.2.3", "169.254.169.254", "fd00:ec2::254", "::ffff:192.168.1.1"} {
					if d.AddrAllowed(netip.MustParseAddr(a)) {
						t.Errorf("AddrAllowed(%s) = true, want false", a)
					}
				}
			}
		})
	}
}

func TestChainguard(t *testing.T) {
	p := loadDefault(t).Policy
	const (
		images  = "chainguard-images"
		enforce = "chainguard-enforce"
	)
	checkVerdicts(t, p, []verdict{
		// "Images Hosts" table.
		allowed("cgr.dev", https("cgr.dev", 443), images, "registry"),
		allowed("enforce.dev", https("enforce.dev", 443), images, "registry"),
		allowed("packages.wolfi.dev", https("packages.wolfi.dev", 443), images, "registry"),
		// enforce.dev (the apex) is registry auth for any client: no JA3.
		allowed("enforce.dev any JA3", withJA3(https("enforce.dev", 443), otherJA3), images, "registry"),

		// "Images Third-party Hosts" table.
		allowed("ghcr.io", https("ghcr.io", 443), images, "third-party"),
		allowed("r2 wildcard depth 1", https("abc123.r2.cloudflarestorage.com", 443), images, "third-party"),
		allowed("r2 wildcard depth 2", https("a.b.r2.cloudflarestorage.com", 443), images, "third-party"),
		allowed("r2 single host", https("9236a389bd48b98df91adc1bc924620.r2.cloudflarestorage.com", 443), images, "third-party"),
		allowed("chainguardhelp.zendesk.com", https("chainguardhelp.zendesk.com", 443), images, "third-party"),
		denied("r2 apex", https("r2.cloudflarestorage.com", 443), policy.ReasonNoRule),
		denied("rc typo not honoured", https("x.rc.cloudflarestorage.com", 443), policy.ReasonNoRule),

		// "Enforce Chainguard Hosts" + "Enforce JA3 Fingerprints".
		allowed("enforce api seed JA3", withJA3(https("x.enforce.dev", 443), enforceJA3), enforce, "enforce-api"),
		allowed("enforce api depth 2", withJA3(https("a.b.enforce.dev", 443), enforceJA3), enforce, "enforce-api"),
		{name: "enforce api other JA3", req: withJA3(https("x.enforce.dev", 443), otherJA3),
			reason: policy.ReasonJA3Mismatch, policy: enforce, rule: "enforce-api"},
		{name: "enforce api no JA3", req: https("x.enforce.dev", 443),
			reason: policy.ReasonJA3Mismatch, policy: enforce, rule: "enforce-api"},
		denied("enforce api port 80", withJA3(https("x.enforce.dev", 80), enforceJA3), policy.ReasonNoRule),

		// "Enforce Third-party Hosts" table.
		allowed("auth0 tenant", https("chainguard-cd-nvt30yluzzsmvk7t.edge.tenants.us.auth0.com", 443), enforce, "enforce-third-party"),
		allowed("googlecode.l.googleusercontent.com", https("googlecode.l.googleusercontent.com", 443), enforce, "enforce-third-party"),
		allowed("raw.githubusercontent.com", https("raw.githubusercontent.com", 443), enforce, "enforce-third-party"),
		allowed("storage.googleapis.com", https("storage.googleapis.com", 443), enforce, "enforce-third-party"),

		// Everything else.
		denied("cgr.dev:80", https("cgr.dev", 80), policy.ReasonNoRule),
		denied("example.com", https("example.com", 443), policy.ReasonNoRule),
		denied("www.cgr.dev", https("www.cgr.dev", 443), policy.ReasonNoRule),
		denied("cgr.dev fronted", tlsTo("cgr.dev", 443, "evil.example"), policy.ReasonSNIMismatch),
		denied("cgr.dev no SNI", tlsTo("cgr.dev", 443, ""), policy.ReasonSNIMissing),
		denied("cgr.dev not TLS", policy.Request{Host: "cgr.dev", Port: 443, Hello: policy.HelloNotTLS}, policy.ReasonNotTLS),
		denied("ghcr.io IP literal", toAddr("140.82.112.33", 443, "ghcr.io"), policy.ReasonNoRule),
		denied("plain http to cgr.dev:80", policy.Request{Host: "cgr.dev", Port: 80, Hello: policy.HelloHTTP}, policy.ReasonNoRule),
		{name: "plain http to enforce api", req: policy.Request{Host: "x.enforce.dev", Port: 443, Hello: policy.HelloHTTP},
			reason: policy.ReasonNotTLS, policy: enforce, rule: "enforce-api"},

		// The CONNECT pre-check, before the ClientHello is read.
		allowed("cgr.dev pending", policy.Request{Host: "cgr.dev", Port: 443}, images, "registry"),
		allowed("enforce api pending", policy.Request{Host: "x.enforce.dev", Port: 443}, enforce, "enforce-api"),
		denied("example.com pending", policy.Request{Host: "example.com", Port: 443}, policy.ReasonNoRule),

		// Names are compared in normalized form (case, trailing dot).
		allowed("CGR.DEV.", https(mustNormalize(t, "CGR.DEV."), 443), images, "registry"),

		// Every table says 443 "HTTPS", no UDP: TCP only, never QUIC.
		denied("cgr.dev over QUIC", quicTo("104.16.1.1", 443, "cgr.dev"), policy.ReasonNoRule),
		denied("r2 over QUIC", quicTo("104.16.1.1", 443, "abc123.r2.cloudflarestorage.com"), policy.ReasonNoRule),
		denied("enforce api over QUIC", withJA3(quicTo("104.16.1.1", 443, "x.enforce.dev"), enforceJA3), policy.ReasonNoRule),
		denied("storage.googleapis.com over QUIC", quicTo("104.16.1.1", 443, "storage.googleapis.com"), policy.ReasonNoRule),
	})
}

func TestReplicated(t *testing.T) {
	p := loadDefault(t).Policy
	const pol = "replicated"
	cases := []verdict{
		// "Initial Installation of Replicated".
		allowed("get.replicated.com", https("get.replicated.com", 443), pol, "install-script"),
		// "Application Installation and Upgrade" and "Ongoing Access".
		allowed("api.replicated.com", https("api.replicated.com", 443), pol, "api"),
		allowed("registry.replicated.com", https("registry.replicated.com", 443), pol, "registry"),
	}
	// Row "quay.io": registry, blob CDN, S3 blob storage.
	for _, h := range []string{"quay.io", "cdn.quay.io", "cdn01.quay.io", "cdn02.quay.io", "cdn03.quay.io", "quayio-production-s3.s3.amazonaws.com"} {
		cases = append(cases, allowed(h, https(h, 443), pol, "quay"))
	}
	// Row "Docker Hub": registry, token service, blob CDN, legacy index.
	for _, h := range []string{"registry-1.docker.io", "auth.docker.io", "production.cloudflare.docker.com", "index.docker.io"} {
		cases = append(cases, allowed(h, https(h, 443), pol, "docker-hub"))
	}
	// "Port Requirements" is inbound/internal: not egress, no rule.
	for _, port := range []uint16{8800, 9870, 9875, 9880} {
		for _, h := range []string{"get.replicated.com", "api.replicated.com", "registry.replicated.com"} {
			cases = append(cases, denied(h+" port "+strconv.Itoa(int(port)), https(h, port), policy.ReasonNoRule))
		}
	}
	cases = append(cases,
		denied("replicated.com apex", https("replicated.com", 443), policy.ReasonNoRule),
		denied("other s3 bucket", https("evil.s3.amazonaws.com", 443), policy.ReasonNoRule),
		denied("docker.io apex", https("docker.io", 443), policy.ReasonNoRule),
		denied("api.replicated.com:80", https("api.replicated.com", 80), policy.ReasonNoRule),
	)
	// The only port is 443 and no UDP is listed: TCP only, never QUIC.
	for _, h := range []string{"get.replicated.com", "api.replicated.com", "registry.replicated.com", "quay.io", "registry-1.docker.io"} {
		cases = append(cases, denied(h+" over QUIC", quicTo("104.16.1.1", 443, h), policy.ReasonNoRule))
	}
	checkVerdicts(t, p, cases)
}

func TestCloudflareTunnel(t *testing.T) {
	p := loadDefault(t).Policy
	const (
		tunnel   = "cloudflare-tunnel"
		optional = "cloudflare-tunnel-optional"
	)
	cases := []verdict{
		// "Required for tunnel operation": the destinations, by name.
		allowed("region1 SNI=host", https("region1.v2.argotunnel.com", 7844), tunnel, "tunnel-http2"),
		allowed("region2 SNI=host", https("region2.v2.argotunnel.com", 7844), tunnel, "tunnel-http2"),
		// The SNI-only rows (footnote 1: firewalls that enforce SNI).
		allowed("region1 SNI h2.cftunnel.com", tlsTo("region1.v2.argotunnel.com", 7844, "h2.cftunnel.com"), tunnel, "tunnel-http2"),
		allowed("region2 SNI h2.cftunnel.com", tlsTo("region2.v2.argotunnel.com", 7844, "h2.cftunnel.com"), tunnel, "tunnel-http2"),
		allowed("region1 SNI cftunnel.com", tlsTo("region1.v2.argotunnel.com", 7844, "cftunnel.com"), tunnel, "tunnel-http2"),
		allowed("region1 SNI SRV name", tlsTo("region1.v2.argotunnel.com", 7844, "_v2-origintunneld._tcp.argotunnel.com"), tunnel, "tunnel-http2"),
		// quic.cftunnel.com is UDP only: the QUIC rule, never over TCP.
		denied("region1 SNI quic.cftunnel.com over TCP", tlsTo("region1.v2.argotunnel.com", 7844, "quic.cftunnel.com"), policy.ReasonSNIMismatch),
		denied("region1 SNI evil", tlsTo("region1.v2.argotunnel.com", 7844, "evil.example"), policy.ReasonSNIMismatch),
		denied("region1 no SNI", tlsTo("region1.v2.argotunnel.com", 7844, ""), policy.ReasonSNIMissing),
		denied("region1 not TLS", policy.Request{Host: "region1.v2.argotunnel.com", Port: 7844, Hello: policy.HelloNotTLS}, policy.ReasonNotTLS),
		denied("region1:443", https("region1.v2.argotunnel.com", 443), policy.ReasonNoRule),
		denied("SNI name as destination", https("h2.cftunnel.com", 7844), policy.ReasonNoRule),
		{name: "region1 plain http", req: policy.Request{Host: "region1.v2.argotunnel.com", Port: 7844, Hello: policy.HelloHTTP},
			reason: policy.ReasonNotTLS, policy: tunnel, rule: "tunnel-http2"},
		allowed("198.41.200.53 pending", policy.Request{Addr: netip.MustParseAddr("198.41.200.53"), Port: 7844}, tunnel, "tunnel-http2"),

		// Transparent / IP-literal connections, matched by cidrs.
		allowed("198.41.192.7 transparent", toAddr("198.41.192.7", 7844, "h2.cftunnel.com"), tunnel, "tunnel-http2"),
		denied("198.41.192.7 SNI evil", toAddr("198.41.192.7", 7844, "evil.example"), policy.ReasonSNIMismatch),
		denied("198.41.192.7:443", toAddr("198.41.192.7", 443, "h2.cftunnel.com"), policy.ReasonNoRule),
		denied("outside the ranges", toAddr("198.41.193.7", 7844, "h2.cftunnel.com"), policy.ReasonNoRule),
		denied("outside the v6 ranges", toAddr("2606:4700:a1::1", 7844, "h2.cftunnel.com"), policy.ReasonNoRule),

		// "Optional", port 443.
		allowed("api.cloudflare.com", https("api.cloudflare.com", 443), optional, "update-check"),
		allowed("update.argotunnel.com", https("update.argotunnel.com", 443), optional, "update-check"),
		allowed("github.com", https("github.com", 443), optional, "self-update"),
		allowed("objects.githubusercontent.com", https("objects.githubusercontent.com", 443), optional, "self-update"),
		allowed("release-assets.githubusercontent.com", https("release-assets.githubusercontent.com", 443), optional, "self-update"),
		allowed("team.cloudflareaccess.com", https("myteam.cloudflareaccess.com", 443), optional, "access-jwt"),
		allowed("pqtunnels.cloudflareresearch.com", https("pqtunnels.cloudflareresearch.com", 443), optional, "pq-error-reports"),
		// The seed's Optional rows are "443 TCP (HTTPS)": not over QUIC.
		denied("api.cloudflare.com over QUIC", quicTo("104.19.192.29", 443, "api.cloudflare.com"), policy.ReasonNoRule),
		denied("github.com over QUIC", quicTo("140.82.112.3", 443, "github.com"), policy.ReasonNoRule),
		denied("team.cloudflareaccess.com over QUIC", quicTo("104.19.194.29", 443, "myteam.cloudflareaccess.com"), policy.ReasonNoRule),
		denied("pqtunnels.cloudflareresearch.com over QUIC", quicTo("104.18.4.64", 443, "pqtunnels.cloudflareresearch.com"), policy.ReasonNoRule),
		denied("cloudflareaccess.com apex", https("cloudflareaccess.com", 443), policy.ReasonNoRule),
		denied("api.cloudflare.com:7844", https("api.cloudflare.com", 7844), policy.ReasonNoRule),
		denied("other githubusercontent", https("evil.githubusercontent.com", 443), policy.ReasonNoRule),
	}

	// Every address the seed lists, as a transparent connection carrying
	// the http2 SNI.
	var addrs []string
	for _, n := range []int{167, 67, 57, 107, 27, 7, 227, 47, 37, 77} {
		addrs = append(addrs, "198.41.192."+strconv.Itoa(n))
	}
	for _, n := range []int{13, 193, 33, 233, 53, 63, 113, 73, 43, 23} {
		addrs = append(addrs, "198.41.200."+strconv.Itoa(n))
	}
	for _, x := range []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10"} {
		addrs = append(addrs, "2606:4700:a0::"+x, "2606:4700:a8::"+x)
	}
	for _, a := range addrs {
		cases = append(cases, allowed("seed address "+a, toAddr(a, 7844, "h2.cftunnel.com"), tunnel, "tunnel-http2"))
		cases = append(cases, allowed("seed address "+a+" quic", quicTo(a, 7844, "quic.cftunnel.com"), tunnel, "tunnel-quic"))
		// A QUIC flow is a candidate through its SNI wherever it goes;
		// without SNI only tunnel-quic's cidrs make it one, so this is what
		// tests that the address is in them.
		cases = append(cases, verdict{name: "seed address " + a + " quic, no SNI", req: quicTo(a, 7844, ""),
			reason: policy.ReasonSNIMissing, policy: tunnel, rule: "tunnel-quic"})
	}
	// The cidrs are the seed's addresses, not the /24 and /48 around them.
	for _, a := range []string{"198.41.192.0", "198.41.192.8", "198.41.192.255", "198.41.200.1", "198.41.200.254",
		"2606:4700:a0::", "2606:4700:a0::11", "2606:4700:a0:1::1", "2606:4700:a8::b", "2606:4700:a8:ffff::1"} {
		cases = append(cases, denied("unlisted address "+a, toAddr(a, 7844, "h2.cftunnel.com"), policy.ReasonNoRule))
		cases = append(cases, denied("unlisted address "+a+" quic, no SNI", quicTo(a, 7844, ""), policy.ReasonNoRule))
	}
	// The quic transport ("UDP ( quic )" rows) through the QUIC gateway.
	cases = append(cases,
		allowed("quic SNI cftunnel.com", quicTo("198.41.200.53", 7844, "cftunnel.com"), tunnel, "tunnel-quic"),
		denied("quic SNI h2.cftunnel.com (TCP only)", quicTo("198.41.192.7", 7844, "h2.cftunnel.com"), policy.ReasonSNIMismatch),
		denied("quic SNI SRV name (TCP only)", quicTo("198.41.192.7", 7844, "_v2-origintunneld._tcp.argotunnel.com"), policy.ReasonSNIMismatch),
		denied("quic SNI evil", quicTo("198.41.192.7", 7844, "evil.example"), policy.ReasonSNIMismatch),
		// Outside the ranges the rule is still a candidate through its SNI
		// (the gateway's flows are transparent); the proxy's destination
		// verification then refuses the address (dst_mismatch) unless
		// egressd's resolver returned it for the rule's hosts.
		allowed("quic outside the ranges (then verified)", quicTo("198.41.193.7", 7844, "quic.cftunnel.com"), tunnel, "tunnel-quic"),
		denied("quic on 443", quicTo("198.41.192.7", 443, "quic.cftunnel.com"), policy.ReasonNoRule),
		verdict{name: "raw UDP to the edge", req: policy.Request{Addr: netip.MustParseAddr("198.41.192.7"), Port: 7844, Hello: policy.HelloNotTLS, Protocol: policy.ProtocolQUIC, Transparent: true},
			reason: policy.ReasonNotTLS, policy: tunnel, rule: "tunnel-quic"},
	)
	checkVerdicts(t, p, cases)
}

// A user's file next to the presets: a deny rule beats every preset allow
// whatever the file order, and an extra allow rule admits what a preset
// rule's fingerprint check refuses.
func TestOverlayOnPresets(t *testing.T) {
	m := fstest.MapFS{}
	entries, err := fs.ReadDir(configs.FS, ".")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		src, err := fs.ReadFile(configs.FS, e.Name())
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = &fstest.MapFile{Data: src}
	}
	m["zz-local.hcl"] = &fstest.MapFile{Data: []byte(`
policy "local" {
  deny "no-legacy" {
    hosts = ["legacy.enforce.dev"]
  }
  allow "chainctl" {
    hosts = ["issuer.enforce.dev"]
  }
}
`)}
	cfg, diags := policy.LoadFS(m, ".")
	requireClean(t, "presets + overlay", cfg, diags)
	checkVerdicts(t, cfg.Policy, []verdict{
		{name: "legacy.enforce.dev denied", req: withJA3(https("legacy.enforce.dev", 443), enforceJA3),
			reason: policy.ReasonDeniedByRule, policy: "local", rule: "no-legacy"},
		{name: "legacy.enforce.dev any port", req: https("legacy.enforce.dev", 8443),
			reason: policy.ReasonDeniedByRule, policy: "local", rule: "no-legacy"},
		allowed("x.enforce.dev still allowed", withJA3(https("x.enforce.dev", 443), enforceJA3), "chainguard-enforce", "enforce-api"),
		allowed("issuer with seed JA3: first allow wins", withJA3(https("issuer.enforce.dev", 443), enforceJA3), "chainguard-enforce", "enforce-api"),
		allowed("issuer with another JA3: later allow", withJA3(https("issuer.enforce.dev", 443), otherJA3), "local", "chainctl"),
		{name: "other subdomain, other JA3", req: withJA3(https("y.enforce.dev", 443), otherJA3),
			reason: policy.ReasonJA3Mismatch, policy: "chainguard-enforce", rule: "enforce-api"},
	})
}

// Every hcl example in README.md must be a valid configuration on its own.
func TestReadmeExamplesParse(t *testing.T) {
	src, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```hcl\n(.*?)```").FindAllSubmatch(src, -1)
	if len(blocks) == 0 {
		t.Fatal("no hcl examples found in README.md")
	}
	for i, b := range blocks {
		name := "README.md example " + strconv.Itoa(i+1)
		cfg, diags := policy.Parse([]policy.File{{Name: name, Src: b[1]}})
		requireClean(t, name, cfg, diags)
	}
}
