//go:build unix

package proxy

// The evasion and abuse suite (issue 7): hostile ClientHello deliveries,
// SNI contents, CONNECT lines and destinations, over real loopback sockets.
// Every case states its decision and reason, and whether anything may be
// dialed; every address a case could reach has a counting listener (the
// allowed upstream on 127.0.0.1, an "attacker" on 127.0.0.2 at the same
// port), and a denial's decision line must have no dst.
//
// Choices documented here:
//   - Bytes after a complete, allowed ClientHello (garbage, the client's
//     next TLS records) are the tunnel's: the hello decides, and they are
//     relayed to the upstream the hello was allowed for, never looked at.
//   - A CONNECT whose Host header names another host is decided (and
//     dialed) on the CONNECT target alone; the Host header is ignored.
//   - On loopback every address is private. "Public" in the destination
//     cases means 127.0.0.1, granted by the rule's cidrs (a rule's cidrs
//     admit private addresses even with allow_private_destinations =
//     false); 127.0.0.2, 10.x and 169.254.169.254 are private addresses
//     nothing grants, standing for internal and metadata addresses.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/crypto/cryptobyte"
)

// evDNS answers A queries under egress.test: most names with 127.0.0.1
// (TTL 60), a few with private or mixed answers, rebind.egress.test
// alternating 127.0.0.1 and 127.0.0.2 with TTL 0, nx.egress.test NXDOMAIN
// and servfail.egress.test SERVFAIL.
func evDNS(t *testing.T) string {
	t.Helper()
	var rebind atomic.Int32
	return serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		name := strings.ToLower(q.Question[0].Name)
		a := func(ttl int, ips ...string) {
			if q.Question[0].Qtype != dns.TypeA {
				return
			}
			for _, ip := range ips {
				rr, _ := dns.NewRR(fmt.Sprintf("%s %d IN A %s", name, ttl, ip))
				m.Answer = append(m.Answer, rr)
			}
		}
		switch {
		case !strings.HasSuffix(name, ".egress.test.") || name == "nx.egress.test.":
			m.Rcode = dns.RcodeNameError
		case name == "servfail.egress.test.":
			m.Rcode = dns.RcodeServerFailure
		case name == "meta.egress.test.":
			a(60, "169.254.169.254")
		case name == "ten.egress.test.":
			a(60, "10.1.2.3")
		case name == "private.egress.test.":
			a(60, "127.0.0.2")
		case name == "mixed.egress.test.":
			a(0, "10.0.0.1", "169.254.169.254", "127.0.0.2", "127.0.0.1")
		case name == "rebind.egress.test." && q.Question[0].Qtype == dns.TypeA:
			// Counted per A query: the AAAA query of the same lookup must
			// not flip the parity.
			if rebind.Add(1)%2 == 0 {
				a(0, "127.0.0.2")
			} else {
				a(0, "127.0.0.1")
			}
		default:
			a(60, "127.0.0.1")
		}
		w.WriteMsg(m)
	})
}

// evEnv is an env with a counted upstream and attacker, and a transparent
// listener: both modes run against the same egressd.
type evEnv struct {
	*env
	g        *gateway
	upPort   int
	up, evil *atomic.Int32 // accepts at 127.0.0.1:upPort and 127.0.0.2:upPort
	seen     map[any]bool  // conn ids of the decision lines decisionOf returned
}

func newEvEnv(t *testing.T, hcl string) *evEnv {
	t.Helper()
	e := newEnv(t)
	ln, evil := listenPair(t)
	ev := &evEnv{env: e, upPort: port(ln), up: serveEcho(ln), evil: serveEcho(evil), seen: map[any]bool{}}
	e.echoPort = ev.upPort
	e.dnsAddr = evDNS(t)
	ev.g = e.startTransparent(t, hcl)
	return ev
}

// listenPair listens on 127.0.0.1 and 127.0.0.2 at the same free port
// (retrying when another test holds the port on 127.0.0.2).
func listenPair(t *testing.T) (net.Listener, net.Listener) {
	t.Helper()
	for range 50 {
		a, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		b, err := net.Listen("tcp", "127.0.0.2:"+strconv.Itoa(port(a)))
		if err != nil {
			a.Close()
			continue
		}
		t.Cleanup(func() { a.Close(); b.Close() })
		return a, b
	}
	t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	return nil, nil
}

const evHelloConfig = `
server {
  allow_private_destinations = true
  hello_timeout = "1s"
}
resolver { servers = ["DNS_ADDR"] }
policy "ev" {
  allow "echo" {
    hosts = ["allowed.egress.test", "xn--bcher-kva.egress.test"]
    ports = [ECHO_PORT]
  }
}
`

// decisionOf waits for the decision line of the connection from client:
// the first one from its address not returned before (client ports are
// reused over a test's many connections).
func (ev *evEnv) decisionOf(t *testing.T, client net.Conn) map[string]any {
	t.Helper()
	addr := client.LocalAddr().String()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, l := range ev.log.lines(t) {
			if l["message"] == "decision" && l["client"] == addr && !ev.seen[l["conn"]] {
				ev.seen[l["conn"]] = true
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new decision line for client %s in:\n%s", addr, ev.log.buf.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// readAllQuiet reads until EOF or an error (a refused connection may be
// reset) and returns what arrived.
func readAllQuiet(r io.Reader) []byte {
	var b bytes.Buffer
	io.Copy(&b, r)
	return b.Bytes()
}

// Deliveries: how a case's first bytes are written.
type deliverFunc func(c net.Conn, b []byte)

func oneWrite(c net.Conn, b []byte) { c.Write(b) }

func byteWise(c net.Conn, b []byte) {
	for i := range b {
		if _, err := c.Write(b[i : i+1]); err != nil {
			return
		}
	}
}

// splitAt writes b in pieces cut at the offsets, pausing so that each
// piece is its own segment.
func splitAt(offs ...int) deliverFunc {
	return func(c net.Conn, b []byte) {
		last := 0
		for _, o := range offs {
			if _, err := c.Write(b[last:o]); err != nil {
				return
			}
			last = o
			time.Sleep(3 * time.Millisecond)
		}
		c.Write(b[last:])
	}
}

// nothing sends no bytes at all (slowloris).
func nothing(net.Conn, []byte) {}

// --- ClientHello builders ---------------------------------------------------

func versionHello(v uint16) []byte {
	return capturedHello(&tls.Config{ServerName: "allowed.egress.test", MinVersion: v, MaxVersion: v})
}

type evExt struct {
	typ  uint16
	data []byte
}

// evHandshake builds a ClientHello handshake message (header included)
// with the given extensions, like a TLS 1.3 client's.
func evHandshake(exts ...evExt) []byte {
	var b cryptobyte.Builder
	b.AddUint8(1)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(0x0303)
		b.AddBytes(make([]byte, 32))
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(make([]byte, 32)) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, c := range []uint16{0x1301, 0x1302, 0xc02b} {
				b.AddUint16(c)
			}
		})
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, e := range exts {
				b.AddUint16(e.typ)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.data) })
			}
		})
	})
	return b.BytesOrPanic()
}

// evRecords frames a handshake message in records of at most size bytes.
func evRecords(msg []byte, size int) []byte {
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, 22, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// reframe re-frames the records of a captured hello in records of at most
// size bytes.
func reframe(rec []byte, size int) []byte {
	var msg []byte
	for len(rec) >= 5 {
		n := int(rec[3])<<8 | int(rec[4])
		msg = append(msg, rec[5:5+n]...)
		rec = rec[5+n:]
	}
	return evRecords(msg, size)
}

// sniExt is a server_name extension with the given (type, name) entries.
func sniExt(pairs ...any) evExt {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for i := 0; i < len(pairs); i += 2 {
			b.AddUint8(uint8(pairs[i].(int)))
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(pairs[i+1].(string))) })
		}
	})
	return evExt{0x0000, b.BytesOrPanic()}
}

// commonExts are the usual TLS 1.3 extensions after server_name.
func commonExts() []evExt {
	return []evExt{
		{0x002b, []byte{4, 0x03, 0x04, 0x03, 0x03}},    // supported_versions
		{0x000a, []byte{0, 4, 0x00, 0x1d, 0x00, 0x17}}, // supported_groups
		{0x000d, []byte{0, 4, 0x04, 0x03, 0x08, 0x04}}, // signature_algorithms
	}
}

// sniHello is a hand-built hello in one record whose server_name extension
// is ext (followed by more extensions).
func sniHello(more []evExt, exts ...evExt) []byte {
	return evRecords(evHandshake(append(exts, append(commonExts(), more...)...)...), 1<<14)
}

// --- the ClientHello table ----------------------------------------------

type helloCase struct {
	name    string
	payload []byte
	deliver deliverFunc
	target  string // CONNECT target host; allowed.egress.test by default
	port    int    // CONNECT target port; the upstream's by default
	hold    bool   // keep the write side open (timeout cases)
	// reasons per mode; "allowed" means relayed to 127.0.0.1:upPort.
	connect, transparent string
	extra                map[string]any // more fields the decision line must have
}

func TestEvasionClientHello(t *testing.T) {
	t.Parallel()
	std := clientHelloBytes("allowed.egress.test")
	withTrailer := append(bytes.Clone(std), "GARBAGE\x00\xff after the hello"...)
	longName := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 63) + ".egress.test"
	bigHandshake := evHandshake(append([]evExt{sniExt(0, "allowed.egress.test"), {0xffce, make([]byte, 16500)}}, commonExts()...)...)
	threeKB := evHandshake(append([]evExt{sniExt(0, "allowed.egress.test"), {0xffce, make([]byte, 3000)}}, commonExts()...)...)
	cases := []helloCase{
		// Delivery.
		{name: "one write", payload: std, connect: "allowed", transparent: "allowed"},
		{name: "one byte per write", payload: std, deliver: byteWise, connect: "allowed", transparent: "allowed"},
		{name: "two records", payload: reframe(std, len(std)/2), connect: "allowed", transparent: "allowed"},
		{name: "64-byte records", payload: reframe(std, 64), connect: "allowed", transparent: "allowed"},
		{name: "one-byte records", payload: reframe(std, 1), connect: "allowed", transparent: "allowed"},
		{name: "one-byte records past the buffer", payload: evRecords(threeKB, 1), connect: "hello_too_large", transparent: "hello_too_large"},
		{name: "records split across writes", payload: reframe(std, 100), deliver: splitAt(3, 103, 207, 400), connect: "allowed", transparent: "allowed"},
		{name: "alert record first", payload: []byte{21, 3, 3, 0, 2, 2, 40}, connect: "not_tls", transparent: "no_rule"},
		{name: "application data first", payload: append([]byte{23, 3, 3, 0, 5}, "hello"...), connect: "not_tls", transparent: "no_rule"},
		{name: "sslv2 compatible hello", payload: []byte{0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10, 0x07, 0x00, 0xc0, 0x05, 0x00, 0x80, 0x03, 0x00, 0x80, 0x01, 0x00, 0x80, 0x06, 0x00, 0x40, 0x04, 0x00, 0x80, 0x02, 0x00, 0x80, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10},
			connect: "not_tls", transparent: "no_rule"},
		{name: "handshake record not a client hello", payload: evRecords([]byte{2, 0, 0, 4, 3, 3, 0, 0}, 100), connect: "hello_malformed", transparent: "hello_malformed"},
		{name: "tls 1.0", payload: versionHello(tls.VersionTLS10), connect: "allowed", transparent: "allowed", extra: map[string]any{"tls_version": "1.0"}},
		{name: "tls 1.1", payload: versionHello(tls.VersionTLS11), connect: "allowed", transparent: "allowed", extra: map[string]any{"tls_version": "1.1"}},
		{name: "tls 1.2", payload: versionHello(tls.VersionTLS12), connect: "allowed", transparent: "allowed", extra: map[string]any{"tls_version": "1.2"}},
		{name: "tls 1.3", payload: versionHello(tls.VersionTLS13), connect: "allowed", transparent: "allowed", extra: map[string]any{"tls_version": "1.3"}},
		{name: "hello larger than the limit", payload: evRecords(bigHandshake, 1<<14), connect: "hello_too_large", transparent: "hello_too_large"},
		{name: "declared length larger than the limit", payload: []byte{22, 3, 1, 0, 4, 1, 0, 0x50, 0}, hold: true, connect: "hello_too_large", transparent: "hello_too_large"},
		{name: "no bytes until hello_timeout", deliver: nothing, hold: true, connect: "hello_timeout", transparent: "hello_timeout"},
		{name: "half a hello then silence", payload: std[:len(std)/2], hold: true, connect: "hello_timeout", transparent: "hello_timeout"},
		{name: "client closes mid hello", payload: std[:len(std)/2], connect: "client_closed", transparent: "client_closed"},
		{name: "garbage after a valid hello, same write", payload: withTrailer, connect: "allowed", transparent: "allowed"},
		{name: "garbage after a valid hello, next write", payload: withTrailer, deliver: splitAt(len(std)), connect: "allowed", transparent: "allowed"},
		// SNI content.
		{name: "upper case sni", payload: clientHelloBytes("ALLOWED.Egress.TEST"), connect: "allowed", transparent: "allowed", extra: map[string]any{"sni": "ALLOWED.Egress.TEST"}},
		{name: "trailing dot", payload: sniHello(nil, sniExt(0, "allowed.egress.test.")), connect: "allowed", transparent: "allowed"},
		{name: "ip address as sni", payload: sniHello(nil, sniExt(0, "127.0.0.1")), connect: "sni_mismatch", transparent: "no_rule"},
		{name: "attacker ip as sni", payload: sniHello(nil, sniExt(0, "127.0.0.2")), connect: "sni_mismatch", transparent: "no_rule"},
		{name: "no server_name", payload: sniHello(nil), connect: "sni_missing", transparent: "no_rule"},
		{name: "empty name", payload: sniHello(nil, sniExt(0, "")), connect: "hello_malformed", transparent: "hello_malformed"},
		{name: "two names in the list", payload: sniHello(nil, sniExt(0, "allowed.egress.test", 0, "private.egress.test")), connect: "hello_malformed", transparent: "hello_malformed"},
		{name: "two server_name extensions", payload: sniHello(nil, sniExt(0, "allowed.egress.test"), sniExt(0, "private.egress.test")), connect: "hello_malformed", transparent: "hello_malformed"},
		{name: "nul byte", payload: sniHello(nil, sniExt(0, "allowed.egress.test\x00.private.egress.test")), connect: "sni_mismatch", transparent: "no_rule"},
		{name: "space and slash", payload: sniHello(nil, sniExt(0, "allowed.egress.test/x y")), connect: "sni_mismatch", transparent: "no_rule"},
		{name: "invalid utf-8", payload: sniHello(nil, sniExt(0, "allowed\xff.egress.test")), connect: "sni_mismatch", transparent: "no_rule"},
		{name: "over-long name", payload: sniHello(nil, sniExt(0, longName)), connect: "sni_mismatch", transparent: "no_rule"},
		{name: "over-long label", payload: sniHello(nil, sniExt(0, strings.Repeat("x", 64)+".egress.test")), connect: "sni_mismatch", transparent: "no_rule"},
		{name: "idn a-label", payload: sniHello(nil, sniExt(0, "xn--bcher-kva.egress.test")), target: "xn--bcher-kva.egress.test", connect: "allowed", transparent: "allowed"},
		// RFC 6066 §3: the SNI is ASCII, and the server gets its bytes as
		// sent, not the name IDNA would map them to.
		{name: "idn u-label", payload: sniHello(nil, sniExt(0, "bücher.egress.test")), target: "xn--bcher-kva.egress.test", connect: "sni_mismatch", transparent: "no_rule"},
		{name: "fullwidth letters", payload: sniHello(nil, sniExt(0, "ａｌｌｏｗｅｄ.egress.test")), connect: "sni_mismatch", transparent: "no_rule"},
		{name: "ech with allowed outer sni", payload: sniHello([]evExt{{0xfe0d, append([]byte{0, 0, 1, 0, 1, 7, 0, 32}, make([]byte, 32+2+100)...)}}, sniExt(0, "allowed.egress.test")),
			connect: "allowed", transparent: "allowed", extra: map[string]any{"ech": true}},
		{name: "ech with another outer sni", payload: sniHello([]evExt{{0xfe0d, make([]byte, 40)}}, sniExt(0, "public.example")),
			connect: "sni_mismatch", transparent: "no_rule", extra: map[string]any{"ech": true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ev := newEvEnv(t, evHelloConfig)
			for _, mode := range []string{"connect", "transparent"} {
				want := tc.connect
				if mode == "transparent" {
					want = tc.transparent
				}
				ev.runHello(t, mode, tc, want)
			}
			if n := ev.evil.Load(); n != 0 {
				t.Errorf("the attacker address got %d connections", n)
			}
		})
	}
}

// openMode opens a tunnel in mode to the upstream port: a CONNECT to
// target (answered 200) or a transparent connection to 127.0.0.1.
func (ev *evEnv) openMode(t *testing.T, mode, target string, port int) (net.Conn, io.Reader) {
	t.Helper()
	if mode == "transparent" {
		c := ev.g.dial(t, "127.0.0.1:"+strconv.Itoa(ev.upPort))
		return c, c
	}
	if target == "" {
		target = "allowed.egress.test"
	}
	if port == 0 {
		port = ev.upPort
	}
	c, br, resp := ev.connect(t, target+":"+strconv.Itoa(port))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT %s: %s", target, resp.Status)
	}
	return c, br
}

// runHello runs one hello case in one mode and checks the outcome.
func (ev *evEnv) runHello(t *testing.T, mode string, tc helloCase, want string) {
	t.Helper()
	before := ev.up.Load()
	c, r := ev.openMode(t, mode, tc.target, tc.port)
	deliver := tc.deliver
	if deliver == nil {
		deliver = oneWrite
	}
	go func() {
		deliver(c, tc.payload)
		if !tc.hold {
			c.(*net.TCPConn).CloseWrite()
		}
	}()
	got := readAllQuiet(r)
	d := ev.decisionOf(t, c)
	ev.checkDecision(t, mode, d, want, tc.extra)
	if want == "allowed" {
		if !bytes.Equal(got, tc.payload) {
			t.Errorf("%s: echoed %d bytes, want the %d sent", mode, len(got), len(tc.payload))
		}
		if n := ev.up.Load() - before; n != 1 {
			t.Errorf("%s: upstream accepted %d connections, want 1", mode, n)
		}
		ev.waitLog(t, "close", map[string]any{"conn": d["conn"], "bytes_up": len(tc.payload)})
	} else {
		if len(got) != 0 {
			t.Errorf("%s: a refused tunnel answered %q", mode, got)
		}
		if n := ev.up.Load() - before; n != 0 {
			t.Errorf("%s: a refused tunnel was dialed (%d accepts)", mode, n)
		}
	}
}

func (ev *evEnv) checkDecision(t *testing.T, mode string, d map[string]any, want string, extra map[string]any) {
	t.Helper()
	if d["mode"] != mode || d["reason"] != want {
		t.Errorf("%s: decision %s/%v (%v), want reason %s", mode, d["decision"], d["reason"], d["detail"], want)
	}
	if want == "allowed" {
		if d["decision"] != "allow" || d["dst"] != "127.0.0.1:"+strconv.Itoa(ev.upPort) {
			t.Errorf("%s: allowed decision %v, want dst 127.0.0.1:%d", mode, d, ev.upPort)
		}
	} else if d["decision"] != "deny" || d["dst"] != nil {
		t.Errorf("%s: refusal %v is not a deny without dst", mode, d)
	}
	for k, v := range extra {
		if fmt.Sprint(d[k]) != fmt.Sprint(v) {
			t.Errorf("%s: decision %s = %v, want %v", mode, k, d[k], v)
		}
	}
}

// TestEvasionHelloSplitEverySNIOffset cuts the hello in two at every
// offset from the start of the server_name extension to the end of the
// name, in both modes.
func TestEvasionHelloSplitEverySNIOffset(t *testing.T) {
	t.Parallel()
	std := clientHelloBytes("allowed.egress.test")
	name := bytes.Index(std, []byte("allowed.egress.test"))
	if name < 9 {
		t.Fatal("no server_name in the hello")
	}
	ev := newEvEnv(t, evHelloConfig)
	for _, mode := range []string{"connect", "transparent"} {
		for off := name - 9; off <= name+len("allowed.egress.test"); off++ {
			ev.runHello(t, mode, helloCase{payload: std, deliver: splitAt(off)}, "allowed")
		}
	}
	if n := ev.evil.Load(); n != 0 {
		t.Errorf("the attacker address got %d connections", n)
	}
}

// --- CONNECT lines ------------------------------------------------------

type connectCase struct {
	name    string
	request string // raw bytes; P is the upstream port, PROXY the proxy's address
	with    []byte // sent in the same write as request, as they are (a hello's random bytes may hold ":P")
	after   []byte // sent after the response (the hello), if the tunnel opens
	status  int
	reason  string // "" when net/http refuses before egressd decides (a mode proxy bad_request line)
	echo    []byte // what comes back through the tunnel; nil for none
	extra   map[string]any
	secret  string // must be in no log line
}

func TestEvasionConnectLine(t *testing.T) {
	t.Parallel()
	hello := clientHelloBytes("allowed.egress.test")
	pipelined := append(slices.Clone(hello), "and more"...)
	cases := []connectCase{
		{name: "ipv6 literal", request: "CONNECT [::1]:P HTTP/1.1\r\nHost: [::1]:P\r\n\r\n", status: 403, reason: "no_rule", extra: map[string]any{"host": "::1"}},
		{name: "missing port", request: "CONNECT allowed.egress.test HTTP/1.1\r\n\r\n", status: 400, reason: "bad_request"},
		{name: "port 0", request: "CONNECT allowed.egress.test:0 HTTP/1.1\r\n\r\n", status: 400, reason: "bad_request"},
		{name: "port 65536", request: "CONNECT allowed.egress.test:65536 HTTP/1.1\r\n\r\n", status: 400, reason: "bad_request"},
		{name: "userinfo", request: "CONNECT user@allowed.egress.test:P HTTP/1.1\r\n\r\n", status: 400, reason: "bad_request"},
		{name: "userinfo with a password", request: "CONNECT alice:Hunter2secret@allowed.egress.test:P HTTP/1.1\r\n\r\n", status: 400, reason: "bad_request",
			secret: "Hunter2secret"},
		{name: "userinfo with a password, no port", request: "CONNECT alice:Hunter2@secret@allowed.egress.test HTTP/1.1\r\n\r\n", status: 400, reason: "bad_request",
			secret: "Hunter2"},
		{name: "percent-encoded dot", request: "CONNECT allowed%2eegress.test:P HTTP/1.1\r\n\r\n", status: 400},
		{name: "percent-encoded letter", request: "CONNECT allowed%2Eegress.tes%74:P HTTP/1.1\r\n\r\n", status: 400},
		{name: "absolute-form uri", request: "CONNECT http://allowed.egress.test:P/ HTTP/1.1\r\n\r\n", status: 400, reason: "bad_request"},
		{name: "non-canonical ip", request: "CONNECT 127.1:P HTTP/1.1\r\n\r\n", status: 400, reason: "bad_request"},
		{name: "host header disagrees", request: "CONNECT allowed.egress.test:P HTTP/1.1\r\nHost: private.egress.test:P\r\n\r\n",
			after: hello, status: 200, reason: "allowed", echo: hello, extra: map[string]any{"host": "allowed.egress.test"}},
		{name: "http/1.0 connect", request: "CONNECT allowed.egress.test:P HTTP/1.0\r\n\r\n", after: hello, status: 200, reason: "allowed", echo: hello},
		{name: "hello in the same write as the connect", request: "CONNECT allowed.egress.test:P HTTP/1.1\r\n\r\n", with: pipelined,
			status: 200, reason: "allowed", echo: pipelined},
		{name: "two pipelined connects", request: "CONNECT allowed.egress.test:P HTTP/1.1\r\n\r\nCONNECT private.egress.test:P HTTP/1.1\r\n\r\n",
			status: 200, reason: "not_tls"},
		{name: "header block over the limit", request: "CONNECT allowed.egress.test:P HTTP/1.1\r\nX-Big: " + strings.Repeat("a", 64<<10) + "\r\n\r\n", status: 431},
		{name: "request line over the limit", request: "CONNECT " + strings.Repeat("a", 64<<10) + ".egress.test:P HTTP/1.1\r\n\r\n", status: 431},
		{name: "over-long name under the header limit", request: "CONNECT " + strings.Repeat("a", 4000) + ".egress.test:P HTTP/1.1\r\n\r\n", status: 400, reason: "bad_request"},
		{name: "nul in the target", request: "CONNECT allowed.egress.test\x00.x:P HTTP/1.1\r\n\r\n", status: 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ev := newEvEnv(t, evHelloConfig)
			ev.runConnect(t, tc)
		})
	}
}

func (ev *evEnv) runConnect(t *testing.T, tc connectCase) {
	t.Helper()
	c, err := net.Dial("tcp", ev.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req := strings.NewReplacer("PROXY", ev.proxyAddr, ":P", ":"+strconv.Itoa(ev.upPort)).Replace(tc.request)
	go c.Write(append([]byte(req), tc.with...))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	if resp.StatusCode != tc.status {
		t.Errorf("status %s, want %d", resp.Status, tc.status)
	}
	var got []byte
	if resp.StatusCode == http.StatusOK {
		go func() {
			c.Write(tc.after)
			c.(*net.TCPConn).CloseWrite()
		}()
		got = readAllQuiet(br)
	}
	if !bytes.Equal(got, tc.echo) {
		t.Errorf("tunnel returned %d bytes %.40q, want %d", len(got), got, len(tc.echo))
	}
	if tc.reason == "" {
		// Refused by net/http's parser, which answered before any handler
		// ran: one line of mode proxy, written before the answer.
		lines := ev.decisionsOf(t, c)
		if len(lines) != 1 || lines[0]["mode"] != ModeProxy || lines[0]["reason"] != "bad_request" || lines[0]["decision"] != "deny" {
			t.Errorf("refused by net/http: decision lines %v, want one deny of mode proxy, reason bad_request", lines)
		}
	} else {
		d := ev.decisionOf(t, c)
		ev.checkDecision(t, "connect", d, tc.reason, tc.extra)
		if n := len(ev.decisionsOf(t, c)); n != 1 {
			t.Errorf("%d decision lines for one connection", n)
		}
	}
	if tc.secret != "" {
		for _, l := range ev.log.lines(t) {
			if strings.Contains(fmt.Sprint(l), tc.secret) {
				t.Errorf("a log line holds the client's password %q: %v", tc.secret, l)
			}
		}
	}
	wantUp := int32(0)
	if tc.reason == "allowed" {
		wantUp = 1
	}
	if n := ev.up.Load(); n != wantUp {
		t.Errorf("upstream accepted %d connections, want %d", n, wantUp)
	}
	if n := ev.evil.Load(); n != 0 {
		t.Errorf("the attacker address got %d connections", n)
	}
}

func (e *env) decisionsOf(t *testing.T, client net.Conn) []map[string]any {
	var out []map[string]any
	for _, l := range e.log.lines(t) {
		if l["message"] == "decision" && l["client"] == client.LocalAddr().String() {
			out = append(out, l)
		}
	}
	return out
}

// TestEvasionConnectSelf: a CONNECT to egressd's own listener, under a
// rule that would allow any loopback port without TLS, is refused without
// a dial (no loop), by IP and by a name that resolves to it.
func TestEvasionConnectSelf(t *testing.T) {
	t.Parallel()
	ev := newEvEnv(t, `
server {
  allow_private_destinations = true
  hello_timeout = "1s"
}
resolver { servers = ["DNS_ADDR"] }
policy "loose" {
  allow "any" {
    hosts       = ["*.egress.test"]
    cidrs       = ["127.0.0.0/8"]
    ports       = ["1-65535"]
    require_tls = false
  }
}`)
	_, p, _ := net.SplitHostPort(ev.proxyAddr)
	for _, target := range []string{ev.proxyAddr, "self.egress.test:" + p} {
		c, br, resp := ev.connect(t, target)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT %s: %s", target, resp.Status)
		}
		go func() {
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\n\r\n", target)
		}()
		if got := readAllQuiet(br); len(got) != 0 {
			t.Errorf("CONNECT %s: the tunnel answered %q", target, got)
		}
		d := ev.decisionOf(t, c)
		if d["decision"] != "deny" || d["reason"] != "bad_request" || d["dst"] != nil || !strings.Contains(fmt.Sprint(d["detail"]), "own listener") {
			t.Errorf("CONNECT %s: decision %v, want bad_request naming egressd's own listener, no dst", target, d)
		}
	}
	if n := ev.countLines(t, "decision", nil); n != 2 {
		t.Errorf("%d decision lines, want 2 (a loop would add more)", n)
	}
}

// --- destinations -------------------------------------------------------

const evDstConfig = `
server {
  allow_private_destinations = false
  hello_timeout = "1s"
  dial_timeout  = "1s"
}
resolver { servers = ["DNS_ADDR"] }
policy "ev" {
  allow "echo" {
    hosts = ["*.egress.test"]
    cidrs = ["127.0.0.1/32"]
    ports = [ECHO_PORT, RST_PORT, HOLE_PORT]
  }
}
`

func TestEvasionDestinations(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, host string
		reason     string
	}{
		{"metadata address", "meta.egress.test", "private_destination"},
		{"rfc 1918 address", "ten.egress.test", "private_destination"},
		{"loopback not in the cidrs", "private.egress.test", "private_destination"},
		{"metadata ip literal", "169.254.169.254", "no_rule"},
		{"allowed and private answers", "mixed.egress.test", "allowed"},
		{"nxdomain", "nx.egress.test", "dns_error"},
		{"servfail", "servfail.egress.test", "dns_error"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ev := newEvEnv(t, strings.NewReplacer("RST_PORT", "1", "HOLE_PORT", "2").Replace(evDstConfig))
			hello := clientHelloBytes(tc.host)
			if net.ParseIP(tc.host) != nil {
				c, _, resp := ev.connect(t, tc.host+":"+strconv.Itoa(ev.upPort))
				if resp.StatusCode != http.StatusForbidden {
					t.Fatalf("CONNECT %s: %s", tc.host, resp.Status)
				}
				ev.checkDecision(t, "connect", ev.decisionOf(t, c), tc.reason, nil)
			} else {
				ev.runHello(t, "connect", helloCase{payload: hello, target: tc.host}, tc.reason)
			}
			if n := ev.evil.Load(); n != 0 {
				t.Errorf("the private address got %d connections", n)
			}
		})
	}
}

// TestEvasionDNSRebinding: the name's answers alternate between the
// allowed 127.0.0.1 and the private 127.0.0.2 with TTL 0. Each tunnel is
// either relayed to 127.0.0.1 or refused as private_destination; 127.0.0.2
// never sees a connection.
func TestEvasionDNSRebinding(t *testing.T) {
	t.Parallel()
	ev := newEvEnv(t, strings.NewReplacer("RST_PORT", "1", "HOLE_PORT", "2").Replace(evDstConfig))
	hello := clientHelloBytes("rebind.egress.test")
	allowed := 0
	for range 8 {
		c, br, resp := ev.connect(t, "rebind.egress.test:"+strconv.Itoa(ev.upPort))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT: %s", resp.Status)
		}
		go func() {
			c.Write(hello)
			c.(*net.TCPConn).CloseWrite()
		}()
		got := readAllQuiet(br)
		d := ev.decisionOf(t, c)
		switch d["reason"] {
		case "allowed":
			allowed++
			if d["dst"] != "127.0.0.1:"+strconv.Itoa(ev.upPort) || !bytes.Equal(got, hello) {
				t.Errorf("allowed tunnel %v echoed %d bytes", d, len(got))
			}
		case "private_destination":
			if d["dst"] != nil || len(got) != 0 {
				t.Errorf("refused tunnel %v answered %d bytes", d, len(got))
			}
		default:
			t.Errorf("decision %v", d)
		}
	}
	if allowed == 0 {
		t.Error("no tunnel was allowed: the allowed answer was never used")
	}
	if n := ev.evil.Load(); n != 0 {
		t.Errorf("the rebound private address got %d connections", n)
	}
	if n := ev.up.Load(); int(n) != allowed {
		t.Errorf("upstream accepted %d, want %d", n, allowed)
	}
}

// TestEvasionUpstreamReset: an upstream that accepts and resets (linger 0)
// ends the tunnel cleanly: the client sees the end, a close line is logged.
func TestEvasionUpstreamReset(t *testing.T) {
	t.Parallel()
	rst := listen(t)
	var accepted atomic.Int32
	go func() {
		for {
			c, err := rst.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.(*net.TCPConn).SetLinger(0)
			time.Sleep(20 * time.Millisecond) // the first bytes arrive
			c.Close()
		}
	}()
	ev := newEvEnv(t, strings.NewReplacer("RST_PORT", strconv.Itoa(port(rst)), "HOLE_PORT", "2").Replace(evDstConfig))
	c, br, resp := ev.connect(t, "allowed.egress.test:"+strconv.Itoa(port(rst)))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %s", resp.Status)
	}
	c.Write(clientHelloBytes("allowed.egress.test"))
	got := readAllQuiet(br) // ends: EOF or reset, within the deadline
	if len(got) != 0 {
		t.Errorf("got %q from a reset upstream", got)
	}
	d := ev.decisionOf(t, c)
	if d["decision"] != "allow" || d["dst"] != "127.0.0.1:"+strconv.Itoa(port(rst)) {
		t.Errorf("decision %v", d)
	}
	// The client saw the end without closing its side: the reset must
	// end the whole tunnel, not leave the client→upstream half open.
	deadline := time.Now().Add(2 * time.Second)
	for ev.countLines(t, "close", map[string]any{"conn": d["conn"]}) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if ev.countLines(t, "close", map[string]any{"conn": d["conn"]}) == 0 {
		// The relay must take the reset as an error that ends both
		// directions, not as the EOF of one, which would leave
		// client→upstream half open until idle_timeout.
		t.Errorf("the upstream's reset did not end the tunnel within 2 s")
	}
	if accepted.Load() != 1 {
		t.Errorf("reset upstream accepted %d", accepted.Load())
	}
}

// TestEvasionUpstreamBlackhole: an upstream whose SYNs go unanswered (a
// listen backlog that is full: Linux drops the SYN) is refused with
// dial_error after dial_timeout, and the client's tunnel closes.
func TestEvasionUpstreamBlackhole(t *testing.T) {
	t.Parallel()
	hole := fullBacklog(t)
	ev := newEvEnv(t, strings.NewReplacer("RST_PORT", "1", "HOLE_PORT", strconv.Itoa(int(hole.Port()))).Replace(evDstConfig))
	start := time.Now()
	ev.runHello(t, "connect", helloCase{payload: clientHelloBytes("allowed.egress.test"), port: int(hole.Port())}, "dial_error")
	if el := time.Since(start); el < 900*time.Millisecond {
		t.Errorf("refused after %v, before dial_timeout: not a timeout", el)
	}
}

// fullBacklog listens on 127.0.0.1 with a backlog of 0, never accepts, and
// fills the queue, so that further SYNs are dropped.
func fullBacklog(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		unavailable(t, "no socket for a blackhole listener: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*syscall.SockaddrInet4).Port))
	// Fill the accept queue; once a dial times out, the queue is full.
	for i := 0; i < 8; i++ {
		c, err := net.DialTimeout("tcp", ap.String(), 200*time.Millisecond)
		if err != nil {
			return ap
		}
		t.Cleanup(func() { c.Close() })
	}
	unavailable(t, "the listen queue never filled: no blackhole on this kernel")
	return ap
}

// --- QUIC ---------------------------------------------------------------

// evInitial seals a client Initial (QUIC v1, RFC 9001 §5) carrying the
// handshake message msg in one CRYPTO frame, padded to 1200 bytes.
func evInitial(t *testing.T, msg []byte) []byte {
	t.Helper()
	return sealQUICInitial(t, quicInitialSpec{dcid: []byte{1, 2, 3, 4, 5, 6, 7, 8}, frames: quicCrypto(0, msg), padTo: 1200})
}

const evQUICConfig = `
server {
  hello_timeout = "1s"
  idle_timeout  = "1s"
}
resolver { servers = ["DNS_ADDR"] }
policy "web" {
  allow "h3" {
    hosts = ["allowed.egress.test"]
    cidrs = ["127.0.0.0/8"]
    ports = ["1-65535"]
  }
}
`

// TestEvasionQUIC runs SNI content cases through the QUIC gateway: an
// upper-case SNI from quic-go is allowed and relayed; hand-sealed Initials
// with an IP address, an over-long name or a NUL byte as SNI are refused
// and nothing reaches their destination.
func TestEvasionQUIC(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.dnsAddr = evDNS(t)
	up, accepted := quicUpstream(t, e)
	sink, sunk := udpSink(t)
	q := e.startQUIC(t, evQUICConfig, up.Port())

	t.Run("upper case sni", func(t *testing.T) {
		c, err := q.dial(t, up, &tls.Config{ServerName: "ALLOWED.EGRESS.TEST", RootCAs: e.ca.pool, NextProtos: []string{quicALPN}})
		if err != nil {
			t.Fatal(err)
		}
		if err := quicEcho(c, []byte("through the gateway")); err != nil {
			t.Fatal(err)
		}
		d := e.waitLog(t, "decision", map[string]any{"mode": "quic", "sni": "ALLOWED.EGRESS.TEST"})
		if d["decision"] != "allow" || d["dst"] != up.String() {
			t.Errorf("decision %v, want allowed to %s", d, up)
		}
		if accepted.Load() != 1 {
			t.Errorf("upstream accepted %d", accepted.Load())
		}
	})
	longName := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 63) + ".egress.test"
	for _, tc := range []struct{ name, sni string }{
		{"ip address as sni", "127.0.0.1"},
		{"over-long name", longName},
		{"nul byte", "allowed.egress.test\x00.evil"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := q.socket(t, sink)
			pkt := evInitial(t, evHandshake(append([]evExt{sniExt(0, tc.sni), {0x0039, []byte{}}}, commonExts()...)...))
			if _, err := s.WriteTo(pkt, q.addr); err != nil {
				t.Fatal(err)
			}
			d := e.waitLog(t, "decision", map[string]any{"mode": "quic", "client": s.LocalAddr().String()})
			if d["decision"] != "deny" || d["dst"] != nil {
				t.Errorf("decision %v, want a deny without dst", d)
			}
			// The rule is a candidate through its cidrs; its hosts do not
			// match an SNI that is no valid host name.
			if d["reason"] != "sni_mismatch" || d["rule"] != "h3" || d["sni"] != tc.sni {
				t.Errorf("decision %v, want sni_mismatch by rule h3 for sni %q", d, tc.sni)
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	if n := sunk.Load(); n != 0 {
		t.Errorf("the refused destination got %d datagrams", n)
	}
}

// TestEvasionConnectIPv6: IPv6 literals are decided as addresses: [::1]
// is allowed by a rule's cidrs and dialed exactly; its IPv4-mapped and
// zoned spellings are not reinterpreted into something the rule allows.
func TestEvasionConnectIPv6(t *testing.T) {
	t.Parallel()
	ln6, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		needIPv6(t, err)
	}
	t.Cleanup(func() { ln6.Close() })
	e := newEnv(t)
	ev := &evEnv{env: e, upPort: port(ln6), up: serveEcho(ln6), evil: new(atomic.Int32), seen: map[any]bool{}}
	e.echoPort = ev.upPort
	e.start(t, `
server { hello_timeout = "1s" }
resolver { servers = ["DNS_ADDR"] }
policy "v6" {
  allow "loopback6" {
    cidrs = ["::1/128"]
    ports = [ECHO_PORT]
  }
}`)
	p := strconv.Itoa(ev.upPort)
	hello := clientHelloBytes("allowed.egress.test")
	for _, tc := range []struct {
		target string
		status int
		reason string
	}{
		{"[::1]:" + p, 200, "allowed"},
		{"[0:0:0:0:0:0:0:1]:" + p, 200, "allowed"}, // the same address, spelled out
		{"[::ffff:127.0.0.1]:" + p, 403, "no_rule"},
		{"[::1%25lo]:" + p, 400, "bad_request"},
		{"::1:" + p, 400, ""}, // refused by net/http's parser: a mode proxy line
	} {
		before := ev.up.Load()
		c, br, resp := ev.connect(t, tc.target)
		if resp.StatusCode != tc.status {
			t.Errorf("CONNECT %s: %s, want %d", tc.target, resp.Status, tc.status)
			continue
		}
		var got []byte
		if tc.status == 200 {
			go func() {
				c.Write(hello)
				c.(*net.TCPConn).CloseWrite()
			}()
			got = readAllQuiet(br)
		}
		if tc.reason == "" {
			if lines := ev.decisionsOf(t, c); len(lines) != 1 || lines[0]["mode"] != ModeProxy || lines[0]["reason"] != "bad_request" {
				t.Errorf("CONNECT %s: refused by net/http: decision lines %v, want one of mode proxy, reason bad_request", tc.target, lines)
			}
			continue
		}
		d := ev.decisionOf(t, c)
		if d["reason"] != tc.reason {
			t.Errorf("CONNECT %s: decision %v, want %s", tc.target, d, tc.reason)
		}
		if tc.reason == "allowed" {
			if d["dst"] != "[::1]:"+p || !bytes.Equal(got, hello) || ev.up.Load()-before != 1 {
				t.Errorf("CONNECT %s: dst %v, %d bytes back, %d accepts", tc.target, d["dst"], len(got), ev.up.Load()-before)
			}
		} else if d["dst"] != nil || ev.up.Load() != before {
			t.Errorf("CONNECT %s: refused but dialed: %v", tc.target, d)
		}
	}
	if n := ev.up.Load(); n != 2 {
		t.Errorf("upstream accepted %d connections, want the 2 allowed", n)
	}
}
