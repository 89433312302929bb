package proxy

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Plain-HTTP forwarding against upstreams that answer byte for byte what
// a test says (rawUpstream), through clients that send exactly the bytes
// a test gives.

// plainConfig allows plain http:// requests to plain.egress.test on port
// p, with a 1 s idle timeout.
func plainConfig(p int) string { return plainConfigIdle(p, "1s") }

func plainConfigIdle(p int, idle string) string {
	return fmt.Sprintf(`
server {
  hello_timeout = "2s"
  idle_timeout  = %q
}
resolver { servers = ["DNS_ADDR"] }
policy "test" {
  allow "plain" {
    hosts = ["plain.egress.test"]
    cidrs = ["127.0.0.0/8"] # grants the loopback upstream
    ports = [%d]
  }
}
`, idle, p)
}

// rawUpstream accepts connections on loopback and runs h on each; it
// returns the port.
func rawUpstream(t *testing.T, h func(c net.Conn, br *bufio.Reader)) int {
	t.Helper()
	return serveConns(t, func(c net.Conn) { h(c, bufio.NewReader(c)) })
}

// recv receives from ch, failing the test after 10 s.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// readHead reads a request or response head, up to the empty line.
func readHead(br *bufio.Reader) string {
	var sb strings.Builder
	for {
		l, err := br.ReadString('\n')
		sb.WriteString(l)
		if err != nil || l == "\r\n" {
			return sb.String()
		}
	}
}

// plainRequest sends head (with "UP" replaced by the upstream's
// host:port) to the proxy and returns the connection and a reader on it.
func (e *env) plainRequest(t *testing.T, up int, head string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", e.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, strings.ReplaceAll(head, "UP", fmt.Sprintf("plain.egress.test:%d", up))); err != nil {
		t.Fatal(err)
	}
	return c, bufio.NewReader(c)
}

// response reads a response and its whole body from br.
func response(t *testing.T, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return resp, string(body)
}

// TestHTTPHopByHopHeaders: hop-by-hop fields, and the fields Connection
// names, go neither upstream nor back to the client; the rest do.
func TestHTTPHopByHopHeaders(t *testing.T) {
	heads := make(chan string, 1)
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		heads <- readHead(br)
		// Not "Connection: close, X-Up-Hop": net/http's transport drops
		// a Connection field holding close before egressd sees it, and
		// with it the names (httputil.ReverseProxy has the same limit).
		io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: X-Up-Hop\r\nX-Up-Hop: secret\r\nKeep-Alive: timeout=5\r\nX-Up-End: kept\r\nContent-Length: 2\r\n\r\nok")
	})
	e := newEnv(t)
	e.start(t, plainConfig(up))
	_, br := e.plainRequest(t, up, "GET http://UP/ HTTP/1.1\r\nHost: UP\r\nConnection: close, X-Internal-Token\r\n"+
		"X-Internal-Token: s3cret\r\nKeep-Alive: 300\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive\r\nX-End: kept\r\n\r\n")
	head := recv(t, heads, "the upstream's request")
	for _, f := range []string{"X-Internal-Token", "Keep-Alive", "Te:", "Upgrade", "Proxy-Connection"} {
		if strings.Contains(head, f) {
			t.Errorf("the upstream got %s:\n%s", f, head)
		}
	}
	if !strings.Contains(head, "X-End: kept") {
		t.Errorf("the upstream did not get X-End:\n%s", head)
	}
	resp, body := response(t, br)
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("%s %q", resp.Status, body)
	}
	for _, f := range []string{"X-Up-Hop", "Keep-Alive"} {
		if v := resp.Header.Get(f); v != "" {
			t.Errorf("the client got %s: %s", f, v)
		}
	}
	if resp.Header.Get("X-Up-End") != "kept" {
		t.Errorf("the client did not get X-Up-End: %v", resp.Header)
	}
}

// TestHTTPUpgradeHeadersOnA200: a response that is not a 101 but carries
// Connection: Upgrade and Upgrade: websocket is an ordinary response: the
// client gets its body and the exchange ends.
func TestHTTPUpgradeHeadersOnA200(t *testing.T) {
	const answer = "HTTP/1.1 200 OK\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello"
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		readHead(br)
		io.WriteString(c, answer)
		time.Sleep(5 * time.Second) // the client must not depend on this close
	})
	e := newEnv(t)
	e.start(t, plainConfig(up))
	_, br := e.plainRequest(t, up, "GET http://UP/ HTTP/1.1\r\nHost: UP\r\n\r\n")
	if _, body := response(t, br); body != "hello" {
		t.Fatalf("body %q, want hello", body)
	}
	e.waitLog(t, "close", map[string]any{"mode": "http", "bytes_down": len(answer)})
}

// TestHTTPContentEncoding: the client's Accept-Encoding goes upstream as
// sent, and an encoded body comes back as the upstream sent it: egressd
// neither asks for gzip nor decodes it.
func TestHTTPContentEncoding(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(bytes.Repeat([]byte("A"), 1<<20))
	zw.Close()
	heads := map[string]string{
		"identity": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
		"gzip":     fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n", gz.Len()),
	}
	for _, ae := range []string{"identity", "gzip"} {
		t.Run(ae, func(t *testing.T) {
			got, answer := make(chan string, 1), make(chan string, 1)
			up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				got <- req.Header.Get("Accept-Encoding")
				answer <- heads[ae]
				if req.Header.Get("Accept-Encoding") == "gzip" {
					io.WriteString(c, heads[ae])
					c.Write(gz.Bytes())
					return
				}
				io.WriteString(c, heads[ae]+"plain")
			})
			e := newEnv(t)
			e.start(t, plainConfig(up))
			_, br := e.plainRequest(t, up, "GET http://UP/ HTTP/1.1\r\nHost: UP\r\nAccept-Encoding: "+ae+"\r\n\r\n")
			if sent := recv(t, got, "the upstream's request"); sent != ae {
				t.Errorf("the upstream got Accept-Encoding %q, want %q", sent, ae)
			}
			resp, body := response(t, br)
			want := []byte("plain")
			if ae == "gzip" {
				want = gz.Bytes()
			}
			if body != string(want) || resp.Header.Get("Content-Encoding") != map[string]string{"gzip": "gzip"}[ae] {
				t.Errorf("the client got %d bytes with Content-Encoding %q, want the upstream's %d", len(body), resp.Header.Get("Content-Encoding"), len(want))
			}
			e.waitLog(t, "close", map[string]any{"mode": "http", "bytes_down": len(<-answer) + len(want)})
		})
	}
}

// TestHTTPStreaming: each piece of a response that comes slowly reaches
// the client as it comes, head first (a watch, a long poll): the upstream
// sends the next piece only once the client has the one before.
func TestHTTPStreaming(t *testing.T) {
	for _, tc := range []struct{ name, head, pieces string }{
		{"chunked", "Transfer-Encoding: chunked\r\nContent-Type: application/json", "6\r\nevent1\r\n|6\r\nevent2\r\n|0\r\n\r\n"},
		{"content length", "Content-Length: 12", "event1|event2|"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := make(chan struct{})
			up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
				readHead(br)
				io.WriteString(c, "HTTP/1.1 200 OK\r\n"+tc.head+"\r\n\r\n")
				for _, p := range strings.Split(tc.pieces, "|") {
					select {
					case <-next:
					case <-time.After(10 * time.Second):
						return
					}
					io.WriteString(c, p)
				}
			})
			e := newEnv(t)
			e.start(t, plainConfigIdle(up, "30s"))
			_, br := e.plainRequest(t, up, "GET http://UP/watch HTTP/1.1\r\nHost: UP\r\n\r\n")
			resp, err := http.ReadResponse(br, nil) // the head, before any body
			if err != nil {
				t.Fatalf("no response head while the body waits: %v", err)
			}
			send := func() {
				select {
				case next <- struct{}{}:
				case <-time.After(10 * time.Second):
					t.Fatal("the upstream stopped waiting")
				}
			}
			for _, want := range []string{"event1", "event2"} {
				send()
				got := make([]byte, len(want))
				if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != want {
					t.Fatalf("got %q, %v; want %q as soon as the upstream sent it", got, err, want)
				}
			}
			send()
			if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
				t.Errorf("after the last piece: %q, %v", rest, err)
			}
		})
	}
}

// TestHTTPIdleExchange: a plain-HTTP exchange whose bodies move no byte
// for idle_timeout (1 s) is ended, its close line logged and its slot
// freed, whichever side stalls.
func TestHTTPIdleExchange(t *testing.T) {
	for _, tc := range []struct {
		name     string
		upstream func(c net.Conn, br *bufio.Reader, stop <-chan struct{})
		request  string
		read     int // bytes of the response the client reads before it stops
	}{
		{"the client stops sending its body",
			func(c net.Conn, br *bufio.Reader, stop <-chan struct{}) {
				req, err := http.ReadRequest(br)
				if err == nil {
					io.ReadAll(req.Body)
				}
				<-stop
			},
			"POST http://UP/ HTTP/1.1\r\nHost: UP\r\nContent-Length: 10\r\n\r\nab", -1},
		{"the upstream stops sending its body",
			func(c net.Conn, br *bufio.Reader, stop <-chan struct{}) {
				readHead(br)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
				<-stop
			},
			"GET http://UP/ HTTP/1.1\r\nHost: UP\r\n\r\n", 3},
		{"the client stops reading",
			func(c net.Conn, br *bufio.Reader, stop <-chan struct{}) {
				readHead(br)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n")
				buf := make([]byte, 64<<10)
				for range 1024 {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			},
			"GET http://UP/ HTTP/1.1\r\nHost: UP\r\n\r\n", 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stop := make(chan struct{})
			t.Cleanup(func() { close(stop) })
			up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) { tc.upstream(c, br, stop) })
			e := newEnv(t)
			e.start(t, plainConfig(up))
			c, br := e.plainRequest(t, up, tc.request)
			if tc.read > 0 {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(resp.Body, make([]byte, tc.read)); err != nil {
					t.Fatal(err)
				}
			}
			start := time.Now()
			e.waitLog(t, "close", map[string]any{"mode": "http"})
			waitFor(t, "the slot to be freed", func() bool { return e.srv.limits.open() == 0 })
			if el := time.Since(start); el < 500*time.Millisecond {
				t.Errorf("ended after %v, before idle_timeout", el)
			}
			if tc.read == 0 {
				return
			}
			// The client's connection ends too.
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.Copy(io.Discard, br); err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("the client's connection did not end: %v", err)
			}
		})
	}
}

// TestHTTPUpstreamError: an upstream that answers garbage gets the client
// a 502 that says why, and the close line the same, cut short.
func TestHTTPUpstreamError(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		readHead(br)
		io.WriteString(c, "garbage"+strings.Repeat("x", 1000)+"\r\n\r\n")
	})
	e := newEnv(t)
	e.start(t, plainConfig(up))
	_, br := e.plainRequest(t, up, "GET http://UP/ HTTP/1.1\r\nHost: UP\r\n\r\n")
	resp, body := response(t, br)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "malformed HTTP response") {
		t.Errorf("%s %q, want 502 naming the malformed response", resp.Status, body)
	}
	cl := e.waitLog(t, "close", map[string]any{"mode": "http"})
	detail, _ := cl["detail"].(string)
	if !strings.HasPrefix(detail, "upstream: ") || !strings.Contains(detail, "malformed HTTP response") || len(detail) > maxLoggedValue+len("…") {
		t.Errorf("close line detail %q (%d bytes), want the error cut to %d", detail, len(detail), maxLoggedValue)
	}
}

// TestHTTPOriginForm: a request for a path, not a URL, is a bad request,
// answered 400 and logged with one decision line.
func TestHTTPOriginForm(t *testing.T) {
	e := newEnv(t)
	e.start(t, plainConfig(1))
	c, br := e.plainRequest(t, 1, "GET /metrics HTTP/1.1\r\nHost: egressd.internal\r\n\r\n")
	defer c.Close()
	resp, body := response(t, br)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "egressd is a proxy") {
		t.Errorf("%s %q, want 400 saying egressd is a proxy", resp.Status, body)
	}
	e.waitLog(t, "decision", map[string]any{"mode": "http", "decision": "deny", "reason": "bad_request", "host": "egressd.internal"})
	if n := e.countLines(t, "decision", nil); n != 1 {
		t.Errorf("%d decision lines, want 1", n)
	}
}

// TestHTTPFiredWatchClosesClient: a client connection whose exchange's
// idle watch fired serves no further request, even when the response was
// complete: the watch put its deadlines in the past. The client sees the
// response, then the connection closed, not a broken second exchange.
func TestHTTPFiredWatchClosesClient(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pc := r.Context().Value(plainClientKey{}).(*plainClient)
		up, peer := net.Pipe()
		defer peer.Close()
		pc.watch = startIdleWatch(10*time.Millisecond, func() { up.Close() })
		io.Copy(io.Discard, peer) // until the watch closes up
		pc.watch.stop()
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, "ok")
	})
	ln := listen(t)
	srv := &http.Server{Handler: (&Server{tunnels: make(map[*tracked]struct{})}).wrapClient(h)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n")
	br := bufio.NewReader(c)
	if resp, body := response(t, br); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("%s %q", resp.Status, body)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the response: %v, want the connection closed (EOF)", err)
	}
}

// TestLongTargetsLoggedCut: a refused target is the client's bytes, up to
// the 32 KiB header limit; its decision line quotes it (and the parse
// error quoting it) cut, and a CONNECT target's password not at all.
func TestLongTargetsLoggedCut(t *testing.T) {
	long := strings.Repeat("a", 20000) + "!"
	for _, tc := range []struct{ name, head string }{
		{"CONNECT", "CONNECT " + long + ":443 HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"CONNECT with userinfo", "CONNECT user:pw-" + long[:10000] + "@" + long[10000:] + ":443 HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"http://", "GET http://" + long + "/ HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"ftp://", "GET ftp://" + long + "/ HTTP/1.1\r\nHost: x\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.start(t, plainConfig(1))
			c, br := e.plainRequest(t, 1, tc.head)
			defer c.Close()
			if resp, _ := response(t, br); resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%s, want 400", resp.Status)
			}
			e.waitLog(t, "decision", map[string]any{"decision": "deny", "reason": "bad_request"})
			for _, line := range strings.Split(strings.TrimSpace(e.log.String()), "\n") {
				if len(line) > 4*maxLoggedValue {
					t.Errorf("a log line of %d bytes: %.300s…", len(line), line)
				}
				if strings.Contains(line, "pw-") {
					t.Errorf("the userinfo reached the log: %.300s…", line)
				}
			}
		})
	}
}

// TestHTTPUpstreamBodyBroken: an upstream body that ends before its
// framing says (closed or reset mid-chunk, mid-Content-Length, a reset
// close-delimited body) or breaks its chunking reaches the client as a
// broken response, not a complete one, and the close line says why. The
// client is Go's net/http, which reports a clean end of a chunked body as
// success.
func TestHTTPUpstreamBodyBroken(t *testing.T) {
	reset := func(c net.Conn) { c.(*net.TCPConn).SetLinger(0) }
	for _, tc := range []struct {
		name   string
		answer string
		after  func(net.Conn)
		detail string
	}{
		{"chunk cut by a close", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\nhello", nil, "unexpected EOF"},
		{"chunk cut by a reset", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\nhello", reset, "reset"},
		{"bad chunking", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n", nil, "chunk"},
		{"Content-Length cut", "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nhello", nil, "unexpected EOF"},
		{"close-delimited, reset", "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello", reset, "reset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
				readHead(br)
				io.WriteString(c, tc.answer)
				time.Sleep(50 * time.Millisecond) // the head goes out before the end
				if tc.after != nil {
					tc.after(c)
				}
			})
			e := newEnv(t)
			e.start(t, plainConfig(up))
			_, br := e.plainRequest(t, up, "GET http://UP/ HTTP/1.1\r\nHost: UP\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no response head: %v", err)
			}
			body, err := io.ReadAll(resp.Body)
			if err == nil {
				t.Errorf("%s, body %q read to a clean end: the cut body passed for a whole one", resp.Status, body)
			}
			cl := e.waitLog(t, "close", map[string]any{"mode": "http"})
			if d, _ := cl["detail"].(string); !strings.HasPrefix(d, "upstream body: ") || !strings.Contains(d, tc.detail) {
				t.Errorf("close line detail %q, want the upstream body's error (%s)", d, tc.detail)
			}
			if n := e.countLines(t, "close", nil); n != 1 {
				t.Errorf("%d close lines, want 1", n)
			}
		})
	}
}

// TestHTTPUpstreamNoHead: an upstream that does not answer a valid head
// gets the client a 5xx with the reason, not an empty reply: a status
// under 100 (which net/http's server cannot write), a head that does not
// end within idle_timeout.
func TestHTTPUpstreamNoHead(t *testing.T) {
	for _, tc := range []struct {
		name          string
		answer        func(c net.Conn)
		code          int
		detail        string
		headerTimeout time.Duration // 0: the default
	}{
		{"status 000", func(c net.Conn) { io.WriteString(c, "HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok") }, http.StatusBadGateway, "invalid status code 000", 0},
		{"status 099", func(c net.Conn) { io.WriteString(c, "HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok") }, http.StatusBadGateway, "invalid status code 099", 0},
		{"a head that trickles past idle_timeout", func(c net.Conn) {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Slow: ")
			for range 30 { // a byte every 100 ms, for at most 3 s
				time.Sleep(100 * time.Millisecond)
				if _, err := io.WriteString(c, "a"); err != nil {
					return
				}
			}
		}, http.StatusGatewayTimeout, "no response within idle_timeout (1s)", 0},
		{"a head that trickles past the header timeout", func(c net.Conn) {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Slow: ")
			for range 30 { // a byte every 100 ms (no idle timeout), for at most 3 s
				time.Sleep(100 * time.Millisecond)
				if _, err := io.WriteString(c, "a"); err != nil {
					return
				}
			}
		}, http.StatusGatewayTimeout, "timeout awaiting response headers", 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
				readHead(br)
				tc.answer(c)
			})
			e := newEnv(t)
			if tc.headerTimeout != 0 {
				e.configure = func(s *Server) { s.headerTimeout = tc.headerTimeout }
			}
			e.start(t, plainConfig(up))
			_, br := e.plainRequest(t, up, "GET http://UP/ HTTP/1.1\r\nHost: UP\r\n\r\n")
			resp, body := response(t, br)
			if resp.StatusCode != tc.code || !strings.Contains(body, tc.detail) {
				t.Errorf("%s %q, want %d naming %q", resp.Status, body, tc.code, tc.detail)
			}
			cl := e.waitLog(t, "close", map[string]any{"mode": "http"})
			if d, _ := cl["detail"].(string); !strings.Contains(d, tc.detail) {
				t.Errorf("close line detail %q, want %q", d, tc.detail)
			}
		})
	}
}

// TestHTTPBytesOnTheWire: an http:// exchange's close line counts the
// bytes that crossed the upstream connection, heads included: data sent
// out in a long URL or header fields is not logged as 0 bytes up.
func TestHTTPBytesOnTheWire(t *testing.T) {
	const answer = "HTTP/1.1 200 OK\r\nX-Data: 0123456789\r\nContent-Length: 2\r\n\r\nok"
	sent := make(chan int, 1)
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		n := 0
		for {
			l, err := br.ReadString('\n')
			n += len(l)
			if err != nil || l == "\r\n" {
				break
			}
		}
		sent <- n
		io.WriteString(c, answer)
	})
	e := newEnv(t)
	e.start(t, plainConfig(up))
	secret := strings.Repeat("s", 10000)
	_, br := e.plainRequest(t, up, "GET http://UP/?q="+secret+" HTTP/1.1\r\nHost: UP\r\nCookie: "+secret+"\r\n\r\n")
	if _, body := response(t, br); body != "ok" {
		t.Fatalf("body %q, want ok", body)
	}
	n := recv(t, sent, "the request at the upstream")
	if n < 2*len(secret) {
		t.Fatalf("the upstream got a %d-byte head, want the URL and the cookie", n)
	}
	e.waitLog(t, "close", map[string]any{"mode": "http", "bytes_up": n, "bytes_down": len(answer)})
}

// TestHTTPBodyEndsNotTheUpstreams: a response body cut by the client
// hanging up, or by idle_timeout, is not logged as the upstream's body
// failing: no detail, and the idle timeout named. One close line, the
// slot freed.
func TestHTTPBodyEndsNotTheUpstreams(t *testing.T) {
	for _, tc := range []struct {
		name, idle string
		hangUp     bool
		detail     string // "": none
	}{
		{"the client hangs up mid-body", "30s", true, ""},
		{"idle_timeout mid-body", "500ms", false, "no body byte within idle_timeout (500ms)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stop := make(chan struct{})
			t.Cleanup(func() { close(stop) })
			up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
				readHead(br)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nhello")
				<-stop
			})
			e := newEnv(t)
			e.start(t, plainConfigIdle(up, tc.idle))
			c, br := e.plainRequest(t, up, "GET http://UP/ HTTP/1.1\r\nHost: UP\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(resp.Body, make([]byte, 5)); err != nil {
				t.Fatal(err)
			}
			if tc.hangUp {
				c.Close()
			}
			cl := e.waitLog(t, "close", map[string]any{"mode": "http"})
			waitFor(t, "the slot to be freed", func() bool { return e.srv.limits.open() == 0 })
			if d, _ := cl["detail"].(string); d != tc.detail {
				t.Errorf("close line detail %q, want %q", d, tc.detail)
			}
			if n := e.countLines(t, "close", nil); n != 1 {
				t.Errorf("%d close lines, want 1", n)
			}
		})
	}
}

// TestHTTPRefusalWithUnsentBody: a request egressd answers itself (a
// denial, a path, a failed dial) whose client declared a body and stopped
// sending it is answered within statusWriteTimeout and its connection
// closed, its slot freed. net/http reads what is left of an unread body
// (up to 256 KiB) before it writes the answer, with no deadline of its
// own: without one of egressd's, the answer never went out and the
// connection was held for as long as the client liked.
func TestHTTPRefusalWithUnsentBody(t *testing.T) {
	for _, tc := range []struct {
		name, head string
		code       int
	}{
		{"denied, Content-Length", "POST http://nope.egress.test/ HTTP/1.1\r\nHost: nope.egress.test\r\nContent-Length: 100\r\n\r\n0123456789", http.StatusForbidden},
		{"denied, chunked", "POST http://nope.egress.test/ HTTP/1.1\r\nHost: nope.egress.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", http.StatusForbidden},
		{"origin-form", "POST /upload HTTP/1.1\r\nHost: egressd.internal\r\nContent-Length: 100\r\n\r\n0123456789", http.StatusBadRequest},
		{"refused at the dial", "POST http://UP/ HTTP/1.1\r\nHost: UP\r\nContent-Length: 100\r\n\r\n0123456789", http.StatusBadGateway},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.start(t, plainConfig(1)) // plain.egress.test:1 is allowed; nothing listens there
			c, br := e.plainRequest(t, 1, tc.head)
			_ = c.SetReadDeadline(time.Now().Add(statusWriteTimeout + 3*time.Second))
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer to a request whose body stopped: %v (%d slots taken)", err, e.srv.limits.open())
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != tc.code {
				t.Errorf("%s, want %d", resp.Status, tc.code)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Errorf("after the answer: %v, want the connection closed (EOF)", err)
			}
			waitFor(t, "the slot to be freed", func() bool { return e.srv.limits.open() == 0 })
			if n := e.countLines(t, "decision", nil); n != 1 {
				t.Errorf("%d decision lines, want 1", n)
			}
		})
	}
}

// TestHTTPForwardAddsNothing: egressd forwards the client's request as
// the client sent it, less the hop-by-hop fields, and the upstream's
// response likewise: it adds no User-Agent of its own (net/http's
// transport sends "Go-http-client/1.1" when the request has none), and
// no hop-by-hop field reaches the client in the trailers either.
func TestHTTPForwardAddsNothing(t *testing.T) {
	heads := make(chan string, 1)
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		heads <- readHead(br)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum, Connection, Keep-Alive\r\n\r\n"+
			"2\r\nok\r\n0\r\nX-Sum: 1\r\nConnection: close, X-Up-Hop\r\nKeep-Alive: timeout=5\r\nX-Up-Hop: secret\r\nProxy-Authenticate: Basic\r\n\r\n")
	})
	e := newEnv(t)
	e.start(t, plainConfig(up))
	_, br := e.plainRequest(t, up, "GET http://UP/ HTTP/1.1\r\nHost: UP\r\n\r\n")
	head := recv(t, heads, "the upstream's request")
	if strings.Contains(strings.ToLower(head), "user-agent") {
		t.Errorf("the upstream got a User-Agent the client did not send:\n%s", head)
	}
	resp, body := response(t, br)
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("%s %q", resp.Status, body)
	}
	if resp.Trailer.Get("X-Sum") != "1" {
		t.Errorf("trailer X-Sum lost: %v", resp.Trailer)
	}
	for _, f := range []string{"Connection", "Keep-Alive", "X-Up-Hop", "Proxy-Authenticate"} {
		if v, ok := resp.Trailer[f]; ok {
			t.Errorf("the client got the upstream's hop-by-hop %s: %q in the trailers", f, v)
		}
	}
}
