package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/egressd/egressd/policy"
)

// testNames are the names the test DNS server answers, all with 127.0.0.1
// (where the test upstreams listen). Names outside the map get NXDOMAIN.
var testNames = []string{
	"allowed.egress.test", "other.egress.test", "private.egress.test",
	"a.b.wild.egress.test", "wild.egress.test", "ja3.egress.test",
	"plain.egress.test", "nope.egress.test", "echo.egress.test",
}

// testCA is a certificate authority made for one test run, and a leaf
// certificate for every test name.
type testCA struct {
	pool    *x509.CertPool
	leaf    tls.Certificate
	pemPath string // the CA certificate as a PEM file, for curl --cacert
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "egressd test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "egressd test upstream"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     append([]string{"*.wild.egress.test", "*.b.wild.egress.test", "quic.cftunnel.com"}, testNames...),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{pool: x509.NewCertPool()}
	ca.pool.AddCert(caCert)
	ca.leaf = tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}
	ca.pemPath = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca.pemPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return ca
}

// listen opens a loopback listener on a port the kernel picks.
func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func port(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

// startTLSUpstream serves HTTPS answering "hello <sni>" on every path.
func startTLSUpstream(t testing.TB, ca *testCA) int {
	ln := listen(t)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello %s", r.TLS.ServerName)
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.leaf}},
		ErrorLog:  nil,
	}
	srv.ErrorLog = newDiscardLogger()
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return port(ln)
}

// startHTTPUpstream serves plain HTTP answering "plain <host>".
func startHTTPUpstream(t testing.TB) int {
	ln := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "plain %s", r.Host)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return port(ln)
}

// startEcho echoes every byte back and half-closes when the client does.
func startEcho(t testing.TB) int {
	return serveConns(t, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
}

// serveConns accepts connections on a loopback listener and runs h on
// each in its own goroutine, closing the connection after; it returns the
// port.
func serveConns(t testing.TB, h func(net.Conn)) int {
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				h(c)
			}()
		}
	}()
	return port(ln)
}

// startDNS answers A queries for testNames with 127.0.0.1, AAAA with
// nothing, and everything else with NXDOMAIN.
func startDNS(t testing.TB) string {
	t.Helper()
	known := map[string]bool{}
	for _, n := range testNames {
		known[dns.Fqdn(n)] = true
	}
	addr := serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		name := strings.ToLower(q.Question[0].Name)
		switch {
		case !known[name]:
			m.Rcode = dns.RcodeNameError
		case q.Question[0].Qtype == dns.TypeA:
			rr, _ := dns.NewRR(name + " 60 IN A 127.0.0.1")
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	return addr
}

// syncBuffer is the decision log: written by the proxy, read by the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) lines(t *testing.T) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("decision log line is not JSON: %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// env is one egressd proxy with its own upstreams, DNS and decision log.
type env struct {
	ca        *testCA
	tlsPort   int
	httpPort  int
	echoPort  int
	dnsAddr   string
	proxyAddr string
	log       *syncBuffer
	srv       *Server
	// wrapListener, when set before start, wraps egressd's listener.
	wrapListener func(net.Listener) net.Listener
	// noFront, when set before start, serves transparent listeners on the
	// goroutine path instead of the front loop (front_linux.go).
	noFront bool
	// configure, when set before start, sets the new server's test hooks
	// before it serves.
	configure func(*Server)
}

// goroutinePath makes newEnv's servers use the goroutine path for
// transparent listeners (TestTransparentGoroutinePath sets it while its
// sequential subtests run).
var goroutinePath bool

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{ca: newTestCA(t), dnsAddr: startDNS(t), log: &syncBuffer{}, noFront: goroutinePath}
	e.tlsPort = startTLSUpstream(t, e.ca)
	e.httpPort = startHTTPUpstream(t)
	e.echoPort = startEcho(t)
	return e
}

// start runs egressd with the given HCL, after replacing TLS_PORT,
// HTTP_PORT, ECHO_PORT and DNS_ADDR in it; e.log is its decision log.
func (e *env) start(t testing.TB, hclSrc string) {
	t.Helper()
	e.log = &syncBuffer{}
	e.startLogger(t, hclSrc, zerolog.New(e.log).With().Timestamp().Logger())
}

// expand replaces TLS_PORT, HTTP_PORT, ECHO_PORT and DNS_ADDR in an HCL
// source with e's.
func (e *env) expand(hclSrc string) string {
	return strings.NewReplacer(
		"TLS_PORT", fmt.Sprint(e.tlsPort),
		"HTTP_PORT", fmt.Sprint(e.httpPort),
		"ECHO_PORT", fmt.Sprint(e.echoPort),
		"DNS_ADDR", e.dnsAddr,
	).Replace(hclSrc)
}

// startLogger is start with the decision log going to logger.
func (e *env) startLogger(t testing.TB, hclSrc string, logger zerolog.Logger) {
	t.Helper()
	src := e.expand(hclSrc)
	cfg, diags := policy.Parse([]policy.File{{Name: "test.hcl", Src: []byte(src)}})
	if diags.HasErrors() {
		t.Fatalf("test config:\n%s\n%s", policy.FormatDiagnostics(diags), src)
	}
	srv, err := New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	guardLoopbackDials(t, srv)
	srv.noFront = e.noFront
	if e.configure != nil {
		e.configure(srv)
	}
	ln := listen(t)
	if e.wrapListener != nil {
		ln = e.wrapListener(ln)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	e.srv, e.proxyAddr = srv, ln.Addr().String()
}

// guardLoopbackDials makes srv refuse, and the test fail on, any dial to
// an address off loopback: the tests' DNS answers private and metadata
// addresses (10.x, 169.254.169.254) that egressd must never dial, and a
// regression must not send packets off the machine to find out. It sets
// srv's checkDial hook, which both transparent paths and every dial ask,
// and checks after srv's shutdown (cleanups run last first).
func guardLoopbackDials(t testing.TB, srv *Server) {
	t.Helper()
	var mu sync.Mutex
	var offLoopback []string
	srv.checkDial = func(network string, dst netip.AddrPort) error {
		if !dst.Addr().IsLoopback() {
			mu.Lock()
			offLoopback = append(offLoopback, network+" "+dst.String())
			mu.Unlock()
			return fmt.Errorf("test: refusing to dial %s off loopback", dst)
		}
		return nil
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		if len(offLoopback) > 0 {
			t.Errorf("egressd dialed off loopback: %v", offLoopback)
		}
	})
}

// client is Go's net/http client configured with HTTPS_PROXY-style proxying
// through egressd and the test CA.
func (e *env) client() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			Proxy:             http.ProxyURL(mustURL("http://" + e.proxyAddr)),
			TLSClientConfig:   &tls.Config{RootCAs: e.ca.pool},
			DisableKeepAlives: true,
		},
	}
}

// connect opens a raw CONNECT tunnel and returns the connection and the
// proxy's status line.
func (e *env) connect(t *testing.T, authority string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	return e.connectFrom(t, "", authority)
}

// connectFrom is connect from local address from (a 127.0.0.x; "" for
// any).
func (e *env) connectFrom(t *testing.T, from, authority string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	c, br, resp, err := dialConnect(e.proxyAddr, from, authority)
	if err != nil {
		t.Fatalf("CONNECT %s: %v", authority, err)
	}
	t.Cleanup(func() { c.Close() })
	return c, br, resp
}

// dialProxy opens a raw TCP connection to the proxy port, with a 10 s
// deadline, closed when the test ends.
func (e *env) dialProxy(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", e.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// dialConnect dials the proxy at addr from local address from ("" for
// any), sends CONNECT authority and reads the answer's head. The
// connection has a 10 s deadline; it is closed on error.
func dialConnect(addr, from, authority string) (net.Conn, *bufio.Reader, *http.Response, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, nil, nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", authority, authority)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, nil, nil, err
	}
	return c, br, resp, nil
}

// waitLog waits for a decision-log line with the given message and conn
// field set, matching want, and returns it.
func (e *env) waitLog(t *testing.T, msg string, want map[string]any) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, l := range e.log.lines(t) {
			if l["message"] == msg && matches(l, want) {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q log line with %v in:\n%s", msg, want, e.log.buf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// clientDecision waits for the decision line of the connection client,
// matched by its local address (the client address egressd logs) and
// want, and fails unless it is the only decision line from that address:
// a line another connection wrote cannot stand in for the one this
// connection must get.
func (e *env) clientDecision(t *testing.T, client net.Conn, want map[string]any) map[string]any {
	t.Helper()
	addr := client.LocalAddr().String()
	w := map[string]any{"client": addr}
	for k, v := range want {
		w[k] = v
	}
	d := e.waitLog(t, "decision", w)
	if n := e.countLines(t, "decision", map[string]any{"client": addr}); n != 1 {
		t.Fatalf("%d decision lines from client %s, want exactly 1:\n%s", n, addr, e.log.String())
	}
	return d
}

// countLines counts the decision-log lines with message msg matching want.
func (e *env) countLines(t *testing.T, msg string, want map[string]any) int {
	n := 0
	for _, l := range e.log.lines(t) {
		if l["message"] == msg && matches(l, want) {
			n++
		}
	}
	return n
}

func matches(l, want map[string]any) bool {
	for k, v := range want {
		if fmt.Sprint(l[k]) != fmt.Sprint(v) {
			return false
		}
	}
	return true
}

// unavailable skips a test whose machine lacks what it needs (a tool,
// root, IPv6 loopback, /proc, ...), saying what, except under CI=true:
// .ci/run provides all of it, so there the test fails instead.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	what := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and %s", what)
	}
	t.Skipf("%s; skipping", what)
}

// needTool returns the path of a tool, or is unavailable without it.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		unavailable(t, "%s is not installed (.ci/run installs it)", name)
	}
	return p
}

// needIPv6 is unavailable: no IPv6 loopback (::1), as err said.
func needIPv6(t *testing.T, err error) {
	t.Helper()
	unavailable(t, "no IPv6 loopback (::1): %v", err)
}

// connOf returns the *net.TCPConn under a test connection.
func connOf(rw any) *net.TCPConn { return rw.(*net.TCPConn) }

// serveTestDNS serves h over UDP at addr ("127.0.0.1:0": a free loopback
// port) until the test ends, and returns the address it listens on.
func serveTestDNS(t testing.TB, addr string, h dns.HandlerFunc) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: h}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// waitFor polls cond every 10 ms for up to 5 s, and fails the test naming
// what it waited for when cond never holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !eventually(cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// eventually polls cond every 10 ms for up to 5 s and reports whether it
// held.
func eventually(cond func() bool) bool { return eventuallyWithin(5*time.Second, cond) }

// eventuallyWithin polls cond every 10 ms for up to d and reports whether
// it held.
func eventuallyWithin(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}
