package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// frontConfig opens loopback (IPv4 and IPv6) by cidr, so that no dial
// needs the DNS, and a name whose addresses the resolver must be asked for.
const frontConfig = `
server {
  allow_private_destinations = true
  hello_timeout = "300ms"
  dial_timeout = "500ms"
}
resolver { servers = ["DNS_ADDR"] }
policy "gw" {
  allow "named" {
    hosts = ["allowed.egress.test"]
    ports = [ECHO_PORT]
  }
  allow "loopback" {
    cidrs = ["127.0.0.0/8", "::1/128"]
    sni   = ["x.egress.test"]
    ports = ["1-65535"]
  }
  allow "plain" {
    cidrs       = ["127.0.0.0/8"]
    ports       = ["1-65535"]
    require_tls = false
  }
}
`

// TestFrontPaths runs what the front loop does with its own code (accept,
// the hello's reads and deadline, the decision, connect, the hello's
// write, the hand-off to the relay or to a goroutine) on the front loop
// and on the goroutine path, which must behave the same; "front" also
// checks that the loop served the connections.
func TestFrontPaths(t *testing.T) {
	for _, path := range []string{"front", "goroutines"} {
		t.Run(path, func(t *testing.T) {
			e := newEnv(t)
			e.noFront = path == "goroutines"
			before := frontAccepted.Load()
			g := e.startTransparent(t, frontConfig)
			cases := frontCases(t, e)
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) { tc.run(t, e, g) })
			}
			served := frontAccepted.Load() - before
			if e.noFront && served != 0 {
				t.Errorf("the front loop served %d connections with noFront", served)
			}
			if !e.noFront && served < int64(len(cases)) {
				t.Errorf("the front loop served %d connections, want at least %d", served, len(cases))
			}
		})
	}
}

type frontCase struct {
	name string
	run  func(t *testing.T, e *env, g *gateway)
}

func frontCases(t *testing.T, e *env) []frontCase {
	echo4 := "127.0.0.1:" + strconv.Itoa(e.echoPort)
	payload := append(clientHelloBytes("x.egress.test"), bytes.Repeat([]byte("relayed "), 1<<14)...)
	relays := func(t *testing.T, g *gateway, dst string) {
		t.Helper()
		c := g.dial(t, dst)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("log:\n%s", e.log.buf.String())
			}
		})
		if got := exchange(t, c, payload); !bytes.Equal(got, payload) {
			t.Fatalf("relayed %d bytes, want the %d sent", len(got), len(payload))
		}
		d := e.waitLog(t, "decision", map[string]any{"mode": "transparent", "dst": dst})
		if d["decision"] != "allow" || d["sni"] != "x.egress.test" || d["ja4"] == nil {
			t.Errorf("decision %v", d)
		}
		cl := e.waitLog(t, "close", map[string]any{"conn": d["conn"]})
		if cl["bytes_up"] != float64(len(payload)) || cl["bytes_down"] != float64(len(payload)) {
			t.Errorf("close %v: want %d bytes each way", cl, len(payload))
		}
	}
	refused := func(t *testing.T, g *gateway, dst, reason, detail string, first []byte, minWait time.Duration) {
		t.Helper()
		start := time.Now()
		c := g.dial(t, dst)
		if first != nil {
			c.Write(first)
		}
		if got, _ := io.ReadAll(c); len(got) != 0 {
			t.Errorf("got %q back", got)
		}
		el := time.Since(start)
		ap := netip.MustParseAddrPort(dst)
		d := e.waitLog(t, "decision", map[string]any{"client": c.LocalAddr(), "host": ap.Addr(), "port": ap.Port(), "reason": reason})
		if d["decision"] != "deny" || !strings.Contains(fmt.Sprint(d["detail"]), detail) {
			t.Errorf("decision %v: want a deny naming %q", d, detail)
		}
		if el < minWait || el > minWait+3*time.Second {
			t.Errorf("closed after %v, want %v or a little more", el, minWait)
		}
	}
	return []frontCase{
		{"relay IPv4", func(t *testing.T, e *env, g *gateway) { relays(t, g, echo4) }},
		{"relay IPv6", func(t *testing.T, e *env, g *gateway) {
			ln, err := net.Listen("tcp6", "[::1]:0")
			if err != nil {
				needIPv6(t, err)
			}
			t.Cleanup(func() { ln.Close() })
			serveEcho(ln)
			relays(t, g, ln.Addr().String())
		}},
		{"verified by DNS on a goroutine", func(t *testing.T, e *env, g *gateway) {
			// The name is not in the resolver's cache: the front loop hands
			// the connection off to verify it.
			handOffs := frontHandOffs.Load()
			c := g.dial(t, echo4)
			hello := clientHelloBytes("allowed.egress.test")
			if got := exchange(t, c, hello); !bytes.Equal(got, hello) {
				t.Fatalf("relayed %d bytes, want %d", len(got), len(hello))
			}
			d := e.waitLog(t, "decision", map[string]any{"sni": "allowed.egress.test"})
			if d["decision"] != "allow" || d["rule"] != "named" || d["dst"] != echo4 {
				t.Errorf("decision %v", d)
			}
			if n := frontHandOffs.Load() - handOffs; n != 1 && !e.noFront {
				t.Errorf("the front loop handed %d connections to a goroutine, want 1", n)
			}
		}},
		{"hello timeout", func(t *testing.T, e *env, g *gateway) {
			refused(t, g, echo4, "hello_timeout", "", clientHelloBytes("x.egress.test")[:40], 300*time.Millisecond)
		}},
		{"connection refused", func(t *testing.T, e *env, g *gateway) {
			ln := listen(t)
			dst := ln.Addr().String()
			ln.Close()
			refused(t, g, dst, "dial_error", "connection refused", clientHelloBytes("x.egress.test"), 0)
		}},
		{"dial timeout", func(t *testing.T, e *env, g *gateway) {
			hole := fullBacklog(t)
			refused(t, g, hole.String(), "dial_error", "timeout", clientHelloBytes("x.egress.test"), 500*time.Millisecond)
		}},
		{"not TLS", func(t *testing.T, e *env, g *gateway) {
			c := g.dial(t, echo4)
			if got := exchange(t, c, []byte("SSH-2.0-test\r\n")); string(got) != "SSH-2.0-test\r\n" {
				t.Fatalf("got %q", got)
			}
			d := e.waitLog(t, "decision", map[string]any{"mode": "transparent", "rule": "plain", "sni": nil})
			if d["decision"] != "allow" {
				t.Errorf("decision %v", d)
			}
		}},
	}
}

// TestFrontShutdown: Shutdown waits for a connection in the front loop's
// hello phase, and when its grace runs out the loop closes it with a
// decision line and ServeTransparent returns.
func TestFrontShutdown(t *testing.T) {
	e := newEnv(t)
	e.start(t, strings.Replace(frontConfig, `"300ms"`, `"10s"`, 1))
	g := e.serveGateway(t)
	c := g.dial(t, "127.0.0.1:"+strconv.Itoa(e.echoPort))
	c.Write([]byte{0x16, 0x03, 0x01}) // a hello that never completes
	for deadline := time.Now().Add(5 * time.Second); e.srv.limits.open() != 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections open, want the 1 in its hello", e.srv.limits.open())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	e.srv.Shutdown(ctx)
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Errorf("Shutdown returned after %v, before its grace: it did not wait for the connection", el)
	}
	g.waitServed(t)
	d := e.waitLog(t, "decision", map[string]any{"mode": "transparent", "reason": "client_closed"})
	if !strings.Contains(fmt.Sprint(d["detail"]), "shutdown") {
		t.Errorf("decision %v: want the shutdown named", d)
	}
	if n := e.srv.limits.open(); n != 0 {
		t.Errorf("%d slots still held", n)
	}
}

// TestTransparentGoroutinePath runs the transparent tests on the goroutine
// path: the one non-Linux systems and embedders with their own DialContext
// use, and the one the front loop hands connections to.
func TestTransparentGoroutinePath(t *testing.T) {
	goroutinePath = true
	defer func() { goroutinePath = false }()
	before := frontAccepted.Load()
	for _, tc := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"AllowedSNIByteExact", TestTransparentAllowedSNIByteExact},
		{"RealTLS", TestTransparentRealTLS},
		{"Denied", TestTransparentDenied},
		{"SNISpoofing", TestTransparentSNISpoofing},
		{"RotatingDNS", TestTransparentRotatingDNS},
		{"CloudflareTunnel", TestTransparentCloudflareTunnel},
		{"NotTLS", TestTransparentNotTLS},
		{"PrivateDestination", TestTransparentPrivateDestination},
		{"OriginalDstError", TestTransparentOriginalDstError},
		{"Shutdown", TestTransparentShutdown},
		{"VerifiedByRuleHosts", TestTransparentVerifiedByRuleHosts},
		{"SelfDestination", TestTransparentSelfDestination},
		{"Limit", TestTransparentLimit},
	} {
		t.Run(tc.name, tc.f)
	}
	if n := frontAccepted.Load() - before; n != 0 {
		t.Errorf("the front loop served %d connections on the goroutine path", n)
	}
}

// BenchmarkTransparentTunnel runs one whole transparent connection on
// loopback without TLS crypto, on the front loop and on the goroutine
// path: accept, original destination, hello, decision, dial, the hello
// upstream, its echo and a half-close (client and echo upstream included).
func BenchmarkTransparentTunnel(b *testing.B) {
	for _, path := range []string{"front", "goroutines"} {
		b.Run(path, func(b *testing.B) {
			e := newEnv(b)
			e.noFront = path == "goroutines"
			e.startLogger(b, frontConfig, zerolog.New(io.Discard).With().Timestamp().Logger())
			g := e.serveGateway(b)
			dst := netip.MustParseAddrPort("127.0.0.1:" + strconv.Itoa(e.echoPort))
			hello := clientHelloBytes("x.egress.test")
			buf := make([]byte, len(hello))
			once := func() error {
				c, err := g.connect(dst)
				if err != nil {
					return err
				}
				// A reset, not a FIN, at the end: the client's ports, which
				// connect binds before it connects, are not left in
				// TIME_WAIT for the next sub-benchmark to run out of.
				c.SetLinger(0)
				defer c.Close()
				defer g.dsts.Delete(c.LocalAddr().String())
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write(hello); err != nil {
					return err
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					return fmt.Errorf("reading the echoed hello: %v", err)
				}
				if err := c.CloseWrite(); err != nil {
					return err
				}
				if m, err := c.Read(buf); err != io.EOF {
					return fmt.Errorf("after the half-close: %d bytes, %v; want the end", m, err)
				}
				return nil
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := once(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// stalledHelloSetup starts a front loop whose upstream sockets have a
// 4 KiB send buffer, an upstream listener with a 2 KiB receive buffer,
// and a ClientHello of over 10 KiB: more than the two buffers take until
// the upstream reads.
func stalledHelloSetup(t *testing.T) (*env, *gateway, net.Listener, []byte) {
	t.Helper()
	e := newEnv(t)
	e.start(t, frontConfig)
	e.srv.frontSndBuf = 4096
	g := e.serveGateway(t)
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return setsockopts(rc, sockopt{syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048, "SO_RCVBUF"})
	}}
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var protos []string
	for i := range 44 {
		protos = append(protos, fmt.Sprintf("%03d-%s", i, strings.Repeat("p", 240)))
	}
	hello := capturedHello(&tls.Config{ServerName: "x.egress.test", NextProtos: protos})
	if len(hello) < 10<<10 {
		t.Fatalf("hello of %d bytes, want a large one", len(hello))
	}
	return e, g, ln, hello
}

// TestFrontHelloShortWrite: a hello the upstream socket cannot take at once
// (a small send buffer, an upstream that does not read for a while) is
// written in parts as room comes, and arrives whole.
func TestFrontHelloShortWrite(t *testing.T) {
	_, g, ln, hello := stalledHelloSetup(t)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		time.Sleep(300 * time.Millisecond) // let egressd's write fill both buffers
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	}()
	short := frontShortWrites.Load()
	c := g.dial(t, ln.Addr().String())
	if got := exchange(t, c, hello); !bytes.Equal(got, hello) {
		t.Fatalf("relayed %d bytes, want the %d-byte hello", len(got), len(hello))
	}
	if frontShortWrites.Load() == short {
		t.Error("the hello's write never waited for room: the test did not exercise the short write")
	}
}

// TestFrontHelloStalledCloseBytes: a hello whose write upstream stalls
// until dial_timeout (an upstream that does not read) ends the tunnel,
// and the close line counts the part that was written.
func TestFrontHelloStalledCloseBytes(t *testing.T) {
	e, g, ln, hello := stalledHelloSetup(t)
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	c := g.dial(t, ln.Addr().String())
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	up := <-accepted
	defer up.Close()
	line := e.waitLog(t, "close", nil) // after dial_timeout
	up.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, _ := io.Copy(io.Discard, up)
	if n == 0 || n >= int64(len(hello)) {
		t.Fatalf("the upstream got %d of the %d-byte hello: the test did not stall the write", n, len(hello))
	}
	if got := line["bytes_up"]; got != float64(n) {
		t.Errorf("close line bytes_up %v, the upstream got %d", got, n)
	}
}

// TestFrontShutdownUnderLoad: Shutdown, which closes the listener while
// holding the server's lock, returns while connections keep arriving (the
// loop must not hold the listener's descriptor while it handles them, which
// takes that lock), and every accepted connection gets its decision line
// (and every allowed one its close line).
func TestFrontShutdownUnderLoad(t *testing.T) {
	e := newEnv(t)
	e.start(t, frontConfig)
	g := e.serveGateway(t)
	dst := netip.MustParseAddrPort("127.0.0.1:" + strconv.Itoa(e.echoPort))
	hello := clientHelloBytes("x.egress.test")
	before := frontAccepted.Load()
	var echoed atomic.Int64 // connections whose hello came back through the echo
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 5000 { // bounded; stop ends it well before
				select {
				case <-stop:
					return
				default:
				}
				c, err := g.connect(dst)
				if err != nil {
					continue // refused once the listener is closed
				}
				c.SetLinger(0)
				c.SetDeadline(time.Now().Add(2 * time.Second))
				if _, err := c.Write(hello); err == nil {
					if _, err := io.ReadFull(c, make([]byte, 1)); err == nil {
						echoed.Add(1)
					}
				}
				c.Close()
			}
		})
	}
	stopLoad := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	defer stopLoad()
	time.Sleep(300 * time.Millisecond)
	done := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return within 5 s of a 1 s grace while connections arrived")
	}
	g.waitServed(t)
	stopLoad()
	if echoed.Load() == 0 {
		t.Fatal("no connection was served before Shutdown: the load never reached the echo")
	}
	// The listener is closed: no connection is accepted any more. Each one
	// accepted must have exactly one decision line, each allowed one
	// exactly one close line (relays may end just after Shutdown: wait).
	accepted := int(frontAccepted.Load() - before)
	var decisions, conns, allowed, unclosed int
	eventually(func() bool {
		lines := e.log.lines(t)
		closes, seen := map[any]int{}, map[any]bool{}
		for _, l := range lines {
			if l["message"] == "close" {
				closes[l["conn"]]++
			}
		}
		decisions, conns, allowed, unclosed = 0, 0, 0, 0
		for _, l := range lines {
			if l["message"] != "decision" {
				continue
			}
			decisions++
			if !seen[l["conn"]] {
				seen[l["conn"]] = true
				conns++
			}
			if l["decision"] == "allow" {
				allowed++
				if closes[l["conn"]] != 1 {
					unclosed++
				}
			}
		}
		return decisions >= accepted && unclosed == 0
	})
	if decisions != accepted || conns != accepted {
		t.Errorf("%d decision lines for %d connections; the front loop accepted %d connections (%d echoed)", decisions, conns, accepted, echoed.Load())
	}
	if unclosed > 0 {
		t.Errorf("%d of %d allowed connections have no single close line", unclosed, allowed)
	}
}

// TestFrontListenerCloseWhileLocked: Shutdown closes the listeners holding
// the server's lock, and a listener's Close waits for every use of its
// descriptor to end; handling an accepted connection takes that lock, so
// the loop must not handle connections while it uses the descriptor.
// Here the test holds the lock while a connection arrives and the listener
// is closed.
func TestFrontListenerCloseWhileLocked(t *testing.T) {
	e := newEnv(t)
	e.start(t, frontConfig)
	g := e.serveGateway(t)
	var fl net.Listener
	for deadline := time.Now().Add(5 * time.Second); fl == nil; time.Sleep(5 * time.Millisecond) {
		e.srv.mu.Lock()
		for _, ln := range e.srv.listeners {
			if ln.Addr().String() == g.addr {
				fl = ln
			}
		}
		e.srv.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("the gateway's listener was never registered")
		}
	}
	if _, ok := fl.(frontListener); !ok {
		t.Fatalf("the gateway's listener is a %T, not the front loop's", fl)
	}
	e.srv.mu.Lock()
	locked := true
	defer func() {
		if locked {
			e.srv.mu.Unlock()
		}
	}()
	c, err := g.connect(netip.MustParseAddrPort("127.0.0.1:" + strconv.Itoa(e.echoPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(100 * time.Millisecond) // the loop accepts it and waits for the lock
	closed := make(chan error, 1)
	go func() { closed <- fl.Close() }()
	select {
	case <-closed:
		e.srv.mu.Unlock()
		locked = false
	case <-time.After(2 * time.Second):
		t.Error("closing the listener waited for the loop, which waited for the server's lock: Shutdown would hang")
		e.srv.mu.Unlock()
		locked = false
		<-closed
	}
}

// TestFrontRelayFallback: when the epoll relay cannot take a connection's
// descriptors (its epoll set is full), the loop relays them with
// goroutines instead, and the tunnel works and closes as any other.
func TestFrontRelayFallback(t *testing.T) {
	e := newEnv(t)
	g := e.startTransparent(t, frontConfig)
	orig := epollAdd
	t.Cleanup(func() { epollAdd = orig })
	epollAdd = func(int, int, *syscall.EpollEvent) error { return syscall.ENOSPC }
	accepted, relayed := frontAccepted.Load(), relayTunnels.Load()
	dst := "127.0.0.1:" + strconv.Itoa(e.echoPort)
	payload := append(clientHelloBytes("x.egress.test"), bytes.Repeat([]byte("fallback "), 1<<12)...)
	if got := exchange(t, g.dial(t, dst), payload); !bytes.Equal(got, payload) {
		t.Fatalf("relayed %d bytes, want the %d sent", len(got), len(payload))
	}
	d := e.waitLog(t, "decision", map[string]any{"mode": "transparent", "dst": dst})
	cl := e.waitLog(t, "close", map[string]any{"conn": d["conn"]})
	if cl["bytes_up"] != float64(len(payload)) || cl["bytes_down"] != float64(len(payload)) {
		t.Errorf("close %v: want %d bytes each way", cl, len(payload))
	}
	if frontAccepted.Load() == accepted || relayTunnels.Load() != relayed {
		t.Errorf("front loop accepted %d, epoll relay took %d: want the loop's connection relayed by goroutines",
			frontAccepted.Load()-accepted, relayTunnels.Load()-relayed)
	}
}

// TestFrontTProxyLocalDst: on a TPROXY listener the original destination
// is the connection's local address, on both paths. Without a TPROXY rule
// the only local addresses are this host's, so the connection is refused
// as addressed to egressd itself, with the address it was sent to.
func TestFrontTProxyLocalDst(t *testing.T) {
	needRoot(t, "IP_TRANSPARENT")
	for _, path := range []string{"front", "goroutines"} {
		t.Run(path, func(t *testing.T) {
			e := newEnv(t)
			e.noFront = path == "goroutines"
			e.start(t, frontConfig)
			ln, err := ListenTransparent("0.0.0.0:0", true)
			if err != nil {
				t.Fatal(err)
			}
			go e.srv.ServeTransparent(ln)
			before := frontAccepted.Load()
			to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.5"), uint16(port(ln)))
			c, err := net.DialTimeout("tcp", to.String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if got, _ := io.ReadAll(c); len(got) != 0 {
				t.Errorf("got %q back", got)
			}
			d := e.waitLog(t, "decision", map[string]any{"client": c.LocalAddr(), "host": to.Addr(), "port": to.Port()})
			if d["reason"] != "bad_request" || !strings.Contains(fmt.Sprint(d["detail"]), "own listener") {
				t.Errorf("decision %v: want a bad_request naming egressd's own listener", d)
			}
			if served := frontAccepted.Load() - before; (served > 0) != (path == "front") {
				t.Errorf("the front loop served %d connections (noFront %v)", served, e.noFront)
			}
		})
	}
}

// TestFrontMixedDeadlines: a hello deadline that falls before the dial
// deadline the loop's timer is set for must still fire on time. A is
// connecting (to a full backlog) until dial_timeout, 3 s; B, silent,
// arrives meanwhile and must be closed after hello_timeout, 300 ms, not
// when A's dial times out.
func TestFrontMixedDeadlines(t *testing.T) {
	for _, path := range []string{"front", "goroutines"} {
		t.Run(path, func(t *testing.T) {
			e := newEnv(t)
			e.noFront = path == "goroutines"
			g := e.startTransparent(t, strings.Replace(frontConfig, `dial_timeout = "500ms"`, `dial_timeout = "3s"`, 1))
			a := g.dial(t, fullBacklog(t).String())
			a.Write(clientHelloBytes("x.egress.test"))
			// A's hello deadline passes while it connects: the loop's
			// timer is then set for A's dial deadline.
			time.Sleep(500 * time.Millisecond)
			start := time.Now()
			b := g.dial(t, "127.0.0.1:"+strconv.Itoa(e.echoPort))
			io.ReadAll(b)
			if el := time.Since(start); el > 1500*time.Millisecond {
				t.Errorf("a silent client was closed after %v, want about hello_timeout (300ms)", el.Round(time.Millisecond))
			}
			e.waitLog(t, "decision", map[string]any{"mode": "transparent", "reason": "hello_timeout"})
		})
	}
}

// TestFrontAcceptBatches: the loop accepts one batch at a time and
// handles the events of the connections it holds in between, so that a
// flood of new connections cannot starve their hellos, connects and
// deadlines; and it serves every queued connection, although the
// edge-triggered listener gives no new edge for those left in its queue.
func TestFrontAcceptBatches(t *testing.T) {
	e := newEnv(t)
	e.start(t, frontConfig)
	// Connections queued before anything serves the listener.
	g, ln := e.newGateway(t)
	hello := clientHelloBytes("x.egress.test")
	const queued = 3*frontAcceptBatch + 5
	var cs []*net.TCPConn
	for range queued {
		c := g.dial(t, "127.0.0.1:"+strconv.Itoa(e.echoPort))
		c.Write(hello)
		cs = append(cs, c)
	}

	e.srv.mu.Lock()
	fl, run := e.srv.newFront(ln, false)
	if run != nil {
		e.srv.addListenerLocked(fl)
	}
	e.srv.mu.Unlock()
	if run == nil {
		t.Fatal("no front loop for the listener")
	}
	f := fl.(frontListener).f
	before := frontAccepted.Load()
	f.accept() // the loop is not running yet: the test may step it
	if got := frontAccepted.Load() - before; got != frontAcceptBatch || !f.more {
		t.Errorf("one accept took %d of %d queued connections (more: %v), want one batch of %d and more", got, queued, f.more, frontAcceptBatch)
	}
	go run()

	for i, c := range cs {
		got := make([]byte, len(hello))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, hello) {
			t.Fatalf("queued connection %d of %d: no echo of its hello: %v", i+1, queued, err)
		}
	}
	if got := frontAccepted.Load() - before; got != queued {
		t.Errorf("the loop accepted %d connections, want %d", got, queued)
	}
}
