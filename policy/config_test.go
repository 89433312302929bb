package policy

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// ruleSrc wraps attribute lines in `policy "p" { allow "r" { ... } }`.
// The first attribute line is line 3 and starts at column 5, so the first
// element of `hosts = [...]`, `cidrs = [...]` or `ports = [...]` is at
// column 14 and that of `sni = [...]`, `ja3 = [...]`, `ja4 = [...]` at 12.
func ruleSrc(attrs ...string) string {
	return "policy \"p\" {\n  allow \"r\" {\n    " + strings.Join(attrs, "\n    ") + "\n  }\n}\n"
}

func one(src string) []File { return []File{{Name: "t.hcl", Src: []byte(src)}} }

func TestDiagnostics(t *testing.T) {
	tests := []struct {
		name  string
		files []File
		pos   string // "file:line:col"
		sev   string // "error" or "warning"
		word  string // must appear in the summary or detail
	}{
		// An IP in hosts: the cidrs entry the detail suggests is one cidrs accepts.
		{"IPv4 in hosts", one(ruleSrc(`hosts = ["1.2.3.4"]`)), "t.hcl:3:14", "error", `cidrs = ["1.2.3.4"]`},
		{"IPv4 with a trailing dot in hosts", one(ruleSrc(`hosts = ["1.2.3.4."]`)), "t.hcl:3:14", "error", `cidrs = ["1.2.3.4"]`},
		{"bracketed IPv6 in hosts", one(ruleSrc(`hosts = ["[2001:db8::1]"]`)), "t.hcl:3:14", "error", `cidrs = ["2001:db8::1"]`},
		// Schema: unknown attributes and blocks.
		{"unknown rule attribute", one(ruleSrc(`hosts = ["a.test"]`, `portz = [443]`)), "t.hcl:4:5", "error", `Did you mean "ports"`},
		{"unknown server attribute", one("server {\n  listen = \"x\"\n}\n"), "t.hcl:2:3", "error", "Unsupported argument"},
		// Gateway DNS server.
		{"bad dns_listen", one("server {\n  dns_listen = \"nope\"\n}\n"), "t.hcl:2:16", "error", "Invalid listen address"},
		{"bad dns_refuse", one("server {\n  dns_refuse = \"drop\"\n}\n"), "t.hcl:2:16", "error", "Invalid dns_refuse"},
		{"dns_refuse not a string", one("server {\n  dns_refuse = 3\n}\n"), "t.hcl:2:16", "error", "dns_refuse"},
		{"dns_listen overlaps transparent_listen", one("server {\n  transparent_listen = \"0.0.0.0:5353\"\n  dns_listen = \"127.0.0.1:5353\"\n}\n"), "t.hcl:3:16", "error", "Overlapping listeners"},
		{"dns_listen overlaps http_listen", one("server {\n  http_listen = \"127.0.0.1:53\"\n  dns_listen = \":53\"\n}\n"), "t.hcl:3:16", "error", "Overlapping listeners"},
		// Operations settings.
		{"bad admin_listen", one("server {\n  admin_listen = \"9090\"\n}\n"), "t.hcl:2:18", "error", "Invalid listen address"},
		{"overlap on port 65535 suggests 65534", one("server {\n  http_listen = \"127.0.0.1:65535\"\n  admin_listen = \"127.0.0.1:65535\"\n}\n"), "t.hcl:3:18", "error", `"127.0.0.1:65534"`},
		{"admin_listen overlaps http_listen", one("server {\n  http_listen = \"127.0.0.1:9090\"\n  admin_listen = \"0.0.0.0:9090\"\n}\n"), "t.hcl:3:18", "error", "Overlapping listeners"},
		{"bad server mode", one("server {\n  mode = \"permissive\"\n}\n"), "t.hcl:2:10", "error", "Invalid mode"},
		{"max_connections zero", one("server {\n  max_connections = 0\n}\n"), "t.hcl:2:21", "error", "Invalid max_connections"},
		{"max_connections_per_client huge", one("server {\n  max_connections_per_client = 4000000\n}\n"), "t.hcl:2:32", "error", "Invalid max_connections_per_client"},
		{"bad shutdown_grace", one("server {\n  shutdown_grace = \"soon\"\n}\n"), "t.hcl:2:20", "error", "Invalid duration"},
		{"empty users_file", one("server {\n  users_file = \"\"\n}\n"), "t.hcl:2:16", "error", "Empty users_file"},
		// QUIC listener and rule protocols.
		{"bad quic_listen", one("server {\n  quic_listen = \"15002\"\n}\n"), "t.hcl:2:17", "error", "Invalid listen address"},
		{"quic_listen overlaps dns_listen", one("server {\n  dns_listen = \"0.0.0.0:5353\"\n  quic_listen = \"127.0.0.1:5353\"\n}\n"), "t.hcl:3:17", "error", "Overlapping listeners"},
		{"unknown protocol", one(ruleSrc(`hosts = ["a.test"]`, `protocols = ["udp"]`)), "t.hcl:4:18", "error", "Invalid protocol"},
		{"empty protocols", one(ruleSrc(`hosts = ["a.test"]`, `protocols = []`)), "t.hcl:4:17", "error", "Empty protocols list"},
		{"protocols not strings", one(ruleSrc(`hosts = ["a.test"]`, `protocols = [443]`)), "t.hcl:4:18", "error", "protocols"},
		{"unknown top-level block", one("firewall {}\n"), "t.hcl:1:1", "error", "Unsupported block type"},
		{"unknown block in policy", one("policy \"p\" {\n  permit \"r\" {}\n}\n"), "t.hcl:2:3", "error", "Unsupported block type"},
		{"policy without name", one("policy {\n}\n"), "t.hcl:1:8", "error", "Missing name for policy"},
		{"server with a label", one("server \"x\" {}\n"), "t.hcl:1:8", "error", "Extraneous label"},
		{"syntax error", one("policy \"p\" {\n  allow \"r\" {\n"), "t.hcl:2:13", "error", "Unclosed configuration block"},

		// Wildcard misuse.
		{"star inside first label", one(ruleSrc(`hosts = ["foo*.com"]`)), "t.hcl:3:14", "error", "Invalid wildcard"},
		{"star as middle label", one(ruleSrc(`hosts = ["a.*.com"]`)), "t.hcl:3:14", "error", "Invalid wildcard"},
		{"star prefix without dot", one(ruleSrc(`hosts = ["*foo.com"]`)), "t.hcl:3:14", "error", "Invalid wildcard"},
		{"two stars", one(ruleSrc(`hosts = ["*.*.com"]`)), "t.hcl:3:14", "error", "Invalid wildcard"},
		{"wildcard in second element", one(ruleSrc(`hosts = ["ok.test", "x.*"]`)), "t.hcl:3:25", "error", "Invalid wildcard"},
		{"wildcard in sni", one(ruleSrc(`hosts = ["a.test"]`, `sni = ["*a.test"]`)), "t.hcl:4:12", "error", "Invalid wildcard"},
		{"bad host name", one(ruleSrc(`hosts = ["a..test"]`)), "t.hcl:3:14", "error", "empty label"},
		{"non-canonical IP as host", one(ruleSrc(`hosts = ["127.1"]`)), "t.hcl:3:14", "error", "non-canonical"},

		// IP addresses in hosts.
		{"IPv4 in hosts", one(ruleSrc(`hosts = ["1.2.3.4"]`)), "t.hcl:3:14", "error", "use cidrs"},
		{"IPv6 in hosts", one(ruleSrc(`hosts = ["2001:db8::1"]`)), "t.hcl:3:14", "error", "use cidrs"},
		{"IP in sni", one(ruleSrc(`hosts = ["a.test"]`, `sni = ["1.2.3.4"]`)), "t.hcl:4:12", "error", "IP address in sni"},

		// CIDRs.
		{"bad CIDR", one(ruleSrc(`cidrs = ["zz"]`)), "t.hcl:3:14", "error", "Invalid CIDR"},
		{"CIDR bits too large", one(ruleSrc(`cidrs = ["10.0.0.0/33"]`)), "t.hcl:3:14", "error", "Invalid CIDR"},
		{"CIDR with zone", one(ruleSrc(`cidrs = ["fe80::1%eth0"]`)), "t.hcl:3:14", "error", "Invalid CIDR"},
		{"non-canonical v4 CIDR", one(ruleSrc(`cidrs = ["10.0.0.1/8"]`)), "t.hcl:3:14", "error", `"10.0.0.0/8"`},
		{"non-canonical v6 CIDR", one(ruleSrc(`cidrs = ["2001:db8::1/32"]`)), "t.hcl:3:14", "error", `"2001:db8::/32"`},
		{"IPv4-mapped CIDR", one(ruleSrc(`cidrs = ["::ffff:10.0.0.0/104"]`)), "t.hcl:3:14", "error", "10.0.0.0/8"},

		// Ports.
		{"port 0", one(ruleSrc(`hosts = ["a.test"]`, `ports = [0]`)), "t.hcl:4:14", "error", "Invalid port"},
		{"port 70000", one(ruleSrc(`hosts = ["a.test"]`, `ports = [70000]`)), "t.hcl:4:14", "error", "Invalid port"},
		{"port string 70000", one(ruleSrc(`hosts = ["a.test"]`, `ports = ["70000"]`)), "t.hcl:4:14", "error", "out of range"},
		{"port range backwards", one(ruleSrc(`hosts = ["a.test"]`, `ports = ["9-3"]`)), "t.hcl:4:14", "error", `write "3-9"`},
		{"port not a number", one(ruleSrc(`hosts = ["a.test"]`, `ports = ["x"]`)), "t.hcl:4:14", "error", "not a port number"},
		{"port range from 0", one(ruleSrc(`hosts = ["a.test"]`, `ports = ["0-5"]`)), "t.hcl:4:14", "error", "out of range"},
		{"port range open", one(ruleSrc(`hosts = ["a.test"]`, `ports = ["80-"]`)), "t.hcl:4:14", "error", "not a port number"},
		{"negative port", one(ruleSrc(`hosts = ["a.test"]`, `ports = [-1]`)), "t.hcl:4:14", "error", "whole number from 1 to 65535"},
		{"fractional port", one(ruleSrc(`hosts = ["a.test"]`, `ports = [1.5]`)), "t.hcl:4:14", "error", "whole number from 1 to 65535"},
		{"huge port", one(ruleSrc(`hosts = ["a.test"]`, `ports = [1e4000000]`)), "t.hcl:4:14", "error", "whole number from 1 to 65535"},
		{"port number 0", one(ruleSrc(`hosts = ["a.test"]`, `ports = ["0"]`)), "t.hcl:4:14", "error", "out of range"},
		{"bool port", one(ruleSrc(`hosts = ["a.test"]`, `ports = [true]`)), "t.hcl:4:14", "error", "Wrong type"},
		{"second port bad", one(ruleSrc(`hosts = ["a.test"]`, `ports = [443, 0]`)), "t.hcl:4:19", "error", "Invalid port"},

		// Names.
		{"duplicate policy across files", []File{
			{Name: "a.hcl", Src: []byte("policy \"dup\" {\n  allow \"r\" { hosts = [\"a.test\"] }\n}\n")},
			{Name: "b.hcl", Src: []byte("policy \"dup\" {\n  allow \"r\" { hosts = [\"b.test\"] }\n}\n")},
		}, "b.hcl:1:8", "error", "a.hcl:1:8"},
		{"duplicate rule name (allow and deny)", one("policy \"p\" {\n  allow \"r\" { hosts = [\"a.test\"] }\n  deny \"r\" { hosts = [\"b.test\"] }\n}\n"), "t.hcl:3:8", "error", "Duplicate rule name"},
		{"bad rule name", one("policy \"p\" {\n  allow \"has space\" { hosts = [\"a.test\"] }\n}\n"), "t.hcl:2:9", "error", "Invalid rule name"},
		{"bad policy name", one("policy \"\" {\n}\n"), "t.hcl:1:8", "error", "Invalid policy name"},

		// One block of a kind.
		{"two server blocks", []File{
			{Name: "a.hcl", Src: []byte("server {}\n")},
			{Name: "b.hcl", Src: []byte("\nserver {}\n")},
		}, "b.hcl:2:1", "error", "a.hcl:1:1"},
		{"two resolver blocks", one("resolver {}\nresolver {}\n"), "t.hcl:2:1", "error", "Duplicate resolver block"},
		{"two log blocks", one("log {}\nlog {}\n"), "t.hcl:2:1", "error", "Duplicate log block"},

		// Server settings.
		{"duration without unit", one("server {\n  hello_timeout = \"10\"\n}\n"), "t.hcl:2:19", "error", "Invalid duration"},
		{"negative duration", one("server {\n  idle_timeout = \"-5s\"\n}\n"), "t.hcl:2:18", "error", "greater than zero"},
		{"zero duration", one("server {\n  dial_timeout = \"0s\"\n}\n"), "t.hcl:2:18", "error", "greater than zero"},
		{"duration wrong type", one("server {\n  dial_timeout = 10\n}\n"), "t.hcl:2:18", "error", "Wrong type"},
		{"listen without port", one("server {\n  http_listen = \"127.0.0.1\"\n}\n"), "t.hcl:2:17", "error", "Invalid listen address"},
		{"listen port too large", one("server {\n  http_listen = \"127.0.0.1:99999\"\n}\n"), "t.hcl:2:17", "error", "Invalid listen address"},
		{"listen bad host", one("server {\n  http_listen = \"bad host:80\"\n}\n"), "t.hcl:2:17", "error", "Invalid listen address"},
		{"transparent_listen without port", one("server {\n  transparent_listen = \"0.0.0.0\"\n}\n"), "t.hcl:2:24", "error", "Invalid listen address"},
		{"transparent_listen overlaps http_listen", one("server {\n  http_listen = \"127.0.0.1:3128\"\n  transparent_listen = \":3128\"\n}\n"), "t.hcl:3:24", "error", "Overlapping listeners"},
		{"bad transparent_mode", one("server {\n  transparent_mode = \"nat\"\n}\n"), "t.hcl:2:22", "error", "Invalid transparent_mode"},
		{"bad server verify_destination", one("server {\n  verify_destination = \"allow\"\n}\n"), "t.hcl:2:24", "error", "Invalid verify_destination"},
		{"upstream_mark negative", one("server {\n  upstream_mark = -1\n}\n"), "t.hcl:2:19", "error", "Invalid upstream_mark"},
		{"upstream_mark too large", one("server {\n  upstream_mark = 4294967296\n}\n"), "t.hcl:2:19", "error", "Invalid upstream_mark"},
		{"upstream_mark wrong type", one("server {\n  upstream_mark = \"1\"\n}\n"), "t.hcl:2:19", "error", "Wrong type"},
		{"bad rule verify_destination", one(ruleSrc(`hosts = ["a.test"]`, `verify_destination = "skip"`)), "t.hcl:4:26", "error", "Invalid verify_destination"},
		{"verify_destination in deny rule", one("policy \"p\" {\n  deny \"r\" {\n    hosts = [\"a.test\"]\n    verify_destination = \"refuse\"\n  }\n}\n"), "t.hcl:4:26", "warning", "no effect in a deny rule"},
		{"allow_private_destinations wrong type", one("server {\n  allow_private_destinations = \"yes\"\n}\n"), "t.hcl:2:32", "error", "true or false"},

		// Resolver and log.
		{"resolver by name", one("resolver {\n  servers = [\"dns.example:53\"]\n}\n"), "t.hcl:2:14", "error", "not an IP address"},
		{"resolver port 0", one("resolver {\n  servers = [\"1.1.1.1:0\"]\n}\n"), "t.hcl:2:14", "error", "Invalid resolver server"},
		{"bad log format", one("log {\n  format = \"xml\"\n}\n"), "t.hcl:2:12", "error", "Invalid log format"},
		{"empty log output", one("log {\n  output = \"\"\n}\n"), "t.hcl:2:12", "error", "Invalid log output"},

		// Public suffixes and "*".
		{"wildcard over com", one(ruleSrc(`hosts = ["*.com"]`)), "t.hcl:3:14", "error", "public suffix"},
		{"wildcard over co.uk", one(ruleSrc(`hosts = ["*.co.uk"]`)), "t.hcl:3:14", "error", "public suffix"},
		{"wildcard over github.io", one(ruleSrc(`hosts = ["*.github.io"]`)), "t.hcl:3:14", "error", "public suffix"},
		{"wildcard over public suffix in sni", one(ruleSrc(`hosts = ["a.test"]`, `sni = ["*.com"]`)), "t.hcl:4:12", "error", "public suffix"},
		{"star alone warns", one(ruleSrc(`hosts = ["*"]`)), "t.hcl:3:14", "warning", `"*" matches every host name`},
		{"require_tls in a deny rule warns", one("policy \"p\" {\n  deny \"r\" {\n    hosts       = [\"a.test\"]\n    require_tls = false\n  }\n}\n"), "t.hcl:4:19", "warning", "no effect"},

		// Rule consistency.
		{"require_tls=false with sni", one(ruleSrc(`hosts = ["a.test"]`, `require_tls = false`, `sni = ["a.test"]`)), "t.hcl:5:11", "error", "sni needs TLS"},
		{"require_tls=false with ja3", one(ruleSrc(`hosts = ["a.test"]`, `require_tls = false`, `ja3 = ["`+ja3Good+`"]`)), "t.hcl:5:11", "error", "ja3 needs TLS"},
		{"allow rule with neither hosts nor cidrs", one(ruleSrc(`ports = [443]`)), "t.hcl:2:3", "error", "needs hosts or cidrs"},
		{"deny rule with neither hosts nor cidrs", one("policy \"p\" {\n  deny \"r\" {\n    ja3 = [\"" + ja3Good + "\"]\n  }\n}\n"), "t.hcl:2:3", "error", "needs hosts or cidrs"},
		{"empty sni list", one(ruleSrc(`hosts = ["a.test"]`, `sni = []`)), "t.hcl:4:11", "error", "Empty sni list"},
		{"hosts not a list", one(ruleSrc(`hosts = "a.test"`)), "t.hcl:3:13", "error", "hosts must be a list"},
		{"hosts element not a string", one(ruleSrc(`hosts = [42]`)), "t.hcl:3:14", "error", "Wrong type"},
		{"variables are not allowed", one(ruleSrc(`hosts = [var.x]`)), "t.hcl:3:14", "error", "Variables not allowed"},
		{"null element", one(ruleSrc(`hosts = [null]`)), "t.hcl:3:14", "error", "Missing value"},

		// Fingerprints.
		{"ja3 too short", one(ruleSrc(`hosts = ["a.test"]`, `ja3 = ["abc"]`)), "t.hcl:4:12", "error", "Invalid ja3 fingerprint"},
		{"ja3 not hex", one(ruleSrc(`hosts = ["a.test"]`, `ja3 = ["3fed133de60c35724739b913924b6c2g"]`)), "t.hcl:4:12", "error", "Invalid ja3 fingerprint"},
		{"ja4 truncated", one(ruleSrc(`hosts = ["a.test"]`, `ja4 = ["t13d1516h2_8daaf6152771"]`)), "t.hcl:4:12", "error", "Invalid ja4 fingerprint"},
		{"ja4 bad protocol", one(ruleSrc(`hosts = ["a.test"]`, `ja4 = ["x13d1516h2_8daaf6152771_e5627efa2ab1"]`)), "t.hcl:4:12", "error", "Invalid ja4 fingerprint"},
		{"ja4 bad sni flag", one(ruleSrc(`hosts = ["a.test"]`, `ja4 = ["t13x1516h2_8daaf6152771_e5627efa2ab1"]`)), "t.hcl:4:12", "error", "Invalid ja4 fingerprint"},
		{"ja4 non-hex hash", one(ruleSrc(`hosts = ["a.test"]`, `ja4 = ["t13d1516h2_8daaf615277z_e5627efa2ab1"]`)), "t.hcl:4:12", "error", "Invalid ja4 fingerprint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, diags := Parse(tt.files)
			if cfg == nil {
				t.Fatal("Config must not be nil, even on error")
			}
			out := FormatDiagnostics(diags)
			prefix := tt.pos + ": " + tt.sev + ": "
			found := false
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				if strings.HasPrefix(line, prefix) && strings.Contains(line, tt.word) {
					found = true
				}
			}
			if !found {
				t.Errorf("want a line starting with %q containing %q; got:\n%s", prefix, tt.word, out)
			}
			if tt.sev == "warning" {
				if diags.HasErrors() {
					t.Errorf("warning case has errors:\n%s", out)
				}
				if cfg.Policy == nil {
					t.Error("warnings alone must not withhold the Policy")
				}
			} else if cfg.Policy != nil {
				t.Error("Config.Policy must be nil when there are errors")
			}
		})
	}
}

// TestDiagnosticsCount pins how many diagnostics some inputs produce, so
// that a single mistake is reported once (not echoed by later checks).
func TestDiagnosticsCount(t *testing.T) {
	tests := []struct {
		name string
		src  string
		n    int
	}{
		{"one bad host does not also say 'needs hosts'", ruleSrc(`hosts = ["a..b"]`), 1},
		{"one bad port", ruleSrc(`hosts = ["a.test"]`, `ports = [0]`), 1},
		{"hosts not a list", ruleSrc(`hosts = "a.test"`), 1},
		{"valid", ruleSrc(`hosts = ["a.test"]`), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, diags := Parse(one(tt.src))
			if len(diags) != tt.n {
				t.Errorf("got %d diagnostics, want %d:\n%s", len(diags), tt.n, FormatDiagnostics(diags))
			}
		})
	}
}

func TestPublicSuffixOverride(t *testing.T) {
	for _, h := range []string{"*.com", "*.co.uk", "*.github.io"} {
		_, diags := Parse(one(ruleSrc(`hosts = ["`+h+`"]`, `allow_public_suffix = true`)))
		if diags.HasErrors() {
			t.Errorf("%s with allow_public_suffix = true: %s", h, FormatDiagnostics(diags))
		}
	}
	// Test domains are not public suffixes.
	for _, h := range []string{"*.test", "*.egress.test", "*.example.com", "*.r2.cloudflarestorage.com"} {
		_, diags := Parse(one(ruleSrc(`hosts = ["` + h + `"]`)))
		if len(diags) != 0 {
			t.Errorf("%s: unexpected diagnostics: %s", h, FormatDiagnostics(diags))
		}
	}
	// Deny rules may use broad wildcards.
	_, diags := Parse(one("policy \"p\" {\n  deny \"all-com\" {\n    hosts = [\"*.com\", \"*\"]\n  }\n}\n"))
	if len(diags) != 0 {
		t.Errorf("deny *.com: unexpected diagnostics: %s", FormatDiagnostics(diags))
	}
}

func TestManyErrorsInOneRun(t *testing.T) {
	files := []File{
		{Name: "a.hcl", Src: []byte(`server {
  http_listen   = "nope"
  hello_timeout = "soon"
}

policy "p" {
  allow "r" {
    hosts = ["foo*.com", "1.2.3.4"]
    cidrs = ["10.0.0.1/8"]
    ports = [0, "9-3"]
    ja3   = ["abc"]
  }
}
`)},
		{Name: "b.hcl", Src: []byte(`log {
  format = "xml"
}

policy "p" {
  allow "r2" {
    hosts = ["*.com"]
    bogus = true
  }
}
`)},
	}
	_, diags := Parse(files)
	want := []string{
		"a.hcl:2:19: error: Invalid listen address",
		"a.hcl:3:19: error: Invalid duration",
		"a.hcl:8:14: error: Invalid wildcard",
		"a.hcl:8:26: error: IP address in hosts",
		"a.hcl:9:14: error: Non-canonical CIDR",
		"a.hcl:10:14: error: Invalid port",
		"a.hcl:10:17: error: Invalid port",
		"a.hcl:11:14: error: Invalid ja3 fingerprint",
		"b.hcl:2:12: error: Invalid log format",
		"b.hcl:5:8: error: Duplicate policy name",
		"b.hcl:7:14: error: Wildcard over a public suffix",
		"b.hcl:8:5: error: Unsupported argument",
	}
	lines := strings.Split(strings.TrimSpace(FormatDiagnostics(diags)), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d diagnostics, want %d:\n%s", len(lines), len(want), strings.Join(lines, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(lines[i], want[i]) {
			t.Errorf("diagnostic %d = %q, want prefix %q", i, lines[i], want[i])
		}
	}
}

func TestOverlappingListeners(t *testing.T) {
	rng := func(line int) hcl.Range {
		return hcl.Range{Filename: "t.hcl", Start: hcl.Pos{Line: line, Column: 3}, End: hcl.Pos{Line: line, Column: 20}}
	}
	tests := []struct {
		name string
		ls   []listener
		want string // "" = no diagnostic; else FormatDiagnostics prefix
	}{
		{"wildcard vs specific, same port", []listener{
			{"http_listen", netTCP, ":3128", rng(2)},
			{"transparent_listen", netTCP, "127.0.0.1:3128", rng(3)},
		}, "t.hcl:3:3: error: Overlapping listeners"},
		{"same address", []listener{
			{"http_listen", netTCP, "127.0.0.1:3128", rng(2)},
			{"admin_listen", netTCP, "127.0.0.1:3128", rng(5)},
		}, "t.hcl:5:3: error: Overlapping listeners"},
		{"v6 unspecified vs v4", []listener{
			{"http_listen", netTCP, "10.0.0.1:443", rng(2)},
			{"transparent_listen", netTCP, "[::]:443", rng(3)},
		}, "t.hcl:3:3: error: Overlapping listeners"},
		{"dns (tcp+udp) vs quic (udp)", []listener{
			{"quic_listen", netUDP, "0.0.0.0:853", rng(2)},
			{"dns_listen", netTCP | netUDP, "127.0.0.1:853", rng(4)},
		}, "t.hcl:4:3: error: Overlapping listeners"},
		{"tcp and udp on one port do not overlap", []listener{
			{"http_listen", netTCP, "127.0.0.1:443", rng(2)},
			{"quic_listen", netUDP, "127.0.0.1:443", rng(3)},
		}, ""},
		{"different addresses", []listener{
			{"http_listen", netTCP, "127.0.0.1:80", rng(2)},
			{"admin_listen", netTCP, "127.0.0.2:80", rng(3)},
		}, ""},
		{"different ports", []listener{
			{"http_listen", netTCP, ":3128", rng(2)},
			{"admin_listen", netTCP, ":9090", rng(3)},
		}, ""},
		{"port 0 never overlaps", []listener{
			{"http_listen", netTCP, "127.0.0.1:0", rng(2)},
			{"admin_listen", netTCP, "127.0.0.1:0", rng(3)},
		}, ""},
		{"invalid address skipped", []listener{
			{"http_listen", netTCP, "nope", rng(2)},
			{"admin_listen", netTCP, "nope", rng(3)},
		}, ""},
		{"names are compared normalized", []listener{
			{"http_listen", netTCP, "LocalHost:80", rng(2)},
			{"admin_listen", netTCP, "localhost.:80", rng(3)},
		}, "t.hcl:3:3: error: Overlapping listeners"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := FormatDiagnostics(checkListeners(tt.ls))
			if tt.want == "" && out != "" {
				t.Errorf("unexpected diagnostics:\n%s", out)
			}
			if tt.want != "" && !strings.HasPrefix(out, tt.want) {
				t.Errorf("got:\n%s\nwant prefix %q", out, tt.want)
			}
		})
	}
}

func TestDefaultsAndSettings(t *testing.T) {
	cfg := mustParse(t, ruleSrc(`hosts = ["a.test"]`))
	wantServer := Server{HTTPListen: "127.0.0.1:3128", HelloTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute, DialTimeout: 10 * time.Second,
		TransparentMode: "redirect", VerifyDestination: "refuse", DNSRefuse: "refused",
		Mode: "enforce", MaxConnections: 16384, MaxConnectionsPerClient: 1024, ShutdownGrace: 20 * time.Second}
	if cfg.Server != wantServer {
		t.Errorf("default Server = %+v, want %+v", cfg.Server, wantServer)
	}
	if cfg.Log != (Log{Format: "json", Output: "stdout"}) {
		t.Errorf("default Log = %+v", cfg.Log)
	}
	if cfg.Resolver.Servers != nil {
		t.Errorf("default Resolver = %+v, want no servers", cfg.Resolver)
	}

	cfg = mustParse(t, `
server {
  http_listen                = "[::1]:8080"
  allow_private_destinations = true
  hello_timeout              = "2s"
  idle_timeout               = "1h30m"
  dial_timeout               = "500ms"
  transparent_listen         = "0.0.0.0:15001"
  transparent_mode           = "tproxy"
  verify_destination         = "redirect"
  upstream_mark              = 4242
  dns_listen                 = "0.0.0.0:53"
  dns_refuse                 = "nxdomain"
  quic_listen                = "0.0.0.0:15002"
  admin_listen               = "127.0.0.1:9090"
  mode                       = "audit"
  max_connections            = 100
  max_connections_per_client = 200
  shutdown_grace             = "1m"
  users_file                 = "users.txt"
}
resolver {
  servers = ["127.0.0.1:5353", "1.1.1.1", "[2606:4700:4700::1111]", "::1", "[::1]:5300", "::ffff:8.8.8.8"]
}
log {
  format = "console"
  output = "/var/log/egressd.log"
}
`)
	wantServer = Server{HTTPListen: "[::1]:8080", AllowPrivateDestinations: true, HelloTimeout: 2 * time.Second, IdleTimeout: 90 * time.Minute, DialTimeout: 500 * time.Millisecond,
		TransparentListen: "0.0.0.0:15001", TransparentMode: "tproxy", VerifyDestination: "redirect", UpstreamMark: 4242,
		DNSListen: "0.0.0.0:53", DNSRefuse: "nxdomain", QUICListen: "0.0.0.0:15002", AdminListen: "127.0.0.1:9090",
		Mode: "audit", MaxConnections: 100, MaxConnectionsPerClient: 100, ShutdownGrace: time.Minute, UsersFile: "users.txt"}
	if cfg.Server != wantServer {
		t.Errorf("Server = %+v, want %+v", cfg.Server, wantServer)
	}
	wantServers := []string{"127.0.0.1:5353", "1.1.1.1:53", "[2606:4700:4700::1111]:53", "[::1]:53", "[::1]:5300", "8.8.8.8:53"}
	if !reflect.DeepEqual(cfg.Resolver.Servers, wantServers) {
		t.Errorf("Resolver.Servers = %q, want %q", cfg.Resolver.Servers, wantServers)
	}
	if cfg.Log != (Log{Format: "console", Output: "/var/log/egressd.log"}) {
		t.Errorf("Log = %+v", cfg.Log)
	}
	if !cfg.Policy.AllowPrivateDestinations() {
		t.Error("Policy.AllowPrivateDestinations() = false, want true")
	}
	if cfg.Policy.Rules() != 0 {
		t.Errorf("Rules() = %d, want 0", cfg.Policy.Rules())
	}
}

func TestParseNoFiles(t *testing.T) {
	cfg, diags := Parse(nil)
	if !diags.HasErrors() || !strings.Contains(FormatDiagnostics(diags), "No configuration files") {
		t.Errorf("Parse(nil) diagnostics = %q", FormatDiagnostics(diags))
	}
	if cfg == nil {
		t.Error("Parse(nil) returned a nil Config")
	}
	_, diags = Parse([]File{{Name: "a.hcl"}, {Name: "a.hcl"}})
	if !strings.Contains(FormatDiagnostics(diags), "a.hcl:1:1: error: Duplicate file name") {
		t.Errorf("duplicate names: %q", FormatDiagnostics(diags))
	}
}

func TestFormatDiagnostics(t *testing.T) {
	rng := &hcl.Range{Filename: "f.hcl", Start: hcl.Pos{Line: 3, Column: 5, Byte: 20}, End: hcl.Pos{Line: 3, Column: 9, Byte: 24}}
	diags := hcl.Diagnostics{
		{Severity: hcl.DiagError, Summary: "Bad thing", Detail: "Fix it.\nLike this.", Subject: rng},
		{Severity: hcl.DiagWarning, Summary: "Odd thing", Subject: rng},
		{Severity: hcl.DiagError, Summary: "No place", Detail: "Somewhere."},
		nil,
	}
	want := "f.hcl:3:5: error: Bad thing: Fix it. Like this.\n" +
		"f.hcl:3:5: warning: Odd thing\n" +
		"error: No place: Somewhere.\n"
	if got := FormatDiagnostics(diags); got != want {
		t.Errorf("FormatDiagnostics =\n%s\nwant\n%s", got, want)
	}
}

func TestLoadDirectory(t *testing.T) {
	dir := t.TempDir()
	write := func(name, src string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("20-policies.hcl", "policy \"b\" {\n  allow \"r\" { hosts = [\"b.test\"] }\n}\n")
	write("10-server.hcl", "server {\n  http_listen = \"127.0.0.1:9999\"\n}\npolicy \"a\" {\n  allow \"r\" { hosts = [\"a.test\"] }\n}\n")
	write("notes.txt", "this is not configuration {")
	write(".hidden.hcl", "this is not configuration {")
	if err := os.Mkdir(filepath.Join(dir, "sub.hcl"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "20-policies.hcl"), filepath.Join(dir, "link.txt")); err != nil {
		t.Fatal(err)
	}

	cfg, diags := Load(dir)
	if diags.HasErrors() {
		t.Fatalf("Load(%s): %s", dir, FormatDiagnostics(diags))
	}
	if cfg.Server.HTTPListen != "127.0.0.1:9999" {
		t.Errorf("HTTPListen = %q", cfg.Server.HTTPListen)
	}
	if got := cfg.Policy.Names(); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("policy order = %v, want [a b] (files sorted by name)", got)
	}
	if d := cfg.Policy.Decide(&Request{Host: "b.test", Port: 443}); !d.Allow || d.Policy != "b" {
		t.Errorf("Decide b.test = %+v", d)
	}

	// Diagnostics name the file they are in.
	write("30-bad.hcl", "policy \"c\" {\n  allow \"r\" { hosts = [\"*.com\"] }\n}\n")
	_, diags = Load(dir)
	if want := filepath.Join(dir, "30-bad.hcl") + ":2:24: error:"; !strings.HasPrefix(FormatDiagnostics(diags), want) {
		t.Errorf("got %q, want prefix %q", FormatDiagnostics(diags), want)
	}

	// A single file.
	cfg, diags = Load(filepath.Join(dir, "20-policies.hcl"))
	if diags.HasErrors() || cfg.Policy.Rules() != 1 {
		t.Errorf("Load(file): %d rules, %s", cfg.Policy.Rules(), FormatDiagnostics(diags))
	}

	// A *.hcl link to nothing is an error, not a file to leave out: it may
	// be the one with the deny rules.
	os.Remove(filepath.Join(dir, "30-bad.hcl"))
	if err := os.Symlink(filepath.Join(dir, "gone.hcl"), filepath.Join(dir, "40-denies.hcl")); err != nil {
		t.Fatal(err)
	}
	_, diags = Load(dir)
	if !diags.HasErrors() || !strings.Contains(FormatDiagnostics(diags), "40-denies.hcl") {
		t.Errorf("a dangling *.hcl link: %q, want an error naming it", FormatDiagnostics(diags))
	}
}

func TestLoadErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-config.hcl")
	cfg, diags := Load(missing)
	out := FormatDiagnostics(diags)
	if !diags.HasErrors() || !strings.Contains(out, missing) {
		t.Errorf("Load(missing) = %q, want an error naming %s", out, missing)
	}
	if cfg == nil || cfg.Policy != nil {
		t.Errorf("Load(missing) config = %+v", cfg)
	}

	empty := t.TempDir()
	_, diags = Load(empty)
	if out := FormatDiagnostics(diags); !strings.Contains(out, "no *.hcl files") || !strings.Contains(out, empty) {
		t.Errorf("Load(empty dir) = %q", out)
	}

	big := filepath.Join(t.TempDir(), "big.hcl")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(maxConfigFileBytes + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, diags = Load(big)
	if out := FormatDiagnostics(diags); !strings.Contains(out, "larger than") {
		t.Errorf("Load(big) = %q", out)
	}
}

func TestLoadFS(t *testing.T) {
	fsys := fstest.MapFS{
		"conf/b.hcl":      {Data: []byte("policy \"b\" {\n  allow \"r\" { hosts = [\"b.test\"] }\n}\n")},
		"conf/a.hcl":      {Data: []byte("policy \"a\" {\n  allow \"r\" { hosts = [\"a.test\"] }\n}\n")},
		"conf/readme.md":  {Data: []byte("# not config")},
		"conf/sub/c.hcl":  {Data: []byte("policy \"c\" {}\n")},
		"other/bad.hcl":   {Data: []byte("policy \"x\" {\n  allow \"r\" { hosts = [\"a..b\"] }\n}\n")},
		"single/one.hcl":  {Data: []byte("policy \"one\" {}\n")},
		"empty/readme.md": {Data: []byte("nothing")},
	}
	cfg, diags := LoadFS(fsys, "conf")
	if diags.HasErrors() {
		t.Fatalf("LoadFS: %s", FormatDiagnostics(diags))
	}
	if got := cfg.Policy.Names(); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("Names() = %v, want [a b]", got)
	}
	_, diags = LoadFS(fsys, "other")
	if out := FormatDiagnostics(diags); !strings.HasPrefix(out, "other/bad.hcl:2:24: error:") {
		t.Errorf("LoadFS(other) = %q", out)
	}
	cfg, diags = LoadFS(fsys, "single/one.hcl")
	if diags.HasErrors() || !reflect.DeepEqual(cfg.Policy.Names(), []string{"one"}) {
		t.Errorf("LoadFS(file) = %v, %s", cfg.Policy.Names(), FormatDiagnostics(diags))
	}
	_, diags = LoadFS(fsys, "missing")
	if out := FormatDiagnostics(diags); !strings.Contains(out, `"missing"`) {
		t.Errorf("LoadFS(missing) = %q", out)
	}
	_, diags = LoadFS(fsys, "empty")
	if out := FormatDiagnostics(diags); !strings.Contains(out, "no *.hcl files") {
		t.Errorf("LoadFS(empty) = %q", out)
	}
	_, diags = LoadFS(nil, ".")
	if !diags.HasErrors() {
		t.Error("LoadFS(nil) has no error")
	}

	// The example configuration in testdata is valid.
	cfg, diags = LoadFS(os.DirFS("testdata"), ".")
	if len(diags) != 0 {
		t.Fatalf("testdata: %s", FormatDiagnostics(diags))
	}
	if cfg.Policy.Rules() != 4 {
		t.Errorf("testdata: %d rules, want 4", cfg.Policy.Rules())
	}
}

// TestNesting: a file nested deeper than maxNesting is refused with a
// diagnostic at the level that went too deep, before the HCL parser
// recurses into it (100,000 levels overflowed the goroutine stack, which
// ends the process). Flat files with many operators are not refused.
func TestNesting(t *testing.T) {
	const n = 100_000
	rep := strings.Repeat
	// policy "p" { description = EXPR }: EXPR starts at 2:17 at depth 1.
	src := func(expr string) []File { return one("policy \"p\" {\n  description = " + expr + "\n}\n") }
	tests := []struct {
		name  string
		files []File
		pos   string // "" when the file is not too deep
	}{
		{"brackets", src(rep("[", n) + rep("]", n)), "t.hcl:2:80"},
		{"parentheses", src(rep("(", n) + "1" + rep(")", n)), "t.hcl:2:80"},
		{"objects", src(rep("{a = ", n) + "1" + rep("}", n)), "t.hcl:2:332"},
		{"interpolations", src(rep(`"${`, n) + "1" + rep(`}"`, n)), "t.hcl:2:207"},
		{"directives", src(`"` + rep("%{if true}", n) + "x" + rep("%{endif}", n) + `"`), "t.hcl:2:638"},
		{"nested blocks", one(rep("policy \"p\" {\n", n) + rep("}\n", n)), "t.hcl:65:12"},
		// Lexical errors, and stray end directives, do not stop the count.
		{"brackets after a lexical error", one("a = 1;\nb = " + rep("[", n) + rep("]", n) + "\n"), "t.hcl:2:69"},
		{"brackets after stray end directives", one(rep(`a = "`+rep("%{endif}", 999)+"\"\n", 100) + "b = " + rep("[", n) + rep("]", n) + "\n"), "t.hcl:101:69"},
		{"directives in one string", src(`"` + rep("%{endif}", n) + `"`), "t.hcl:2:8010"},
		// Chains that recurse without nesting.
		{"splats", src("x" + rep("[*]", n)), "t.hcl:2:3013"},
		{"sums", src("1" + rep("+1", n)), "t.hcl:2:2016"},
		{"conjunctions", src("true" + rep("&&true", n)), "t.hcl:2:6015"},
		{"conditionals", src(rep("true ? 1 : ", n) + "2"), "t.hcl:2:11011"},
		{"unary not", src(rep("!", n) + "true"), "t.hcl:2:1016"},
		{"60 brackets", src(rep("[", 60) + rep("]", 60)), ""},
		{"minuses in list elements", src("[" + rep("1-1, ", 10_000) + "1]"), ""},
		{"minuses on lines", one(rep("x = -1\n", 10_000)), ""},
		{"100,000 names in a list", src("[\n" + rep("  \"a.example.com\",\n", 100_000) + "]"), ""},
		{"directives one after another", src(`"` + rep("%{if true}x%{endif}", 100) + `"`), ""},
		{"rules with a comment at the end of their line", one("policy \"p\" {\n" + rep("  allow \"r\" { hosts = [\"h.example.com\"] }  # ticket\n", 1200) + "}\n"), ""},
		{"rules closed with // comments", one("policy \"p\" {\n" + rep("  allow \"r\" {\n    hosts = [\"h.example.com\"]\n  } // end\n", 1200) + "}\n"), ""},
		// Pending tokens add up across nesting levels.
		{"negations in nested parentheses", src(rep("("+rep("!", 100), 60) + "true" + rep(")", 60)), "t.hcl:2:1016"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, diags := Parse(tc.files)
			var got *hcl.Diagnostic
			for _, d := range diags {
				if d.Summary == "Configuration nested too deeply" || d.Summary == "Expression too long" {
					got = d
				}
			}
			switch {
			case tc.pos == "" && got != nil:
				t.Fatalf("refused as too deep: %s", FormatDiagnostics(hcl.Diagnostics{got}))
			case tc.pos == "":
				return
			case got == nil:
				t.Fatalf("not refused; diagnostics: %.500s", FormatDiagnostics(diags))
			}
			if p := posString(*got.Subject); p != tc.pos {
				t.Errorf("at %s, want %s", p, tc.pos)
			}
			if len(diags) != 1 {
				t.Errorf("%d diagnostics, want only the nesting one: %.500s", len(diags), FormatDiagnostics(diags))
			}
		})
	}
}

// TestDiagnosticsCutLongValues: a diagnostic quotes at most
// maxDiagValueLen bytes of the value it is about, so one bad value cannot
// flood a terminal or a reload log line.
func TestDiagnosticsCutLongValues(t *testing.T) {
	long := strings.Repeat("9", 5000)
	tests := []struct{ name, src string }{
		{"listen address", "server {\n  http_listen = \"" + long + "\"\n}\n"},
		{"listen address in brackets", "server {\n  http_listen = \"[" + long + "\"\n}\n"},
		{"resolver server", "resolver {\n  servers = [\"" + long + ":x:53\"]\n}\n"},
		{"port", ruleSrc(`hosts = ["a.test"]`, `ports = ["`+long+`"]`)},
		{"port range", ruleSrc(`hosts = ["a.test"]`, `ports = ["1-`+long+`"]`)},
		{"cidr", ruleSrc(`cidrs = ["10.0.0.0/` + long + `"]`)},
		{"test target", ruleSrc(`hosts = ["a.test"]`) + "test \"t\" {\n  target = \"" + long + "\"\n  expect = \"deny\"\n}\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, diags := Parse(one(tc.src))
			if !diags.HasErrors() {
				t.Fatal("no error")
			}
			for _, d := range diags {
				if n := len(d.Summary) + len(d.Detail); n > 2*maxDiagValueLen+400 {
					t.Errorf("%d bytes: %.300s…", n, d.Detail)
				}
			}
		})
	}
}
