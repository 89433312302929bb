package policy

import (
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// genConfig writes an HCL configuration with n rules: a third exact names,
// a third wildcards, a third CIDRs, plus one deny rule per 100 rules.
// Rules are spread over policies of 100 rules each.
func genConfig(n int) string {
	var b strings.Builder
	b.Grow(n * 120)
	for i := 0; i < n; i++ {
		if i%100 == 0 {
			if i > 0 {
				b.WriteString("}\n")
			}
			fmt.Fprintf(&b, "policy \"p%d\" {\n", i/100)
		}
		switch i % 3 {
		case 0:
			fmt.Fprintf(&b, "  allow \"r%d\" {\n    hosts = [\"host-%d.bench.test\"]\n  }\n", i, i)
		case 1:
			fmt.Fprintf(&b, "  allow \"r%d\" {\n    hosts = [\"*.zone-%d.bench.test\"]\n    ports = [443, \"8000-8100\"]\n  }\n", i, i)
		case 2:
			// Public addresses from 44.0.0.0/8, one /24 per rule.
			fmt.Fprintf(&b, "  allow \"r%d\" {\n    cidrs = [\"44.%d.%d.0/24\"]\n  }\n", i, (i>>8)&0xff, i&0xff)
		}
		if i%100 == 50 {
			fmt.Fprintf(&b, "  deny \"d%d\" {\n    hosts = [\"deny-%d.bench.test\"]\n  }\n", i, i)
		}
	}
	if n > 0 {
		b.WriteString("}\n")
	}
	return b.String()
}

var benchPolicies sync.Map // n → *Policy

func benchPolicy(tb testing.TB, n int) *Policy {
	if p, ok := benchPolicies.Load(n); ok {
		return p.(*Policy)
	}
	cfg, diags := Parse([]File{{Name: "bench.hcl", Src: []byte(genConfig(n))}})
	if diags.HasErrors() {
		tb.Fatalf("genConfig(%d): %s", n, FormatDiagnostics(diags))
	}
	benchPolicies.Store(n, cfg.Policy)
	return cfg.Policy
}

// benchRequests returns requests that hit rules near the end of the
// configuration (the worst case for a linear scan) and one that misses.
func benchRequests(n int) []Request {
	last := func(mod int) int {
		i := n - 1
		for i >= 0 && i%3 != mod {
			i--
		}
		return i
	}
	e, w, c := last(0), last(1), last(2)
	var reqs []Request
	if e >= 0 {
		h := fmt.Sprintf("host-%d.bench.test", e)
		reqs = append(reqs, Request{Host: h, Port: 443, Hello: HelloTLS, SNI: h, JA3: ja3Good})
	}
	if w >= 0 {
		h := fmt.Sprintf("a.b.c.zone-%d.bench.test", w)
		reqs = append(reqs, Request{Host: h, Port: 8050, Hello: HelloTLS, SNI: h})
	}
	if c >= 0 {
		a := netip.AddrFrom4([4]byte{44, byte(c >> 8), byte(c), 9})
		reqs = append(reqs, Request{Addr: a, Port: 443, Hello: HelloTLS, SNI: "anything.example"})
	}
	reqs = append(reqs,
		Request{Host: "miss.nowhere.bench.test", Port: 443, Hello: HelloTLS, SNI: "miss.nowhere.bench.test"},
		Request{Host: "deny-50.bench.test", Port: 443},
	)
	return reqs
}

func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{10, 1000, 100000} {
		p := benchPolicy(b, n)
		reqs := benchRequests(n)
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				r := &reqs[i%len(reqs)]
				i++
				_ = p.Decide(r)
			}
		})
	}
}

func BenchmarkParse(b *testing.B) {
	src := []byte(genConfig(1000))
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		if _, diags := Parse([]File{{Name: "bench.hcl", Src: src}}); diags.HasErrors() {
			b.Fatal(FormatDiagnostics(diags))
		}
	}
}

func BenchmarkNormalizeHost(b *testing.B) {
	for _, s := range []string{"registry.example.com", "Registry.Example.COM.", "bücher.example"} {
		b.Run(s, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = NormalizeHost(s)
			}
		})
	}
}

// TestBenchRequestsDecide checks that the benchmark measures real hits.
func TestBenchRequestsDecide(t *testing.T) {
	for _, n := range []int{10, 1000} {
		p := benchPolicy(t, n)
		reqs := benchRequests(n)
		for i, r := range reqs {
			d := p.Decide(&r)
			wantAllow := i < len(reqs)-2
			if d.Allow != wantAllow {
				t.Errorf("n=%d request %+v: %+v, want Allow=%v", n, r, d, wantAllow)
			}
		}
		if got := p.Rules(); got != n+(n+49)/100 {
			t.Errorf("n=%d: Rules() = %d", n, got)
		}
	}
}

// TestDecideZeroAllocs asserts that Decide does not allocate for
// normalized requests, whatever the outcome.
func TestDecideZeroAllocs(t *testing.T) {
	p := benchPolicy(t, 1000)
	reqs := benchRequests(1000)
	reqs = append(reqs,
		Request{Host: "host-0.bench.test", Port: 443, Hello: HelloTLS, SNI: "other.bench.test"},   // sni_mismatch
		Request{Host: "host-0.bench.test", Port: 443, Hello: HelloTLS, SNI: "bad sni!"},           // invalid SNI
		Request{Host: "host-0.bench.test", Port: 443, Hello: HelloTLS, SNI: "host-0.bench.test."}, // trailing dot: sliced, no alloc
		Request{Host: "host-0.bench.test", Port: 443, Hello: HelloTLS, SNI: "127.1"},              // non-canonical IP
		Request{Host: "host-0.bench.test", Port: 443, Hello: HelloTLS, SNI: "[::1]"},
		Request{Host: "host-0.bench.test", Port: 443, Hello: HelloNotTLS},
		Request{Addr: netip.MustParseAddr("::ffff:44.0.2.1"), Port: 443, Hello: HelloTLS},
		Request{Addr: netip.MustParseAddr("10.0.0.1"), Port: 443, Hello: HelloTLS},
	)
	full := mustParse(t, decideConfig).Policy
	fullReqs := []Request{
		{Host: "region1.v2.argotunnel.com", Port: 7844, Hello: HelloTLS, SNI: "h2.cftunnel.com"},
		{Addr: netip.MustParseAddr("198.41.192.7"), Port: 7844, Hello: HelloTLS, SNI: "h2.cftunnel.com"},
		{Host: "api.enforce.dev", Port: 443, Hello: HelloTLS, SNI: "api.enforce.dev", JA3: ja3Bad},
		{Host: "example.com", Port: 443, Hello: HelloTLS, SNI: "evil.test"},
		{Addr: netip.MustParseAddr("10.2.0.1"), Port: 8443},
	}
	// Per-client policies and audit mode: identities are built at compile
	// time, so these decide without allocating too.
	scoped := mustParse(t, clientsConfig()).Policy
	scopedReqs := []Request{
		{Host: "api.github.com", Port: 443, Client: netip.MustParseAddr("10.1.4.5")},
		{Host: "pastebin.com", Port: 443, Client: netip.MustParseAddr("10.2.0.9")},
		{Host: "example.com", Port: 443, Client: netip.MustParseAddr("10.2.0.9")},
		{Host: "cgr.dev", Port: 443, User: "argon"},
		{Host: "api.github.com", Port: 443, Client: netip.MustParseAddr("192.0.2.1")},
	}
	for _, c := range []struct {
		p    *Policy
		reqs []Request
	}{{p, reqs}, {full, fullReqs}, {scoped, scopedReqs}} {
		for _, r := range c.reqs {
			r := r
			if n := testing.AllocsPerRun(200, func() { _ = c.p.Decide(&r) }); n != 0 {
				t.Errorf("Decide(%+v) allocates %v times per run, want 0", r, n)
			}
		}
	}
}

// TestConfigKeepsNoSyntax: a parsed Config holds its compiled rules, not
// the HCL syntax trees they came from, which are four times their size and
// would stay in the heap of a running server for as long as the
// configuration does.
func TestConfigKeepsNoSyntax(t *testing.T) {
	src := []byte(genConfig(10000))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	cfg, diags := Parse([]File{{Name: "big.hcl", Src: src}})
	if diags.HasErrors() {
		t.Fatal(FormatDiagnostics(diags))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(cfg)
	// Measured: 4.4 MB for these 667 KB of source; with the syntax trees
	// kept, 21.5 MB.
	retained := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	if limit := int64(10 * len(src)); retained > limit {
		t.Errorf("a Config of %d rules retains %d KB of heap, more than %d KB (10x its %d KB of source)", 10000, retained>>10, limit>>10, len(src)>>10)
	}
}
