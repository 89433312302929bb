package policy

import (
	"net/netip"
	"os"
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzParse(f *testing.F) {
	if src, err := os.ReadFile("testdata/example.hcl"); err == nil {
		f.Add(src)
	}
	f.Add([]byte(decideConfig))
	f.Add([]byte(ruleSrc(`hosts = ["*.com", "foo*.com", "1.2.3.4"]`, `ports = [0, "9-3", 1.5]`, `cidrs = ["10.0.0.1/8"]`)))
	f.Add([]byte("server {\n  http_listen = \"[::1]:0\"\n  hello_timeout = \"1ns\"\n}\nresolver { servers = [\"::1\"] }\n"))
	f.Add([]byte("policy \"p\" {\n  allow \"r\" {\n    hosts = [for x in [1] : x]\n    ports = [1/0]\n  }\n}\n"))
	f.Add([]byte("policy \"p\" { allow \"r\" { hosts = [\"${upper(\"a\")}\"] } }"))
	f.Add([]byte("policy \"p\" {\n  allow \"r\" {\n    hosts = [\"a.test\"]\n    ports = [1e400, -0, \"65535-65535\"]\n  }\n}\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, diags := Parse([]File{{Name: "f.hcl", Src: src}})
		if cfg == nil {
			t.Fatal("nil Config")
		}
		_ = FormatDiagnostics(diags)
		for _, d := range diags {
			if d.Severity == 0 {
				t.Errorf("diagnostic without severity: %+v", d)
			}
		}
		if diags.HasErrors() {
			if cfg.Policy != nil {
				t.Fatal("Policy set despite errors")
			}
			return
		}
		if cfg.Policy == nil {
			t.Fatal("no errors but no Policy")
		}
		for _, r := range []Request{
			{Host: "a.test", Port: 443, Hello: HelloTLS, SNI: "a.test"},
			{Addr: netip.MustParseAddr("10.0.0.1"), Port: 443},
			{Host: "x.example.com", Port: 80, Hello: HelloHTTP},
		} {
			_ = cfg.Policy.Decide(&r)
		}
	})
}

func FuzzNormalizeHost(f *testing.F) {
	for _, s := range []string{
		"example.com", "Example.COM.", "bücher.example", "_sip._tcp.example.com", "127.1",
		"0x7f.0.0.1", "1.2.3.4", "[::1]", "a..b", "", ".", "xn--bcher-kva.example", "例え.テスト",
		"ｅｘａｍｐｌｅ.com", "a\u200db.com", "ex\xffample", strings.Repeat("a.", 130),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := NormalizeHost(s)
		if err != nil {
			if n != "" {
				t.Fatalf("NormalizeHost(%q) = %q with error %v", s, n, err)
			}
			if !utf8.ValidString(err.Error()) {
				t.Fatalf("error message is not UTF-8: %q", err.Error())
			}
			return
		}
		if len(n) == 0 || len(n) > maxNameLen {
			t.Fatalf("NormalizeHost(%q) = %q: bad length", s, n)
		}
		for i := 0; i < len(n); i++ {
			c := n[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
				t.Fatalf("NormalizeHost(%q) = %q: byte %q not allowed", s, n, c)
			}
		}
		n2, err := NormalizeHost(n)
		if err != nil || n2 != n {
			t.Fatalf("not idempotent: NormalizeHost(%q) = %q, NormalizeHost(%q) = %q, %v", s, n, n, n2, err)
		}
		if _, e := parsePattern(n, "hosts"); e != nil {
			t.Fatalf("normalized name %q is not a valid hosts entry: %s", n, e.detail)
		}
	})
}

func FuzzDecide(f *testing.F) {
	f.Add("example.com", []byte{}, uint16(443), uint8(HelloTLS), "example.com", ja3Good, ja4Good)
	f.Add("", []byte{198, 41, 192, 7}, uint16(7844), uint8(HelloTLS), "h2.cftunnel.com", "", "")
	f.Add("", []byte{10, 1, 2, 3}, uint16(443), uint8(HelloPending), "", "", "")
	f.Add("legacy.enforce.dev", []byte{}, uint16(443), uint8(HelloNotTLS), "", "", "")
	f.Add("", []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint16(8443), uint8(HelloHTTP), "x", "", "")
	p := mustParse(f, decideConfig).Policy
	valid := map[Reason]bool{}
	for _, r := range Reasons() {
		valid[r] = true
	}
	f.Fuzz(func(t *testing.T, h string, addr []byte, port uint16, hello uint8, sni, ja3, ja4 string) {
		r := Request{Port: port, Hello: Hello(hello % 5), SNI: sni, JA3: ja3, JA4: ja4}
		if n, err := NormalizeHost(h); err == nil {
			r.Host = n
		}
		if a, ok := netip.AddrFromSlice(addr); ok {
			r.Addr = a
		}
		d := p.Decide(&r)
		if !valid[d.Reason] {
			t.Fatalf("unknown reason %q", d.Reason)
		}
		if d.Allow != (d.Reason == ReasonAllowed) {
			t.Fatalf("Allow=%v with reason %s", d.Allow, d.Reason)
		}
		if d.Allow && (d.Policy == "" || d.Rule == "") {
			t.Fatalf("allowed without a rule: %+v", d)
		}
		if d.Allow && r.Addr.IsValid() && !d.AddrAllowed(r.Addr) {
			t.Fatalf("Decide allowed %s but AddrAllowed refuses it: %+v", r.Addr, d)
		}
		// HelloPending asks "could any rule allow this?": whatever a later
		// stage allows, the pending check must allow too.
		if d.Allow && r.Hello != HelloPending {
			pr := r
			pr.Hello, pr.SNI, pr.JA3, pr.JA4 = HelloPending, "", "", ""
			if pd := p.Decide(&pr); !pd.Allow {
				t.Fatalf("%+v allowed by %s/%s but pending check denies: %+v", r, d.Policy, d.Rule, pd)
			}
		}
	})
}
