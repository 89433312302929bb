package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// gatewayUpstream is the DNS server behind egressd's dns_listen in these
// tests. A queries for cdn.egress.test ROTATE on every query through pool
// (TTL 60); alias.egress.test is a CNAME to it; the SRV name has an SRV
// and a TXT record; every other name is NXDOMAIN.
type gatewayUpstream struct {
	addr    string
	queries atomic.Int32 // every query received
	aCDN    atomic.Int32 // A queries answered for cdn.egress.test (directly or via the CNAME)
}

const (
	cdnName   = "cdn.egress.test"
	aliasName = "alias.egress.test"
	srvName   = "_tunnel._tcp.egress.test"
)

var rotatingPool = []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}

func startGatewayUpstream(t *testing.T) *gatewayUpstream {
	t.Helper()
	u := &gatewayUpstream{}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		u.queries.Add(1)
		m := new(dns.Msg)
		m.SetReply(q)
		qn := strings.ToLower(q.Question[0].Name)
		qt := q.Question[0].Qtype
		rr := func(s string) dns.RR {
			r, err := dns.NewRR(s)
			if err != nil {
				panic(err)
			}
			return r
		}
		rotate := func() dns.RR {
			i := u.aCDN.Add(1) - 1
			return rr(cdnName + ". 60 IN A " + rotatingPool[int(i)%len(rotatingPool)])
		}
		switch {
		case qn == cdnName+"." && qt == dns.TypeA:
			m.Answer = append(m.Answer, rotate())
		case qn == aliasName+"." && qt == dns.TypeA:
			m.Answer = append(m.Answer, rr(aliasName+". 300 IN CNAME "+cdnName+"."), rotate())
		case qn == srvName+"." && qt == dns.TypeSRV:
			m.Answer = append(m.Answer, rr(srvName+". 60 IN SRV 1 1 7844 region1.egress.test."))
		case qn == srvName+"." && qt == dns.TypeTXT:
			m.Answer = append(m.Answer, rr(srvName+`. 60 IN TXT "v=tunnel"`))
		case qn == cdnName+"." || qn == aliasName+"." || qn == srvName+".":
			// the name exists; no records of this type
		default:
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	u.addr = pc.LocalAddr().String()
	return u
}

const dnsGatewayConfig = `
server {
  allow_private_destinations = true
  hello_timeout = "2s"
  REFUSE
}
resolver { servers = ["DNS_ADDR"] }
policy "gw" {
  allow "cdn" {
    hosts = ["cdn.egress.test", "alias.egress.test"]
    ports = [PORT]
  }
  allow "tunnel" {
    hosts = ["region1.egress.test"]
    sni   = ["_tunnel._tcp.egress.test"]
    ports = [7844]
  }
  deny "blocked" { hosts = ["blocked.cdn.egress.test"] }
  allow "cdn-sub" { hosts = ["*.cdn.egress.test"] }
}
`

// dnsEnv is an env whose egressd serves dns_listen (UDP and TCP) on
// loopback, forwarding to a gatewayUpstream.
type dnsEnv struct {
	*env
	up      *gatewayUpstream
	udpAddr string
	tcpAddr string
	served  chan error // ServeDNS's result
	port    string     // the port the rotating pool's echo servers listen on
	gw      *gateway
}

func startDNSEnv(t *testing.T, refuse string) *dnsEnv {
	t.Helper()
	ln := listenOn(t, rotatingPool[0]+":0")
	p := strconv.Itoa(port(ln))
	serveEcho(ln)
	for _, a := range rotatingPool[1:] {
		serveEcho(listenOn(t, a+":"+p))
	}
	up := startGatewayUpstream(t)
	d := serveDNSEnv(t, up.addr, strings.NewReplacer("PORT", p, "REFUSE", refuse).Replace(dnsGatewayConfig))
	d.up, d.port = up, p
	return d
}

// serveDNSEnv starts egressd on src with a transparent gateway and
// dns_listen (UDP and TCP) on loopback, forwarding to the DNS server at
// upstream.
func serveDNSEnv(t *testing.T, upstream, src string) *dnsEnv {
	t.Helper()
	d := &dnsEnv{env: newEnv(t), served: make(chan error, 1)}
	d.dnsAddr = upstream
	d.gw = d.startTransparent(t, src)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl := listen(t)
	d.udpAddr, d.tcpAddr = pc.LocalAddr().String(), tl.Addr().String()
	go func() { d.served <- d.srv.ServeDNS(pc, tl) }()
	return d
}

// query asks egressd's DNS server over net ("udp" or "tcp").
func (d *dnsEnv) query(t *testing.T, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	addr := d.udpAddr
	if network == "tcp" {
		addr = d.tcpAddr
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	cl := &dns.Client{Net: network, Timeout: 5 * time.Second}
	in, _, err := cl.Exchange(m, addr) // fails on an ID mismatch
	if err != nil {
		t.Fatalf("%s query %s %s: %v", network, name, dns.TypeToString[qtype], err)
	}
	return in
}

func answerA(t *testing.T, in *dns.Msg) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, rr := range in.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, netip.MustParseAddr(a.A.String()))
		}
	}
	return out
}

func (d *dnsEnv) remembered(name string, a netip.Addr) bool {
	return d.srv.resolver.Knows(name, a)
}

func TestDNSAllowedNameAnsweredAndRecorded(t *testing.T) {
	d := startDNSEnv(t, "")
	for i := range 3 {
		in := d.query(t, "udp", cdnName, dns.TypeA)
		addrs := answerA(t, in)
		if in.Rcode != dns.RcodeSuccess || len(addrs) != 1 {
			t.Fatalf("answer %d: %v", i, in)
		}
		if want := netip.MustParseAddr(rotatingPool[i]); addrs[0] != want {
			t.Errorf("answer %d = %v, want the upstream's %v", i, addrs[0], want)
		}
		if !d.remembered(cdnName, addrs[0]) {
			t.Errorf("answer %d (%v) is not in the verification cache", i, addrs[0])
		}
		l := d.waitLog(t, "decision", map[string]any{"mode": "dns", "host": cdnName, "decision": "allow", "conn": i + 1})
		if l["qtype"] != "A" || l["policy"] != "gw" || l["rule"] != "cdn" || l["reason"] != "allowed" {
			t.Errorf("decision line %v", l)
		}
	}
	// Every answer stays remembered, not only the latest.
	for _, a := range rotatingPool {
		if !d.remembered(cdnName, netip.MustParseAddr(a)) {
			t.Errorf("%s was handed out but is no longer remembered", a)
		}
	}
}

func TestDNSCNAMERecordedUnderBothNames(t *testing.T) {
	d := startDNSEnv(t, "")
	in := d.query(t, "udp", aliasName, dns.TypeA)
	addrs := answerA(t, in)
	if len(addrs) != 1 || len(in.Answer) != 2 {
		t.Fatalf("answer: %v", in)
	}
	for _, n := range []string{aliasName, cdnName} {
		if !d.remembered(n, addrs[0]) {
			t.Errorf("%v (after the CNAME) is not remembered under %s", addrs[0], n)
		}
	}
}

func TestDNSRefusesNamesNoPolicyAllows(t *testing.T) {
	for _, tc := range []struct {
		refuse string
		rcode  int
	}{
		{"", dns.RcodeRefused},
		{`dns_refuse = "refused"`, dns.RcodeRefused},
		{`dns_refuse = "nxdomain"`, dns.RcodeNameError},
	} {
		t.Run(dns.RcodeToString[tc.rcode]+tc.refuse, func(t *testing.T) {
			d := startDNSEnv(t, tc.refuse)
			for i, q := range []struct {
				name, reason, rule string
				qtype              uint16
			}{
				{"secret-data.exfil.test", "no_rule", "", dns.TypeA},
				{"c2VjcmV0.cdn.egress.test.evil.test", "no_rule", "", dns.TypeTXT},
				{"blocked.cdn.egress.test", "denied_by_rule", "blocked", dns.TypeAAAA},
			} {
				in := d.query(t, "udp", q.name, q.qtype)
				if in.Rcode != tc.rcode || len(in.Answer) != 0 {
					t.Errorf("%s: rcode %s with %d answers, want %s", q.name, dns.RcodeToString[in.Rcode], len(in.Answer), dns.RcodeToString[tc.rcode])
				}
				l := d.waitLog(t, "decision", map[string]any{"mode": "dns", "conn": i + 1})
				want := map[string]any{"host": strings.ToLower(q.name), "decision": "deny", "reason": q.reason, "qtype": dns.TypeToString[q.qtype]}
				if q.rule != "" {
					want["rule"], want["policy"] = q.rule, "gw"
				}
				if !matches(l, want) {
					t.Errorf("decision line %v, want %v", l, want)
				}
			}
			if n := d.up.queries.Load(); n != 0 {
				t.Errorf("the upstream received %d queries for names no policy allows", n)
			}
		})
	}
}

// TestDNSHTTPSHintsRemembered: the ipv4hint and ipv6hint addresses of an
// HTTPS record handed out are remembered for destination verification: a
// client may connect to them before, or instead of, asking for A and AAAA
// (RFC 9460 §7.3).
func TestDNSHTTPSHintsRemembered(t *testing.T) {
	const name = "hints.egress.test"
	d := serveDNSEnv(t, staticUpstream(t, map[string][]string{
		name + ". HTTPS": {name + ". 300 IN HTTPS 1 . alpn=h2 ipv4hint=127.0.9.9 ipv6hint=2001:db8::99"},
	}), `
resolver { servers = ["DNS_ADDR"] }
policy "gw" {
  allow "hints" { hosts = ["hints.egress.test"] }
}
`)
	if in := d.query(t, "udp", name, dns.TypeHTTPS); len(in.Answer) != 1 {
		t.Fatalf("answer %v", in)
	}
	for _, a := range []string{"127.0.9.9", "2001:db8::99"} {
		if !d.remembered(name, netip.MustParseAddr(a)) {
			t.Errorf("HTTPS hint %s handed out but not remembered for destination verification", a)
		}
	}
}

// TestDNSHTTPSHintsPastLimit: every hint egressd's DNS server hands out is
// remembered, however many an HTTPS record holds: past maxAddrsPerName
// they are cut from the answer, as A and AAAA records are.
func TestDNSHTTPSHintsPastLimit(t *testing.T) {
	const name = "manyhints.egress.test"
	var hs []string
	for i := range maxAddrsPerName + 8 {
		hs = append(hs, fmt.Sprintf("127.0.10.%d", i+1))
	}
	d := serveDNSEnv(t, staticUpstream(t, map[string][]string{
		name + ". HTTPS": {name + ". 300 IN HTTPS 1 . alpn=h2 ipv4hint=" + strings.Join(hs, ",")},
	}), `
resolver { servers = ["DNS_ADDR"] }
policy "gw" {
  allow "hints" { hosts = ["manyhints.egress.test"] }
}
`)
	in := d.query(t, "tcp", name, dns.TypeHTTPS)
	if len(in.Answer) != 1 {
		t.Fatalf("answer %v", in)
	}
	got := svcbHints(&in.Answer[0].(*dns.HTTPS).SVCB)
	if len(got) != maxAddrsPerName {
		t.Errorf("%d hints handed out, want the first %d", len(got), maxAddrsPerName)
	}
	for _, ip := range got {
		a, _ := netip.AddrFromSlice(ip)
		if !d.remembered(name, a.Unmap()) {
			t.Errorf("HTTPS hint %s handed out but not remembered", a)
		}
	}
}

// TestDNSHTTPSMandatoryHintKept: trimming hints past maxAddrsPerName
// never leaves an HTTPS record whose mandatory key names a key it no
// longer has: RFC 9460 §8 makes such a record malformed, and §2.4.3 has
// the client reject the whole RRset, the untrimmed records with it.
// (From a review of 52b2605.)
func TestDNSHTTPSMandatoryHintKept(t *testing.T) {
	const name = "mandatoryhint.egress.test"
	var hs []string
	for i := range maxAddrsPerName {
		hs = append(hs, fmt.Sprintf("127.0.10.%d", i+1))
	}
	d := serveDNSEnv(t, staticUpstream(t, map[string][]string{
		name + ". HTTPS": {
			name + ". 300 IN HTTPS 1 . alpn=h2 ipv4hint=" + strings.Join(hs, ","),
			name + ". 300 IN HTTPS 2 . mandatory=ipv4hint alpn=h2 ipv4hint=127.0.11.1",
		},
	}), `
resolver { servers = ["DNS_ADDR"] }
policy "gw" {
  allow "hints" { hosts = ["mandatoryhint.egress.test"] }
}
`)
	in := d.query(t, "tcp", name, dns.TypeHTTPS)
	if len(in.Answer) == 0 {
		t.Fatalf("answer %v", in)
	}
	for _, rr := range in.Answer {
		v, ok := rr.(*dns.HTTPS)
		if !ok {
			continue
		}
		present := map[dns.SVCBKey]bool{}
		for _, kv := range v.Value {
			present[kv.Key()] = true
		}
		for _, kv := range v.Value {
			if m, ok := kv.(*dns.SVCBMandatory); ok {
				for _, k := range m.Code {
					if !present[k] {
						t.Errorf("handed out %v: mandatory names %s, which the record no longer has", rr, k)
					}
				}
			}
		}
	}
}

func TestDNSSRVAndTXTForSNIName(t *testing.T) {
	d := startDNSEnv(t, "")
	in := d.query(t, "udp", srvName, dns.TypeSRV)
	if in.Rcode != dns.RcodeSuccess || len(in.Answer) != 1 {
		t.Fatalf("SRV answer: %v", in)
	}
	if srv, ok := in.Answer[0].(*dns.SRV); !ok || srv.Port != 7844 || srv.Target != "region1.egress.test." {
		t.Errorf("SRV answer %v", in.Answer[0])
	}
	d.waitLog(t, "decision", map[string]any{"mode": "dns", "host": srvName, "qtype": "SRV", "decision": "allow", "rule": "tunnel"})
	in = d.query(t, "tcp", srvName, dns.TypeTXT)
	if in.Rcode != dns.RcodeSuccess || len(in.Answer) != 1 {
		t.Fatalf("TXT answer: %v", in)
	}
	if txt, ok := in.Answer[0].(*dns.TXT); !ok || len(txt.Txt) != 1 || txt.Txt[0] != "v=tunnel" {
		t.Errorf("TXT answer %v", in.Answer[0])
	}
	d.waitLog(t, "decision", map[string]any{"mode": "dns", "host": srvName, "qtype": "TXT", "decision": "allow"})
}

func TestDNSOverTCP(t *testing.T) {
	d := startDNSEnv(t, "")
	in := d.query(t, "tcp", cdnName, dns.TypeA)
	addrs := answerA(t, in)
	if len(addrs) != 1 || !d.remembered(cdnName, addrs[0]) {
		t.Fatalf("TCP answer %v not answered or not remembered", in)
	}
	if in = d.query(t, "tcp", "nope.exfil.test", dns.TypeA); in.Rcode != dns.RcodeRefused {
		t.Errorf("TCP query for a name no policy allows: %s, want REFUSED", dns.RcodeToString[in.Rcode])
	}
	d.waitLog(t, "decision", map[string]any{"mode": "dns", "host": "nope.exfil.test", "decision": "deny", "reason": "no_rule"})
}

// TestDNSThenTransparentNeverDstMismatch is the point of dns_listen: the
// upstream rotates its answer on every query, the workload resolves
// through egressd and connects to what it got; egressd verifies the
// destination from the answers it handed out, without asking again.
func TestDNSThenTransparentNeverDstMismatch(t *testing.T) {
	d := startDNSEnv(t, "")
	seen := map[netip.Addr]bool{}
	for i := range 10 {
		network := "udp"
		if i%2 == 1 {
			network = "tcp"
		}
		addrs := answerA(t, d.query(t, network, cdnName, dns.TypeA))
		if len(addrs) != 1 {
			t.Fatalf("iteration %d: no address", i)
		}
		seen[addrs[0]] = true
		dst := addrs[0].String() + ":" + d.port
		first := append(clientHelloBytes(cdnName), fmt.Sprintf("ping %d", i)...)
		if got := exchange(t, d.gw.dial(t, dst), first); !bytes.Equal(got, first) {
			t.Fatalf("iteration %d to %s: got %d bytes back, want %d; log:\n%s", i, dst, len(got), len(first), d.log.buf.String())
		}
		l := d.waitLog(t, "decision", map[string]any{"mode": "transparent", "dst": dst})
		if l["decision"] != "allow" || l["reason"] != "allowed" || l["sni"] != cdnName {
			t.Fatalf("iteration %d: transparent decision %v", i, l)
		}
	}
	if len(seen) != len(rotatingPool) {
		t.Errorf("the upstream handed out %d distinct addresses, want %d (not rotating?)", len(seen), len(rotatingPool))
	}
	for _, l := range d.log.lines(t) {
		if l["reason"] == "dst_mismatch" {
			t.Errorf("false dst_mismatch: %v", l)
		}
	}
	// Verification used the answers handed out: egressd sent no A query
	// of its own.
	if n := d.up.aCDN.Load(); n != 10 {
		t.Errorf("the upstream answered %d A queries for %s, want the workload's 10 (egressd re-resolved)", n, cdnName)
	}
}

func TestDNSShutdown(t *testing.T) {
	d := startDNSEnv(t, "")
	d.query(t, "udp", cdnName, dns.TypeA)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := d.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.served:
		if err != nil {
			t.Errorf("ServeDNS after Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeDNS did not return after Shutdown")
	}
	if c, err := net.DialTimeout("tcp", d.tcpAddr, time.Second); err == nil {
		c.Close()
		t.Error("the TCP DNS listener still accepts after Shutdown")
	}
}

func TestDNSFormErr(t *testing.T) {
	d := startDNSEnv(t, "")
	m := new(dns.Msg)
	m.Id = dns.Id()
	m.RecursionDesired = true
	m.Question = []dns.Question{{Name: cdnName + ".", Qtype: dns.TypeA, Qclass: dns.ClassINET}, {Name: aliasName + ".", Qtype: dns.TypeA, Qclass: dns.ClassINET}}
	in, _, err := (&dns.Client{Net: "tcp", Timeout: 5 * time.Second}).Exchange(m, d.tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	if in.Rcode != dns.RcodeFormatError {
		t.Errorf("two questions: %s, want FORMERR", dns.RcodeToString[in.Rcode])
	}
	if n := d.up.queries.Load(); n != 0 {
		t.Errorf("forwarded a malformed query (%d upstream queries)", n)
	}
}

// TestDNSAuditMode: with server mode = "audit", a name no policy allows is
// forwarded (the workload goes on and its connection shows what it needs)
// and logged as allowed with would_deny and the reason.
func TestDNSAuditMode(t *testing.T) {
	d := startDNSEnv(t, `mode = "audit"`)
	in := d.query(t, "udp", "unlisted.exfil.test", dns.TypeA)
	if in.Rcode != dns.RcodeNameError {
		t.Errorf("rcode %s, want the upstream's NXDOMAIN", dns.RcodeToString[in.Rcode])
	}
	if n := d.up.queries.Load(); n != 1 {
		t.Errorf("the upstream received %d queries, want 1", n)
	}
	d.waitLog(t, "decision", map[string]any{"mode": "dns", "host": "unlisted.exfil.test", "decision": "allow", "would_deny": true, "reason": "no_rule"})
}

// bigUpstream answers TXT for big.egress.test with about 10 KB of records:
// over UDP truncated (TC), as public resolvers do, over TCP whole.
// startBigDNS starts egressd allowing big.egress.test, whose TXT answer
// from the upstream has records records of 250 bytes, and serves its DNS
// server on loopback: UDP on pc, TCP on tl.
func (e *env) startBigDNS(t *testing.T, records int) (pc net.PacketConn, tl net.Listener) {
	t.Helper()
	e.dnsAddr = bigUpstream(t, records)
	e.start(t, `
resolver { servers = ["DNS_ADDR"] }
policy "gw" {
  allow "big" { hosts = ["big.egress.test"] }
}
`)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl = listen(t)
	go e.srv.ServeDNS(pc, tl)
	return pc, tl
}

func bigUpstream(t *testing.T, records int) string {
	var txt []string
	for i := range records {
		txt = append(txt, "big.egress.test. 60 IN TXT \""+strings.Repeat(string(rune('a'+i%26)), 250)+"\"")
	}
	return staticUpstream(t, map[string][]string{"big.egress.test. TXT": txt})
}

func TestDNSUDPAnswerCapped(t *testing.T) {
	e := newEnv(t)
	pc, tl := e.startBigDNS(t, 40)
	for _, tc := range []struct {
		network, addr string
		udpSize       uint16
		max           int
		tc            bool
	}{
		{"udp", pc.LocalAddr().String(), 65000, dnsMaxUDPAnswer, true},
		{"udp", pc.LocalAddr().String(), 0, dns.MinMsgSize, true},
		{"tcp", tl.Addr().String(), 65000, dns.MaxMsgSize, false},
	} {
		q := new(dns.Msg)
		q.SetQuestion("big.egress.test.", dns.TypeTXT)
		if tc.udpSize != 0 {
			q.SetEdns0(tc.udpSize, false)
		}
		cl := &dns.Client{Net: tc.network, Timeout: 5 * time.Second, UDPSize: 65535}
		in, _, err := cl.Exchange(q, tc.addr)
		if err != nil {
			t.Fatalf("%s query (EDNS0 size %d): %v", tc.network, tc.udpSize, err)
		}
		wire, _ := in.Pack()
		if in.Rcode != dns.RcodeSuccess || len(wire) > tc.max || in.Truncated != tc.tc {
			t.Errorf("%s query (EDNS0 size %d): %s answer of %d bytes, TC %v; want NOERROR, at most %d bytes, TC %v",
				tc.network, tc.udpSize, dns.RcodeToString[in.Rcode], len(wire), in.Truncated, tc.max, tc.tc)
		}
		if !tc.tc && len(in.Answer) != 40 {
			t.Errorf("%s query: %d records, want all 40", tc.network, len(in.Answer))
		}
	}
}

// TestDNSTCPConnectionLimit: DNS-over-TCP connections count against
// max_connections_per_client; one over the limit is closed at once with a
// connection_limit decision line, and freeing a connection frees its slot.
func TestDNSTCPConnectionLimit(t *testing.T) {
	d := startDNSEnv(t, "max_connections_per_client = 2")
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", d.tcpAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	for deadline := time.Now().Add(5 * time.Second); d.srv.limits.open() != 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections counted, want the 2 DNS connections", d.srv.limits.open())
		}
	}
	over, err := net.Dial("tcp", d.tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	over.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := over.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a third DNS connection from one client: read %v, want it closed at once", err)
	}
	d.waitLog(t, "decision", map[string]any{"mode": "dns", "reason": "connection_limit"})
	held[0].Close()
	for deadline := time.Now().Add(5 * time.Second); d.srv.limits.open() != 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections counted after one closed, want 1", d.srv.limits.open())
		}
	}
	if in := d.query(t, "tcp", cdnName, dns.TypeA); len(answerA(t, in)) != 1 {
		t.Errorf("a query in the freed slot: answer %v", in)
	}
}

// listenUDPAndTCP listens on one loopback port over UDP and TCP, as a DNS
// server does. A free UDP port may be taken for TCP: it tries a few.
func listenUDPAndTCP(t *testing.T) (net.PacketConn, net.Listener) {
	t.Helper()
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close()
		lastErr = err
	}
	t.Fatalf("no loopback port free over both UDP and TCP: %v", lastErr)
	return nil, nil
}

// staticUpstream serves fixed answers over UDP and TCP on one loopback
// port: answers maps a question ("name. TYPE", lower case) to its records
// in presentation format; other questions get NOERROR and no records. A
// UDP answer is truncated to the query's size (TC), as public resolvers
// do, so egressd asks again over TCP.
func staticUpstream(t *testing.T, answers map[string][]string) string {
	t.Helper()
	parsed := map[string][]dns.RR{}
	for q, rrs := range answers {
		for _, s := range rrs {
			rr, err := dns.NewRR(s)
			if err != nil {
				t.Fatalf("%q: %v", s, err)
			}
			parsed[q] = append(parsed[q], rr)
		}
	}
	pc, ln := listenUDPAndTCP(t)
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Answer = parsed[strings.ToLower(q.Question[0].Name)+" "+dns.TypeToString[q.Question[0].Qtype]]
		if o := q.IsEdns0(); o != nil {
			m.SetEdns0(o.UDPSize(), o.Do())
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			size := dns.MinMsgSize
			if o := q.IsEdns0(); o != nil {
				size = int(o.UDPSize())
			}
			m.Truncate(size)
		}
		w.WriteMsg(m)
	})
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		go s.ActivateAndServe()
		t.Cleanup(func() { s.Shutdown() })
	}
	return pc.LocalAddr().String()
}

// answerAddrsOf returns the A and AAAA addresses of an answer, in order.
func answerAddrsOf(in *dns.Msg) []netip.Addr {
	var out []netip.Addr
	for _, rr := range in.Answer {
		switch v := rr.(type) {
		case *dns.A:
			a, _ := netip.AddrFromSlice(v.A.To4())
			out = append(out, a)
		case *dns.AAAA:
			a, _ := netip.AddrFromSlice(v.AAAA.To16())
			out = append(out, a)
		}
	}
	return out
}

// TestDNSAnswerHoldsOnlyRememberedAddrs: the upstream answers 40
// addresses; Remember (and Verify's own lookup) keep maxAddrsPerName of a
// name, so egressd's DNS server hands out only those, the first ones in
// the upstream's order, and a transparent connection to each verifies.
// Before, all 40 were handed out and a connection to the 33rd or later
// was refused with dst_mismatch.
func TestDNSAnswerHoldsOnlyRememberedAddrs(t *testing.T) {
	const (
		many  = "many.egress.test"
		alias = "alias.egress.test"
		n     = 40
	)
	v4 := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 9, byte(i + 1)}) }
	v6 := func(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i+1)) }
	answers := map[string][]string{alias + ". A": {alias + ". 60 IN CNAME " + many + "."}}
	for i := range n {
		answers[many+". A"] = append(answers[many+". A"], fmt.Sprintf("%s. 60 IN A %s", many, v4(i)))
		answers[many+". AAAA"] = append(answers[many+". AAAA"], fmt.Sprintf("%s. 60 IN AAAA %s", many, v6(i)))
	}
	answers[alias+". A"] = append(answers[alias+". A"], answers[many+". A"]...)
	// An echo server on every address the upstream hands out, so that a
	// connection egressd lets through is echoed.
	ln := listenOn(t, v4(0).String()+":0")
	p := strconv.Itoa(port(ln))
	serveEcho(ln)
	for i := 1; i < n; i++ {
		serveEcho(listenOn(t, v4(i).String()+":"+p))
	}
	d := serveDNSEnv(t, staticUpstream(t, answers), `
server {
  allow_private_destinations = true
  hello_timeout = "2s"
}
resolver { servers = ["DNS_ADDR"] }
policy "gw" {
  allow "many" {
    hosts = ["many.egress.test", "alias.egress.test"]
    ports = [`+p+`]
  }
}
`)
	for _, tc := range []struct {
		name  string
		qtype uint16
		addr  func(int) netip.Addr // the upstream's i-th address
		dial  bool                 // connect to each (loopback IPv4 only)
	}{
		{many, dns.TypeA, v4, true},
		{many, dns.TypeAAAA, v6, false},
		{alias, dns.TypeA, v4, true},
	} {
		in := d.query(t, "tcp", tc.name, tc.qtype)
		got := answerAddrsOf(in)
		if len(got) != maxAddrsPerName {
			t.Errorf("%s %s: %d addresses handed out, want the %d egressd remembers", tc.name, dns.TypeToString[tc.qtype], len(got), maxAddrsPerName)
		}
		for i, a := range got {
			if want := tc.addr(i); a != want {
				t.Errorf("%s %s: address %d is %v, want the upstream's %v", tc.name, dns.TypeToString[tc.qtype], i, a, want)
			}
			if !d.remembered(tc.name, a) {
				t.Errorf("%s %s: %v handed out but not remembered", tc.name, dns.TypeToString[tc.qtype], a)
			}
			if !tc.dial {
				continue
			}
			dst := a.String() + ":" + p
			first := append(clientHelloBytes(tc.name), "ping"...)
			if back := exchange(t, d.gw.dial(t, dst), first); !bytes.Equal(back, first) {
				t.Errorf("%s: transparent connection to %s (address %d handed out) not relayed", tc.name, dst, i)
			}
		}
	}
	for _, l := range d.log.lines(t) {
		if l["reason"] == "dst_mismatch" {
			t.Errorf("dst_mismatch for an address egressd handed out: %v", l)
		}
	}
}

// TestDNSAnswerTTLCapped: egressd remembers a handed-out address for at
// most maxCacheTTL, so the answer's TTLs are capped there: a workload must
// not cache an address longer than egressd remembers it. Before, an
// upstream TTL of a day went out as is, and after an hour the workload's
// connections to a rotated-away address were refused with dst_mismatch.
func TestDNSAnswerTTLCapped(t *testing.T) {
	limit := uint32(maxCacheTTL / time.Second)
	answers := map[string][]string{
		"day.egress.test. A":    {"day.egress.test. 86400 IN A 127.0.9.1"},
		"day.egress.test. AAAA": {"day.egress.test. 86400 IN AAAA 2001:db8::1"},
		"hour.egress.test. A":   {"hour.egress.test. 3601 IN A 127.0.9.2"},
		"short.egress.test. A":  {"short.egress.test. 60 IN A 127.0.9.3"},
		"chain.egress.test. A":  {"chain.egress.test. 86400 IN CNAME day.egress.test.", "day.egress.test. 86400 IN A 127.0.9.1"},
		"mixed.egress.test. A":  {"mixed.egress.test. 30 IN CNAME day.egress.test.", "day.egress.test. 86400 IN A 127.0.9.1"},
		"edns.egress.test. A":   {"edns.egress.test. 86400 IN A 127.0.9.4"},
		"day.egress.test. TXT":  {`day.egress.test. 86400 IN TXT "x"`},
	}
	d := serveDNSEnv(t, staticUpstream(t, answers), `
resolver { servers = ["DNS_ADDR"] }
policy "gw" {
  allow "all" { hosts = ["*.egress.test"] }
}
`)
	rememberedUntil := func(name string, a netip.Addr) (until time.Time) {
		r := d.srv.resolver
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, k := range r.cache[name].known {
			if k.addr == a && k.expires.After(until) {
				until = k.expires
			}
		}
		return until
	}
	for _, tc := range []struct {
		name  string
		qtype uint16
		edns  bool     // the query has an EDNS0 OPT with DO set
		want  []uint32 // the TTL of each answer record
	}{
		{"day.egress.test", dns.TypeA, false, []uint32{limit}},
		{"day.egress.test", dns.TypeAAAA, false, []uint32{limit}},
		{"hour.egress.test", dns.TypeA, false, []uint32{limit}},
		{"short.egress.test", dns.TypeA, false, []uint32{60}},
		{"chain.egress.test", dns.TypeA, false, []uint32{limit, limit}},
		{"mixed.egress.test", dns.TypeA, false, []uint32{30, limit}},
		{"edns.egress.test", dns.TypeA, true, []uint32{limit}},
		{"day.egress.test", dns.TypeTXT, false, []uint32{limit}},
	} {
		what := tc.name + " " + dns.TypeToString[tc.qtype]
		q := new(dns.Msg)
		q.SetQuestion(dns.Fqdn(tc.name), tc.qtype)
		if tc.edns {
			q.SetEdns0(1232, true)
		}
		asked := time.Now()
		in, _, err := (&dns.Client{Net: "tcp", Timeout: 5 * time.Second}).Exchange(q, d.tcpAddr)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(in.Answer) != len(tc.want) {
			t.Fatalf("%s: answer %v, want %d records", what, in.Answer, len(tc.want))
		}
		for i, rr := range in.Answer {
			if got := rr.Header().Ttl; got != tc.want[i] {
				t.Errorf("%s: record %d has TTL %d, want %d", what, i, got, tc.want[i])
			}
		}
		// The workload may use an address for the queried name until
		// asked + the smallest TTL along the chain; egressd must remember
		// it until then.
		ttl := time.Duration(in.Answer[0].Header().Ttl) * time.Second
		for _, rr := range in.Answer[1:] {
			ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
		}
		for _, a := range answerAddrsOf(in) {
			if until := rememberedUntil(tc.name, a); until.Before(asked.Add(ttl)) {
				t.Errorf("%s: %v handed out for %v, remembered for only %v", what, a, ttl, until.Sub(asked).Round(time.Second))
			}
		}
		if tc.edns {
			if o := in.IsEdns0(); o == nil || !o.Do() || o.ExtendedRcode() != 0 || o.Version() != 0 {
				t.Errorf("%s: OPT %v, want EDNS0 version 0 with DO, as the upstream sent it", what, o)
			}
		}
	}
}
