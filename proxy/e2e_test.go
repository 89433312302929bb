package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/policy"
)

func newDiscardLogger() *log.Logger { return log.New(io.Discard, "", 0) }

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// baseConfig opens the test names on the upstream ports. The test
// upstreams listen on loopback, which is private, so it is opened here;
// TestPrivateDestination checks the default.
const baseConfig = `
server {
  allow_private_destinations = true
  hello_timeout = "2s"
}
resolver { servers = ["DNS_ADDR"] }
policy "test" {
  allow "allowed" {
    hosts = ["allowed.egress.test", "other.egress.test"]
    ports = [TLS_PORT]
  }
  allow "wild" {
    hosts = ["*.wild.egress.test"]
    ports = ["TLS_PORT-TLS_PORT"]
  }
  allow "nxdomain" {
    hosts = ["missing.egress.test"]
    ports = [TLS_PORT]
  }
  allow "plain-http" {
    hosts = ["plain.egress.test"]
    ports = [HTTP_PORT]
  }
  allow "echo" {
    cidrs       = ["127.0.0.1/32"]
    ports       = [ECHO_PORT]
    require_tls = false
  }
  deny "blocked" { hosts = ["blocked.wild.egress.test"] }
}
`

func TestConnectNetHTTP(t *testing.T) {
	e := newEnv(t)
	e.start(t, baseConfig)
	tlsPort := strconv.Itoa(e.tlsPort)
	tests := []struct {
		name     string
		url      string
		wantBody string // "" when the request must fail
		decision map[string]any
	}{
		{"allowed host", "https://allowed.egress.test:" + tlsPort + "/", "hello allowed.egress.test",
			map[string]any{"host": "allowed.egress.test", "decision": "allow", "policy": "test", "rule": "allowed", "reason": "allowed", "dst": "127.0.0.1:" + tlsPort, "sni": "allowed.egress.test", "tls_version": "1.3"}},
		{"wildcard at depth 2", "https://a.b.wild.egress.test:" + tlsPort + "/", "hello a.b.wild.egress.test",
			map[string]any{"host": "a.b.wild.egress.test", "decision": "allow", "rule": "wild"}},
		{"wildcard apex denied", "https://wild.egress.test:" + tlsPort + "/", "",
			map[string]any{"host": "wild.egress.test", "decision": "deny", "reason": "no_rule"}},
		{"deny rule wins", "https://blocked.wild.egress.test:" + tlsPort + "/", "",
			map[string]any{"host": "blocked.wild.egress.test", "decision": "deny", "reason": "denied_by_rule", "rule": "blocked"}},
		{"denied host", "https://nope.egress.test:" + tlsPort + "/", "",
			map[string]any{"host": "nope.egress.test", "decision": "deny", "reason": "no_rule"}},
		{"denied port", "https://allowed.egress.test:" + strconv.Itoa(e.httpPort) + "/", "",
			map[string]any{"host": "allowed.egress.test", "port": e.httpPort, "decision": "deny", "reason": "no_rule"}},
		{"nxdomain", "https://missing.egress.test:" + tlsPort + "/", "",
			map[string]any{"host": "missing.egress.test", "decision": "deny", "reason": "dns_error", "rule": "nxdomain"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.client().Get(tc.url)
			if tc.wantBody == "" {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("GET %s: got %s, want failure", tc.url, resp.Status)
				}
			} else {
				if err != nil {
					t.Fatalf("GET %s: %v", tc.url, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(body) != tc.wantBody {
					t.Fatalf("body %q, want %q", body, tc.wantBody)
				}
			}
			d := e.waitLog(t, "decision", tc.decision)
			if d["mode"] != "connect" || d["client"] == nil || d["conn"] == nil || d["time"] == nil {
				t.Errorf("decision line lacks mode/client/conn/time: %v", d)
			}
			if tc.wantBody != "" {
				if ja3, _ := d["ja3"].(string); len(ja3) != 32 {
					t.Errorf("ja3 %q is not an MD5", d["ja3"])
				}
				if ja4, _ := d["ja4"].(string); !strings.HasPrefix(ja4, "t13d") {
					t.Errorf("ja4 %q, want t13d…", d["ja4"])
				}
				if full, _ := d["ja3_full"].(string); strings.Count(full, ",") != 4 {
					t.Errorf("ja3_full %q", full)
				}
				cl := e.waitLog(t, "close", map[string]any{"conn": d["conn"]})
				if cl["bytes_up"].(float64) <= 0 || cl["bytes_down"].(float64) <= 0 || cl["duration_ms"] == nil {
					t.Errorf("close line %v", cl)
				}
			}
		})
	}
}

func TestConnectRefusalsAnswer403(t *testing.T) {
	e := newEnv(t)
	e.start(t, baseConfig)
	// want is the row's own decision line beyond decision and reason: a
	// target that parses is logged as host and port, one that does not
	// as the raw authority in host.
	tests := []struct {
		authority string
		status    int
		reason    string
		want      map[string]any
	}{
		{"nope.egress.test:" + strconv.Itoa(e.tlsPort), 403, "no_rule", map[string]any{"host": "nope.egress.test", "port": e.tlsPort}},
		{"allowed.egress.test:1", 403, "no_rule", map[string]any{"host": "allowed.egress.test", "port": 1}},
		{"127.1:443", 400, "bad_request", map[string]any{"host": "127.1:443"}},
		{"0x7f.0.0.1:443", 400, "bad_request", map[string]any{"host": "0x7f.0.0.1:443"}},
		{"allowed.egress.test:0", 400, "bad_request", map[string]any{"host": "allowed.egress.test:0"}},
		{"allowed.egress.test:70000", 400, "bad_request", map[string]any{"host": "allowed.egress.test:70000"}},
	}
	for _, tc := range tests {
		t.Run(tc.authority, func(t *testing.T) {
			c, br, resp := e.connect(t, tc.authority)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			body, _ := io.ReadAll(br)
			if !strings.Contains(string(body), tc.reason) || strings.Count(string(body), "\n") != 1 {
				t.Errorf("body %q: want one line naming %s", body, tc.reason)
			}
			c.Close()
			// This connection's own line, and only one: the rows share
			// the log, and another row's line must not stand in for it.
			want := map[string]any{"mode": "connect", "decision": "deny", "reason": tc.reason}
			for k, v := range tc.want {
				want[k] = v
			}
			e.clientDecision(t, c, want)
		})
	}
}

// TestTunnelHelloChecks drives the tunnel with hand-made first bytes.
func TestTunnelHelloChecks(t *testing.T) {
	e := newEnv(t)
	e.start(t, baseConfig)
	host := "allowed.egress.test:" + strconv.Itoa(e.tlsPort)
	tests := []struct {
		name   string
		send   func(c io.ReadWriter) error
		reason string
	}{
		{"sni differs from CONNECT host", tlsHello("other.egress.test"), "sni_mismatch"},
		{"no sni", tlsHello(""), "sni_missing"},
		{"not tls", func(c io.ReadWriter) error {
			_, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: allowed.egress.test\r\n\r\n")
			return err
		}, "not_tls"},
		{"hello timeout", func(io.ReadWriter) error { return nil }, "hello_timeout"},
		{"malformed hello", func(c io.ReadWriter) error {
			_, err := c.Write([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0, 0, 1, 0})
			return err
		}, "hello_malformed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, br, resp := e.connect(t, host)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d, want 200 before the hello", resp.StatusCode)
			}
			tc.send(c)
			// The proxy closes the tunnel without dialing: the client sees EOF.
			if _, err := io.ReadAll(br); err != nil {
				t.Fatalf("reading after refusal: %v (want EOF)", err)
			}
			d := e.waitLog(t, "decision", map[string]any{"reason": tc.reason})
			if d["decision"] != "deny" || d["dst"] != nil {
				t.Errorf("decision %v: want deny with no dst (nothing dialed)", d)
			}
			if tc.reason == "sni_mismatch" && d["sni"] != "other.egress.test" {
				t.Errorf("sni %v", d["sni"])
			}
			if strings.HasPrefix(tc.reason, "sni_") && len(d["ja3"].(string)) != 32 {
				t.Errorf("denied hello must still carry its JA3: %v", d)
			}
		})
	}
}

// tlsHello sends the ClientHello crypto/tls makes for serverName (no SNI
// when empty).
func tlsHello(serverName string) func(io.ReadWriter) error {
	return func(w io.ReadWriter) error {
		_, err := w.Write(clientHelloBytes(serverName))
		return err
	}
}

// clientHelloBytes captures the first flight of a crypto/tls client.
func clientHelloBytes(serverName string) []byte {
	return capturedHello(&tls.Config{ServerName: serverName, InsecureSkipVerify: serverName == ""})
}

// capturedHello is the first flight of crypto/tls's client with conf.
func capturedHello(conf *tls.Config) []byte {
	cli, srv := net.Pipe()
	defer srv.Close()
	go func() {
		tls.Client(cli, conf).Handshake()
		cli.Close()
	}()
	buf := make([]byte, 16<<10)
	n, _ := io.ReadAtLeast(srv, buf, 5)
	for n < 5+int(buf[3])<<8+int(buf[4]) {
		m, err := srv.Read(buf[n:])
		if err != nil {
			break
		}
		n += m
	}
	return buf[:n]
}

func TestPrivateDestination(t *testing.T) {
	e := newEnv(t)
	url := "https://private.egress.test:" + strconv.Itoa(e.tlsPort) + "/"
	e.start(t, `
resolver { servers = ["DNS_ADDR"] }
policy "p" {
  allow "private" {
    hosts = ["private.egress.test"]
    ports = [TLS_PORT]
  }
}`)
	if resp, err := e.client().Get(url); err == nil {
		resp.Body.Close()
		t.Fatal("a name resolving to loopback was reached with allow_private_destinations = false")
	}
	e.waitLog(t, "decision", map[string]any{"decision": "deny", "reason": "private_destination", "rule": "private"})

	e.start(t, `
resolver { servers = ["DNS_ADDR"] }
policy "p" {
  allow "private" {
    hosts = ["private.egress.test"]
    cidrs = ["127.0.0.0/8"]
    ports = [TLS_PORT]
  }
}`)
	resp, err := e.client().Get(url)
	if err != nil {
		t.Fatalf("a rule listing 127.0.0.0/8 must open it: %v", err)
	}
	resp.Body.Close()
	e.waitLog(t, "decision", map[string]any{"decision": "allow", "dst": "127.0.0.1:" + strconv.Itoa(e.tlsPort)})
}

func TestJA3RestrictedRule(t *testing.T) {
	e := newEnv(t)
	url := "https://ja3.egress.test:" + strconv.Itoa(e.tlsPort) + "/"
	const cfg = `
server { allow_private_destinations = true }
resolver { servers = ["DNS_ADDR"] }
policy "p" {
  allow "fingerprinted" {
    hosts = ["ja3.egress.test"]
    ports = [TLS_PORT]
    ja3   = ["JA3"]
  }
}`
	e.start(t, strings.Replace(cfg, "JA3", strings.Repeat("0", 32), 1))
	if resp, err := e.client().Get(url); err == nil {
		resp.Body.Close()
		t.Fatal("a client whose JA3 is not listed got through")
	}
	d := e.waitLog(t, "decision", map[string]any{"decision": "deny", "reason": "ja3_mismatch"})
	goJA3 := d["ja3"].(string)

	e.start(t, strings.Replace(cfg, "JA3", goJA3, 1))
	resp, err := e.client().Get(url)
	if err != nil {
		t.Fatalf("the client's own JA3 %s is listed: %v", goJA3, err)
	}
	resp.Body.Close()
	e.waitLog(t, "decision", map[string]any{"decision": "allow", "ja3": goJA3, "rule": "fingerprinted"})
}

func TestPlainHTTP(t *testing.T) {
	e := newEnv(t)
	e.start(t, baseConfig)
	hp := strconv.Itoa(e.httpPort)
	resp, err := e.client().Get("http://plain.egress.test:" + hp + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "plain plain.egress.test:"+hp {
		t.Fatalf("allowed http request: %s %q", resp.Status, body)
	}
	d := e.waitLog(t, "decision", map[string]any{"mode": "http", "decision": "allow", "rule": "plain-http", "dst": "127.0.0.1:" + hp})
	cl := e.waitLog(t, "close", map[string]any{"conn": d["conn"]})
	// Heads included (TestHTTPBytesOnTheWire has exact counts).
	if up, down := cl["bytes_up"].(float64), cl["bytes_down"].(float64); up < float64(len("GET /x HTTP/1.1\r\n\r\n")) || down < float64(len("HTTP/1.1 200 OK\r\n\r\n")+len(body)) {
		t.Errorf("close bytes_up %v, bytes_down %v: want the request's head and the response's head and %d-byte body", up, down, len(body))
	}

	resp, err = e.client().Get("http://nope.egress.test:" + hp + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("denied http request: %s, want 403", resp.Status)
	}
	e.waitLog(t, "decision", map[string]any{"mode": "http", "decision": "deny", "host": "nope.egress.test", "reason": "no_rule"})
}

// TestRelayByteExact sends 4 MiB through a plain-TCP tunnel to an echo
// server and half-closes: every byte must come back, in order, and the
// close line must count them.
func TestRelayByteExact(t *testing.T) {
	e := newEnv(t)
	e.start(t, baseConfig)
	c, br, resp := e.connect(t, "127.0.0.1:"+strconv.Itoa(e.echoPort))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	payload := make([]byte, 4<<20)
	rand.Read(payload)
	go func() {
		c.Write(payload)
		connOf(c).CloseWrite()
	}()
	got, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echoed %d bytes, want %d identical", len(got), len(payload))
	}
	d := e.waitLog(t, "decision", map[string]any{"decision": "allow", "rule": "echo", "host": "127.0.0.1"})
	if d["sni"] != nil {
		t.Errorf("plain tunnel has sni %v", d["sni"])
	}
	cl := e.waitLog(t, "close", map[string]any{"conn": d["conn"]})
	if cl["bytes_up"].(float64) != float64(len(payload)) || cl["bytes_down"].(float64) != float64(len(payload)) {
		t.Errorf("close line %v, want %d bytes each way", cl, len(payload))
	}
}

func TestIdleTimeout(t *testing.T) {
	e := newEnv(t)
	e.start(t, strings.Replace(baseConfig, `hello_timeout = "2s"`, `hello_timeout = "2s"
  idle_timeout = "300ms"`, 1))
	c, br, _ := e.connect(t, "127.0.0.1:"+strconv.Itoa(e.echoPort))
	c.Write([]byte("x"))
	start := time.Now()
	got, _ := io.ReadAll(br) // the echo answers "x", then the tunnel idles out
	if string(got) != "x" {
		t.Fatalf("got %q", got)
	}
	if el := time.Since(start); el < 250*time.Millisecond || el > 3*time.Second {
		t.Fatalf("idle tunnel closed after %v, want about 300ms", el)
	}
	e.waitLog(t, "close", map[string]any{"bytes_up": 1, "bytes_down": 1})
}

func TestCurlThroughProxy(t *testing.T) {
	curl := needTool(t, "curl")
	e := newEnv(t)
	e.start(t, baseConfig)
	tp := strconv.Itoa(e.tlsPort)
	run := func(url string) (string, error) {
		cmd := exec.Command(curl, "-sS", "--max-time", "10", "--cacert", e.ca.pemPath, url)
		cmd.Env = append(os.Environ(), "HTTPS_PROXY=http://"+e.proxyAddr, "http_proxy=http://"+e.proxyAddr, "NO_PROXY=", "no_proxy=")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("https://allowed.egress.test:" + tp + "/")
	if err != nil || out != "hello allowed.egress.test" {
		t.Fatalf("curl allowed: %v %q", err, out)
	}
	e.waitLog(t, "decision", map[string]any{"decision": "allow", "sni": "allowed.egress.test", "alpn": "[h2 http/1.1]"})
	out, err = run("https://nope.egress.test:" + tp + "/")
	if err == nil || !strings.Contains(out, "403") {
		t.Fatalf("curl denied host: err=%v out=%q, want a 403 failure", err, out)
	}
	out, err = run("http://plain.egress.test:" + strconv.Itoa(e.httpPort) + "/")
	if err != nil || !strings.HasPrefix(out, "plain ") {
		t.Fatalf("curl plain http: %v %q", err, out)
	}
}

// TestDialError: an allowed destination whose port refuses connections
// closes the tunnel after the 200, and answers 502 to a plain request; both
// are logged as dial_error with the rule that allowed them.
func TestDialError(t *testing.T) {
	e := newEnv(t)
	ln := listen(t)
	dead := strconv.Itoa(port(ln))
	ln.Close()
	e.start(t, strings.ReplaceAll(`
server { allow_private_destinations = true }
resolver { servers = ["DNS_ADDR"] }
policy "p" {
  allow "dead" {
    hosts = ["allowed.egress.test", "plain.egress.test"]
    ports = [DEAD]
  }
}`, "DEAD", dead))
	c, br, resp := e.connect(t, "allowed.egress.test:"+dead)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	c.Write(clientHelloBytes("allowed.egress.test"))
	if b, _ := io.ReadAll(br); len(b) != 0 {
		t.Fatalf("got %q from a tunnel whose dial failed", b)
	}
	e.waitLog(t, "decision", map[string]any{"mode": "connect", "decision": "deny", "reason": "dial_error", "rule": "dead"})

	r, err := e.client().Get("http://plain.egress.test:" + dead + "/")
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusBadGateway {
		t.Fatalf("plain request to a dead port: %s, want 502", r.Status)
	}
	e.waitLog(t, "decision", map[string]any{"mode": "http", "decision": "deny", "reason": "dial_error"})
}

// TestPlainRefusedAtDial: a plain request refused by the checks at its
// dial is answered as a refusal of the policy (403) or a bad request
// (400), the same body as one refused at its decision; only a failed
// dial is the upstream's 502 (TestDialError).
func TestPlainRefusedAtDial(t *testing.T) {
	e := newEnv(t)
	e.start(t, `
resolver { servers = ["DNS_ADDR"] }
policy "p" {
  allow "private" {
    hosts       = ["private.egress.test"]
    ports       = [HTTP_PORT]
    require_tls = false
  }
  allow "loopback" {
    cidrs       = ["127.0.0.0/8"]
    ports       = ["1024-65535"]
    require_tls = false
  }
}`)
	self := e.proxyAddr
	for _, c := range []struct {
		url, reason, body string
		status            int
	}{
		{"http://private.egress.test:" + strconv.Itoa(e.httpPort) + "/", "private_destination", "egressd: denied private.egress.test: private_destination\n", http.StatusForbidden},
		{"http://" + self + "/", "bad_request", "egressd: bad request 127.0.0.1: bad_request\n", http.StatusBadRequest},
	} {
		r, err := e.client().Get(c.url)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != c.status || string(body) != c.body {
			t.Errorf("GET %s: %s %q, want %d %q", c.url, r.Status, body, c.status, c.body)
		}
		e.waitLog(t, "decision", map[string]any{"mode": "http", "decision": "deny", "reason": c.reason})
	}
}

// TestHelloSplitAcrossWrites: a ClientHello delivered one byte per write is
// reassembled and decided like a whole one.
func TestHelloSplitAcrossWrites(t *testing.T) {
	e := newEnv(t)
	e.start(t, baseConfig)
	c, _, resp := e.connect(t, "allowed.egress.test:"+strconv.Itoa(e.tlsPort))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	connOf(c).SetNoDelay(true)
	for _, b := range clientHelloBytes("allowed.egress.test") {
		if _, err := c.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
	}
	e.waitLog(t, "decision", map[string]any{"decision": "allow", "sni": "allowed.egress.test", "rule": "allowed"})
}

// TestShutdownClosesTunnelsAfterDeadline: Shutdown waits for open tunnels
// until its context ends, then closes them and returns.
func TestShutdownClosesTunnelsAfterDeadline(t *testing.T) {
	e := newEnv(t)
	e.start(t, baseConfig)
	c, br, _ := e.connect(t, "127.0.0.1:"+strconv.Itoa(e.echoPort))
	c.Write([]byte("x"))
	if b, err := br.ReadByte(); err != nil || b != 'x' {
		t.Fatalf("echo: %q %v", b, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	e.srv.Shutdown(ctx)
	if el := time.Since(start); el < 250*time.Millisecond || el > 3*time.Second {
		t.Fatalf("Shutdown returned after %v, want about the 300ms deadline", el)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("tunnel still open after Shutdown's deadline")
	}
}

// TestConnectDecisionLineWithoutTunnel: a CONNECT that never gets its 200
// still has its one decision line: the client reset before the 200 could
// be written, or Shutdown began while it was being checked (answered 503).
func TestConnectDecisionLineWithoutTunnel(t *testing.T) {
	t.Run("client reset before the 200", func(t *testing.T) {
		e := newEnv(t)
		e.start(t, baseConfig)
		orig := checkPassword
		checkPassword = func(p *policy.Policy, user, password string) bool {
			time.Sleep(300 * time.Millisecond) // the client resets meanwhile
			return true
		}
		t.Cleanup(func() { checkPassword = orig })
		c, err := net.Dial("tcp", e.proxyAddr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "CONNECT allowed.egress.test:%d HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic dTpw\r\n\r\n", e.tlsPort)
		time.Sleep(50 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		e.waitLog(t, "decision", map[string]any{"decision": "deny", "reason": "client_closed", "host": "allowed.egress.test"})
		waitFor(t, "the slot to be freed", func() bool { return e.srv.limits.open() == 0 })
		if n := e.countLines(t, "decision", nil); n != 1 {
			t.Errorf("%d decision lines, want 1", n)
		}
	})
	t.Run("Shutdown began while it was checked", func(t *testing.T) {
		e := newEnv(t)
		e.start(t, baseConfig)
		entered, release := make(chan struct{}), make(chan struct{})
		orig := checkPassword
		checkPassword = func(p *policy.Policy, user, password string) bool {
			close(entered)
			<-release
			return true
		}
		t.Cleanup(func() { checkPassword = orig })
		c, err := net.Dial("tcp", e.proxyAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "CONNECT allowed.egress.test:%d HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic dTpw\r\n\r\n", e.tlsPort)
		<-entered
		done := make(chan struct{})
		go func() {
			defer close(done)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			e.srv.Shutdown(ctx)
		}()
		waitFor(t, "Shutdown to begin", e.srv.isClosing)
		close(release)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no response: %v; log:\n%s", err, e.log.String())
		}
		resp.Body.Close()
		<-done
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("status %d, want 503", resp.StatusCode)
		}
		e.waitLog(t, "decision", map[string]any{"decision": "deny", "reason": "shutting_down", "detail": "egressd is shutting down"})
		if n := e.countLines(t, "decision", nil); n != 1 {
			t.Errorf("%d decision lines, want 1", n)
		}
	})
}

// TestTunnelCutBeforeRelay: the steps of an allowed tunnel between the
// decision and the relay (the dial, the first bytes' write upstream) are
// bounded: a forced Shutdown cuts them at once, and an upstream that does
// not read gets dial_timeout to take the first bytes.
func TestTunnelCutBeforeRelay(t *testing.T) {
	for _, tc := range []struct {
		name       string
		dial       func(ctx context.Context) (net.Conn, error)
		shutdown   bool
		want       map[string]any // the line that ends the tunnel
		noDeadline bool           // the upstream conn ignores deadlines (an embedder's DialContext)
	}{
		{"Shutdown during the dial", func(ctx context.Context) (net.Conn, error) {
			<-ctx.Done() // an upstream that never answers the SYN
			return nil, ctx.Err()
		}, true, map[string]any{"message": "decision", "decision": "deny", "reason": "client_closed", "detail": "closed by shutdown"}, false},
		{"Shutdown during the first write", nil, true, map[string]any{"message": "close", "bytes_up": 0}, false},
		{"Shutdown during the first write, no deadlines", nil, true, map[string]any{"message": "close", "bytes_up": 0}, true},
		{"an upstream that does not read", nil, false, map[string]any{"message": "close", "bytes_up": 0}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.start(t, strings.Replace(baseConfig, "server {", "server {\n  dial_timeout = \"1s\"", 1))
			dialing := make(chan struct{}, 1)
			dial := tc.dial
			if dial == nil { // an upstream that never reads
				c, peer := net.Pipe()
				t.Cleanup(func() { peer.Close() }) // before e's: ends a write that was not cut
				var up net.Conn = c
				if tc.noDeadline {
					up = noDeadlineConn{c}
				}
				dial = func(context.Context) (net.Conn, error) { return up, nil }
			}
			e.srv.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
				dialing <- struct{}{}
				return dial(ctx)
			}
			c, _, resp := e.connect(t, "allowed.egress.test:"+strconv.Itoa(e.tlsPort))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			c.Write(clientHelloBytes("allowed.egress.test"))
			<-dialing
			if tc.shutdown {
				time.Sleep(50 * time.Millisecond) // into the dial or the write
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				defer cancel()
				done := make(chan struct{})
				start := time.Now()
				go func() { e.srv.Shutdown(ctx); close(done) }()
				select {
				case <-done:
				case <-time.After(3 * time.Second):
					t.Fatalf("Shutdown with a 200ms grace has not returned after 3s:\n%s", e.log.String())
				}
				if el := time.Since(start); el > 900*time.Millisecond {
					t.Errorf("Shutdown with a 200ms grace took %v (dial_timeout is 1s)", el)
				}
			}
			msg := tc.want["message"].(string)
			want := maps.Clone(tc.want)
			delete(want, "message")
			e.waitLog(t, msg, want)
			if n := e.countLines(t, "decision", nil); n != 1 {
				t.Errorf("%d decision lines, want 1:\n%s", n, e.log.String())
			}
		})
	}
}

// noDeadlineConn ignores deadlines, as a net.Conn from an embedder's
// DialContext may.
type noDeadlineConn struct{ net.Conn }

func (noDeadlineConn) SetDeadline(time.Time) error      { return nil }
func (noDeadlineConn) SetWriteDeadline(time.Time) error { return nil }
