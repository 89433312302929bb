package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

// Differential test: Decide (through the index) against a linear scan of
// every rule in configuration order, as configs/README.md describes it,
// over random configurations and requests.

var (
	dfNames = []string{"a.test", "b.a.test", "c.b.a.test", "x.test", "a.x.test", "test.example", "q.test.example"}
	dfPats  = []string{"a.test", "b.a.test", "x.test", "*.a.test", "*.b.a.test", "*.test", "*", "*.test.example", "test.example", "A.TEST.", "*.X.Test"}
	dfCIDRs = []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "192.0.2.0/24", "0.0.0.0/0", "::/0",
		"2001:db8::/32", "64:ff9b::/96", "2002::/16", "198.51.100.0/24", "2001:db8::1", "198.51.100.7", "fd00::/8", "2002:a01::/32"}
	dfAddrs = []string{"10.1.2.3", "10.2.0.1", "192.0.2.5", "198.51.100.7", "8.8.8.8", "64:ff9b::a01:203",
		"64:ff9b::c633:6407", "2002:c633:6407::1", "2001:db8::1", "::ffff:10.1.2.3", "::ffff:198.51.100.7",
		"2002:a01:203::1", "fd00::1", "169.254.169.254", "fe80::1%eth0", ""}
	dfPorts   = []string{"443", "80", `"8000-8080"`, `"1-65535"`, `"443-443"`}
	dfJA3     = []string{ja3Good, ja3Bad, strings.ToUpper(ja3Good)}
	dfJA4     = []string{ja4Good, ja4Bad}
	dfClients = []string{"10.9.0.0/16", "10.1.0.0/16", "2001:db8::/32"}
	dfReqCl   = []string{"10.9.1.1", "10.1.9.9", "192.0.2.1", "2001:db8::5", "::ffff:10.9.1.1", ""}
	dfSNIs    = []string{"", "a.test", "b.a.test", "x.test", "A.Test.", "c.b.a.test", "evil.other", "1.2.3.4", "bad name", "q.test.example", "ａ.test", "b.ａ.test"}
)

func pick[T any](r *rand.Rand, s []T) T { return s[r.IntN(len(s))] }

func pickN(r *rand.Rand, s []string, quoteIt bool) string {
	n := 1 + r.IntN(3)
	var out []string
	for range n {
		v := pick(r, s)
		if quoteIt {
			v = fmt.Sprintf("%q", v)
		}
		out = append(out, v)
	}
	return "[" + strings.Join(out, ", ") + "]"
}

func dfConfig(r *rand.Rand) string {
	var b strings.Builder
	b.WriteString("user \"u1\" {\n  password_hash = \"" + decoyHash + "\"\n}\n")
	if r.IntN(4) == 0 {
		b.WriteString("server {\n  allow_private_destinations = true\n}\n")
	} else if r.IntN(8) == 0 {
		b.WriteString("server {\n  mode = \"audit\"\n}\n")
	}
	np := 1 + r.IntN(3)
	for pi := range np {
		fmt.Fprintf(&b, "policy \"p%d\" {\n", pi)
		if r.IntN(4) == 0 {
			b.WriteString("  mode = \"audit\"\n")
		}
		if r.IntN(3) == 0 {
			b.WriteString("  clients {\n")
			if r.IntN(2) == 0 {
				fmt.Fprintf(&b, "    cidrs = %s\n", pickN(r, dfClients, true))
			} else {
				b.WriteString("    users = [\"u1\"]\n")
			}
			b.WriteString("  }\n")
		}
		nr := 1 + r.IntN(4)
		for ri := range nr {
			kind := "allow"
			deny := r.IntN(3) == 0
			if deny {
				kind = "deny"
			}
			fmt.Fprintf(&b, "  %s \"r%d\" {\n", kind, ri)
			hasHosts, hasCIDRs := r.IntN(3) != 0, r.IntN(3) == 0
			if !hasHosts && !hasCIDRs {
				hasHosts = true
			}
			if hasHosts {
				fmt.Fprintf(&b, "    hosts = %s\n", pickN(r, dfPats, true))
			}
			if hasCIDRs {
				fmt.Fprintf(&b, "    cidrs = %s\n", pickN(r, dfCIDRs, true))
			}
			if r.IntN(2) == 0 {
				fmt.Fprintf(&b, "    ports = %s\n", pickN(r, dfPorts, false))
			}
			noTLS := !deny && r.IntN(6) == 0
			if noTLS {
				b.WriteString("    require_tls = false\n")
			} else {
				if r.IntN(3) == 0 {
					fmt.Fprintf(&b, "    sni = %s\n", pickN(r, dfPats, true))
				}
				if r.IntN(5) == 0 {
					fmt.Fprintf(&b, "    ja3 = %s\n", pickN(r, dfJA3, true))
				}
				if r.IntN(6) == 0 {
					fmt.Fprintf(&b, "    ja4 = %s\n", pickN(r, dfJA4, true))
				}
			}
			if r.IntN(5) == 0 {
				fmt.Fprintf(&b, "    protocols = [%q]\n", pick(r, []string{"tcp", "quic"}))
			}
			b.WriteString("  }\n")
		}
		b.WriteString("}\n")
	}
	return b.String()
}

func dfRequest(r *rand.Rand) Request {
	var q Request
	if r.IntN(2) == 0 {
		q.Host = pick(r, dfNames)
	} else if a := pick(r, dfAddrs); a != "" {
		q.Addr = netip.MustParseAddr(a)
	}
	q.Port = pick(r, []uint16{443, 80, 8000, 8080, 22, 65535})
	q.Hello = Hello(r.IntN(4))
	if q.Hello == HelloTLS {
		q.SNI = pick(r, dfSNIs)
		if r.IntN(2) == 0 {
			q.JA3 = pick(r, []string{ja3Good, ja3Bad, ""})
		}
		if r.IntN(2) == 0 {
			q.JA4 = pick(r, []string{ja4Good, ja4Bad, ""})
		}
	}
	q.Protocol = Protocol(r.IntN(2))
	if c := pick(r, dfReqCl); c != "" {
		q.Client = netip.MustParseAddr(c)
	}
	if r.IntN(4) == 0 {
		q.User = "u1"
	}
	q.Transparent = q.Host == "" && r.IntN(2) == 0
	return q
}

// refDecide is Decide with every index lookup replaced by a linear scan of
// the rules in configuration order.
func refDecide(p *Policy, r *Request) Decision {
	client := r.Client.Unmap().WithZone("")
	var d Decision
	if p.scoped && !p.open && !p.anyApplies(client, r.User) {
		d = Decision{Reason: ReasonNoPolicyForClient}
	} else {
		d = refDecideRules(p, r, client)
	}
	if p.scoped {
		d.Identity = p.identity(client, r.User)
	}
	if !d.Allow && p.audited(d, client, r.User) {
		d.Allow, d.WouldDeny = true, true
	}
	d.allowPrivate, d.verify = p.allowPrivate, p.verify
	return d
}

func refDecideRules(p *Policy, r *Request, client netip.Addr) Decision {
	sni, e := normalizeSNI(r.SNI)
	sniOK := r.SNI != "" && e == hostOK
	dsni, de := normalizeHost(r.SNI) // deny rules: IDNA-mapped
	dsniOK := r.SNI != "" && de == hostOK
	addr := r.Addr.Unmap().WithZone("")
	v4, has4 := EmbeddedIPv4(addr)
	ds := denyScan{p: p, r: r, sni: dsni, sniOK: dsniOK, client: client}
	best, audited := -1, -1
	for i := range p.deny {
		ru := &p.deny[i]
		dst := (r.Host != "" && matchAny(ru.hosts, r.Host)) ||
			(dsniOK && matchAny(ru.hosts, dsni)) ||
			(addr.IsValid() && prefixesContain(ru.cidrs, addr)) ||
			(has4 && prefixesContain(ru.cidrs, v4))
		if !dst || !ru.applies(r.Port, r.Protocol) || !p.policyApplies(ru, client, r.User) || !ds.conditions(ru) {
			continue
		}
		if !p.pols[ru.pol].audit {
			best = i
			break
		}
		if audited < 0 {
			audited = i
		}
	}
	if best >= 0 {
		ru := &p.deny[best]
		return Decision{Reason: ReasonDeniedByRule, Policy: ru.policy, Rule: ru.name, rule: ru}
	}
	as := allowScan{p: p, r: r, sni: sni, sniOK: sniOK, addr: addr, client: client}
	as.privAddr = addr.IsValid() && !p.allowPrivate && IsPrivate(addr)
	pass, fail := -1, -1
	var failReason Reason
	for i := range p.allow {
		ru := &p.allow[i]
		dst := (r.Host != "" && matchAny(ru.hosts, r.Host)) ||
			(addr.IsValid() && prefixesContain(ru.cidrs, addr)) ||
			(r.Transparent && r.Host == "" && r.Hello == HelloTLS && sniOK &&
				(matchAny(ru.hosts, sni) || len(ru.hosts) > 0 && matchAny(ru.sni, sni)))
		if !dst || !ru.applies(r.Port, r.Protocol) || !p.policyApplies(ru, client, r.User) {
			continue
		}
		if reason := as.check(ru); reason == "" {
			pass = i
			break
		} else if fail < 0 {
			fail, failReason = i, reason
		}
	}
	var d Decision
	switch {
	case pass >= 0:
		ru := &p.allow[pass]
		d = Decision{Allow: true, Reason: ReasonAllowed, Policy: ru.policy, Rule: ru.name, rule: ru}
	case fail >= 0:
		ru := &p.allow[fail]
		d = Decision{Reason: failReason, Policy: ru.policy, Rule: ru.name, rule: ru}
	default:
		d = Decision{Reason: ReasonNoRule}
	}
	// An audit-mode deny only logs: it decides when the rest lets the
	// connection through (allowed, or audited).
	if audited >= 0 && (d.Allow || p.audited(d, client, r.User)) {
		ru := &p.deny[audited]
		return Decision{Reason: ReasonDeniedByRule, Policy: ru.policy, Rule: ru.name, rule: ru, grant: d.rule}
	}
	return d
}

// refNameAllowed is NameAllowed by linear scan.
func refNameAllowed(p *Policy, name string) (string, string, bool) {
	for i := range p.deny {
		ru := &p.deny[i]
		if matchAny(ru.hosts, name) && p.refusesName(ru) {
			return ru.policy, ru.name, false
		}
	}
	for i := range p.allow {
		ru := &p.allow[i]
		if matchAny(ru.hosts, name) || matchAny(ru.sni, name) {
			return ru.policy, ru.name, true
		}
	}
	return "", "", false
}

func TestDecideIndexMatchesLinearScan(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	configs, reqs := 0, 0
	for range 3000 {
		src := dfConfig(r)
		cfg, diags := Parse([]File{{Name: "d.hcl", Src: []byte(src)}})
		if diags.HasErrors() {
			continue
		}
		configs++
		p := cfg.Policy
		for range 60 {
			q := dfRequest(r)
			q2 := q
			got, want := p.Decide(&q), refDecide(p, &q2)
			reqs++
			if got.Allow != want.Allow || got.Reason != want.Reason || got.Policy != want.Policy ||
				got.Rule != want.Rule || got.WouldDeny != want.WouldDeny || got.rule != want.rule || got.grant != want.grant {
				t.Fatalf("index and linear scan disagree\nconfig:\n%s\nrequest: %+v\nDecide: %+v\nlinear: %+v", src, q, got, want)
			}
			if q.Addr.IsValid() && got.AddrAllowed(q.Addr) != want.AddrAllowed(q.Addr) {
				t.Fatalf("AddrAllowed disagrees\nconfig:\n%s\nrequest: %+v", src, q)
			}
		}
		for _, n := range dfNames {
			gp, gr, gok := p.NameAllowed(n)
			wp, wr, wok := refNameAllowed(p, n)
			if gp != wp || gr != wr || gok != wok {
				t.Fatalf("NameAllowed(%q) = %s/%s %v, linear %s/%s %v\nconfig:\n%s", n, gp, gr, gok, wp, wr, wok, src)
			}
		}
	}
	t.Logf("%d configs, %d requests", configs, reqs)
	if configs < 1000 {
		t.Fatalf("only %d of 3000 generated configs parsed", configs)
	}
}

// FuzzDecideIndex is TestDecideIndexMatchesLinearScan from fuzzed seeds.
func FuzzDecideIndex(f *testing.F) {
	f.Add(uint64(1), uint64(2))
	f.Fuzz(func(t *testing.T, a, b uint64) {
		r := rand.New(rand.NewPCG(a, b))
		src := dfConfig(r)
		cfg, diags := Parse([]File{{Name: "d.hcl", Src: []byte(src)}})
		if diags.HasErrors() {
			return
		}
		p := cfg.Policy
		for range 40 {
			q := dfRequest(r)
			q2 := q
			got, want := p.Decide(&q), refDecide(p, &q2)
			if got.Allow != want.Allow || got.Reason != want.Reason || got.Policy != want.Policy ||
				got.Rule != want.Rule || got.WouldDeny != want.WouldDeny || got.rule != want.rule || got.grant != want.grant {
				t.Fatalf("disagree\n%s\n%+v\n%+v\n%+v", src, q, got, want)
			}
		}
		for _, n := range dfNames {
			gp, gr, gok := p.NameAllowed(n)
			wp, wr, wok := refNameAllowed(p, n)
			if gp != wp || gr != wr || gok != wok {
				t.Fatalf("NameAllowed(%q) disagree\n%s", n, src)
			}
		}
	})
}
