package policy

import (
	"fmt"
	"strings"
	"testing"
)

// testPolicies is the configuration the test blocks below run against; it
// is 30 lines long, so a test block appended to it starts at line 31.
const testPolicies = `policy "p" {
  allow "api" {
    hosts = ["api.example.com"]
  }
  allow "tunnel" {
    cidrs     = ["198.41.192.0/24"]
    sni       = ["h2.cftunnel.com"]
    ports     = [7844]
    protocols = ["tcp"]
  }
  allow "tunnel-quic" {
    cidrs     = ["198.41.192.0/24"]
    sni       = ["quic.cftunnel.com"]
    ports     = [7844]
    protocols = ["quic"]
  }
  allow "git" {
    hosts       = ["git.example.com"]
    ports       = [22, 80]
    require_tls = false
  }
  allow "internal" {
    cidrs       = ["10.1.0.0/16"]
    ports       = [5432]
    require_tls = false
  }
  deny "legacy" {
    hosts = ["legacy.example.com"]
  }
}
`

// auditPolicies has one audited policy for CI runners and a user.
var auditPolicies = fmt.Sprintf(`policy "ci" {
  mode = "audit"
  clients {
    cidrs = ["10.9.0.0/16"]
    users = ["ci"]
  }
  allow "github" {
    hosts = ["github.com"]
  }
}
user "ci" {
  password_hash = %q
}
`, decoyHash)

func TestRunTests(t *testing.T) {
	tests := []struct {
		name    string
		base    string
		block   string // the test block's body
		ok      bool
		message string // the failure message, exactly
	}{
		{"connect allow", testPolicies, `target = "api.example.com:443"
  expect = "allow"
  expect_rule = "p/api"
  expect_reason = "allowed"`, true, ""},
		{"connect deny no rule", testPolicies, `target = "example.org:443"
  expect = "deny"
  expect_reason = "no_rule"`, true, ""},
		{"failing: expected allow", testPolicies, `target = "example.org:443"
  expect = "allow"`, false, "expected allow, got deny (no_rule)"},
		{"failing: sni mismatch names the rule", testPolicies, `target = "api.example.com:443"
  sni    = "evil.example"
  expect = "allow"`, false, "expected allow, got deny (sni_mismatch, policy p rule api)"},
		{"failing: expected deny", testPolicies, `target = "api.example.com:443"
  expect = "deny"`, false, "expected deny, got allow (policy p rule api)"},
		{"failing: wrong rule", testPolicies, `target = "api.example.com:443"
  expect = "allow"
  expect_rule = "p/git"`, false, "expected rule p/git, got allow (policy p rule api)"},
		{"failing: wrong reason", testPolicies, `target = "api.example.com:443"
  sni = ""
  expect = "deny"
  expect_reason = "sni_mismatch"`, false, "expected reason sni_mismatch, got deny (sni_missing, policy p rule api)"},
		{"deny rule", testPolicies, `target = "legacy.example.com:8443"
  expect = "deny"
  expect_rule = "p/legacy"
  expect_reason = "denied_by_rule"`, true, ""},
		{"ja3 lower-cased", testPolicies, `target = "api.example.com:443"
  ja3 = "3FED133DE60C35724739B913924B6C24"
  expect = "allow"`, true, ""},
		{"ip connect with sni", testPolicies, `target = "198.41.192.7:7844"
  sni    = "h2.cftunnel.com"
  expect = "allow"
  expect_rule = "p/tunnel"`, true, ""},
		{"transparent", testPolicies, `target = "198.41.192.7:7844"
  mode   = "transparent"
  sni    = "h2.cftunnel.com"
  expect = "allow"
  expect_rule = "p/tunnel"`, true, ""},
		{"quic", testPolicies, `target = "198.41.192.7:7844"
  mode   = "quic"
  sni    = "quic.cftunnel.com"
  expect = "allow"
  expect_rule = "p/tunnel-quic"`, true, ""},
		{"quic sni over tcp", testPolicies, `target = "198.41.192.7:7844"
  mode   = "transparent"
  sni    = "quic.cftunnel.com"
  expect = "deny"
  expect_reason = "sni_mismatch"`, true, ""},
		{"quic not tls", testPolicies, `target = "198.41.192.7:7844"
  mode   = "quic"
  tls    = false
  expect = "deny"
  expect_reason = "not_tls"`, true, ""},
		{"plain tunnel", testPolicies, `target = "git.example.com:22"
  tls    = false
  expect = "allow"
  expect_rule = "p/git"`, true, ""},
		{"plain tunnel refused by a TLS rule", testPolicies, `target = "api.example.com:443"
  tls    = false
  expect = "deny"
  expect_reason = "not_tls"`, true, ""},
		{"http request", testPolicies, `target = "git.example.com:80"
  mode   = "http"
  expect = "allow"`, true, ""},
		{"ipv6 target, no rule", testPolicies, `target = "[2001:db8::1]:443"
  expect = "deny"
  expect_reason = "no_rule"`, true, ""},
		{"private destination granted by cidr", testPolicies, `target = "10.1.2.3:5432"
  tls    = false
  expect = "allow"
  expect_rule = "p/internal"`, true, ""},
		{"metadata address", testPolicies, `target = "169.254.169.254:80"
  mode   = "http"
  expect = "deny"`, true, ""},
		{"audit: would deny", auditPolicies, `target = "example.com:443"
  client = "10.9.1.1"
  expect = "deny"
  expect_reason = "no_rule"
  expect_would_deny = true`, true, ""},
		{"audit: expected allow fails", auditPolicies, `target = "example.com:443"
  client = "10.9.1.1"
  expect = "allow"`, false, "expected allow, got deny (no_rule, would_deny)"},
		{"audit: allowed by rule", auditPolicies, `target = "github.com:443"
  user   = "ci"
  expect = "allow"
  expect_would_deny = false`, true, ""},
		{"audit: expected no would_deny", auditPolicies, `target = "example.com:443"
  user   = "ci"
  expect = "deny"
  expect_would_deny = false`, false, "expected would_deny = false, got deny (no_rule, would_deny)"},
		// Audit mode does not open private destinations: the connection is
		// refused, so it is not one audit mode lets through.
		{"audit: private target is refused", auditPolicies, `target = "169.254.169.254:443"
  client = "10.9.1.1"
  expect = "deny"
  expect_would_deny = true`, false, "expected would_deny = true, got deny (no_rule)"},
		{"audit: private target, no would_deny", auditPolicies, `target = "10.0.0.1:443"
  client = "10.9.1.1"
  expect = "deny"
  expect_reason = "no_rule"
  expect_would_deny = false`, true, ""},
		{"client not covered", auditPolicies, `target = "github.com:443"
  client = "192.0.2.1"
  expect = "deny"
  expect_reason = "no_policy_for_client"
  expect_would_deny = false`, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lines := strings.Count(tc.base, "\n")
			src := tc.base + "test \"t\" {\n  " + tc.block + "\n}\n"
			cfg, diags := Parse(one(src))
			if len(diags) > 0 {
				t.Fatalf("diagnostics:\n%s", FormatDiagnostics(diags))
			}
			res := cfg.RunTests()
			if len(res) != 1 {
				t.Fatalf("%d results, want 1", len(res))
			}
			r := res[0]
			if r.OK != tc.ok || r.Message != tc.message {
				t.Errorf("ok=%v message %q, want ok=%v %q (decision %+v)", r.OK, r.Message, tc.ok, tc.message, r.Decision)
			}
			if got := posString(r.Test.Range); got != fmt.Sprintf("t.hcl:%d:1", lines+1) {
				t.Errorf("range %s, want the test block's line %d", got, lines+1)
			}
			if r.Test.Name != "t" {
				t.Errorf("name %q", r.Test.Name)
			}
		})
	}
}

func TestTestDefaults(t *testing.T) {
	cfg, diags := Parse(one(testPolicies + `test "a" {
  target = "API.Example.com.:443"
  expect = "allow"
}
test "b" {
  target = "[::ffff:198.41.192.7]:7844"
  mode   = "quic"
  expect = "deny"
}
`))
	if len(diags) > 0 {
		t.Fatalf("diagnostics:\n%s", FormatDiagnostics(diags))
	}
	a, b := cfg.Tests[0], cfg.Tests[1]
	if a.Mode != TestModeConnect || !a.TLS || a.Request.Host != "api.example.com" || a.Request.SNI != "api.example.com" ||
		a.Request.Port != 443 || a.Request.Hello != HelloTLS || a.Request.Transparent {
		t.Errorf("defaults: %+v", a)
	}
	if b.Request.Addr.String() != "198.41.192.7" || b.Request.SNI != "" || b.Request.Protocol != ProtocolQUIC || !b.Request.Transparent {
		t.Errorf("quic to a mapped address: %+v", b.Request)
	}
	if res := cfg.RunTests(); !res[0].OK || !res[1].OK {
		t.Errorf("results %+v", res)
	}
}

func TestTestDiagnostics(t *testing.T) {
	// The test block starts at line 31; its first attribute is at 32:3
	// and the value of `xxxx = ` at 32:12 (target), 32:10 (mode), ...
	tests := []struct {
		name  string
		block string
		pos   string
		word  string
	}{
		{"missing target", `expect = "allow"`, "t.hcl:31:10", `"target" is required`},
		{"missing expect", `target = "a.example:443"`, "t.hcl:31:10", `"expect" is required`},
		{"unknown attribute", "target = \"a.example:443\"\n  expect = \"allow\"\n  sn1 = \"x\"", "t.hcl:34:3", "Unsupported argument"},
		{"bad target no port", "target = \"a.example\"\n  expect = \"allow\"", "t.hcl:32:12", "Invalid test target"},
		{"bad target port 0", "target = \"a.example:0\"\n  expect = \"allow\"", "t.hcl:32:12", "Invalid test target"},
		{"bad target non-canonical ip", "target = \"127.1:443\"\n  expect = \"allow\"", "t.hcl:32:12", `write the address as a dotted quad such as "127.0.0.1"`},
		{"bad target ipv6 without brackets", "target = \"::1:443\"\n  expect = \"allow\"", "t.hcl:32:12", "Invalid test target"},
		{"target not a string", "target = 443\n  expect = \"allow\"", "t.hcl:32:12", "Wrong type"},
		{"unknown mode", "target = \"a.example:443\"\n  mode = \"udp\"\n  expect = \"allow\"", "t.hcl:33:10", "Invalid test mode"},
		{"transparent to a name", "target = \"a.example:443\"\n  mode = \"transparent\"\n  expect = \"allow\"", "t.hcl:32:12", "Transparent test needs an IP target"},
		{"tls with http", "target = \"a.example:80\"\n  mode = \"http\"\n  tls = false\n  expect = \"allow\"", "t.hcl:34:9", `tls has no meaning`},
		{"sni with tls = false", "target = \"a.example:22\"\n  tls = false\n  sni = \"a.example\"\n  expect = \"allow\"", "t.hcl:34:9", "sni needs TLS"},
		{"ja3 with http", "target = \"a.example:80\"\n  mode = \"http\"\n  ja3 = \"3fed133de60c35724739b913924b6c24\"\n  expect = \"allow\"", "t.hcl:34:9", "ja3 needs TLS"},
		{"bad ja3", "target = \"a.example:443\"\n  ja3 = \"abc\"\n  expect = \"allow\"", "t.hcl:33:9", "Invalid ja3"},
		{"bad ja4", "target = \"a.example:443\"\n  ja4 = \"abc\"\n  expect = \"allow\"", "t.hcl:33:9", "Invalid ja4"},
		{"bad client", "target = \"a.example:443\"\n  client = \"10.0.0.1:5000\"\n  expect = \"allow\"", "t.hcl:33:12", "Invalid test client"},
		{"unknown user", "target = \"a.example:443\"\n  user = \"nobody\"\n  expect = \"allow\"", "t.hcl:33:10", "Unknown user"},
		{"bad expect", "target = \"a.example:443\"\n  expect = \"allowed\"", "t.hcl:33:12", "Invalid expect"},
		{"expect_rule without slash", "target = \"a.example:443\"\n  expect = \"allow\"\n  expect_rule = \"api\"", "t.hcl:34:17", "POLICY/RULE"},
		{"expect_rule unknown policy", "target = \"a.example:443\"\n  expect = \"allow\"\n  expect_rule = \"q/api\"", "t.hcl:34:17", "Unknown policy in expect_rule"},
		{"expect_rule unknown rule", "target = \"a.example:443\"\n  expect = \"allow\"\n  expect_rule = \"p/apj\"", "t.hcl:34:17", "Unknown rule in expect_rule"},
		{"expect_reason unknown", "target = \"a.example:443\"\n  expect = \"deny\"\n  expect_reason = \"nope\"", "t.hcl:34:19", "Invalid expect_reason"},
		{"expect_reason proxy-only", "target = \"a.example:443\"\n  expect = \"deny\"\n  expect_reason = \"dns_error\"", "t.hcl:34:19", "Invalid expect_reason"},
		{"expect_reason contradicts allow", "target = \"a.example:443\"\n  expect = \"allow\"\n  expect_reason = \"no_rule\"", "t.hcl:34:19", "contradicts"},
		{"expect_reason contradicts deny", "target = \"a.example:443\"\n  expect = \"deny\"\n  expect_reason = \"allowed\"", "t.hcl:34:19", "contradicts"},
		{"would_deny with allow", "target = \"a.example:443\"\n  expect = \"allow\"\n  expect_would_deny = true", "t.hcl:34:23", "contradicts"},
		{"empty test name", "", "t.hcl:31:6", "Invalid test name"}, // block "" means test "" { a valid body }
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := testPolicies + "test \"t\" {\n  " + tc.block + "\n}\n"
			if tc.block == "" {
				src = testPolicies + "test \"\" {\n  target = \"a.example:443\"\n  expect = \"allow\"\n}\n"
			}
			cfg, diags := Parse(one(src))
			if !diags.HasErrors() {
				t.Fatalf("no error; want %s at %s", tc.word, tc.pos)
			}
			if cfg.Policy != nil || cfg.RunTests() != nil {
				t.Error("a configuration with errors must have no policy and run no tests")
			}
			out := FormatDiagnostics(diags)
			if !strings.Contains(out, tc.pos+": error: ") || !strings.Contains(out, tc.word) {
				t.Errorf("diagnostics:\n%s\nwant an error at %s mentioning %q", out, tc.pos, tc.word)
			}
		})
	}
}

// TestTestNameLength: configs/README.md says test names are printable text
// up to 128 characters; characters, not bytes.
func TestTestNameLength(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{strings.Repeat("a", 128), true},
		{strings.Repeat("a", 129), false},
		{strings.Repeat("测", 128), true},
		{strings.Repeat("测", 129), false},
	} {
		src := testPolicies + "test \"" + tc.name + "\" {\n  target = \"a.example:443\"\n  expect = \"allow\"\n}\n"
		if _, diags := Parse(one(src)); diags.HasErrors() == tc.ok {
			t.Errorf("test name of %d characters: ok %v, want %v\n%s", len([]rune(tc.name)), !diags.HasErrors(), tc.ok, FormatDiagnostics(diags))
		}
	}
}

func TestDuplicateTestNamesAcrossFiles(t *testing.T) {
	files := []File{
		{Name: "a.hcl", Src: []byte(testPolicies + "test \"same\" {\n  target = \"api.example.com:443\"\n  expect = \"allow\"\n}\n")},
		{Name: "b.tests.hcl", Src: []byte("\ntest \"same\" {\n  target = \"api.example.com:443\"\n  expect = \"allow\"\n}\n")},
	}
	_, diags := Parse(files)
	out := FormatDiagnostics(diags)
	if !strings.Contains(out, "b.tests.hcl:2:6: error: Duplicate test name") || !strings.Contains(out, "a.hcl:31:6") {
		t.Errorf("diagnostics:\n%s\nwant the duplicate at b.tests.hcl:2:6 pointing at a.hcl:31:6", out)
	}
}

// A test may name a rule of another file, and tests in a file of their
// own run against every file's policies.
func TestTestsInSeparateFile(t *testing.T) {
	cfg, diags := Parse([]File{
		{Name: "a.hcl", Src: []byte(testPolicies)},
		{Name: "a.tests.hcl", Src: []byte("test \"x\" {\n  target = \"api.example.com:443\"\n  expect = \"allow\"\n  expect_rule = \"p/api\"\n}\n")},
	})
	if len(diags) > 0 {
		t.Fatalf("diagnostics:\n%s", FormatDiagnostics(diags))
	}
	res := cfg.RunTests()
	if len(res) != 1 || !res[0].OK || res[0].Test.Range.Filename != "a.tests.hcl" {
		t.Fatalf("results %+v", res)
	}
}

func TestDescribeDecision(t *testing.T) {
	for _, tc := range []struct {
		d    Decision
		want string
	}{
		{Decision{Allow: true, Reason: ReasonAllowed, Policy: "p", Rule: "r"}, "allow (policy p rule r)"},
		{Decision{Reason: ReasonNoRule}, "deny (no_rule)"},
		{Decision{Reason: ReasonJA3Mismatch, Policy: "p", Rule: "r"}, "deny (ja3_mismatch, policy p rule r)"},
		{Decision{Allow: true, WouldDeny: true, Reason: ReasonSNIMismatch, Policy: "p", Rule: "r"}, "deny (sni_mismatch, policy p rule r, would_deny)"},
	} {
		if got := DescribeDecision(tc.d); got != tc.want {
			t.Errorf("DescribeDecision(%+v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}
