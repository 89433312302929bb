package proxy

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"

	"github.com/egressd/egressd/sni"
)

// Tests from a review of the QUIC gateway: what a decided flow keeps, and
// the decision lines of complete hellos that are refused.

// bigClientHello is a TLS 1.3 ClientHello handshake message for name with
// suites cipher suites (none of them GREASE) and an ALPN extension with
// alpn when there are any. With 8000 suites it is as large as egressd
// takes (sni.MaxHandshakeBytes), and so are its parsed form and its JA3
// string.
func bigClientHello(t *testing.T, name string, suites int, alpn ...string) []byte {
	t.Helper()
	var b cryptobyte.Builder
	b.AddUint8(1) // client_hello
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(0x0303)
		random := make([]byte, 32)
		rand.Read(random)
		b.AddBytes(random)
		b.AddUint8(0) // empty legacy_session_id
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for v, n := uint16(0x1301), 0; n < suites; v++ {
				if v&0x0f0f == 0x0a0a && v>>8 == v&0xff { // GREASE
					continue
				}
				b.AddUint16(v)
				n++
			}
		})
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddUint16(0x0000) // server_name
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					b.AddUint8(0)
					b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(name)) })
				})
			})
			if len(alpn) > 0 {
				b.AddUint16(0x0010) // application_layer_protocol_negotiation
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
						for _, a := range alpn {
							b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(a)) })
						}
					})
				})
			}
			b.AddUint16(0x002b) // supported_versions: TLS 1.3
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(0x0304) })
			})
		})
	})
	out, err := b.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	var h sni.Hello
	if err := sni.ParseHandshake(out, &h); err != nil || h.ServerName != name {
		t.Fatalf("bigClientHello: %v %q", err, h.ServerName)
	}
	return out
}

// helloInitials seals hello as the CRYPTO stream of two client Initials
// to dcid (packet numbers pn and pn+1), half in each.
func helloInitials(t *testing.T, dcid, hello []byte, pn uint32) [2][]byte {
	t.Helper()
	half := len(hello) / 2
	return [2][]byte{
		sealQUICInitial(t, quicInitialSpec{dcid: dcid, pn: pn, frames: quicCrypto(0, hello[:half]), padTo: 1200}),
		sealQUICInitial(t, quicInitialSpec{dcid: dcid, pn: pn + 1, frames: quicCrypto(half, hello[half:]), padTo: 1200}),
	}
}

// zeroRTT is a v1 0-RTT packet to dcid with 20 bytes of payload, which
// the gateway skips.
func zeroRTT(dcid []byte) []byte {
	p := append([]byte{0xd0, 0, 0, 0, 1, byte(len(dcid))}, dcid...)
	p = append(p, 0, 0x40, 20) // no SCID, Length 20
	return append(p, make([]byte, 20)...)
}

// dst is the original destination q gives c's datagrams.
func (q *quicGW) dst(t *testing.T, c *net.UDPConn) netip.AddrPort {
	t.Helper()
	v, ok := q.dsts.Load(c.LocalAddr().(*net.UDPAddr).AddrPort())
	if !ok {
		t.Fatal("not a socket of q")
	}
	return v.(netip.AddrPort)
}

// retainedHello is how many bytes of parsed ClientHello and fingerprint
// text f keeps, for itself and for the verdicts on its other connections
// (not counting the verifiers' copies of the decided hellos' bytes, which
// the screen needs). f.mu must be held.
func retainedHello(f *flow) int {
	size := func(h *sni.Hello) int {
		n := 2*(cap(h.CipherSuites)+cap(h.Extensions)+cap(h.SupportedVersions)+cap(h.SupportedGroups)+cap(h.SignatureAlgorithms)) +
			cap(h.PointFormats) + 16*cap(h.ALPN) + len(h.ServerName)
		for _, a := range h.ALPN {
			n += len(a)
		}
		return n
	}
	n := size(&f.hello) + len(f.c.ja3Full) + len(f.c.ja3) + len(f.c.ja4)
	if f.c.hello != nil && f.c.hello != &f.hello {
		n += size(f.c.hello)
	}
	for _, o := range f.others {
		n += size(&o.hello)
	}
	return n
}

// TestQUICDecidedFlowsKeepNoHello: once a flow's decision line (and each
// of its other connections') is written, the parsed ClientHello and its
// JA3/JA4 text serve nothing (the close line has bytes and duration; the
// screen has the verifiers' own copies of the decided bytes), and a TCP
// tunnel drops them (conn.dropHello). A QUIC flow kept them as long as it
// lived: a held (denied) flow for 30 s, a relaying flow, and every verdict
// on another connection of it (up to quicMaxOtherConns), for as long as
// the client keeps the socket busy. With a hello of the size egressd
// takes (16 KiB), a held flow kept ~60 KiB (its parsed hello and its 43
// KiB JA3 string), and held flows take no connection slot: one client
// sending denied hellos from new ports kept the 4096-flow table full of
// them, ~250 MiB for ~270 datagrams a second. A relaying flow kept ~60
// KiB plus ~18 KiB per other connection, ~210 KiB with eight.
func TestQUICDecidedFlowsKeepNoHello(t *testing.T) {
	const allowed = "quic.cftunnel.com"
	e := newEnv(t)
	up, _ := udpSink(t)
	q := e.startQUIC(t, quicLongIdlePolicy, up.Port())
	g := q.g.Load()
	big := func(name string) []byte { return bigClientHello(t, name, 8000) }
	dcid := func(b byte) []byte { return []byte{b, b, b, b, b, b, b, b} }
	sendHello := func(c *net.UDPConn, id byte, name string) {
		t.Helper()
		for _, d := range helloInitials(t, dcid(id), big(name), 0) {
			if _, err := c.WriteTo(d, q.addr); err != nil {
				t.Fatal(err)
			}
		}
	}
	lines := func(verdict, name string, n int) {
		t.Helper()
		waitFor(t, fmt.Sprintf("%d %s lines for %s", n, verdict, name), func() bool {
			return e.countLines(t, "decision", map[string]any{"mode": "quic", "decision": verdict, "sni": name}) == n
		})
	}

	// A relaying flow, with a denied and an allowed other connection.
	relaying := q.socket(t, up)
	sendHello(relaying, 1, allowed)
	lines("allow", allowed, 1)
	sendHello(relaying, 2, "evil.example")
	lines("deny", "evil.example", 1)
	sendHello(relaying, 3, allowed)
	lines("allow", allowed, 2)
	// A denied flow, held.
	held := q.socket(t, up)
	sendHello(held, 4, "evil.example")
	lines("deny", "evil.example", 2)

	for _, tc := range []struct {
		name string
		c    *net.UDPConn
	}{
		{"a relaying flow and its other connections", relaying},
		{"a held flow", held},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g.mu.Lock()
			f := g.flows[flowKey{tc.c.LocalAddr().(*net.UDPAddr).AddrPort(), up}]
			g.mu.Unlock()
			if f == nil {
				t.Fatal("no flow")
			}
			f.mu.Lock()
			n := retainedHello(f)
			f.mu.Unlock()
			if n > 0 {
				t.Errorf("the flow keeps %d bytes of parsed hellos and fingerprints after its decision lines", n)
			}
		})
	}
}

// TestQUICCompleteHelloPastBufferLogged: a ClientHello that completes in
// the datagram that overflows what a flow buffers before its decision (16
// datagrams: a resuming client's 0-RTT packets can fill them before its
// hello's last Initial comes) is refused as hello_too_large, as
// documented; but it is complete and parsed, and its decision line must
// say so and carry its SNI and JA3/JA4, as every other line about a
// complete hello does. It said "no complete ClientHello" and had no
// fingerprint, for a flow and for another connection on a relaying flow
// alike; so did a hello that completed as egressd began shutting down.
func TestQUICCompleteHelloPastBufferLogged(t *testing.T) {
	const name = "quic.cftunnel.com"
	dcid := func(b byte) []byte { return []byte{b, b, b, b, b, b, b, b} }
	for _, tc := range []struct {
		name string
		// relaying: c's flow is allowed (on connection ID 1) first.
		relaying bool
		reason   string
		// send sends d, the two Initials of the hello (connection ID
		// 2), and what the case puts between them.
		send func(t *testing.T, q *quicGW, c *net.UDPConn, d [2][]byte)
	}{
		{"a flow's hello behind 0-RTT datagrams", false, "hello_too_large", func(t *testing.T, q *quicGW, c *net.UDPConn, d [2][]byte) {
			c.WriteTo(d[0], q.addr)
			for range maxPendingDatagrams - 1 {
				c.WriteTo(zeroRTT(dcid(2)), q.addr)
			}
			c.WriteTo(d[1], q.addr)
		}},
		{"another connection's hello on a relaying flow", true, "hello_too_large", func(t *testing.T, q *quicGW, c *net.UDPConn, d [2][]byte) {
			c.WriteTo(d[0], q.addr)
			for pn := range maxPendingDatagrams - 1 {
				c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: dcid(2), pn: uint32(100 + pn), frames: []byte{0x01}, padTo: 1200}), q.addr) // PING
			}
			c.WriteTo(d[1], q.addr)
		}},
		{"a flow's hello as egressd begins shutting down", false, "shutting_down", func(t *testing.T, q *quicGW, c *net.UDPConn, d [2][]byte) {
			c.WriteTo(d[0], q.addr)
			waitFor(t, "the pending flow", func() bool { return q.flows() == 1 })
			// The moment between Shutdown's start and its closing of
			// the QUIC listener, held open.
			g := q.g.Load()
			g.s.mu.Lock()
			g.s.closing = true
			g.s.mu.Unlock()
			g.handle(c.LocalAddr().(*net.UDPAddr).AddrPort(), q.dst(t, c), true, d[1])
			g.s.mu.Lock()
			g.s.closing = false
			g.s.mu.Unlock()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			up, got := udpSink(t)
			q := e.startQUIC(t, quicLongIdlePolicy, up.Port())
			c := q.socket(t, up)
			if tc.relaying {
				c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: dcid(1), frames: quicCrypto(0, quicClientHello(t, name)), padTo: 1200}), q.addr)
				e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "allow"})
				waitFor(t, "the allowed hello at the upstream", func() bool { return got.Load() == 1 })
			}
			hello := bigClientHello(t, name, 1000) // two Initials
			tc.send(t, q, c, helloInitials(t, dcid(2), hello, 0))
			d := e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "deny", "reason": tc.reason})
			var want sni.Hello
			if err := sni.ParseHandshake(hello, &want); err != nil {
				t.Fatal(err)
			}
			_, ja3 := want.JA3()
			if d["sni"] != name || d["ja3"] != ja3 || d["ja4"] != want.JA4(true) || strings.Contains(fmt.Sprint(d["detail"]), "no complete ClientHello") {
				t.Errorf("a complete hello for %s refused without it in the line (want its sni, ja3 %s, ja4 %s, and no \"no complete ClientHello\"):\n%v",
					name, ja3, want.JA4(true), d)
			}
		})
	}
}
