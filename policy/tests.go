package policy

// Policy tests: test "name" { ... } blocks, anywhere at the top level of a
// configuration, each describe one connection and the verdict the policy
// must give it. RunTests decides them offline (no DNS, no dial), like
// egressd check. Decoding and validation are here, with their own schema;
// every mistake is a diagnostic pointing at the offending value.

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
)

// Test modes: how the tested connection reaches egressd.
const (
	TestModeConnect     = "connect"     // a CONNECT tunnel (the default)
	TestModeHTTP        = "http"        // a plain absolute-form http:// request
	TestModeTransparent = "transparent" // a transparent-gateway TCP connection; the target is an IP
	TestModeQUIC        = "quic"        // a UDP flow on the QUIC gateway
)

// maxTestNameLen bounds a test's name; names are printed in reports.
const maxTestNameLen = 128

// Test is a decoded test block.
type Test struct {
	Name string
	// Range is the block's header (test "name"), where failures point.
	Range hcl.Range

	Target string // host:port as written
	Mode   string // TestModeConnect, TestModeHTTP, TestModeTransparent or TestModeQUIC
	// TLS is false when the first bytes are not a TLS ClientHello (tls =
	// false); always false for mode http.
	TLS    bool
	Client netip.Addr // invalid when not given
	User   string
	SNI    string // as sent (defaulted to the target host when it is a name)
	JA3    string // lower case
	JA4    string // lower case

	// ExpectAllow is the verdict the policy must give when enforced:
	// expect = "allow" or "deny". An audit-mode allow (would_deny) is a
	// "deny".
	ExpectAllow bool
	// ExpectPolicy and ExpectRule name the deciding rule (expect_rule =
	// "POLICY/RULE"); "" when not checked.
	ExpectPolicy string
	ExpectRule   string
	// ExpectReason is the decision's reason (expect_reason); "" when not
	// checked.
	ExpectReason Reason
	// ExpectWouldDeny is expect_would_deny; nil when not checked.
	ExpectWouldDeny *bool

	// Request is the request the test decides.
	Request Request
}

// TestResult is the outcome of one test.
type TestResult struct {
	Test     *Test
	Decision Decision
	OK       bool
	// Message explains a failure, for example
	// `expected allow, got deny (no_rule)`; "" when OK.
	Message string
}

type rawTest struct {
	name    string
	nameRng hcl.Range
	def     hcl.Range

	target, mode, client, user, sni, ja3, ja4 *str
	tls                                       *boolean
	expect, expectRule, expectReason          *str
	expectWouldDeny                           *boolean
}

func testSchema() *hcl.BodySchema {
	return &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
		{Name: "target", Required: true},
		{Name: "mode"},
		{Name: "tls"},
		{Name: "client"},
		{Name: "user"},
		{Name: "sni"},
		{Name: "ja3"},
		{Name: "ja4"},
		{Name: "expect", Required: true},
		{Name: "expect_rule"},
		{Name: "expect_reason"},
		{Name: "expect_would_deny"},
	}}
}

func decodeTestBlock(b *hcl.Block) (*rawTest, hcl.Diagnostics) {
	t := &rawTest{name: b.Labels[0], nameRng: b.LabelRanges[0], def: b.DefRange}
	content, diags := b.Body.Content(testSchema())
	for name, attr := range content.Attributes {
		switch name {
		case "target":
			t.target = decodeString(attr, `target = "cgr.dev:443"`, &diags)
		case "mode":
			t.mode = decodeString(attr, `mode = "transparent"`, &diags)
		case "tls":
			t.tls = decodeBool(attr, `tls = false`, &diags)
		case "client":
			t.client = decodeString(attr, `client = "10.1.2.3"`, &diags)
		case "user":
			t.user = decodeString(attr, `user = "ci"`, &diags)
		case "sni":
			t.sni = decodeString(attr, `sni = "h2.cftunnel.com"`, &diags)
		case "ja3":
			t.ja3 = decodeString(attr, `ja3 = "3fed133de60c35724739b913924b6c24"`, &diags)
		case "ja4":
			t.ja4 = decodeString(attr, `ja4 = "t13d1516h2_8daaf6152771_e5627efa2ab1"`, &diags)
		case "expect":
			t.expect = decodeString(attr, `expect = "allow"`, &diags)
		case "expect_rule":
			t.expectRule = decodeString(attr, `expect_rule = "chainguard-images/registry"`, &diags)
		case "expect_reason":
			t.expectReason = decodeString(attr, `expect_reason = "no_rule"`, &diags)
		case "expect_would_deny":
			t.expectWouldDeny = decodeBool(attr, `expect_would_deny = true`, &diags)
		}
	}
	return t, diags
}

// testReasons are the reasons a test can meet: those of Decide, and
// private_destination.
func testReasons() []Reason {
	return []Reason{
		ReasonAllowed, ReasonNoRule, ReasonDeniedByRule, ReasonSNIMismatch,
		ReasonSNIMissing, ReasonNotTLS, ReasonJA3Mismatch, ReasonJA4Mismatch,
		ReasonPrivateDestination, ReasonNoPolicyForClient,
	}
}

// compileTests validates the test blocks against the raw policies (so that
// a rule with errors of its own is still a name tests may use). users is
// the declared users, or nil when they are not known (a users_file Parse
// was not given).
func compileTests(raws []*rawTest, pols []*rawPolicy, users map[string]pwHash) ([]Test, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	rules := make(map[string]map[string]bool, len(pols))
	for _, rp := range pols {
		if rules[rp.name] == nil {
			rules[rp.name] = make(map[string]bool, len(rp.rules))
		}
		for _, rr := range rp.rules {
			rules[rp.name][rr.name] = true
		}
	}
	seen := make(map[string]hcl.Range, len(raws))
	var out []Test
	for _, rt := range raws {
		n := len(diags)
		t := compileTest(rt, rules, users, &diags)
		if first, dup := seen[rt.name]; dup {
			diags = append(diags, errDiag(rt.nameRng, "Duplicate test name",
				fmt.Sprintf("test %s is already defined at %s. Test names must be unique across all files; rename one, for example to %q.", quote(rt.name), posString(first), rt.name+"-2")))
		} else {
			seen[rt.name] = rt.nameRng
		}
		if !hasErrorsFrom(diags, n) {
			out = append(out, t)
		}
	}
	return out, diags
}

func hasErrorsFrom(diags hcl.Diagnostics, n int) bool {
	return diags[n:].HasErrors()
}

func compileTest(rt *rawTest, rules map[string]map[string]bool, users map[string]pwHash, diags *hcl.Diagnostics) Test {
	t := Test{Name: rt.name, Range: rt.def, Mode: TestModeConnect, TLS: true}
	where := "test " + quote(rt.name)
	if !validTestName(rt.name) {
		*diags = append(*diags, errDiag(rt.nameRng, "Invalid test name",
			fmt.Sprintf("test name %s must be 1 to %d printable characters, for example test \"cgr.dev is allowed\".", quote(rt.name), maxTestNameLen)))
	}
	if v := rt.mode; v != nil {
		switch v.v {
		case TestModeConnect, TestModeHTTP, TestModeTransparent, TestModeQUIC:
			t.Mode = v.v
		default:
			*diags = append(*diags, errDiag(v.rng, "Invalid test mode",
				fmt.Sprintf("%s: mode = %s is not a mode. Use %q (a CONNECT tunnel, the default), %q (a plain http:// request), %q (a transparent-gateway connection to an IP address) or %q (a UDP flow on the QUIC gateway), for example mode = %q.",
					where, quote(v.v), TestModeConnect, TestModeHTTP, TestModeTransparent, TestModeQUIC, TestModeTransparent)))
		}
	}
	if v := rt.tls; v != nil {
		if t.Mode == TestModeHTTP {
			*diags = append(*diags, errDiag(v.rng, "tls has no meaning for mode \"http\"",
				fmt.Sprintf("%s: a plain http:// request is never TLS. Remove tls, or use mode = %q with tls = false for a tunnel whose first bytes are not TLS.", where, TestModeConnect)))
		} else {
			t.TLS = v.v
		}
	}
	if t.Mode == TestModeHTTP {
		t.TLS = false
	}

	// The target, parsed with the proxy's rules (proxy.ParseTarget).
	var host string
	var addr netip.Addr
	var port uint16
	targetOK := false
	if v := rt.target; v != nil {
		t.Target = v.v
		var err error
		host, addr, port, err = parseTestTarget(v.v)
		if err != nil {
			*diags = append(*diags, errDiag(v.rng, "Invalid test target",
				fmt.Sprintf("%s: %v. Write host:port, for example target = \"cgr.dev:443\", \"198.41.192.7:7844\" or \"[2606:4700:a0::7]:7844\".", where, err)))
		} else {
			targetOK = true
		}
	}
	if targetOK && t.Mode == TestModeTransparent && !addr.IsValid() {
		*diags = append(*diags, errDiag(rt.target.rng, "Transparent test needs an IP target",
			fmt.Sprintf("%s: the transparent gateway sees the original destination address, never a name; %s is a name. Write the address, for example target = \"198.41.192.7:7844\", with the name in sni.", where, quote(host))))
	}

	if v := rt.client; v != nil {
		a, err := netip.ParseAddr(v.v)
		if err != nil || a.Zone() != "" {
			*diags = append(*diags, errDiag(v.rng, "Invalid test client",
				fmt.Sprintf("%s: client = %s is not an IP address. Write the client's address without a port, for example client = \"10.1.2.3\".", where, quote(v.v))))
		} else {
			t.Client = a.Unmap()
		}
	}
	if v := rt.user; v != nil {
		switch _, known := users[v.v]; {
		case v.v == "":
			*diags = append(*diags, errDiag(v.rng, "Empty test user",
				fmt.Sprintf("%s: user = \"\" names nobody. Remove user for a client that did not authenticate.", where)))
		case users != nil && !known:
			*diags = append(*diags, errDiag(v.rng, "Unknown user",
				fmt.Sprintf("%s: user %s is not declared by a user block or the users_file.", where, quote(v.v))))
		default:
			t.User = v.v
		}
	}

	// ClientHello fields.
	for _, f := range []struct {
		name string
		v    *str
	}{{"sni", rt.sni}, {"ja3", rt.ja3}, {"ja4", rt.ja4}} {
		if f.v != nil && !t.TLS {
			why := "tls = false: the first bytes are not a ClientHello"
			if t.Mode == TestModeHTTP {
				why = "mode \"http\" is a plain http:// request, without a ClientHello"
			}
			*diags = append(*diags, errDiag(f.v.rng, fmt.Sprintf("%s needs TLS", f.name),
				fmt.Sprintf("%s: %s, so %s cannot apply. Remove %s.", where, why, f.name, f.name)))
		}
	}
	if v := rt.sni; v != nil {
		t.SNI = v.v
	} else if t.TLS {
		t.SNI = host // like egressd check: the SNI is the target's name ("" for an address)
	}
	if v := rt.ja3; v != nil {
		t.JA3 = strings.ToLower(v.v)
		if len(t.JA3) != ja3Len || !isHex(t.JA3) {
			*diags = append(*diags, errDiag(v.rng, "Invalid ja3 fingerprint",
				fmt.Sprintf("%s: %s is not a JA3 fingerprint: write the MD5 digest as 32 hex digits, for example ja3 = \"3fed133de60c35724739b913924b6c24\".", where, quote(v.v))))
		}
	}
	if v := rt.ja4; v != nil {
		t.JA4 = strings.ToLower(v.v)
		if !isJA4(t.JA4) {
			*diags = append(*diags, errDiag(v.rng, "Invalid ja4 fingerprint",
				fmt.Sprintf("%s: %s is not a JA4 fingerprint, for example ja4 = \"t13d1516h2_8daaf6152771_e5627efa2ab1\".", where, quote(v.v))))
		}
	}

	// Expectations.
	expectOK := false
	if v := rt.expect; v != nil {
		switch v.v {
		case "allow", "deny":
			t.ExpectAllow, expectOK = v.v == "allow", true
		default:
			*diags = append(*diags, errDiag(v.rng, "Invalid expect",
				fmt.Sprintf("%s: expect = %s is not a verdict. Use \"allow\" or \"deny\" (the verdict with the policy enforced), for example expect = \"deny\".", where, quote(v.v))))
		}
	}
	if v := rt.expectRule; v != nil {
		pol, ru, ok := strings.Cut(v.v, "/")
		switch {
		case !ok || pol == "" || ru == "":
			*diags = append(*diags, errDiag(v.rng, "Invalid expect_rule",
				fmt.Sprintf("%s: expect_rule = %s must be POLICY/RULE, for example expect_rule = \"chainguard-images/registry\".", where, quote(v.v))))
		case rules[pol] == nil:
			*diags = append(*diags, errDiag(v.rng, "Unknown policy in expect_rule",
				fmt.Sprintf("%s: expect_rule = %s names policy %s, which no file of the configuration defines.", where, quote(v.v), quote(pol))))
		case !rules[pol][ru]:
			*diags = append(*diags, errDiag(v.rng, "Unknown rule in expect_rule",
				fmt.Sprintf("%s: expect_rule = %s: policy %s has no allow or deny rule named %s.", where, quote(v.v), quote(pol), quote(ru))))
		default:
			t.ExpectPolicy, t.ExpectRule = pol, ru
		}
	}
	if v := rt.expectReason; v != nil {
		known := false
		for _, r := range testReasons() {
			known = known || string(r) == v.v
		}
		switch {
		case !known:
			var words []string
			for _, r := range testReasons() {
				words = append(words, string(r))
			}
			*diags = append(*diags, errDiag(v.rng, "Invalid expect_reason",
				fmt.Sprintf("%s: expect_reason = %s is not a reason the policy gives. Use one of %s.", where, quote(v.v), strings.Join(words, ", "))))
		case expectOK && t.ExpectAllow && v.v != string(ReasonAllowed):
			*diags = append(*diags, errDiag(v.rng, "expect_reason contradicts expect",
				fmt.Sprintf("%s: expect = \"allow\" means reason %q; %s is the reason of a denial (in audit mode, of a would-be denial: write expect = \"deny\" with expect_would_deny = true).", where, ReasonAllowed, quote(v.v))))
		case expectOK && !t.ExpectAllow && v.v == string(ReasonAllowed):
			*diags = append(*diags, errDiag(v.rng, "expect_reason contradicts expect",
				fmt.Sprintf("%s: expect = \"deny\" cannot have reason %q.", where, ReasonAllowed)))
		default:
			t.ExpectReason = Reason(v.v)
		}
	}
	if v := rt.expectWouldDeny; v != nil {
		if expectOK && t.ExpectAllow && v.v {
			*diags = append(*diags, errDiag(v.rng, "expect_would_deny contradicts expect",
				fmt.Sprintf("%s: expect is the verdict with the policy enforced, and a would-deny connection is denied then. Write expect = \"deny\" with expect_would_deny = true.", where)))
		} else {
			b := v.v
			t.ExpectWouldDeny = &b
		}
	}

	t.Request = Request{Host: host, Addr: addr, Port: port, Client: t.Client, User: t.User, SNI: t.SNI, JA3: t.JA3, JA4: t.JA4}
	switch {
	case t.Mode == TestModeHTTP:
		t.Request.Hello = HelloHTTP
	case t.TLS:
		t.Request.Hello = HelloTLS
	default:
		t.Request.Hello = HelloNotTLS
	}
	switch t.Mode {
	case TestModeTransparent:
		t.Request.Transparent = true
	case TestModeQUIC:
		// The QUIC gateway sees an address, never a name: a flow is
		// decided like a transparent connection.
		t.Request.Protocol = ProtocolQUIC
		t.Request.Transparent = addr.IsValid()
	}
	return t
}

func validTestName(s string) bool {
	if s == "" || !utf8.ValidString(s) || utf8.RuneCountInString(s) > maxTestNameLen {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// parseTestTarget parses a test's host:port as the proxy parses a CONNECT
// target (ParseDestination).
func parseTestTarget(s string) (host string, addr netip.Addr, port uint16, err error) {
	h, p, err := splitHostPort(s)
	if err != nil {
		return "", netip.Addr{}, 0, err
	}
	return ParseDestination(h, p)
}

// RunTests decides every test of the configuration, offline, in
// configuration order. It returns nil when the configuration has errors
// (c.Policy is nil).
func (c *Config) RunTests() []TestResult {
	if c == nil || c.Policy == nil {
		return nil
	}
	out := make([]TestResult, 0, len(c.Tests))
	for i := range c.Tests {
		out = append(out, c.Policy.RunTest(&c.Tests[i]))
	}
	return out
}

// RunTest decides one test. As in egressd check, an allowed IP target must
// also pass AddrAllowed (private destinations). Unlike check, which shows
// what the running mode does, a test states the verdict with the policy
// enforced: an audited allow (WouldDeny) keeps its policy reason
// (no_rule, ...), the one enforcement would give, rather than
// private_destination. Audit mode does not open private destinations, so
// an audited allow of one is no longer WouldDeny: it is refused, not let
// through.
func (p *Policy) RunTest(t *Test) TestResult {
	r := t.Request
	d := p.Decide(&r)
	if d.Allow && r.Addr.IsValid() && !d.AddrAllowed(r.Addr) {
		if d.WouldDeny {
			d.Allow, d.WouldDeny = false, false
		} else {
			d.Allow, d.Reason = false, ReasonPrivateDestination
		}
	}
	res := TestResult{Test: t, Decision: d}
	allowed := d.Allow && !d.WouldDeny // the verdict with the policy enforced
	switch {
	case allowed != t.ExpectAllow:
		res.Message = fmt.Sprintf("expected %s, got %s", verdictWord(t.ExpectAllow), DescribeDecision(d))
	case t.ExpectPolicy != "" && (d.Policy != t.ExpectPolicy || d.Rule != t.ExpectRule):
		res.Message = fmt.Sprintf("expected rule %s/%s, got %s", t.ExpectPolicy, t.ExpectRule, DescribeDecision(d))
	case t.ExpectReason != "" && d.Reason != t.ExpectReason:
		res.Message = fmt.Sprintf("expected reason %s, got %s", t.ExpectReason, DescribeDecision(d))
	case t.ExpectWouldDeny != nil && d.WouldDeny != *t.ExpectWouldDeny:
		res.Message = fmt.Sprintf("expected would_deny = %t, got %s", *t.ExpectWouldDeny, DescribeDecision(d))
	default:
		res.OK = true
	}
	return res
}

func verdictWord(allow bool) string {
	if allow {
		return "allow"
	}
	return "deny"
}

// DescribeDecision renders a decision with the policy enforced, as test
// reports print it: "allow (policy P rule R)", "deny (no_rule)", "deny
// (sni_mismatch, policy P rule R)", and for an audit-mode allow "deny
// (no_rule, would_deny)".
func DescribeDecision(d Decision) string {
	var b strings.Builder
	b.WriteString(verdictWord(d.Allow && !d.WouldDeny))
	b.WriteString(" (")
	sep := ""
	if !d.Allow || d.WouldDeny {
		b.WriteString(string(d.Reason))
		sep = ", "
	}
	if d.Policy != "" {
		fmt.Fprintf(&b, "%spolicy %s rule %s", sep, d.Policy, d.Rule)
		sep = ", "
	}
	if d.WouldDeny {
		b.WriteString(sep + "would_deny")
	}
	if b.Len() == len("allow (") && d.Allow {
		b.WriteString(string(d.Reason))
	}
	b.WriteString(")")
	return b.String()
}
