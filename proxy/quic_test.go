package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egressd/egressd/sni"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// These tests run the QUIC gateway on loopback without TPROXY: clients send
// to egressd's socket directly, the test says which original destination
// each client's datagrams had, and egressd answers through its own socket
// (what the client sent to). Everything else (flows, the hello in the
// Initials, decisions, verification, relaying, expiry) is the real code.
// netns_quic_linux_test.go runs the same paths through real TPROXY rules.

// quicGW is an env's QUIC listener with injected original destinations.
type quicGW struct {
	addr *net.UDPAddr
	dsts sync.Map // client netip.AddrPort → original destination netip.AddrPort
	g    atomic.Pointer[quicGateway]
}

type listenerReply struct{ *net.UDPConn }

func (listenerReply) Close() error { return nil }

// startQUIC starts egressd with hclSrc (see env.start; QUIC_PORT is
// replaced with quicPort) and serves a QUIC listener on loopback.
func (e *env) startQUIC(t *testing.T, hclSrc string, quicPort uint16) *quicGW {
	t.Helper()
	e.start(t, strings.ReplaceAll(hclSrc, "QUIC_PORT", fmt.Sprint(quicPort)))
	pc := listenUDP(t, "127.0.0.1:0")
	q := &quicGW{addr: pc.LocalAddr().(*net.UDPAddr)}
	e.srv.quicHooks = func(g *quicGateway) {
		g.origDst = func(from netip.AddrPort, _ []byte) (netip.AddrPort, bool) {
			v, ok := q.dsts.Load(from)
			if !ok {
				return netip.AddrPort{}, false
			}
			return v.(netip.AddrPort), true
		}
		g.reply = func(netip.AddrPort) (quicReplier, error) { return listenerReply{pc}, nil }
		q.g.Store(g)
	}
	go e.srv.ServeQUIC(pc)
	deadline := time.Now().Add(5 * time.Second)
	for q.g.Load() == nil {
		if time.Now().After(deadline) {
			t.Fatal("ServeQUIC did not start")
		}
		time.Sleep(time.Millisecond)
	}
	return q
}

// socket opens a client UDP socket whose datagrams egressd treats as sent
// to dst.
func (q *quicGW) socket(t *testing.T, dst netip.AddrPort) *net.UDPConn {
	t.Helper()
	c := listenUDP(t, "127.0.0.1:0")
	q.dsts.Store(c.LocalAddr().(*net.UDPAddr).AddrPort(), dst)
	return c
}

// dial makes a QUIC connection to dst through the gateway.
func (q *quicGW) dial(t *testing.T, dst netip.AddrPort, tlsConf *tls.Config) (*quic.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := quic.Dial(ctx, q.socket(t, dst), q.addr, tlsConf, quicTestConfig())
	if err == nil {
		t.Cleanup(func() { c.CloseWithError(0, "") })
	}
	return c, err
}

func (q *quicGW) flows() int {
	g := q.g.Load()
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.flows)
}

// quicUpstream is a QUIC echo server on loopback.
func quicUpstream(t *testing.T, e *env) (netip.AddrPort, *atomic.Int32) {
	t.Helper()
	pc := listenUDP(t, "127.0.0.1:0")
	n := serveQUICEcho(t, pc, e.ca.leaf)
	return pc.LocalAddr().(*net.UDPAddr).AddrPort(), n
}

// wantAtUpstream waits until a udpSink got n datagrams, want, and fails
// if it got more: the datagrams of one socket arrive in order, so once
// the last one sent is there, any earlier one relayed by mistake is too.
func wantAtUpstream(t *testing.T, got *atomic.Int32, n int32, want string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d datagrams at the upstream", n), func() bool { return got.Load() >= n })
	if m := got.Load(); m != n {
		t.Errorf("the upstream got %d datagrams, want %s", m, want)
	}
}

// udpSink counts the datagrams it receives (a destination that must get
// none) and echoes them.
func udpSink(t *testing.T) (netip.AddrPort, *atomic.Int32) {
	t.Helper()
	pc := listenUDP(t, "127.0.0.1:0")
	var n atomic.Int32
	go func() {
		buf := make([]byte, 65536)
		for {
			k, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			n.Add(1)
			pc.WriteToUDPAddrPort(buf[:k], from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort(), &n
}

const quicTestPolicy = `
server {
  hello_timeout = "1s"
  idle_timeout  = "1s"
}
resolver { servers = ["DNS_ADDR"] }
policy "cloudflare-tunnel" {
  allow "tunnel-quic" {
    cidrs     = ["127.0.0.0/8"]
    sni       = ["quic.cftunnel.com"]
    ports     = [QUIC_PORT]
    protocols = ["quic"]
  }
  allow "tunnel-http2" {
    cidrs     = ["127.0.0.0/8"]
    sni       = ["h2.cftunnel.com"]
    ports     = [QUIC_PORT]
    protocols = ["tcp"]
  }
}
policy "web" {
  allow "h3" {
    hosts = ["allowed.egress.test"]
    cidrs = ["127.0.0.0/8"]
    ports = [QUIC_PORT]
  }
}
`

// quicLongIdlePolicy is quicTestPolicy with flows that stay for a minute:
// for tests that send a flow's datagrams over several steps.
var quicLongIdlePolicy = strings.Replace(quicTestPolicy, `idle_timeout  = "1s"`, `idle_timeout  = "1m"`, 1)

// TestQUICTunnel: a quic-go client with SNI quic.cftunnel.com reaches a
// quic-go server through the gateway and exchanges data both ways; the
// decision line carries the fingerprints of the same client's hello as
// recovered from a capture, and the close line its bytes.
func TestQUICTunnel(t *testing.T) {
	e := newEnv(t)
	up, accepted := quicUpstream(t, e)
	q := e.startQUIC(t, quicTestPolicy, up.Port())
	tlsConf := &tls.Config{ServerName: "quic.cftunnel.com", RootCAs: e.ca.pool, NextProtos: longALPN()}

	captured, datagrams := captureQUICHello(t, tlsConf)
	if datagrams < 2 {
		t.Fatalf("the test hello fits in %d datagram; it must span two Initials", datagrams)
	}
	wantJA3Full, wantJA3 := captured.JA3()

	c, err := q.dial(t, up, tlsConf)
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 200<<10)
	rand.Read(payload)
	if err := quicEcho(c, payload); err != nil {
		t.Fatal(err)
	}
	d := e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "allow", "rule": "tunnel-quic",
		"sni": "quic.cftunnel.com", "host": "127.0.0.1", "port": up.Port(), "dst": up.String()})
	if d["ja3"] != wantJA3 || d["ja3_full"] != wantJA3Full || d["ja4"] != captured.JA4(true) {
		t.Errorf("fingerprints in the log %v %v %v, want from the capture %s %s %s",
			d["ja3"], d["ja3_full"], d["ja4"], wantJA3, wantJA3Full, captured.JA4(true))
	}
	if !strings.HasPrefix(fmt.Sprint(d["ja4"]), "q13") {
		t.Errorf("ja4 %v lacks the QUIC marker", d["ja4"])
	}
	if accepted.Load() != 1 {
		t.Errorf("upstream accepted %d connections, want 1", accepted.Load())
	}
	c.CloseWithError(0, "")
	cl := e.waitLog(t, "close", map[string]any{"mode": "quic", "conn": d["conn"]})
	if up, down := cl["bytes_up"].(float64), cl["bytes_down"].(float64); up < float64(len(payload)) || down < float64(len(payload)) {
		t.Errorf("close line bytes_up %v bytes_down %v, want both >= %d", up, down, len(payload))
	}
	if n := q.flows(); n != 0 {
		t.Errorf("%d flows left after the idle timeout", n)
	}
}

// TestQUICDenied: flows that are not allowed are dropped, logged once, and
// nothing reaches their destination.
func TestQUICDenied(t *testing.T) {
	e := newEnv(t)
	sink, got := udpSink(t)
	q := e.startQUIC(t, quicTestPolicy, sink.Port())
	tests := []struct {
		name string
		sni  string
		want map[string]any
	}{
		{"sni not allowed", "evil.example", map[string]any{"reason": "sni_mismatch", "rule": "tunnel-quic", "sni": "evil.example"}},
		{"tcp-only rule", "h2.cftunnel.com", map[string]any{"reason": "sni_mismatch", "rule": "tunnel-quic", "sni": "h2.cftunnel.com"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tlsConf := &tls.Config{ServerName: tt.sni, RootCAs: e.ca.pool, NextProtos: []string{quicALPN}}
			if _, err := q.dial(t, sink, tlsConf); err == nil {
				t.Fatal("the handshake completed")
			}
			want := map[string]any{"mode": "quic", "decision": "deny"}
			for k, v := range tt.want {
				want[k] = v
			}
			d := e.waitLog(t, "decision", want)
			if d["dst"] != nil || !strings.HasPrefix(fmt.Sprint(d["ja4"]), "q") {
				t.Errorf("decision %v: dialed, or no QUIC JA4", d)
			}
			// Retransmitted Initials were dropped without more lines.
			n := e.countLines(t, "decision", map[string]any{"conn": d["conn"]})
			if n != 1 {
				t.Errorf("%d decision lines for one flow", n)
			}
		})
	}
	if n := got.Load(); n != 0 {
		t.Errorf("the destination got %d datagrams", n)
	}
}

// TestQUICHTTP3: an HTTP/3 request (quic-go's http3) through the gateway
// for an allowed host.
func TestQUICHTTP3(t *testing.T) {
	e := newEnv(t)
	pc := listenUDP(t, "127.0.0.1:0")
	serveHTTP3(t, pc, e.ca.leaf)
	dst := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	q := e.startQUIC(t, quicTestPolicy, dst.Port())
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{RootCAs: e.ca.pool},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			return quic.DialEarly(ctx, q.socket(t, dst), q.addr, tlsCfg, cfg)
		},
	}
	defer tr.Close()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := client.Get(fmt.Sprintf("https://allowed.egress.test:%d/path", dst.Port()))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "h3 allowed.egress.test /path" {
		t.Errorf("body %q", body)
	}
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "allow", "rule": "h3", "sni": "allowed.egress.test", "alpn": "[h3]"})
}

// TestQUICNotQUIC: other UDP on a QUIC port is dropped unless a rule with
// require_tls = false opens its destination.
func TestQUICNotQUIC(t *testing.T) {
	e := newEnv(t)
	sink, got := udpSink(t)
	q := e.startQUIC(t, quicTestPolicy+`
policy "raw" {
  allow "raw-udp" {
    cidrs       = ["127.0.0.2/32"]
    ports       = [QUIC_PORT]
    require_tls = false
    protocols   = ["quic"]
  }
}`, sink.Port())

	c := q.socket(t, sink)
	c.WriteToUDP([]byte("not quic"), q.addr)
	d := e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "deny", "reason": "not_tls"})
	if d["sni"] != nil {
		t.Errorf("a hello in %v", d)
	}

	// The same bytes to an address the raw rule opens are relayed both
	// ways. 127.0.0.2 is the destination the client believes it talks to;
	// the test sink listens on 127.0.0.1, so point the rule's address at it
	// through verification: the rule's cidrs cover the original
	// destination, and egressd dials it.
	ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: int(sink.Port())})
	if err != nil {
		unavailable(t, "cannot listen on 127.0.0.2: %v", err)
	}
	defer ln.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := ln.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			ln.WriteToUDPAddrPort(append([]byte("echo "), buf[:n]...), from)
		}
	}()
	raw := q.socket(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), sink.Port()))
	raw.WriteToUDP([]byte("ping"), q.addr)
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := raw.Read(buf)
	if err != nil || string(buf[:n]) != "echo ping" {
		t.Fatalf("raw UDP through the gateway: %q %v", buf[:n], err)
	}
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "allow", "rule": "raw-udp", "reason": "allowed"})
	if got.Load() != 0 {
		t.Errorf("the denied flow reached its destination")
	}
}

// TestQUICHelloLimits: an Initial whose hello never completes is refused
// at hello_timeout; a corrupted Initial as malformed; a datagram without
// an original destination or addressed to egressd itself as bad_request.
func TestQUICHelloLimits(t *testing.T) {
	e := newEnv(t)
	sink, got := udpSink(t)
	q := e.startQUIC(t, quicTestPolicy, sink.Port())

	// The first Initial of a two-Initial hello, from a capture.
	first := firstInitial(t, &tls.Config{ServerName: "quic.cftunnel.com", NextProtos: longALPN()})

	c := q.socket(t, sink)
	c.WriteToUDP(first, q.addr)
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "deny", "reason": "hello_timeout"})

	bad := append([]byte(nil), first...)
	bad[len(bad)-20] ^= 0xff // in the AEAD tag's reach: authentication fails
	c2 := q.socket(t, sink)
	c2.WriteToUDP(bad, q.addr)
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "deny", "reason": "hello_malformed"})

	c3 := listenUDP(t, "127.0.0.1:0")
	c3.WriteToUDP(first, q.addr) // no original destination registered
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "deny", "reason": "bad_request", "client": c3.LocalAddr().String()})

	c4 := q.socket(t, q.addr.AddrPort())
	c4.WriteToUDP(first, q.addr)
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "deny", "reason": "bad_request", "client": c4.LocalAddr().String()})

	// Retransmissions of the first Initial never complete the hello: the
	// flow's buffer (maxPendingDatagrams) fills and the flow is refused.
	c5 := q.socket(t, sink)
	for range maxPendingDatagrams + 1 {
		c5.WriteToUDP(first, q.addr)
	}
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "deny", "reason": "hello_too_large", "client": c5.LocalAddr().String()})

	if got.Load() != 0 {
		t.Errorf("the destination got %d datagrams", got.Load())
	}
}

// firstInitial captures the first datagram a quic-go client sends.
func firstInitial(t *testing.T, tlsConf *tls.Config) []byte {
	t.Helper()
	sink := listenUDP(t, "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	go quic.DialAddr(ctx, sink.LocalAddr().String(), tlsConf, quicTestConfig())
	buf := make([]byte, 65536)
	sink.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := sink.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

// TestQUICFlowTableBounded: at maxQUICFlows, when no flow is held (denied;
// those are evicted, see TestFloodQUICInitials), the datagrams of new flows
// are dropped (with a warning), the table does not grow, and it empties
// again when the flows' hello timeout and then their hold end.
func TestQUICFlowTableBounded(t *testing.T) {
	e := newEnv(t)
	// A hello timeout longer than the test: the flows stay pending until
	// the test expires them.
	q := e.startQUIC(t, strings.Replace(quicTestPolicy, `hello_timeout = "1s"`, `hello_timeout = "1h"`, 1), 9)
	g := q.g.Load()
	// The first Initial of a two-datagram hello: each flow stays pending.
	first := firstInitial(t, &tls.Config{ServerName: "quic.cftunnel.com", NextProtos: longALPN()})
	// Many clients (each below max_connections_per_client), many
	// destinations: one flow each.
	for i := range maxQUICFlows + 100 {
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(i >> 8), byte(i)}), 40000)
		dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), uint16(1000+i))
		g.handle(from, dst, true, first)
	}
	if n := q.flows(); n != maxQUICFlows {
		t.Errorf("%d flows, want the limit %d", n, maxQUICFlows)
	}
	e.waitLog(t, "quic flow table full: datagrams of new flows are dropped", map[string]any{"level": "warn"})
	// Every flow times out (denied) and is held; after the hold they go.
	g.expire(time.Now().Add(2 * time.Hour))
	deadline := time.Now().Add(10 * time.Second)
	for {
		done := 0
		for _, l := range e.log.lines(t) {
			if l["message"] == "decision" {
				done++
			}
		}
		if done == maxQUICFlows {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d decisions, want %d", done, maxQUICFlows)
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.expire(time.Now().Add(quicDenyHold + time.Second))
	if n := q.flows(); n != 0 {
		t.Errorf("%d flows after the hold", n)
	}
}

// TestQUICShutdown: Shutdown closes relaying flows and logs their close
// lines.
func TestQUICShutdown(t *testing.T) {
	e := newEnv(t)
	up, _ := quicUpstream(t, e)
	q := e.startQUIC(t, quicLongIdlePolicy, up.Port())
	c, err := q.dial(t, up, &tls.Config{ServerName: "quic.cftunnel.com", RootCAs: e.ca.pool, NextProtos: []string{quicALPN}})
	if err != nil {
		t.Fatal(err)
	}
	if err := quicEcho(c, []byte("before shutdown")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
	e.waitLog(t, "close", map[string]any{"mode": "quic"})
	if n := q.flows(); n != 0 {
		t.Errorf("%d flows after Shutdown", n)
	}
}

// TestQUICOtherConnectionsOnAFlow: a client that opens more QUIC
// connections on the socket of an allowed flow (same address, port and
// destination) gets each decided on its own hello: one whose SNI no rule
// allows is dropped with its own deny line, however allowed the flow's
// connection was; one with an allowed SNI is relayed with its own allow
// line. Before, every connection on the flow was relayed unchecked.
func TestQUICOtherConnectionsOnAFlow(t *testing.T) {
	e := newEnv(t)
	up, accepted := quicUpstream(t, e)
	q := e.startQUIC(t, quicLongIdlePolicy, up.Port())
	tr := &quic.Transport{Conn: q.socket(t, up)}
	defer tr.Close()
	dial := func(name string, timeout time.Duration) (*quic.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return tr.Dial(ctx, q.addr, &tls.Config{ServerName: name, RootCAs: e.ca.pool, InsecureSkipVerify: name == "evil.example",
			NextProtos: []string{quicALPN}}, quicTestConfig())
	}
	first, err := dial("quic.cftunnel.com", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer first.CloseWithError(0, "")
	if err := quicEcho(first, []byte("first")); err != nil {
		t.Fatal(err)
	}

	if c, err := dial("evil.example", 2*time.Second); err == nil {
		c.CloseWithError(0, "")
		t.Error("a second connection with SNI evil.example on the allowed flow's socket was relayed")
	}
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "sni": "evil.example", "decision": "deny", "reason": "sni_mismatch"})

	third, err := dial("allowed.egress.test", 5*time.Second)
	if err != nil {
		t.Fatalf("a third connection with an allowed SNI on the same socket: %v", err)
	}
	defer third.CloseWithError(0, "")
	if err := quicEcho(third, []byte("third")); err != nil {
		t.Fatal(err)
	}
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "sni": "allowed.egress.test", "decision": "allow", "rule": "h3"})
	if n := accepted.Load(); n != 2 {
		t.Errorf("the upstream accepted %d connections, want 2 (not evil.example's)", n)
	}
	if n := q.flows(); n != 1 {
		t.Errorf("%d flows, want the socket's 1", n)
	}
}

// helloRecorder starts a quic-go server on loopback (of versions, all
// when nil) that records the SNI of every hello it acts on.
func helloRecorder(t *testing.T, e *env, versions []quic.Version) (netip.AddrPort, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var seen []string
	up := serveQUIC(t, e, &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		mu.Lock()
		seen = append(seen, chi.ServerName)
		mu.Unlock()
		return nil, nil
	}}, versions)
	return up, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// serveQUIC runs a quic-go server on loopback that accepts every
// connection, with conf given the test CA's leaf and quicALPN.
func serveQUIC(t *testing.T, e *env, conf *tls.Config, versions []quic.Version) netip.AddrPort {
	t.Helper()
	pc := listenUDP(t, "127.0.0.1:0")
	conf.Certificates, conf.NextProtos = []tls.Certificate{e.ca.leaf}, []string{quicALPN}
	ln, err := quic.Listen(pc, conf, &quic.Config{Versions: versions})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			if _, err := ln.Accept(context.Background()); err != nil {
				return
			}
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TestQUICDecidedHelloOnly: the upstream server only ever gets the hello
// egressd decided. A client gets an allowed hello decided in packets a
// server drops, then sends another hello for the same connection ID in
// packets it keeps: the decided connection's later Initials (and those of
// another allowed connection on the flow) are checked against the decided
// hello and dropped. A retransmission of the decided hello still goes
// through, and the server acts on it.
func TestQUICDecidedHelloOnly(t *testing.T) {
	const v2 = 0x6b3343cf
	type datagram struct {
		spec quicInitialSpec
		// After it is sent: allow lines for the allowed hello, and hellos
		// for it the server acted on, to wait for (0: none).
		decisions, acted int
		corrupt          bool // its last byte flipped: it fails authentication
	}
	dcid := func(b byte) []byte { return []byte{9, 8, 7, 6, 5, 4, 3, b} }
	for _, tc := range []struct {
		name     string
		versions []quic.Version // the server's
		build    func(allowed, evil []byte) []datagram
	}{
		{"the allowed hello in a short datagram", nil, func(a, e []byte) []datagram {
			return []datagram{
				{spec: quicInitialSpec{dcid: dcid(1), pn: 0, frames: quicCrypto(0, a)}, decisions: 1}, // under 1200 bytes: the server drops it
				{spec: quicInitialSpec{dcid: dcid(1), pn: 1, frames: quicCrypto(0, e), padTo: 1200}},
				{spec: quicInitialSpec{dcid: dcid(1), pn: 2, frames: quicCrypto(0, a), padTo: 1200}, acted: 1},
			}
		}},
		{"a reused packet number", nil, func(a, e []byte) []datagram {
			return []datagram{
				{spec: quicInitialSpec{dcid: dcid(2), pn: 0, frames: quicCrypto(0, a[:6]), padTo: 1200}},
				{spec: quicInitialSpec{dcid: dcid(2), pn: 0, frames: quicCrypto(6, a[6:]), padTo: 1200}, decisions: 1}, // the server drops a reused number
				{spec: quicInitialSpec{dcid: dcid(2), pn: 1, frames: quicCrypto(6, e[6:]), padTo: 1200}},
				{spec: quicInitialSpec{dcid: dcid(2), pn: 2, frames: quicCrypto(6, a[6:]), padTo: 1200}, acted: 1},
			}
		}},
		{"the allowed hello in QUIC v2, to a v1 server", []quic.Version{quic.Version1}, func(a, e []byte) []datagram {
			return []datagram{
				{spec: quicInitialSpec{version: v2, dcid: dcid(3), frames: quicCrypto(0, a), padTo: 1200}, decisions: 1},
				{spec: quicInitialSpec{dcid: dcid(3), frames: quicCrypto(0, e), padTo: 1200}}, // another connection: denied
				{spec: quicInitialSpec{dcid: dcid(4), frames: quicCrypto(0, a), padTo: 1200}, decisions: 2, acted: 1},
			}
		}},
		{"another connection on the flow", nil, func(a, e []byte) []datagram {
			return []datagram{
				{spec: quicInitialSpec{dcid: dcid(5), frames: quicCrypto(0, a), padTo: 1200}, decisions: 1, acted: 1},
				{spec: quicInitialSpec{dcid: dcid(6), pn: 0, frames: quicCrypto(0, a)}, decisions: 2}, // short: the server drops it
				{spec: quicInitialSpec{dcid: dcid(6), pn: 1, frames: quicCrypto(0, e), padTo: 1200}},
				{spec: quicInitialSpec{dcid: dcid(6), pn: 2, frames: quicCrypto(0, a), padTo: 1200}, acted: 2},
			}
		}},
		{"a corrupted datagram of another connection", nil, func(a, e []byte) []datagram {
			return []datagram{
				{spec: quicInitialSpec{dcid: dcid(7), frames: quicCrypto(0, a), padTo: 1200}, decisions: 1, acted: 1},
				{spec: quicInitialSpec{dcid: dcid(8), pn: 0, frames: quicCrypto(0, a[:6]), padTo: 1200}},
				{spec: quicInitialSpec{dcid: dcid(8), pn: 1, frames: quicCrypto(6, a[6:]), padTo: 1200}, corrupt: true}, // discarded
				{spec: quicInitialSpec{dcid: dcid(8), pn: 1, frames: quicCrypto(6, a[6:]), padTo: 1200}, decisions: 2, acted: 2},
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			up, seen := helloRecorder(t, e, tc.versions)
			count := func(name string) int {
				n := 0
				for _, s := range seen() {
					if s == name {
						n++
					}
				}
				return n
			}
			q := e.startQUIC(t, quicTestPolicy, up.Port())
			c := q.socket(t, up)

			// Equal lengths: the two hellos share their first 6 bytes
			// (handshake header and legacy_version).
			const name = "quic.cftunnel.com"
			allowed, evil := quicClientHello(t, name), quicClientHello(t, "evil-example.test")
			for i, d := range tc.build(allowed, evil) {
				p := sealQUICInitial(t, d.spec)
				if d.corrupt {
					p[len(p)-1] ^= 1
				}
				if _, err := c.WriteTo(p, q.addr); err != nil {
					t.Fatal(err)
				}
				waitFor(t, fmt.Sprintf("%d allow lines after datagram %d", d.decisions, i+1), func() bool {
					return e.countLines(t, "decision", map[string]any{"mode": "quic", "sni": name, "decision": "allow"}) >= d.decisions
				})
				if !eventually(func() bool { return count(name) >= d.acted }) {
					t.Fatalf("after datagram %d the server acted on %q, want %d hellos for %s and no other", i+1, seen(), d.acted, name)
				}
			}
			for _, s := range seen() {
				if s != name {
					t.Errorf("the server got a hello for %q, which the policy denies (it saw %q)", s, seen())
				}
			}
		})
	}
}

// TestQUICServerConnIDScreened: once the server has answered, a client
// sends its Initials to the server's connection ID (RFC 9000 §7.2), with
// the keys of its first DCID (RFC 9001 §5.2). Those are the decided
// connection's too and go on only with the decided hello's bytes.
// Otherwise a client has hello A decided (its tail in a packet whose
// number it reuses, which the server drops) and completes hello B at the
// server through the server's connection ID.
func TestQUICServerConnIDScreened(t *testing.T) {
	const name = "quic.cftunnel.com"
	for _, tail := range []string{"evil-example.test", name} { // as long as name
		t.Run(tail, func(t *testing.T) {
			e := newEnv(t)
			up, seen := helloRecorder(t, e, nil)
			q := e.startQUIC(t, quicLongIdlePolicy, up.Port())
			c := q.socket(t, up)
			send := func(p quicInitialSpec) {
				t.Helper()
				if _, err := c.WriteTo(sealQUICInitial(t, p), q.addr); err != nil {
					t.Fatal(err)
				}
			}
			hello := quicClientHello(t, name)
			other := bytes.Replace(hello, []byte(name), []byte(tail), 1)
			dcid := []byte{1, 2, 3, 4, 5, 6, 7, 8}
			send(quicInitialSpec{dcid: dcid, pn: 0, frames: quicCrypto(0, hello[:6]), padTo: 1200})
			send(quicInitialSpec{dcid: dcid, pn: 0, frames: quicCrypto(6, hello[6:]), padTo: 1200}) // the server drops a reused number
			e.waitLog(t, "decision", map[string]any{"mode": "quic", "sni": name, "decision": "allow"})

			// The server acknowledges the first packet with an Initial
			// whose Source Connection ID is its own.
			buf := make([]byte, 65536)
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				t.Fatalf("no answer from the server: %v", err)
			}
			b := buf[:n]
			if n < 7 || b[0]&0x80 == 0 || 7+int(b[5]) >= n || 7+int(b[5])+int(b[6+b[5]]) > n {
				t.Fatalf("the server's datagram %x is not a long-header packet", b)
			}
			dl := int(b[5])
			scid := bytes.Clone(b[7+dl : 7+dl+int(b[6+dl])])

			// The tail to the server's connection ID, then the decided
			// one's: the server acts on the first complete hello it gets.
			send(quicInitialSpec{dcid: scid, keyDCID: dcid, pn: 1, frames: quicCrypto(6, other[6:]), padTo: 1200})
			send(quicInitialSpec{dcid: scid, keyDCID: dcid, pn: 2, frames: quicCrypto(6, hello[6:]), padTo: 1200})
			if !eventually(func() bool { return len(seen()) > 0 }) {
				t.Fatal("the server got no hello")
			}
			if got := seen(); !slices.Equal(got, []string{name}) {
				t.Errorf("the server acted on hellos %q, want only %s, which egressd decided", got, name)
			}
		})
	}
}

// TestQUICScreenServerConnIDAllocs: screen allocates nothing for a flow's
// own datagrams, its Initials to the server's connection ID included.
func TestQUICScreenServerConnIDAllocs(t *testing.T) {
	dcid := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	q := new(sni.QUICInitial)
	var h sni.Hello
	if err := q.Add(sealQUICInitial(t, quicInitialSpec{dcid: dcid, frames: quicCrypto(0, quicClientHello(t, "quic.cftunnel.com")), padTo: 1200}), &h); err != nil {
		t.Fatal(err)
	}
	f := &flow{verify: q.Verifier()}
	g := &quicGateway{}
	ack := []byte{0x02, 0x00, 0x00, 0x00, 0x00} // ACK of packet 0
	b := sealQUICInitial(t, quicInitialSpec{dcid: []byte("server-cid"), keyDCID: dcid, pn: 1, frames: ack, padTo: 1200})
	if pass, _ := g.screen(f, b); !pass {
		t.Fatal("the decided connection's ACK to the server's connection ID is dropped")
	}
	if n := testing.AllocsPerRun(100, func() { g.screen(f, b) }); n != 0 {
		t.Errorf("screen allocates %v times per Initial to the server's connection ID", n)
	}
}

// TestQUICHelloRetryRequest: a server that takes none of the client's key
// shares answers with a HelloRetryRequest, and the client sends its second
// ClientHello (RFC 8446 §4.1.4) to the server's connection ID, after the
// first hello in the CRYPTO stream: the screen lets it through.
func TestQUICHelloRetryRequest(t *testing.T) {
	e := newEnv(t)
	up := serveQUIC(t, e, &tls.Config{CurvePreferences: []tls.CurveID{tls.CurveP256}}, nil)
	q := e.startQUIC(t, quicTestPolicy, up.Port())
	// One key share, X25519, which the server does not take.
	tlsConf := &tls.Config{ServerName: "quic.cftunnel.com", RootCAs: e.ca.pool, NextProtos: []string{quicALPN},
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}}
	if _, err := q.dial(t, up, tlsConf); err != nil {
		t.Fatalf("a handshake with a HelloRetryRequest through the gateway: %v", err)
	}
}

// TestQUICSpoofedDatagrams: while a flow's hello is incomplete, datagrams
// from the client's address that are not of its attempt (they do not open
// with its keys: spoofed, or corrupted on the way) are discarded, as RFC
// 9000 §12.2 has a server do: they neither end the flow nor fill its
// buffer, and they are never sent on. The hello's own datagrams then
// complete it, are allowed, and reach the upstream, alone.
func TestQUICSpoofedDatagrams(t *testing.T) {
	e := newEnv(t)
	up, got := udpSink(t)
	q := e.startQUIC(t, quicTestPolicy, up.Port())
	c := q.socket(t, up)
	send := func(b []byte) {
		t.Helper()
		if _, err := c.WriteTo(b, q.addr); err != nil {
			t.Fatal(err)
		}
	}

	const name = "quic.cftunnel.com"
	hello := quicClientHello(t, name)
	dcid := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	send(sealQUICInitial(t, quicInitialSpec{dcid: dcid, pn: 0, frames: quicCrypto(0, hello[:100]), padTo: 1200}))
	corrupt := sealQUICInitial(t, quicInitialSpec{dcid: dcid, pn: 1, frames: quicCrypto(100, hello[100:]), padTo: 1200})
	corrupt[len(corrupt)-1] ^= 1 // fails authentication
	other := sealQUICInitial(t, quicInitialSpec{dcid: []byte("spoofed!"), pn: 1, frames: quicCrypto(100, hello[100:]), padTo: 1200})
	short := append([]byte{0x40}, make([]byte, 9000)...) // short header
	// More datagrams, and more bytes, than a pending flow may buffer (not
	// so many that the listener's receive buffer drops the hello's own).
	for range maxPendingDatagrams + 1 {
		send(corrupt)
	}
	for range maxPendingBytes/len(short) + 1 {
		send(other)
		send(short)
	}
	send(sealQUICInitial(t, quicInitialSpec{dcid: dcid, pn: 1, frames: quicCrypto(100, hello[100:]), padTo: 1200}))
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "sni": name, "decision": "allow"})
	// A retransmission after the decision goes on too; datagrams from
	// one socket arrive in order, so once it is there, any spoofed one
	// sent on would be too.
	send(sealQUICInitial(t, quicInitialSpec{dcid: dcid, pn: 2, frames: quicCrypto(0, hello[:100]), padTo: 1200}))
	wantAtUpstream(t, got, 3, "the hello's 2 and the retransmission")
	if n := e.countLines(t, "decision", nil); n != 1 {
		t.Errorf("%d decision lines, want 1:\n%s", n, e.log.buf.String())
	}
}

// TestQUICRedirectOtherConnection: under verify_destination = "redirect"
// a flow's datagrams go to the SNI name's address, not the original
// destination. Another connection the client opens on the same socket
// is decided on that address too: a rule opening the original
// destination does not let its hello reach the redirected upstream.
func TestQUICRedirectOtherConnection(t *testing.T) {
	e := newEnv(t)
	up, seen := helloRecorder(t, e, nil) // allowed.egress.test's address
	q := e.startQUIC(t, `
server {
  allow_private_destinations = true # allowed.egress.test is on loopback
  hello_timeout              = "2s"
  idle_timeout               = "1m"
}
resolver { servers = ["DNS_ADDR"] }
policy "p" {
  allow "api" {
    hosts              = ["allowed.egress.test"]
    ports              = [QUIC_PORT]
    protocols          = ["quic"]
    verify_destination = "redirect"
  }
  allow "lab" {
    cidrs     = ["127.0.0.2/32"]
    ports     = [QUIC_PORT]
    protocols = ["quic"]
  }
}`, up.Port())
	orig := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), up.Port())
	tr := &quic.Transport{Conn: q.socket(t, orig)}
	t.Cleanup(func() { tr.Close() })
	dial := func(name string) (*quic.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return tr.Dial(ctx, q.addr, &tls.Config{ServerName: name, RootCAs: e.ca.pool, InsecureSkipVerify: name != "allowed.egress.test",
			NextProtos: []string{quicALPN}}, quicTestConfig())
	}
	first, err := dial("allowed.egress.test")
	if err != nil {
		t.Fatal(err)
	}
	defer first.CloseWithError(0, "")
	e.waitLog(t, "decision", map[string]any{"sni": "allowed.egress.test", "decision": "allow", "rule": "api"})
	if c, err := dial("evil.example"); err == nil {
		c.CloseWithError(0, "")
		t.Errorf("a connection for evil.example was established through the redirected flow")
	}
	e.waitLog(t, "decision", map[string]any{"sni": "evil.example", "decision": "deny", "dst": up.String()})
	if slices.Contains(seen(), "evil.example") {
		t.Errorf("the upstream %s (allowed.egress.test) acted on a hello for evil.example, decided for %s: %q", up, orig, seen())
	}
}

// TestQUICOtherConnectionPending: another connection's hello on a
// relaying flow is held within the flow's bounds (32 KiB), within
// hello_timeout, and not past the flow's end, each with its decision line.
func TestQUICOtherConnectionPending(t *testing.T) {
	e := newEnv(t)
	up, _ := udpSink(t)
	q := e.startQUIC(t, quicLongIdlePolicy, up.Port())
	c := q.socket(t, up)
	send := func(p quicInitialSpec) {
		t.Helper()
		if _, err := c.WriteTo(sealQUICInitial(t, p), q.addr); err != nil {
			t.Fatal(err)
		}
	}
	dcid := func(b byte) []byte { return []byte{b, b, b, b, b, b, b, b} }
	// incomplete: first flights whose CRYPTO never starts at offset 0.
	incomplete := func(id byte, n, size int) {
		for pn := range n {
			send(quicInitialSpec{dcid: dcid(id), pn: uint32(pn), frames: quicCrypto(100+10*pn, []byte("xxxxx")), padTo: size})
		}
	}
	refused := func(reason string) {
		t.Helper()
		e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "deny", "reason": reason})
	}
	send(quicInitialSpec{dcid: dcid(1), frames: quicCrypto(0, quicClientHello(t, "quic.cftunnel.com")), padTo: 1200})
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "allow"})

	incomplete(2, maxPendingBytes/9000+1, 9000)
	refused("hello_too_large")
	incomplete(3, 1, 1200) // hello_timeout is 1s
	refused("hello_timeout")
	incomplete(4, 1, 1200)
	waitFor(t, "another connection pending", func() bool {
		g := q.g.Load()
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, f := range g.flows {
			f.mu.Lock()
			n := len(f.others)
			f.mu.Unlock()
			if n == 3 {
				return true
			}
		}
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
	// client_closed; hello_timeout only if the host stalled past 1 s
	// since the datagram (then the sweep came first).
	waitFor(t, "the fourth decision line", func() bool { return e.countLines(t, "decision", nil) >= 4 })
	if e.countLines(t, "decision", map[string]any{"reason": "client_closed"})+
		e.countLines(t, "decision", map[string]any{"reason": "hello_timeout"}) != 2 {
		t.Errorf("the connection pending at the flow's end was not refused:\n%s", e.log.buf.String())
	}
	if n := e.countLines(t, "decision", nil); n != 4 {
		t.Errorf("%d decision lines, want 4 (the flow and three other connections):\n%s", n, e.log.buf.String())
	}
}

// TestQUICPendingAtShutdown: a flow still collecting its hello when
// egressd shuts down has its decision line.
func TestQUICPendingAtShutdown(t *testing.T) {
	e := newEnv(t)
	up, got := udpSink(t)
	q := e.startQUIC(t, strings.Replace(quicTestPolicy, `hello_timeout = "1s"`, `hello_timeout = "30s"`, 1), up.Port())
	c := q.socket(t, up)
	h := quicClientHello(t, "quic.cftunnel.com")
	if _, err := c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: []byte{1, 2, 3, 4, 5, 6, 7, 8}, frames: quicCrypto(0, h[:len(h)/2]), padTo: 1200}), q.addr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the pending flow", func() bool { return q.flows() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "deny", "reason": "client_closed"})
	if n := e.countLines(t, "decision", nil); n != 1 || got.Load() != 0 {
		t.Errorf("%d decision lines, %d datagrams upstream; want 1 and 0:\n%s", n, got.Load(), e.log.buf.String())
	}
}

// TestQUICInitialBehind0RTT: on a relaying flow, a datagram that starts
// with a 0-RTT packet and carries another connection's Initial behind it
// is dropped; a first look at the first packet alone would relay it
// unscreened.
func TestQUICInitialBehind0RTT(t *testing.T) {
	e := newEnv(t)
	up, got := udpSink(t)
	q := e.startQUIC(t, quicLongIdlePolicy, up.Port())
	c := q.socket(t, up)
	send := func(b []byte) {
		t.Helper()
		if _, err := c.WriteTo(b, q.addr); err != nil {
			t.Fatal(err)
		}
	}
	dcid := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	allowed := quicCrypto(0, quicClientHello(t, "quic.cftunnel.com"))
	send(sealQUICInitial(t, quicInitialSpec{dcid: dcid, frames: allowed, padTo: 1200}))
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "allow"})
	waitFor(t, "the hello at the upstream", func() bool { return got.Load() == 1 })

	evil := []byte("evil-0rtt")
	zeroRTT := append([]byte{0xd0, 0, 0, 0, 1, byte(len(evil))}, evil...) // v1 0-RTT, DCID "evil-0rtt"
	zeroRTT = append(zeroRTT, 0, 0x40, 20)                                // no SCID, Length 20
	zeroRTT = append(zeroRTT, make([]byte, 20)...)
	send(append(zeroRTT, sealQUICInitial(t, quicInitialSpec{dcid: evil, frames: quicCrypto(0, quicClientHello(t, "evil-example.test")), padTo: 1200})...))
	// A retransmission of the allowed hello goes on; datagrams from one
	// socket arrive in order, so once it is there the other would be too.
	send(sealQUICInitial(t, quicInitialSpec{dcid: dcid, pn: 1, frames: allowed, padTo: 1200}))
	wantAtUpstream(t, got, 2, "the hello and its retransmission only")
}

// TestQUICScreenSpoofing: what a sender spoofing the client's address
// (or a client hiding a hello) gets nowhere with, on a pending or a
// relaying flow.
func TestQUICScreenSpoofing(t *testing.T) {
	relaying := quicLongIdlePolicy
	// allowed is a CRYPTO frame with a new allowed hello each time.
	allowed := func(t *testing.T) []byte { return quicCrypto(0, quicClientHello(t, "quic.cftunnel.com")) }
	// relayingFlow starts a gateway and has c's flow, of connection ID
	// dcid, allowed on hello; got counts the datagrams at the upstream.
	relayingFlow := func(t *testing.T) (q *quicGW, c *net.UDPConn, got *atomic.Int32, dcid, hello []byte) {
		e := newEnv(t)
		up, got := udpSink(t)
		q = e.startQUIC(t, relaying, up.Port())
		c = q.socket(t, up)
		dcid, hello = []byte{1, 2, 3, 4, 5, 6, 7, 8}, allowed(t)
		c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: dcid, frames: hello, padTo: 1200}), q.addr)
		e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "allow"})
		return q, c, got, dcid, hello
	}
	t.Run("an Initial behind one that does not open", func(t *testing.T) {
		q, c, got, dcid, hello := relayingFlow(t)
		x := []byte("evil-dcid")
		garbage := sealQUICInitial(t, quicInitialSpec{dcid: x, pn: 0, frames: []byte{0x01}, padTo: 100})
		garbage[len(garbage)-1] ^= 1 // fails authentication
		evil := sealQUICInitial(t, quicInitialSpec{dcid: x, pn: 1, frames: quicCrypto(0, quicClientHello(t, "evil-example.test")), padTo: 1200})
		c.WriteTo(slices.Concat(garbage, evil), q.addr)
		// A retransmission of the allowed hello goes on; datagrams from
		// one socket arrive in order, so once it is there the other would
		// be too. (quic-go acts on such a datagram's second Initial.)
		c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: dcid, pn: 1, frames: hello, padTo: 1200}), q.addr)
		wantAtUpstream(t, got, 2, "the hello and its retransmission only")
	})
	t.Run("a hello of another QUIC version on a relaying flow", func(t *testing.T) {
		q, c, got, dcid, hello := relayingFlow(t)
		// draft-29, which servers still spoke after v1 came out: the
		// screen cannot read it, so it cannot tell a hello in it.
		evil := quicCrypto(0, quicClientHello(t, "evil-example.test"))
		zeroRTT := []byte{0xd0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0x40, 20} // v1 0-RTT of the flow, Length 20
		zeroRTT = append(zeroRTT, make([]byte, 20)...)
		for _, d := range [][]byte{
			sealQUICInitial(t, quicInitialSpec{version: 0xff00001d, dcid: []byte("evil-dcid"), frames: evil, padTo: 1200}),
			slices.Concat(zeroRTT, sealQUICInitial(t, quicInitialSpec{version: 0xff00001d, dcid: []byte("evil-dcid"), pn: 1, frames: evil, padTo: 1200})),
		} {
			c.WriteTo(d, q.addr)
		}
		c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: dcid, pn: 1, frames: hello, padTo: 1200}), q.addr)
		wantAtUpstream(t, got, 2, "the hello and its retransmission only")
	})
	t.Run("0-RTT datagrams of another DCID on a pending flow", func(t *testing.T) {
		e := newEnv(t)
		up, got := udpSink(t)
		q := e.startQUIC(t, quicTestPolicy, up.Port())
		c := q.socket(t, up)
		hello := quicClientHello(t, "quic.cftunnel.com")
		dcid := []byte{1, 2, 3, 4, 5, 6, 7, 8}
		c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: dcid, pn: 0, frames: quicCrypto(0, hello[:100]), padTo: 1200}), q.addr)
		waitFor(t, "the pending flow", func() bool { return q.flows() == 1 })
		for range maxPendingDatagrams {
			c.WriteTo([]byte{0xd0, 0, 0, 0, 1, 0, 0, 0}, q.addr) // v1 0-RTT, no connection IDs, Length 0
		}
		c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: dcid, pn: 1, frames: quicCrypto(100, hello[100:]), padTo: 1200}), q.addr)
		e.waitLog(t, "decision", map[string]any{"mode": "quic", "sni": "quic.cftunnel.com", "decision": "allow"})
		wantAtUpstream(t, got, 2, "the hello's 2")
	})
	t.Run("spoofed first flights do not use up a flow's connections", func(t *testing.T) {
		e := newEnv(t)
		up, _ := udpSink(t)
		q := e.startQUIC(t, relaying, up.Port())
		c := q.socket(t, up)
		c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: []byte{1, 2, 3, 4, 5, 6, 7, 8}, frames: allowed(t), padTo: 1200}), q.addr)
		e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "allow"})
		evil := quicCrypto(0, quicClientHello(t, "evil-example.test"))
		for i := range 2 * quicMaxOtherConns {
			c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: []byte{9, 9, 9, 9, 9, 9, 9, byte(i)}, frames: evil, padTo: 1200}), q.addr)
			waitFor(t, "the spoofed connection's deny line", func() bool {
				return e.countLines(t, "decision", map[string]any{"decision": "deny"}) == i+1
			})
		}
		c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: []byte{7, 7, 7, 7, 7, 7, 7, 7}, frames: allowed(t), padTo: 1200}), q.addr)
		e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "allow", "sni": "quic.cftunnel.com", "conn": 2*quicMaxOtherConns + 2})
	})
	t.Run("a flow decided while egressd shuts down", func(t *testing.T) {
		e := newEnv(t)
		up, got := udpSink(t)
		q := e.startQUIC(t, quicTestPolicy, up.Port())
		dialing, release := make(chan struct{}), make(chan struct{})
		var d net.Dialer
		e.srv.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			close(dialing)
			select {
			case <-release:
			case <-ctx.Done(): // Shutdown's grace ended
				return nil, ctx.Err()
			}
			return d.DialContext(ctx, network, addr)
		}
		c := q.socket(t, up)
		c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: []byte{1, 2, 3, 4, 5, 6, 7, 8}, frames: allowed(t), padTo: 1200}), q.addr)
		<-dialing
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
		close(release)
		e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "deny", "reason": "client_closed"})
		if n := e.countLines(t, "decision", nil) + e.countLines(t, "close", nil); n != 1 || got.Load() != 0 {
			t.Errorf("%d decision and close lines, %d datagrams upstream; want 1 and 0:\n%s", n, got.Load(), e.log.buf.String())
		}
	})
}
