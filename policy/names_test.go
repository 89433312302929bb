package policy

import (
	"strings"
	"testing"
)

func TestNormalizeHost(t *testing.T) {
	long63 := strings.Repeat("a", 63)
	long64 := strings.Repeat("a", 64)
	name253 := strings.Repeat(long63+".", 3) + strings.Repeat("b", 61) // 64*3+61 = 253
	tests := []struct {
		in      string
		want    string
		wantErr string // substring of the error; "" means no error
	}{
		{"example.com", "example.com", ""},
		{"EXAMPLE.com", "example.com", ""},
		{"example.com.", "example.com", ""},
		{"Example.COM.", "example.com", ""},
		{"a-b_c.example", "a-b_c.example", ""},
		{"_v2-origintunneld._tcp.argotunnel.com", "_v2-origintunneld._tcp.argotunnel.com", ""},
		{"localhost", "localhost", ""},
		{"1.example.com", "1.example.com", ""},
		{"bücher.example", "xn--bcher-kva.example", ""},
		{"BÜCHER.example.", "xn--bcher-kva.example", ""},
		{"xn--bcher-kva.example", "xn--bcher-kva.example", ""},
		{"例え.テスト", "xn--r8jz45g.xn--zckzah", ""},
		{"ｅｘａｍｐｌｅ.com", "example.com", ""}, // full-width letters map to ASCII
		{long63 + ".com", long63 + ".com", ""},
		{name253, name253, ""},

		{"", "", "empty"},
		{".", "", "empty"},
		{"a..b", "", "empty label"},
		{".a", "", "empty label"},
		{"a.com..", "", "empty label"},
		{long64 + ".com", "", "longer than 63"},
		{name253 + "b", "", "longer than 253"},
		{strings.Repeat("a", 2000), "", "longer than 253"},
		{"exa mple.com", "", "' '"},
		{"exa\x00mple.com", "", `'\x00'`},
		{"example.com/path", "", "'/'"},
		{"user@example.com", "", "'@'"},
		{"example.com:443", "", "':'"},
		{"*.example.com", "", "'*'"},
		{"ex\xffample.com", "", "invalid UTF-8"},
		{"ex\ufffdample.com", "", "invalid UTF-8"},
		{"a\u200db.com", "", "not a valid internationalized name"}, // ZWJ outside a joining context
		{"\u0301a.com", "", "not a valid internationalized name"},  // label starts with a combining mark
		{"a\uff0fb.com", "", "'／'"},                                // full-width solidus maps to '/'

		// IP addresses, canonical and not.
		{"1.2.3.4", "", "is an IP address, not a host name"},
		{"::1", "", "is an IP address, not a host name"},
		{"[::1]", "", "is an IP address, not a host name"},
		{"127.1", "", "non-canonical form; refused"},
		{"0x7f.0.0.1", "", "non-canonical form; refused"},
		{"0x7f000001", "", "non-canonical form; refused"},
		{"017700000001", "", "non-canonical form; refused"},
		{"2130706433", "", "non-canonical form; refused"},
		{"127.0.0.1.", "", "is an IP address, not a host name"},
		{"foo.0x1f", "", "non-canonical form; refused"},
		{"example.123", "", "non-canonical form; refused"},
		{"１２７.０.０.１", "", "IP address"}, // full-width digits
	}
	for _, tt := range tests {
		got, err := NormalizeHost(tt.in)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("NormalizeHost(%q) error: %v", tt.in, err)
		case tt.wantErr == "" && got != tt.want:
			t.Errorf("NormalizeHost(%q) = %q, want %q", tt.in, got, tt.want)
		case tt.wantErr != "" && err == nil:
			t.Errorf("NormalizeHost(%q) = %q, want error containing %q", tt.in, got, tt.wantErr)
		case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
			t.Errorf("NormalizeHost(%q) error %q, want it to contain %q", tt.in, err, tt.wantErr)
		}
	}
}

func TestNormalizeHostNoAlloc(t *testing.T) {
	for _, s := range []string{"example.com", "a.b.c.example.com.", "_sip._tcp.example.com"} {
		if n := testing.AllocsPerRun(100, func() { _, _ = NormalizeHost(s) }); n != 0 {
			t.Errorf("NormalizeHost(%q) allocates %v times, want 0", s, n)
		}
	}
	s := "example.com"
	if got, _ := NormalizeHost(s); got != s {
		t.Errorf("NormalizeHost(%q) = %q", s, got)
	}
}

func TestParsePattern(t *testing.T) {
	tests := []struct {
		in      string
		kind    patKind
		name    string
		summary string // "" = valid
	}{
		{"Example.COM.", patExact, "example.com", ""},
		{"*.Example.com", patWildcard, "example.com", ""},
		{"*.bücher.example", patWildcard, "xn--bcher-kva.example", ""},
		{"*", patAny, "", ""},
		{"foo*.com", 0, "", "Invalid wildcard"},
		{"a.*.com", 0, "", "Invalid wildcard"},
		{"*foo.com", 0, "", "Invalid wildcard"},
		{"*.*.com", 0, "", "Invalid wildcard"},
		{"**", 0, "", "Invalid wildcard"},
		{"*.", 0, "", "Invalid host name"},
		{"1.2.3.4", 0, "", "use cidrs"},
		{"2001:db8::1", 0, "", "use cidrs"},
		{"[2001:db8::1]", 0, "", "use cidrs"},
		{"bad host", 0, "", "Invalid host name"},
	}
	for _, tt := range tests {
		p, perr := parsePattern(tt.in, "hosts")
		switch {
		case tt.summary == "" && perr != nil:
			t.Errorf("parsePattern(%q): %s: %s", tt.in, perr.summary, perr.detail)
		case tt.summary == "" && (p.kind != tt.kind || p.name != tt.name):
			t.Errorf("parsePattern(%q) = %+v, want kind %d name %q", tt.in, p, tt.kind, tt.name)
		case tt.summary != "" && perr == nil:
			t.Errorf("parsePattern(%q) = %+v, want error %q", tt.in, p, tt.summary)
		case tt.summary != "" && !strings.Contains(perr.summary, tt.summary):
			t.Errorf("parsePattern(%q) error %q, want %q", tt.in, perr.summary, tt.summary)
		}
	}
	if _, perr := parsePattern("1.2.3.4", "sni"); perr == nil || !strings.Contains(perr.summary, "IP address in sni") {
		t.Errorf("IP in sni: got %+v", perr)
	}
}

func TestPatternMatch(t *testing.T) {
	wild := pattern{kind: patWildcard, name: "example.com"}
	tests := []struct {
		p    pattern
		name string
		want bool
	}{
		{wild, "a.example.com", true},
		{wild, "a.b.example.com", true},
		{wild, "example.com", false},
		{wild, "aexample.com", false},
		{wild, "a.example.co", false},
		{wild, ".example.com", false}, // empty first label: not a name
		{pattern{kind: patExact, name: "example.com"}, "example.com", true},
		{pattern{kind: patExact, name: "example.com"}, "a.example.com", false},
		{pattern{kind: patAny}, "anything.test", true},
		{pattern{kind: patAny}, "", false},
	}
	for _, tt := range tests {
		if got := tt.p.match(tt.name); got != tt.want {
			t.Errorf("%+v.match(%q) = %v, want %v", tt.p, tt.name, got, tt.want)
		}
	}
}

func TestIsPublicSuffix(t *testing.T) {
	tests := []struct {
		s    string
		want bool
	}{
		{"com", true},
		{"co.uk", true},
		{"github.io", true}, // private section
		{"uk", true},
		{"example.com", false},
		{"test", false}, // unknown TLD: PublicSuffix returns "test" with icann=false
		{"egress.test", false},
		{"r2.cloudflarestorage.com", false},
		{"enforce.dev", false},
		// every child is a suffix: wildcard entries of the list
		{"ck", true},
		{"er", true},
		{"kawasaki.jp", true},
		{"compute.amazonaws.com", true},
		{"amazonaws.com", false},
		{"argotunnel.com", false},
		{"cloudflareaccess.com", false},
	}
	for _, tt := range tests {
		if got := isPublicSuffix(tt.s); got != tt.want {
			t.Errorf("isPublicSuffix(%q) = %v, want %v", tt.s, got, tt.want)
		}
	}
}
