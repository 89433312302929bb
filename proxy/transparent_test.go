package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// gateway is a transparent listener of an env's server whose original
// destinations are injected by the test instead of read with getsockopt.
type gateway struct {
	addr string
	src  netip.Addr // the loopback address its clients connect from
	dsts sync.Map   // client address (as the server sees it) → netip.AddrPort
	done chan error // ServeTransparent's result
}

// waitServed waits for the gateway's ServeTransparent to return nil, as
// it must after Shutdown.
func (g *gateway) waitServed(t *testing.T) {
	t.Helper()
	select {
	case err := <-g.done:
		if err != nil {
			t.Fatalf("ServeTransparent: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("ServeTransparent did not return after Shutdown")
	}
}

// gatewaySrcs numbers the gateways' client addresses, 127.77.0.1 on.
var gatewaySrcs atomic.Uint32

// connect opens a connection to the gateway as if it had been sent to dst
// and redirected. The client socket is bound before it connects, so that
// its original destination is registered before egressd accepts it (the
// hook must not wait: the front loop calls it). It binds to the gateway's
// own loopback address: a port bound on 127.0.0.1 must be free of every
// socket there, TIME_WAIT ones included, and a long run of upstream
// connections from egressd would exhaust them.
func (g *gateway) connect(dst netip.AddrPort) (*net.TCPConn, error) {
	var key string
	d := net.Dialer{Timeout: 5 * time.Second, Control: bindLoopback(g.src, func(local netip.AddrPort) {
		key = local.String()
		g.dsts.Store(key, dst)
	})}
	c, err := d.Dial("tcp4", g.addr)
	if err != nil {
		if key != "" {
			g.dsts.Delete(key)
		}
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// startTransparent starts egressd with hclSrc (see env.start) and serves a
// transparent listener on loopback with an injected original destination.
func (e *env) startTransparent(t *testing.T, hclSrc string) *gateway {
	t.Helper()
	e.start(t, hclSrc)
	return e.serveGateway(t)
}

// serveGateway serves a transparent listener of the running e.srv on
// loopback, with original destinations taken from the gateway's dsts.
func (e *env) serveGateway(t testing.TB) *gateway {
	t.Helper()
	g, ln := e.newGateway(t)
	g.done = make(chan error, 1)
	go func() { g.done <- e.srv.ServeTransparent(ln) }()
	return g
}

// newGateway is serveGateway without the serving: e.srv takes original
// destinations from the gateway's dsts, and ln is the gateway's listener,
// which clients can connect to (into its backlog) before it is served.
func (e *env) newGateway(t testing.TB) (*gateway, net.Listener) {
	t.Helper()
	n := gatewaySrcs.Add(1)
	g := &gateway{src: netip.AddrFrom4([4]byte{127, 77, byte(n >> 8), byte(n)})}
	e.srv.origDst = func(_, peer netip.AddrPort) (netip.AddrPort, error) {
		if v, ok := g.dsts.Load(peer.String()); ok {
			return v.(netip.AddrPort), nil
		}
		return netip.AddrPort{}, errors.New("test: no original destination registered")
	}
	ln := listen(t)
	g.addr = ln.Addr().String()
	return g, ln
}

// dial opens a connection to the gateway as if it had been sent to dst and
// redirected.
func (g *gateway) dial(t *testing.T, dst string) *net.TCPConn {
	t.Helper()
	c, err := g.connect(netip.MustParseAddrPort(dst))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// listenOn listens on a given loopback address (127.0.0.x:port).
func listenOn(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// serveEcho echoes on ln and counts the connections it accepted.
func serveEcho(ln net.Listener) *atomic.Int32 {
	var n atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return &n
}

// exchange sends first, half-closes, and returns everything read back.
func exchange(t *testing.T, c *net.TCPConn, first []byte) []byte {
	t.Helper()
	go func() {
		c.Write(first)
		c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading from the gateway: %v", err)
	}
	return got
}

const transparentConfig = `
server {
  allow_private_destinations = true
  hello_timeout = "2s"
}
resolver { servers = ["DNS_ADDR"] }
policy "gw" {
  allow "echo-tls" {
    hosts = ["allowed.egress.test"]
    ports = [ECHO_PORT]
  }
  allow "web" {
    hosts = ["allowed.egress.test", "*.wild.egress.test"]
    ports = [TLS_PORT]
  }
  deny "blocked" { hosts = ["blocked.wild.egress.test"] }
}
`

func TestTransparentAllowedSNIByteExact(t *testing.T) {
	e := newEnv(t)
	g := e.startTransparent(t, transparentConfig)
	dst := "127.0.0.1:" + strconv.Itoa(e.echoPort)
	payload := append(clientHelloBytes("allowed.egress.test"), make([]byte, 4<<20)...)
	rand.Read(payload[len(payload)-4<<20:])
	got := exchange(t, g.dial(t, dst), payload)
	if !bytes.Equal(got, payload) {
		t.Fatalf("echoed %d bytes, want the %d bytes sent, identical", len(got), len(payload))
	}
	d := e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "allow", "rule": "echo-tls",
		"host": "127.0.0.1", "port": e.echoPort, "dst": dst, "sni": "allowed.egress.test", "reason": "allowed"})
	cl := e.waitLog(t, "close", map[string]any{"conn": d["conn"], "mode": "transparent"})
	if cl["bytes_up"].(float64) != float64(len(payload)) || cl["bytes_down"].(float64) != float64(len(payload)) {
		t.Errorf("close line %v, want %d bytes each way", cl, len(payload))
	}
}

func TestTransparentRealTLS(t *testing.T) {
	e := newEnv(t)
	g := e.startTransparent(t, transparentConfig)
	c := g.dial(t, "127.0.0.1:"+strconv.Itoa(e.tlsPort))
	tc := tls.Client(c, &tls.Config{ServerName: "a.b.wild.egress.test", RootCAs: e.ca.pool})
	fmt.Fprint(tc, "GET / HTTP/1.1\r\nHost: a.b.wild.egress.test\r\nConnection: close\r\n\r\n")
	body, err := io.ReadAll(tc)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(body), "hello a.b.wild.egress.test") {
		t.Fatalf("got %q", body)
	}
	e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "allow", "rule": "web",
		"dst": "127.0.0.1:" + strconv.Itoa(e.tlsPort)})
}

func TestTransparentDenied(t *testing.T) {
	e := newEnv(t)
	g := e.startTransparent(t, transparentConfig)
	tls := "127.0.0.1:" + strconv.Itoa(e.tlsPort)
	tests := []struct {
		name  string
		dst   string
		first []byte
		want  map[string]any
	}{
		{"sni no rule allows", tls, clientHelloBytes("nope.egress.test"), map[string]any{"reason": "no_rule", "sni": "nope.egress.test"}},
		{"sni denied by rule", tls, clientHelloBytes("blocked.wild.egress.test"), map[string]any{"reason": "denied_by_rule", "rule": "blocked", "sni": "blocked.wild.egress.test"}},
		{"allowed sni on a port the rule does not open", "127.0.0.1:" + strconv.Itoa(e.httpPort), clientHelloBytes("allowed.egress.test"), map[string]any{"reason": "no_rule", "sni": "allowed.egress.test", "port": e.httpPort}},
		{"no sni", tls, clientHelloBytes(""), map[string]any{"reason": "no_rule", "sni": ""}},
		{"not tls without a require_tls = false cidrs rule", tls, []byte("GET / HTTP/1.1\r\nHost: allowed.egress.test\r\n\r\n"), map[string]any{"reason": "no_rule"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := g.dial(t, tc.dst)
			if got := exchange(t, c, tc.first); len(got) != 0 {
				t.Fatalf("got %q from a refused connection", got)
			}
			want := map[string]any{"mode": "transparent", "decision": "deny", "host": "127.0.0.1"}
			for k, v := range tc.want {
				want[k] = v
			}
			// This connection's own line, and only one: the rows share
			// the log, and another row's line must not stand in for it.
			d := e.clientDecision(t, c, want)
			if d["dst"] != nil {
				t.Errorf("refused connection was dialed: %v", d)
			}
			if _, ok := d["sni"]; ok && tc.want["sni"] == nil {
				t.Errorf("a connection without a ClientHello logged an sni: %v", d)
			}
		})
	}
}

// TestTransparentSNISpoofing: an allowed SNI sent to an address that is not
// one of the name's is refused (default) or re-pointed at the name's
// address (verify_destination = "redirect"); the spoofed address never
// sees a connection.
func TestTransparentSNISpoofing(t *testing.T) {
	for _, mode := range []string{"default", "refuse", "redirect"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t)
			attacker := serveEcho(listenOn(t, "127.0.0.9:"+strconv.Itoa(e.tlsPort)))
			attr := ""
			if mode != "default" {
				attr = `verify_destination = "` + mode + `"`
			}
			g := e.startTransparent(t, strings.Replace(transparentConfig, `ports = [TLS_PORT]`, "ports = [TLS_PORT]\n    "+attr, 1))
			spoofed := "127.0.0.9:" + strconv.Itoa(e.tlsPort)
			c := g.dial(t, spoofed)
			tc := tls.Client(c, &tls.Config{ServerName: "allowed.egress.test", RootCAs: e.ca.pool})
			fmt.Fprint(tc, "GET / HTTP/1.1\r\nHost: allowed.egress.test\r\nConnection: close\r\n\r\n")
			body, err := io.ReadAll(tc)
			if mode == "redirect" {
				if err != nil || !strings.HasSuffix(string(body), "hello allowed.egress.test") {
					t.Fatalf("redirected connection: %q, %v; want the real upstream's answer", body, err)
				}
				d := e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "allow", "rule": "web",
					"host": "127.0.0.9", "dst": "127.0.0.1:" + strconv.Itoa(e.tlsPort)})
				if !strings.Contains(fmt.Sprint(d["detail"]), "redirected") {
					t.Errorf("detail %v does not say the connection was redirected", d["detail"])
				}
			} else {
				if len(body) != 0 {
					t.Fatalf("spoofed connection answered %q (%v); want it closed", body, err)
				}
				d := e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "deny", "reason": "dst_mismatch",
					"rule": "web", "host": "127.0.0.9", "sni": "allowed.egress.test"})
				if d["dst"] != nil {
					t.Errorf("dst_mismatch was dialed: %v", d)
				}
			}
			if n := attacker.Load(); n != 0 {
				t.Errorf("the spoofed destination got %d connections", n)
			}
		})
	}
}

// startRotatingDNS answers A queries for name with the next address of
// addrs on every query (TTL 60), AAAA with nothing, others NXDOMAIN.
func startRotatingDNS(t *testing.T, name string, addrs []string) (string, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	addr := serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		qn := strings.ToLower(q.Question[0].Name)
		switch {
		case qn != dns.Fqdn(name):
			m.Rcode = dns.RcodeNameError
		case q.Question[0].Qtype == dns.TypeA:
			i := n.Add(1) - 1
			rr, _ := dns.NewRR(qn + " 60 IN A " + addrs[int(i)%len(addrs)])
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	return addr, &n
}

// TestTransparentRotatingDNS: the DNS answers each query with another
// address; a client that resolved the name a moment before connecting is
// never refused, because egressd keeps every answer for its TTL.
func TestTransparentRotatingDNS(t *testing.T) {
	pool := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	dnsAddr, queries := startRotatingDNS(t, "cdn.egress.test", pool)
	ln := listenOn(t, pool[0]+":0")
	p := strconv.Itoa(port(ln))
	serveEcho(ln)
	for _, a := range pool[1:] {
		serveEcho(listenOn(t, a+":"+p))
	}
	e := newEnv(t)
	e.dnsAddr = dnsAddr
	g := e.startTransparent(t, strings.ReplaceAll(`
server { allow_private_destinations = true }
resolver { servers = ["DNS_ADDR"] }
policy "cdn" {
  allow "cdn" {
    hosts = ["cdn.egress.test"]
    ports = [PORT]
  }
}`, "PORT", p))
	cl := &dns.Client{Timeout: 3 * time.Second}
	for i := range 8 {
		m := new(dns.Msg)
		m.SetQuestion("cdn.egress.test.", dns.TypeA)
		in, _, err := cl.Exchange(m, dnsAddr)
		if err != nil || len(in.Answer) != 1 {
			t.Fatalf("client lookup: %v %v", in, err)
		}
		dst := in.Answer[0].(*dns.A).A.String() + ":" + p
		first := append(clientHelloBytes("cdn.egress.test"), fmt.Sprintf("ping %d", i)...)
		if got := exchange(t, g.dial(t, dst), first); !bytes.Equal(got, first) {
			t.Fatalf("connection %d to %s (just resolved): got %d bytes back, want %d; log:\n%s", i, dst, len(got), len(first), e.log.buf.String())
		}
		e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "allow", "dst": dst, "conn": i + 1})
	}
	if q := queries.Load(); q > 8+int32(len(pool))+1 {
		t.Errorf("egressd sent %d A queries for 8 connections; answers are not reused", q-8)
	}
}

// TestTransparentCloudflareTunnel: cloudflared dials a region address on
// 7844 with SNI h2.cftunnel.com, a name whose addresses are not the
// destination; the rule's cidrs verify the address.
func TestTransparentCloudflareTunnel(t *testing.T) {
	e := newEnv(t)
	g := e.startTransparent(t, `
server { hello_timeout = "2s" }
resolver { servers = ["DNS_ADDR"] }
policy "cloudflare-tunnel" {
  allow "tunnel-http2" {
    hosts = ["region1.v2.argotunnel.com", "region2.v2.argotunnel.com"]
    cidrs = ["127.0.0.0/24"]
    sni   = ["h2.cftunnel.com", "cftunnel.com"]
    ports = [ECHO_PORT]
  }
}`)
	dst := "127.0.0.1:" + strconv.Itoa(e.echoPort)
	first := append(clientHelloBytes("h2.cftunnel.com"), "tunnel bytes"...)
	if got := exchange(t, g.dial(t, dst), first); !bytes.Equal(got, first) {
		t.Fatalf("got %d bytes back, want %d", len(got), len(first))
	}
	e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "allow", "policy": "cloudflare-tunnel",
		"rule": "tunnel-http2", "sni": "h2.cftunnel.com", "host": "127.0.0.1", "dst": dst})

	for _, tc := range []struct {
		sni, reason string
	}{{"evil.example", "sni_mismatch"}, {"", "sni_missing"}} {
		if got := exchange(t, g.dial(t, dst), clientHelloBytes(tc.sni)); len(got) != 0 {
			t.Fatalf("sni %q: got %q", tc.sni, got)
		}
		e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "deny", "reason": tc.reason, "rule": "tunnel-http2"})
	}
	// The right SNI to an address outside the cidrs that is no answer for
	// the rule's hosts (NXDOMAIN here) or the SNI: refused.
	out := "127.0.1.1:" + strconv.Itoa(e.echoPort)
	if got := exchange(t, g.dial(t, out), clientHelloBytes("h2.cftunnel.com")); len(got) != 0 {
		t.Fatalf("got %q", got)
	}
	e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "deny", "host": "127.0.1.1"})
}

// TestTransparentNotTLS: bytes that are not a ClientHello pass only a
// require_tls = false rule whose cidrs and ports match.
func TestTransparentNotTLS(t *testing.T) {
	e := newEnv(t)
	g := e.startTransparent(t, `
server { hello_timeout = "2s" }
resolver { servers = ["DNS_ADDR"] }
policy "raw" {
  allow "echo" {
    cidrs       = ["127.0.0.1/32"]
    ports       = [ECHO_PORT]
    require_tls = false
  }
  allow "tls-only" {
    cidrs = ["127.0.0.1/32"]
    ports = [HTTP_PORT]
  }
}`)
	dst := "127.0.0.1:" + strconv.Itoa(e.echoPort)
	first := []byte("SSH-2.0-OpenSSH_9.6\r\n")
	if got := exchange(t, g.dial(t, dst), first); !bytes.Equal(got, first) {
		t.Fatalf("got %q, want %q", got, first)
	}
	d := e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "allow", "rule": "echo", "dst": dst})
	if d["sni"] != nil {
		t.Errorf("plain connection logged sni %v", d["sni"])
	}
	if got := exchange(t, g.dial(t, "127.0.0.1:"+strconv.Itoa(e.httpPort)), first); len(got) != 0 {
		t.Fatalf("got %q", got)
	}
	e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "deny", "reason": "not_tls", "rule": "tls-only"})
	if got := exchange(t, g.dial(t, "127.0.0.2:"+strconv.Itoa(e.echoPort)), first); len(got) != 0 {
		t.Fatalf("got %q", got)
	}
	e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "deny", "reason": "no_rule", "host": "127.0.0.2"})
}

// TestTransparentPrivateDestination: the private-destination check
// applies to the original destination: a private address no cidr grants is
// refused before verification, whatever the SNI.
func TestTransparentPrivateDestination(t *testing.T) {
	e := newEnv(t)
	g := e.startTransparent(t, `
server {
  hello_timeout = "2s"
  verify_destination = "redirect"
}
resolver { servers = ["DNS_ADDR"] }
policy "p" {
  allow "r" {
    hosts = ["allowed.egress.test"]
    cidrs = ["127.0.0.9/32"]
    ports = [TLS_PORT]
  }
}`)
	if got := exchange(t, g.dial(t, "127.0.0.8:"+strconv.Itoa(e.tlsPort)), clientHelloBytes("allowed.egress.test")); len(got) != 0 {
		t.Fatalf("got %q", got)
	}
	d := e.waitLog(t, "decision", map[string]any{"decision": "deny", "reason": "private_destination", "host": "127.0.0.8"})
	if d["dst"] != nil {
		t.Errorf("dialed %v", d["dst"])
	}
}

// TestTransparentOriginalDstError: a connection whose original destination
// cannot be read (not redirected) is refused and logged.
func TestTransparentOriginalDstError(t *testing.T) {
	e := newEnv(t)
	e.start(t, transparentConfig)
	ln := listen(t)
	go e.srv.ServeTransparent(ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if got, _ := io.ReadAll(c); len(got) != 0 {
		t.Fatalf("got %q", got)
	}
	// Without a redirect, SO_ORIGINAL_DST is missing (or, where conntrack
	// answers, names the listener itself): either way nothing is dialed.
	d := e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "deny", "reason": "bad_request"})
	if d["dst"] != nil {
		t.Errorf("dialed %v", d["dst"])
	}
}

// TestTransparentShutdown: Shutdown closes the transparent listener and
// ServeTransparent returns nil.
func TestTransparentShutdown(t *testing.T) {
	e := newEnv(t)
	e.start(t, transparentConfig)
	ln := listen(t)
	done := make(chan error, 1)
	go func() { done <- e.srv.ServeTransparent(ln) }()
	time.Sleep(20 * time.Millisecond)
	ctx, cancel := contextWithTimeout(2 * time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ServeTransparent after Shutdown: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("ServeTransparent did not return after Shutdown")
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Error("transparent listener still accepts after Shutdown")
	}
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// TestTransparentVerifiedByRuleHosts: an SNI that is not the destination's
// name (here it does not even resolve) is verified through the rule's
// exact hosts: the original destination is an address of one of them.
func TestTransparentVerifiedByRuleHosts(t *testing.T) {
	e := newEnv(t)
	g := e.startTransparent(t, `
server {
  allow_private_destinations = true
  hello_timeout = "2s"
}
resolver { servers = ["DNS_ADDR"] }
policy "p" {
  allow "fronted" {
    hosts = ["allowed.egress.test", "*.wild.egress.test"]
    sni   = ["front.unresolvable.test"]
    ports = [ECHO_PORT]
  }
}`)
	dst := "127.0.0.1:" + strconv.Itoa(e.echoPort)
	first := append(clientHelloBytes("front.unresolvable.test"), "x"...)
	if got := exchange(t, g.dial(t, dst), first); !bytes.Equal(got, first) {
		t.Fatalf("got %d bytes, want %d; log:\n%s", len(got), len(first), e.log.buf.String())
	}
	e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "allow", "rule": "fronted", "dst": dst})
	// The same SNI to an address that is no answer for the rule's hosts.
	if got := exchange(t, g.dial(t, "127.0.0.7:"+strconv.Itoa(e.echoPort)), first); len(got) != 0 {
		t.Fatalf("got %q", got)
	}
	e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "deny", "reason": "dst_mismatch", "host": "127.0.0.7"})
}

// TestTransparentSelfDestination: a connection whose original destination
// is egressd's own listener (a redirect loop) is refused without a dial.
func TestTransparentSelfDestination(t *testing.T) {
	e := newEnv(t)
	e.start(t, transparentConfig)
	ln := listen(t)
	self := netip.MustParseAddrPort(ln.Addr().String())
	e.srv.origDst = func(_, _ netip.AddrPort) (netip.AddrPort, error) { return self, nil }
	go e.srv.ServeTransparent(ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(clientHelloBytes("allowed.egress.test"))
	if got, _ := io.ReadAll(c); len(got) != 0 {
		t.Fatalf("got %q", got)
	}
	d := e.waitLog(t, "decision", map[string]any{"mode": "transparent", "reason": "bad_request", "host": self.Addr().String()})
	if !strings.Contains(fmt.Sprint(d["detail"]), "own listener") || d["dst"] != nil {
		t.Errorf("decision %v: want a refusal naming egressd's own listener, nothing dialed", d)
	}
}

// fixedTransparent serves a transparent listener whose connections all have
// dst as their original destination, and returns its address.
func (e *env) fixedTransparent(t *testing.T, dst netip.AddrPort) string {
	t.Helper()
	e.srv.origDst = func(_, _ netip.AddrPort) (netip.AddrPort, error) { return dst, nil }
	ln := listen(t)
	go e.srv.ServeTransparent(ln)
	return ln.Addr().String()
}

// verifyGateway starts an echo server on dstIP and a transparent gateway
// whose policy allows hosts on its port, resolving with dnsAddrs; it
// returns the gateway, its env and the port.
func verifyGateway(t *testing.T, dstIP string, hosts []string, dnsAddrs ...string) (*gateway, *env, string) {
	t.Helper()
	ln := listenOn(t, dstIP+":0")
	serveEcho(ln)
	p := strconv.Itoa(port(ln))
	list := func(xs []string) string {
		q := make([]string, len(xs))
		for i, x := range xs {
			q[i] = strconv.Quote(x)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	e := newEnv(t)
	g := e.startTransparent(t, fmt.Sprintf(`
server { allow_private_destinations = true }
resolver { servers = %s }
policy "verify" {
  allow "verify" {
    hosts = %s
    ports = [%s]
  }
}`, list(dnsAddrs), list(hosts), p))
	return g, e, p
}

// slowA answers A queries for every name with 127.0.0.5 and ttl after
// 200 ms, so that connections made at once overlap the lookup; it counts
// them. AAAA queries get an empty answer.
func slowA(t *testing.T, ttl int) (string, *atomic.Int32) {
	var queries atomic.Int32
	addr := serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if q.Question[0].Qtype == dns.TypeA {
			queries.Add(1)
			time.Sleep(200 * time.Millisecond)
			rr, _ := dns.NewRR(fmt.Sprintf("%s %d IN A 127.0.0.5", q.Question[0].Name, ttl))
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	return addr, &queries
}

// TestTransparentBurstToNewName: a workload that resolved a name with a
// DNS server of its own opens several connections to it at once; egressd
// has not seen the name yet. Every connection is verified by the first
// one's lookup, none is refused dst_mismatch because the servers were
// asked for the name a moment before: with a plain answer (one query);
// with TTL 0, an answer not reused for dials but remembered for
// minVerifyRefresh for the connections that waited for it; and with a DNS
// server rotating through a pool whose first answer does not hold the
// address the workload dials. (The last two from helpers' reviews.)
func TestTransparentBurstToNewName(t *testing.T) {
	plain, queries := slowA(t, 60)
	ttl0, ttl0Queries := slowA(t, 0)
	rotating, rotated := rotatingDNS(t, 4, 200*time.Millisecond) // 127.0.0.5, then .6, .7 ...
	for _, tc := range []struct {
		name, dnsAddr, dst string
		queries            *atomic.Int32
		wantQueries        int32
	}{
		{"one answer", plain, "127.0.0.5", queries, 1},
		{"TTL 0", ttl0, "127.0.0.5", ttl0Queries, 1},
		{"rotating pool", rotating, "127.0.0.6", rotated, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, e, p := verifyGateway(t, tc.dst, []string{"burst.egress.test"}, tc.dnsAddr)
			const conns = 4
			var wg sync.WaitGroup
			for i := range conns {
				c := g.dial(t, tc.dst+":"+p)
				wg.Go(func() {
					first := append(clientHelloBytes("burst.egress.test"), fmt.Sprintf("ping %d", i)...)
					if got := exchange(t, c, first); !bytes.Equal(got, first) {
						t.Errorf("connection %d: got %d bytes back, want %d", i, len(got), len(first))
					}
				})
			}
			wg.Wait()
			for i := range conns {
				e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "allow", "conn": i + 1})
			}
			if n := tc.queries.Load(); n != tc.wantQueries {
				t.Errorf("%d A queries for %d connections at once, want %d", n, conns, tc.wantQueries)
			}
			if t.Failed() {
				t.Logf("log:\n%s", e.log.String())
			}
		})
	}
}

// TestTransparentVerifySlowName: the SNI name's lookup, by another
// connection, is stuck (its servers never answer) while the destination
// is an address of the rule's other host: the connection is verified by
// that host at once, not refused once the wait for the stuck lookup has
// used up verifyTimeout. (From a helper's review.)
func TestTransparentVerifySlowName(t *testing.T) {
	var slow atomic.Int32
	dnsAddr := serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		if strings.HasPrefix(q.Question[0].Name, "slow.") {
			slow.Add(1)
			return // never answered
		}
		m := new(dns.Msg)
		m.SetReply(q)
		if q.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR(q.Question[0].Name + " 60 IN A 127.0.0.5")
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	g, e, p := verifyGateway(t, "127.0.0.5", []string{"slow.egress.test", "b.egress.test"}, dnsAddr)
	// Another connection is looking slow.egress.test up.
	go e.srv.resolver.Lookup(t.Context(), "slow.egress.test")
	waitFor(t, "the lookup of slow.egress.test", func() bool { return slow.Load() >= 2 })
	c := g.dial(t, "127.0.0.5:"+p)
	first := append(clientHelloBytes("slow.egress.test"), "ping"...)
	start := time.Now()
	if got := exchange(t, c, first); !bytes.Equal(got, first) {
		t.Errorf("after %v: got %d bytes back, want %d: 127.0.0.5 is an address of b.egress.test, a host of the rule; log:\n%s",
			time.Since(start).Round(time.Millisecond), len(got), len(first), e.log.String())
	} else if took := time.Since(start); took > 2*time.Second {
		t.Errorf("verified after %v, want at once", took.Round(time.Millisecond))
	}
}

// TestTransparentAAAADroppedTwoServers: two servers (resolv.conf often
// lists two) behind a middlebox dropping AAAA queries: a lookup takes
// 2 x dnsQueryTimeout, more than verifyTimeout. The A answer, in at once,
// verifies the destination when verifyTimeout cuts the AAAA queries
// short. (From a helper's review, of a version that refused it.)
func TestTransparentAAAADroppedTwoServers(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out verifyTimeout (5 s)")
	}
	dns1 := serveTestDNS(t, "127.0.0.1:0", dropAAAA)
	dns2 := serveTestDNS(t, "127.0.0.1:0", dropAAAA)
	g, e, p := verifyGateway(t, "127.0.0.5", []string{"v4only.egress.test"}, dns1, dns2)
	for i := range 2 { // the second is verified by the remembered answer
		c := g.dial(t, "127.0.0.5:"+p)
		first := append(clientHelloBytes("v4only.egress.test"), fmt.Sprintf("ping %d", i)...)
		start := time.Now()
		if got := exchange(t, c, first); !bytes.Equal(got, first) {
			t.Fatalf("connection %d after %v: got %d bytes back, want %d; log:\n%s", i, time.Since(start).Round(time.Millisecond), len(got), len(first), e.log.String())
		}
		if took := time.Since(start); i == 1 && took > time.Second {
			t.Errorf("the second connection took %v, want the remembered answer at once", took.Round(time.Millisecond))
		}
	}
}

// TestTransparentVerifyOtherHostAfter: a connection verified by the
// rule's first host leaves the other host free to be asked for: a
// connection to it right after is verified, not refused dst_mismatch for
// minVerifyRefresh (as when a version looking the hosts up side by side
// cut the other host's lookup short after marking it asked).
func TestTransparentVerifyOtherHostAfter(t *testing.T) {
	dnsAddr, _ := pairServer(t, "b.", 300*time.Millisecond)
	g, e, p := verifyGateway(t, "127.0.0.5", []string{"a.egress.test", "b.egress.test"}, dnsAddr)
	serveEcho(listenOn(t, "127.0.0.6:"+p))
	for i, c := range []struct{ sni, dst string }{{"a.egress.test", "127.0.0.5"}, {"b.egress.test", "127.0.0.6"}} {
		first := append(clientHelloBytes(c.sni), fmt.Sprintf("ping %d", i)...)
		if got := exchange(t, g.dial(t, c.dst+":"+p), first); !bytes.Equal(got, first) {
			t.Fatalf("connection %d (SNI %s to %s): got %d bytes back, want %d; log:\n%s", i, c.sni, c.dst, len(got), len(first), e.log.String())
		}
	}
}

// TestTransparentVerifySiblingQueries: connections with fresh SNI names
// under a wildcard rule that also lists an exact host cost no query for
// that host. (From a helper's review of a version that sent one per
// connection.)
func TestTransparentVerifySiblingQueries(t *testing.T) {
	dnsAddr, slowQ := pairServer(t, "slow.", 200*time.Millisecond)
	g, e, p := verifyGateway(t, "127.0.0.5", []string{"*.egress.test", "slow.egress.test"}, dnsAddr)
	const conns = 20
	for i := range conns {
		first := append(clientHelloBytes(fmt.Sprintf("n%d.egress.test", i)), "ping"...)
		if got := exchange(t, g.dial(t, "127.0.0.5:"+p), first); !bytes.Equal(got, first) {
			t.Fatalf("connection %d: %d bytes back, want %d; log:\n%s", i, len(got), len(first), e.log.String())
		}
	}
	if q := slowQ.Load(); q > 1 {
		t.Errorf("%d connections with fresh SNI names sent %d A queries for slow.egress.test, want at most 1 per %v", conns, q, minVerifyRefresh)
	}
}

// TestTransparentShutdownDuringVerify: Shutdown's grace runs out while a
// transparent connection's destination is being verified (its name's
// servers never answer). The connection is cut by the shutdown: its
// decision line says client_closed, as a CONNECT cut the same way does,
// not dst_mismatch, the reason that reports SNI spoofing. Both paths.
func TestTransparentShutdownDuringVerify(t *testing.T) {
	for _, path := range []string{"front", "goroutines"} {
		t.Run(path, func(t *testing.T) {
			var asked atomic.Int32
			dnsAddr := serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
				asked.Add(1) // never answered
			})
			ln := listenOn(t, "127.0.0.5:0")
			serveEcho(ln)
			e := newEnv(t)
			e.noFront = path == "goroutines"
			g := e.startTransparent(t, `
server { allow_private_destinations = true }
resolver { servers = ["`+dnsAddr+`"] }
policy "verify" {
  allow "verify" {
    hosts = ["stuck.egress.test"]
    ports = [`+strings.Split(ln.Addr().String(), ":")[1]+`]
  }
}`)
			c := g.dial(t, ln.Addr().String())
			c.Write(clientHelloBytes("stuck.egress.test"))
			waitFor(t, "the verification's DNS query", func() bool { return asked.Load() > 0 })
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			e.srv.Shutdown(ctx)
			io.ReadAll(c)
			d := e.waitLog(t, "decision", map[string]any{"mode": "transparent", "sni": "stuck.egress.test"})
			if d["reason"] != "client_closed" {
				t.Errorf("decision %v: want client_closed (closed by shutdown), not a dst_mismatch that never was", d)
			}
		})
	}
}
