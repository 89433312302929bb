package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	l := newLimiter(3, 2)
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::ffff:10.0.0.2")
	for i := range 2 {
		if d, ok := l.acquire(a); !ok {
			t.Fatalf("acquire %d for a: %s", i, d)
		}
	}
	if d, ok := l.acquire(a); ok || !strings.Contains(d, "max_connections_per_client: 2") {
		t.Fatalf("third for a: %v %q, want the per-client limit", ok, d)
	}
	if _, ok := l.acquire(b); !ok {
		t.Fatal("first for b refused")
	}
	if d, ok := l.acquire(netip.MustParseAddr("10.0.0.3")); ok || !strings.Contains(d, "max_connections: 3") {
		t.Fatalf("fourth in total: %v %q, want the total limit", ok, d)
	}
	l.release(a)
	l.release(a)
	l.release(netip.MustParseAddr("10.0.0.2")) // the mapped and unmapped forms are one client
	if n, m := l.open(), len(l.clients); n != 0 || m != 0 {
		t.Fatalf("after every release: %d open, %d map entries; want 0, 0", n, m)
	}
	sl := &slot{l: l, client: a}
	l.acquire(a)
	sl.free()
	sl.free()
	if l.open() != 0 {
		t.Fatal("a slot freed twice released twice")
	}
	(*slot)(nil).free() // a refused connection's nil slot
}

// limitConfig is baseConfig with a connection limit (LIMIT replaced).
func limitConfig(limit string) string {
	return strings.Replace(baseConfig, `hello_timeout = "2s"`, `hello_timeout = "5s"
  `+limit, 1)
}

// echoTunnel opens a CONNECT tunnel to the env's echo upstream from local
// address from (127.0.0.x) and checks that it carries data.
func (e *env) echoTunnel(t *testing.T, from string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, br, resp := e.connectFrom(t, from, "127.0.0.1:"+strconv.Itoa(e.echoPort))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT from %s: %s, want 200", from, resp.Status)
	}
	echoes(t, c, br, "hello")
	return c, br
}

func echoes(t *testing.T, c net.Conn, r io.Reader, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(r, got); err != nil || string(got) != msg {
		t.Fatalf("echo: %q %v, want %q", got, err, msg)
	}
}

// refused503 makes a CONNECT that the limit must refuse: 503 quickly (well
// under hello_timeout, nothing dialed) with the reason in the body and a
// deny line naming the limit.
func (e *env) refused503(t *testing.T, from, detail string) {
	t.Helper()
	start := time.Now()
	c, _, resp := e.connectFrom(t, from, "127.0.0.1:"+strconv.Itoa(e.echoPort))
	body, _ := io.ReadAll(resp.Body)
	c.Close()
	if el := time.Since(start); el > time.Second {
		t.Errorf("the refusal took %v", el)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "connection_limit") {
		t.Fatalf("CONNECT at the limit: %s %q, want 503 naming connection_limit", resp.Status, body)
	}
	// Refused on accept, before the request was read: mode proxy, no host.
	d := e.waitLog(t, "decision", map[string]any{"mode": "proxy", "decision": "deny", "reason": "connection_limit"})
	if !strings.Contains(fmt.Sprint(d["detail"]), detail) || d["dst"] != nil || d["host"] != nil {
		t.Errorf("decision %v: want detail %q, no host and nothing dialed", d, detail)
	}
}

// reaccept closes c and waits until a new tunnel from from is accepted.
func (e *env) reaccept(t *testing.T, c net.Conn, from string) {
	t.Helper()
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		nc, br, resp := e.connectFrom(t, from, "127.0.0.1:"+strconv.Itoa(e.echoPort))
		if resp.StatusCode == http.StatusOK {
			echoes(t, nc, br, "again")
			return
		}
		nc.Close()
		if time.Now().After(deadline) {
			t.Fatalf("after closing a tunnel, CONNECT still gets %s", resp.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestConnectLimitPerClient(t *testing.T) {
	e := newEnv(t)
	e.start(t, limitConfig("max_connections_per_client = 2"))
	c1, br1 := e.echoTunnel(t, "127.0.0.1")
	c2, br2 := e.echoTunnel(t, "127.0.0.1")
	e.refused503(t, "127.0.0.1", "max_connections_per_client: 2")
	// Another client is not affected.
	e.echoTunnel(t, "127.0.0.2")
	// The open tunnels still carry data.
	echoes(t, c1, br1, "still one")
	echoes(t, c2, br2, "still two")
	// A plain-HTTP request is counted too.
	resp, err := e.client().Get("http://plain.egress.test:" + strconv.Itoa(e.httpPort) + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "connection_limit") {
		t.Fatalf("plain HTTP at the limit: %s %q, want 503", resp.Status, body)
	}
	if n := e.countLines(t, "decision", map[string]any{"mode": "proxy", "reason": "connection_limit"}); n != 2 {
		t.Errorf("%d connection_limit lines, want 2 (the CONNECT and the plain request)", n)
	}
	e.reaccept(t, c1, "127.0.0.1")
	echoes(t, c2, br2, "still two")
}

// TestConnectLimitInAuditMode: audit mode lets policy denials through, not
// the connection limit: a destination the policy would deny (audited) is
// refused with 503 at the limit, logged as a real deny (no would_deny).
func TestConnectLimitInAuditMode(t *testing.T) {
	e := newEnv(t)
	e.start(t, limitConfig("max_connections_per_client = 1\n  mode = \"audit\""))
	e.echoTunnel(t, "127.0.0.1")
	c, _, resp := e.connectFrom(t, "127.0.0.1", "127.0.0.2:"+strconv.Itoa(e.echoPort)) // no rule: audited
	c.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("audited CONNECT at the limit: %s, want 503", resp.Status)
	}
	d := e.waitLog(t, "decision", map[string]any{"mode": "proxy", "reason": "connection_limit"})
	if d["decision"] != "deny" || d["would_deny"] != nil {
		t.Errorf("the refusal at the limit is logged as an audit allow: %v", d)
	}
}

func TestConnectLimitTotal(t *testing.T) {
	e := newEnv(t)
	e.start(t, limitConfig("max_connections = 3"))
	c1, _ := e.echoTunnel(t, "127.0.0.1")
	e.echoTunnel(t, "127.0.0.1")
	e.echoTunnel(t, "127.0.0.2")
	e.refused503(t, "127.0.0.3", "max_connections: 3")
	e.reaccept(t, c1, "127.0.0.3")
	if n := e.srv.limits.open(); n != 3 {
		t.Errorf("%d connections counted, want 3", n)
	}
}

// TestPlainHTTPReleasesSlot: plain-HTTP requests run on their client
// connection's slot: keep-alive requests on one connection take that one
// slot, and closing the connection frees it.
func TestPlainHTTPReleasesSlot(t *testing.T) {
	e := newEnv(t)
	e.start(t, limitConfig("max_connections = 1"))
	tr := &http.Transport{Proxy: http.ProxyURL(mustURL("http://" + e.proxyAddr)), MaxConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	client := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	for i := range 3 {
		resp, err := client.Get("http://plain.egress.test:" + strconv.Itoa(e.httpPort) + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %s", i, resp.Status)
		}
		if n := e.srv.limits.open(); n != 1 {
			t.Fatalf("request %d: %d slots taken, want 1 (its keep-alive connection's)", i, n)
		}
	}
	tr.CloseIdleConnections()
	waitFor(t, "the closed connection's slot released", func() bool { return e.srv.limits.open() == 0 })
}

// holdRefused opens a proxy connection from local address from, has a
// plain request refused on it (403) and returns it open (keep-alive).
func (e *env) holdRefused(t *testing.T, from string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", e.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("a refused request from %s: %v", from, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || resp.Close {
		t.Fatalf("a refused request from %s: %s (close %v), want 403 keeping the connection", from, resp.Status, resp.Close)
	}
	c.SetDeadline(time.Time{})
	return c
}

// TestLimitRefusalAnswersTheRequest: a connection refused on accept is
// answered after its request has come, not before it is sent, which an
// HTTP client takes for an unsolicited response (Go's net/http fails the
// request with an error of its own).
func TestLimitRefusalAnswersTheRequest(t *testing.T) {
	e := newEnv(t)
	e.start(t, limitConfig("max_connections_per_client = 1"))
	e.echoTunnel(t, "127.0.0.1")
	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	e.waitLog(t, "decision", map[string]any{"mode": "proxy", "reason": "connection_limit"})
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(make([]byte, 1)); n > 0 || !os.IsTimeout(err) {
		t.Fatalf("before the request was sent: read %d bytes (%v), want nothing", n, err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	authority := "127.0.0.1:" + strconv.Itoa(e.echoPort)
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", authority, authority)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "max_connections_per_client") {
		t.Errorf("%s %q, want 503 naming the limit", resp.Status, body)
	}
}

// TestLimitRefusalWithBody: a request over the limit that sends more
// than its head (a body, a head larger than what is read) still gets the
// 503, not a reset from the bytes left unread.
func TestLimitRefusalWithBody(t *testing.T) {
	e := newEnv(t)
	e.start(t, limitConfig("max_connections_per_client = 1"))
	e.echoTunnel(t, "127.0.0.1")
	tr := &http.Transport{Proxy: http.ProxyURL(mustURL("http://" + e.proxyAddr)), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	url := "http://plain.egress.test:" + strconv.Itoa(e.httpPort) + "/"
	for _, tc := range []struct {
		name string
		req  func() *http.Request
	}{
		{"POST 1 MiB", func() *http.Request {
			r, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(make([]byte, 1<<20)))
			return r
		}},
		{"GET with an 8 KiB cookie", func() *http.Request {
			r, _ := http.NewRequest(http.MethodGet, url, nil)
			r.Header.Set("Cookie", "a="+strings.Repeat("x", 8<<10))
			return r
		}},
	} {
		for i := range 3 {
			resp, err := client.Do(tc.req())
			if err != nil {
				t.Fatalf("%s, try %d: %v, want the 503", tc.name, i, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("%s, try %d: %s, want 503", tc.name, i, resp.Status)
			}
		}
	}
}

// TestHalfCloseAfterUnreadBody: after answering a request whose body it
// did not read, net/http half-closes the connection (the client reads the
// end at once) when the connection can: the slot wrapper must keep
// CloseWrite, or the client gets a reset half a second later.
func TestHalfCloseAfterUnreadBody(t *testing.T) {
	e := newEnv(t)
	e.start(t, baseConfig)
	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// Denied (no rule for port 1), declaring a 10 MB body: answered 403
	// without reading it.
	io.WriteString(c, "POST http://denied.egress.test:1/ HTTP/1.1\r\nHost: denied.egress.test:1\r\nContent-Length: 10000000\r\n\r\n")
	c.Write(make([]byte, 64<<10))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	start := time.Now()
	if _, err := br.ReadByte(); err != io.EOF || time.Since(start) > 200*time.Millisecond {
		t.Errorf("after the %s: %v after %v, want the end of the stream at once", resp.Status, err, time.Since(start))
	}
}

// TestIdleProxyConnectionsCounted: a connection to the proxy port holds a
// slot from accept to close, so a client cannot keep connections open
// between requests (idle after a refusal) beyond its share: the next one
// is refused on accept, and other clients still get tunnels.
func TestIdleProxyConnectionsCounted(t *testing.T) {
	e := newEnv(t)
	e.start(t, limitConfig("max_connections = 6\n  max_connections_per_client = 3"))
	var idle []net.Conn
	for range 3 {
		idle = append(idle, e.holdRefused(t, "127.0.0.2"))
	}
	e.refused503(t, "127.0.0.2", "max_connections_per_client: 3")
	c, br := e.echoTunnel(t, "127.0.0.3") // another client is not affected
	if n := e.srv.limits.open(); n != 4 {
		t.Errorf("%d slots taken, want 4 (3 idle connections, 1 tunnel)", n)
	}
	// Closing an idle connection gives its slot back.
	idle[0].Close()
	waitFor(t, "the idle connection's slot released", func() bool { return e.srv.limits.open() == 3 })
	e.holdRefused(t, "127.0.0.2")
	echoes(t, c, br, "still")
}

func TestTransparentLimit(t *testing.T) {
	e := newEnv(t)
	g := e.startTransparent(t, strings.Replace(transparentConfig, `hello_timeout = "2s"`, `hello_timeout = "5s"
  max_connections_per_client = 2`, 1))
	dst := "127.0.0.1:" + strconv.Itoa(e.echoPort)
	hello := clientHelloBytes("allowed.egress.test")
	open := func() *net.TCPConn {
		c := g.dial(t, dst)
		echoes(t, c, c, string(hello))
		return c
	}
	c1, c2 := open(), open()

	start := time.Now()
	c3 := g.dial(t, dst)
	if b, _ := io.ReadAll(c3); len(b) != 0 {
		t.Fatalf("got %q from a connection over the limit", b)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("the connection over the limit was closed after %v, want at once", el)
	}
	d := e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "deny", "reason": "connection_limit",
		"host": "127.0.0.1", "port": e.echoPort})
	if !strings.Contains(fmt.Sprint(d["detail"]), "max_connections_per_client: 2") || d["dst"] != nil || d["sni"] != nil {
		t.Errorf("decision %v: want the per-client detail, no hello read, nothing dialed", d)
	}
	echoes(t, c1, c1, "one")
	echoes(t, c2, c2, "two")

	c1.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := g.dial(t, dst)
		c.Write(hello)
		got := make([]byte, len(hello))
		if _, err := io.ReadFull(c, got); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("after closing a connection, new ones are still refused")
		}
		time.Sleep(20 * time.Millisecond)
	}
	echoes(t, c2, c2, "two again")
}

func TestQUICLimit(t *testing.T) {
	e := newEnv(t)
	up, _ := quicUpstream(t, e)
	q := e.startQUIC(t, strings.Replace(quicTestPolicy, `idle_timeout  = "1s"`, `idle_timeout  = "1s"
  max_connections_per_client = 2`, 1), up.Port())
	tlsConf := &tls.Config{ServerName: "quic.cftunnel.com", RootCAs: e.ca.pool, NextProtos: []string{quicALPN}}
	c1, err := q.dial(t, up, tlsConf)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := q.dial(t, up, tlsConf)
	if err != nil {
		t.Fatal(err)
	}
	// A third flow from the same client address: refused on its first
	// datagram, logged once, held.
	s3 := q.socket(t, up)
	initial := firstInitial(t, tlsConf)
	for range 3 {
		s3.WriteToUDP(initial, q.addr)
	}
	d := e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "deny", "reason": "connection_limit"})
	if !strings.Contains(fmt.Sprint(d["detail"]), "max_connections_per_client: 2") || d["dst"] != nil {
		t.Errorf("decision %v", d)
	}
	time.Sleep(100 * time.Millisecond)
	n := e.countLines(t, "decision", map[string]any{"conn": d["conn"]})
	if n != 1 {
		t.Errorf("%d decision lines for the refused flow, want 1", n)
	}
	if err := quicEcho(c1, []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := quicEcho(c2, []byte("two")); err != nil {
		t.Fatal(err)
	}
	// After a flow idles out, a new one is accepted.
	c1.CloseWithError(0, "")
	e.waitLog(t, "close", map[string]any{"mode": "quic"})
	c4, err := q.dial(t, up, tlsConf)
	if err != nil {
		t.Fatalf("after a flow ended: %v", err)
	}
	if err := quicEcho(c4, []byte("four")); err != nil {
		t.Fatal(err)
	}
}

// TestAnswerDeadlineNotInherited: the write deadline an answer of
// egressd's own gets (statusWriteTimeout) ends with its request (net/http
// clears it): a relayed response that comes later than that on the same
// keep-alive connection still reaches the client.
func TestAnswerDeadlineNotInherited(t *testing.T) {
	e := newEnv(t)
	late := serveConns(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(statusWriteTimeout + 5*time.Second))
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		time.Sleep(statusWriteTimeout + 500*time.Millisecond)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlate")
	})
	e.httpPort = late
	e.start(t, baseConfig)
	c := e.holdRefused(t, "127.0.0.1") // a 403 of egressd's own, connection kept
	c.SetDeadline(time.Now().Add(statusWriteTimeout + 5*time.Second))
	fmt.Fprintf(c, "GET http://plain.egress.test:%d/ HTTP/1.1\r\nHost: plain.egress.test\r\n\r\n", late)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the late response on the connection of an earlier refusal: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "late" {
		t.Errorf("%s %q, want 200 late", resp.Status, body)
	}
}
