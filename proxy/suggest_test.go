package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/rs/zerolog"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sni"
)

// line builds a decision line from its fields.
func line(fields string) string {
	return `{"level":"info","conn":1,` + fields + `,"time":"2026-11-23T10:00:00Z","message":"decision"}` + "\n"
}

func suggest(t *testing.T, in string) string {
	t.Helper()
	out, err := Suggest(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// requireParses parses the suggestion with extra configuration files.
func requireParses(t *testing.T, out string, extra ...policy.File) *policy.Config {
	t.Helper()
	files := append([]policy.File{{Name: "suggested.hcl", Src: []byte(out)}}, extra...)
	cfg, diags := policy.Parse(files)
	if diags.HasErrors() {
		t.Fatalf("suggestion does not parse:\n%s\n%s", policy.FormatDiagnostics(diags), out)
	}
	return cfg
}

func TestSuggest(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // regexps the output must match
		not  []string // regexps it must not match
	}{
		{"connect by name, ports merged, pre-check without sni",
			line(`"mode":"connect","client":"10.0.0.1:1","host":"api.github.com","port":443,"decision":"deny","reason":"no_rule"`) +
				line(`"mode":"connect","client":"10.0.0.1:2","host":"api.github.com","port":8443,"sni":"api.github.com","decision":"deny","reason":"no_rule"`),
			[]string{`(?m)^# client 10\.0\.0\.1: 1 destination, 2 connections$`, `policy "suggested-10-0-0-1" \{`,
				`cidrs = \["10\.0\.0\.1/32"\]`, `# 2 connections \(mode connect\), reason no_rule\n  allow "api-github-com-443-8443" \{\n    hosts     = \["api\.github\.com"\]\n    ports     = \[443, 8443\]\n    protocols = \["tcp"\]\n  \}`},
			[]string{`sni`}},
		{"connect to an address with sni",
			line(`"mode":"connect","client":"10.0.0.1:1","host":"198.41.192.7","port":7844,"sni":"h2.cftunnel.com","decision":"deny","reason":"no_rule"`),
			[]string{`allow "198-41-192-7-7844" \{\n    cidrs     = \["198\.41\.192\.7/32"\]\n    sni       = \["h2\.cftunnel\.com"\]\n    ports     = \[7844\]\n    protocols = \["tcp"\]\n  \}`}, nil},
		{"transparent ipv6, sni mismatch",
			line(`"mode":"transparent","client":"[2001:db8::9]:1","host":"2606:4700:a0::7","port":7844,"sni":"h2.cftunnel.com","decision":"deny","policy":"x","rule":"y","reason":"sni_mismatch"`),
			[]string{`# client 2001:db8::9:`, `cidrs = \["2001:db8::9/128"\]`, `cidrs +\= \["2606:4700:a0::7/128"\]`, `sni +\= \["h2\.cftunnel\.com"\]`, `reason sni_mismatch`}, nil},
		{"transparent without sni accepts any",
			line(`"mode":"transparent","client":"10.0.0.1:1","host":"203.0.113.10","port":443,"decision":"deny","reason":"no_rule"`),
			[]string{`no SNI seen`, `allow "203-0-113-10-443" \{\n    cidrs     = \["203\.0\.113\.10/32"\]\n    ports     = \[443\]\n    protocols = \["tcp"\]\n  \}`}, nil},
		{"quic",
			line(`"mode":"quic","client":"10.0.0.1:1","host":"198.41.192.7","port":7844,"sni":"quic.cftunnel.com","decision":"deny","reason":"no_rule"`) +
				line(`"mode":"quic","client":"10.0.0.1:2","host":"198.41.192.7","port":7844,"sni":"quic.cftunnel.com","decision":"deny","reason":"no_rule"`),
			[]string{`# 2 flows \(mode quic\), SNI quic\.cftunnel\.com, reason no_rule\n  allow "198-41-192-7-7844-quic" \{\n    cidrs     = \["198\.41\.192\.7/32"\]\n    sni       = \["quic\.cftunnel\.com"\]\n    ports     = \[7844\]\n    protocols = \["quic"\]\n  \}`}, nil},
		{"not tls",
			line(`"mode":"connect","client":"10.0.0.1:1","host":"git.example.com","port":22,"decision":"deny","reason":"not_tls"`),
			[]string{`allow "git-example-com-22-plain" \{\n    hosts       = \["git\.example\.com"\]\n    ports       = \[22\]\n    require_tls = false\n    protocols   = \["tcp"\]\n  \}`}, nil},
		{"plain http",
			line(`"mode":"http","client":"10.0.0.1:1","host":"deb.debian.org","port":80,"decision":"deny","reason":"no_rule"`),
			[]string{`allow "deb-debian-org-80-http" \{\n    hosts     = \["deb\.debian\.org"\]\n    ports     = \[80\]\n    protocols = \["tcp"\]\n  \}`}, []string{`require_tls`}},
		{"would deny, grouped by identity",
			line(`"mode":"connect","client":"10.20.0.5:1","identity":"cidr:ci-runners","host":"registry.npmjs.org","port":443,"sni":"registry.npmjs.org","decision":"allow","would_deny":true,"reason":"no_rule"`),
			[]string{`# identity cidr:ci-runners: 1 destination, 1 connection`, `policy "suggested-ci-runners"`, `1 would-deny \(audit\)`, `hosts +\= \["registry\.npmjs\.org"\]`}, nil},
		{"sni names kept to the ports they were seen on",
			line(`"mode":"transparent","client":"10.0.0.1:1","host":"203.0.113.9","port":443,"sni":"a.example","decision":"deny","reason":"no_rule"`) +
				line(`"mode":"transparent","client":"10.0.0.1:1","host":"203.0.113.9","port":8443,"sni":"b.example","decision":"deny","reason":"no_rule"`),
			[]string{`allow "203-0-113-9-443" \{\n    cidrs     = \["203\.0\.113\.9/32"\]\n    sni       = \["a\.example"\]\n    ports     = \[443\]\n`,
				`allow "203-0-113-9-8443" \{\n    cidrs     = \["203\.0\.113\.9/32"\]\n    sni       = \["b\.example"\]\n    ports     = \[8443\]\n`},
			[]string{`443, 8443`}},
		{"a client group past 64 addresses still gets its rules",
			func() string {
				var b strings.Builder
				for i := range 70 {
					b.WriteString(line(fmt.Sprintf(`"mode":"connect","client":"10.1.0.%d:1","identity":"cidr:pods","host":"api.example","port":443,"decision":"deny","reason":"no_rule"`, i)))
				}
				return b.String() + line(`"mode":"connect","client":"10.1.0.200:1","identity":"cidr:pods","host":"new.example","port":443,"decision":"deny","reason":"no_rule"`)
			}(),
			[]string{`hosts +\= \["new\.example"\]`, `hosts +\= \["api\.example"\]`, `more than 64 addresses were seen`}, []string{`over the limits`}},
		{"unknown modes and identities that are no names are skipped",
			line(`"mode":"`+strings.Repeat("m", 1000)+`","client":"10.0.0.1:1","host":"a.example.com","port":443,"decision":"deny","reason":"no_rule"`) +
				line(`"mode":"connect","client":"10.0.0.1:1","identity":"cidr:`+strings.Repeat("i", 1000)+`","host":"a.example.com","port":443,"decision":"deny","reason":"no_rule"`),
			[]string{`no denied or would-deny connections`, `1 not connection decisions`, `1 with an identity that is not a user or policy name`}, []string{`mmmm`, `iiii`}},
		{"sorted by count, deterministic",
			line(`"mode":"connect","client":"10.0.0.2:1","host":"b.example.com","port":443,"decision":"deny","reason":"no_rule"`) +
				line(`"mode":"connect","client":"10.0.0.1:1","host":"a.example.com","port":443,"decision":"deny","reason":"no_rule"`) +
				line(`"mode":"connect","client":"10.0.0.2:1","host":"c.example.com","port":443,"decision":"deny","reason":"no_rule"`) +
				line(`"mode":"connect","client":"10.0.0.2:1","host":"c.example.com","port":443,"decision":"deny","reason":"no_rule"`),
			[]string{`(?s)suggested-10-0-0-2.*"c-example-com-443".*"b-example-com-443".*suggested-10-0-0-1.*"a-example-com-443"`}, nil},
		{"skipped lines are counted",
			"not json\n\n" + `{"message":"close","mode":"connect"}` + "\n" +
				line(`"mode":"dns","client":"10.0.0.1:1","host":"example.org","qtype":"A","decision":"deny","reason":"no_rule"`) +
				line(`"mode":"connect","client":"10.0.0.1:1","host":"cgr.dev","port":443,"sni":"cgr.dev","decision":"allow","reason":"allowed"`) +
				line(`"mode":"connect","client":"10.0.0.1:1","host":"x.example","port":443,"decision":"deny","policy":"p","rule":"r","reason":"denied_by_rule"`) +
				line(`"mode":"transparent","client":"10.0.0.1:1","host":"10.1.2.3","port":443,"sni":"db.internal","decision":"deny","reason":"no_rule"`) +
				line(`"mode":"connect","client":"10.0.0.1:1","host":"cgr.dev","port":443,"decision":"deny","reason":"sni_missing"`) +
				line(`"mode":"transparent","client":"10.0.0.1:1","host":"203.0.113.1","port":443,"sni":"203.0.113.1","decision":"deny","reason":"no_rule"`) +
				line(`"mode":"connect","client":"10.0.0.1:1","host":"127.1","port":443,"decision":"deny","reason":"bad_request"`) +
				strings.Repeat("x", suggestMaxLine+10) + "\n",
			[]string{`no denied or would-deny connections`, `(?m)^# 10 lines read; skipped: 1 not JSON; 1 longer than 1048576 bytes; 2 not connection decisions; 1 allowed; ` +
				`1 denied with bad_request \(no allow rule fixes it\); 1 denied with denied_by_rule \(no allow rule fixes it\); 1 with an SNI that is not a host name; 1 to private addresses \(never suggested\); 1 denied with sni_missing \(no allow rule fixes it\)$`},
			[]string{`policy`}},
		{"a hostile identity is skipped",
			line(`"mode":"connect","client":"10.0.0.1:1","identity":"cidr:x\"}\n${evil} %{y}","host":"a.example.com","port":443,"decision":"deny","reason":"no_rule"`),
			[]string{`1 with an identity that is not a user or policy name`}, []string{`evil`, `(?m)^policy`}},
		{"an identity with a blank is no user name",
			line(`"mode":"connect","client":"10.0.0.1:1","identity":"ci bot","host":"a.example.com","port":443,"decision":"deny","reason":"no_rule"`),
			[]string{`1 with an identity that is not a user or policy name`}, []string{`ci bot`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := suggest(t, tc.in)
			for _, re := range tc.want {
				if !regexp.MustCompile(re).MatchString(out) {
					t.Errorf("output does not match %s:\n%s", re, out)
				}
			}
			for _, re := range tc.not {
				if regexp.MustCompile(re).MatchString(out) {
					t.Errorf("output matches %s:\n%s", re, out)
				}
			}
			requireParses(t, out)
			if again := suggest(t, tc.in); again != out {
				t.Errorf("output not deterministic:\n%s\n---\n%s", out, again)
			}
		})
	}
}

// The original configuration the fixture log was written by: every policy
// is scoped to clients, the CI policies are in audit mode.
const suggestOriginal = `
policy "ci-runners" {
  mode = "audit"
  clients {
    cidrs = ["10.20.0.0/16"]
  }
  allow "old" {
    hosts = ["api.github.com"]
    ja4   = ["t13d1516h2_8daaf6152771_e5627efa2ab1"]
  }
}
policy "ci-user" {
  mode = "audit"
  clients {
    users = ["ci"]
  }
  allow "github" {
    hosts = ["github.com"]
  }
}
policy "servers" {
  clients {
    cidrs = ["10.30.0.0/16"]
  }
  allow "cgr" {
    hosts = ["cgr.dev"]
  }
  allow "enforce-api" {
    hosts = ["*.enforce.dev"]
    ja3   = ["3fed133de60c35724739b913924b6c24"]
  }
  deny "no-legacy" {
    hosts = ["legacy.example.com"]
  }
}
user "ci" {
  password_hash = %q
}
`

// fixtureLine is a decision line with the fields a Request needs.
type fixtureLine struct {
	logLine
	JA3 string `json:"ja3"`
	JA4 string `json:"ja4"`
}

// request is the policy.Request the proxy decided a line with (after the
// ClientHello).
func (l *fixtureLine) request(t *testing.T) policy.Request {
	t.Helper()
	r := policy.Request{Port: uint16(l.Port), SNI: l.SNI, JA3: l.JA3, JA4: l.JA4, Hello: policy.HelloTLS}
	if a, err := netip.ParseAddr(l.Host); err == nil {
		r.Addr = a
	} else if r.Host, err = policy.NormalizeHost(l.Host); err != nil {
		t.Fatal(err)
	}
	switch {
	case l.Mode == "http":
		r.Hello = policy.HelloHTTP
	case l.Reason == "not_tls":
		r.Hello = policy.HelloNotTLS
	case r.SNI == "":
		r.SNI = r.Host // refused before the hello; a client then sends the host
	}
	switch l.Mode {
	case "transparent":
		r.Transparent = true
	case "quic":
		r.Protocol, r.Transparent = policy.ProtocolQUIC, r.Addr.IsValid()
	}
	if ap, err := netip.ParseAddrPort(l.Client); err == nil {
		r.Client = ap.Addr()
	}
	if l.Identity != "" && !strings.HasPrefix(l.Identity, "cidr:") {
		r.User = l.Identity
	}
	return r
}

// TestSuggestRoundTrip: every connection of the fixture log that egressd
// suggest turns into a rule is allowed (enforced, not would-deny) once the
// suggestion is loaded with the original configuration, and was not before.
func TestSuggestRoundTrip(t *testing.T) {
	src, err := os.ReadFile("testdata/decisions.log")
	if err != nil {
		t.Fatal(err)
	}
	out := suggest(t, string(src))
	hash, err := policy.HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	orig := policy.File{Name: "original.hcl", Src: []byte(fmt.Sprintf(suggestOriginal, hash))}
	before, diags := policy.Parse([]policy.File{orig})
	if len(diags) > 0 {
		t.Fatalf("original:\n%s", policy.FormatDiagnostics(diags))
	}
	after := requireParses(t, out, orig)

	for _, want := range []string{
		`(?m)^# 24 lines read; skipped: 2 not JSON; 2 not connection decisions; 1 allowed; 1 denied with denied_by_rule`,
		`policy "suggested-ci-runners"`, `policy "suggested-ci"`, `users = \["ci"\]`, `protocols = \["quic"\]`, `require_tls = false`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("output does not match %s:\n%s", want, out)
		}
	}

	suggested := 0
	sc := bufio.NewScanner(bytes.NewReader(src))
	for n := 1; sc.Scan(); n++ {
		// Whether suggest kept the line: a fresh aggregate of it alone.
		one := newSuggestion()
		one.add(sc.Bytes())
		if one.rules == 0 {
			continue
		}
		suggested++
		var l fixtureLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		r := l.request(t)
		rb := r
		if d := before.Policy.Decide(&rb); d.Allow && !d.WouldDeny {
			t.Errorf("line %d: allowed before the suggestion: %+v", n, d)
		}
		d := after.Policy.Decide(&r)
		if !d.Allow || d.WouldDeny || !strings.HasPrefix(d.Policy, "suggested-") {
			t.Errorf("line %d (%+v): with the suggestion %s, want allow by a suggested policy", n, r, policy.DescribeDecision(d))
		}
		if d.Allow && r.Addr.IsValid() && !d.AddrAllowed(r.Addr) {
			t.Errorf("line %d: address %s refused", n, r.Addr)
		}
	}
	if suggested != 15 {
		t.Errorf("%d lines suggested, want 15", suggested)
	}
}

// TestSuggestReadsOwnLog ties Suggest to the log it reads: decision lines
// written by logDecision (not a fixture, which would not change when a
// field is renamed) must come back as rules for exactly the denials an
// allow rule can fix.
func TestSuggestReadsOwnLog(t *testing.T) {
	var buf bytes.Buffer
	s := &Server{log: zerolog.New(&buf).With().Timestamp().Logger(), metrics: newMetrics(nil)}
	write := func(mode, client, host string, port uint16, sniName string, d policy.Decision) {
		c := s.newConn(mode, client)
		c.host, c.port = host, port
		if sniName != "" {
			c.fingerprint(&sni.Hello{ServerName: sniName, LegacyVersion: 0x0303, CipherSuites: []uint16{0x1301}}, false)
		}
		c.decision = d
		s.logDecision(c)
		s.logClose(c, 1, 2)
	}
	write(ModeConnect, "10.0.0.7:1000", "api.example.com", 443, "api.example.com", policy.Decision{Reason: policy.ReasonNoRule})
	write(ModeTransparent, "10.0.0.8:1000", "203.0.113.9", 7844, "h2.cftunnel.com", policy.Decision{Reason: policy.ReasonNoRule})
	write(ModeConnect, "10.0.0.7:1001", "blocked.example.com", 443, "", policy.Decision{Reason: policy.ReasonDeniedByRule, Policy: "p", Rule: "r"})
	write(ModeConnect, "10.0.0.7:1002", "ok.example.com", 443, "ok.example.com", policy.Decision{Allow: true, Reason: policy.ReasonAllowed, Policy: "p", Rule: "r"})

	out := suggest(t, buf.String())
	cfg := requireParses(t, out)
	for _, r := range []policy.Request{
		{Host: "api.example.com", Port: 443, Hello: policy.HelloTLS, SNI: "api.example.com", Client: netip.MustParseAddr("10.0.0.7")},
		{Addr: netip.MustParseAddr("203.0.113.9"), Port: 7844, Hello: policy.HelloTLS, SNI: "h2.cftunnel.com", Client: netip.MustParseAddr("10.0.0.8"), Transparent: true},
	} {
		if d := cfg.Policy.Decide(&r); !d.Allow {
			t.Errorf("%+v: %s with the suggestion:\n%s", r, policy.DescribeDecision(d), out)
		}
	}
	for _, want := range []string{"8 lines read", "1 allowed", "1 denied with denied_by_rule"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "blocked.example.com") {
		t.Errorf("suggested a rule for a deny rule's denial:\n%s", out)
	}
}

// FuzzSuggest: any input, including hostile log lines, gives output that
// parses as a configuration (but for the proxy users it names, which the
// original configuration declares), and never a panic.
func FuzzSuggest(f *testing.F) {
	if src, err := os.ReadFile("testdata/decisions.log"); err == nil {
		for _, l := range strings.SplitAfter(string(src), "\n") {
			f.Add(l)
		}
	}
	f.Add(line(`"mode":"transparent","client":"10.0.0.1:1","host":"198.51.100.7","port":7844,"sni":"h2.cftunnel.com","decision":"deny","reason":"no_rule"`))
	f.Add(line(`"mode":"connect","identity":"user:ci","host":"*.x\"}","port":0,"decision":"deny","reason":"no_rule"`))
	f.Fuzz(func(t *testing.T, in string) {
		out, err := Suggest(strings.NewReader(in))
		if err != nil {
			t.Fatal(err) // a strings.Reader never fails
		}
		_, diags := policy.Parse([]policy.File{{Name: "suggested.hcl", Src: out}})
		for _, d := range diags {
			if d.Severity == hcl.DiagError && d.Summary != "Unknown user" {
				t.Fatalf("suggestion for %q does not parse:\n%s\n%s", in, policy.FormatDiagnostics(diags), out)
			}
		}
	})
}

// TestSuggestLimits: lines past the rule and per-rule bounds are counted,
// not kept, so a log of any size gives a bounded suggestion; a line past
// the length bound is skipped whole.
func TestSuggestLimits(t *testing.T) {
	deny := func(host string, port int) string {
		return line(fmt.Sprintf(`"mode":"connect","client":"10.0.0.1:1","host":%q,"port":%d,"decision":"deny","reason":"no_rule"`, host, port))
	}
	var b strings.Builder
	for i := range suggestMaxRules + 5 {
		b.WriteString(deny(fmt.Sprintf("h%d.example.com", i), 443))
	}
	out := suggest(t, b.String())
	if n := strings.Count(out, "  allow \""); n != suggestMaxRules {
		t.Errorf("%d rules, want the bound %d", n, suggestMaxRules)
	}
	if !strings.Contains(out, "skipped: 5 over the limits (") {
		t.Errorf("the 5 lines past the rule bound are not counted:\n%s", out[strings.LastIndex(out, "\n#"):])
	}

	b.Reset()
	for p := range suggestMaxSet + 3 {
		b.WriteString(deny("one.example.com", 1000+p))
	}
	b.WriteString(`{"message":"decision","host":"` + strings.Repeat("a", suggestMaxLine) + `"}` + "\n")
	b.WriteString(deny("two.example.com", 443))
	out = suggest(t, b.String())
	cfg := requireParses(t, out)
	for _, tc := range []struct {
		host  string
		port  uint16
		allow bool
	}{
		{"one.example.com", 1000, true},
		{"one.example.com", 1000 + suggestMaxSet - 1, true},
		{"one.example.com", 1000 + suggestMaxSet, false}, // past the per-rule bound
		{"two.example.com", 443, true},                   // after the over-long line
	} {
		r := policy.Request{Host: tc.host, Port: tc.port, Hello: policy.HelloTLS, SNI: tc.host, Client: netip.MustParseAddr("10.0.0.1")}
		if d := cfg.Policy.Decide(&r); d.Allow != tc.allow {
			t.Errorf("%s:%d: %s, want allow=%v", tc.host, tc.port, policy.DescribeDecision(d), tc.allow)
		}
	}
	for _, want := range []string{fmt.Sprintf("1 longer than %d bytes", suggestMaxLine), "3 over the limits ("} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}

	// Reasons egressd does not write are counted together, not each under
	// its own text: the counts and the summary do not grow with them.
	b.Reset()
	for i := range 100 {
		b.WriteString(line(fmt.Sprintf(`"mode":"connect","client":"10.0.0.1:1","host":"a.example.com","port":443,"decision":"deny","reason":"r%d-%s"`, i, strings.Repeat("x", 1000))))
	}
	b.WriteString(deny("b.example.com", 443))
	out = suggest(t, b.String())
	if !strings.Contains(out, "100 with a reason egressd does not write") || len(out) > 4096 {
		t.Errorf("100 lines with made-up reasons: %d bytes of output, want them counted as one:\n%.2000s", len(out), out)
	}
}
