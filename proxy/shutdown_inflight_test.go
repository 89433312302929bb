package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egressd/egressd/policy"
)

// shutdownWith runs Shutdown with a grace of 3 s while release is closed
// 300 ms in, and returns the decision log as it was when Shutdown
// returned.
func (e *env) shutdownWith(t *testing.T, release chan struct{}) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	go func() {
		time.Sleep(300 * time.Millisecond)
		close(release)
	}()
	e.srv.Shutdown(ctx)
	return e.log.String()
}

// shutdownCutting runs Shutdown with a 300 ms grace, which cuts what is
// still in flight, and fails the test unless it returns within 1.5 s.
func (e *env) shutdownCutting(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	e.srv.Shutdown(ctx)
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("Shutdown with a 300 ms grace took %v", took)
	}
}

// decidedBeforeShutdown fails unless log, as Shutdown left it, has one
// decision line of mode, written before the "shutdown" line.
func decidedBeforeShutdown(t *testing.T, log, mode string) {
	t.Helper()
	d := strings.Index(log, `"mode":"`+mode+`"`)
	end := strings.Index(log, `"message":"shutdown"`)
	if d < 0 || end < 0 || d > end {
		t.Errorf("Shutdown returned without waiting for the %s decision in flight when it began:\n%s", mode, log)
	}
}

// TestShutdownWaitsForPasswordCheck: a CONNECT whose credentials are being
// checked when Shutdown begins is waited for: its decision line comes
// before Shutdown's last line (under serve, the log is closed after it).
func TestShutdownWaitsForPasswordCheck(t *testing.T) {
	e := newEnv(t)
	e.start(t, authPolicy(t, "p", "pw"))
	entered, release := holdFirstCheck(t)
	e.connectAs(t, "pw")
	awaitSignal(t, entered, "the password check")
	decidedBeforeShutdown(t, e.shutdownWith(t, release), "connect")
}

// TestShutdownWaitsForQUICDecision: a QUIC flow whose destination
// verification waits for DNS when Shutdown begins is waited for too.
func TestShutdownWaitsForQUICDecision(t *testing.T) {
	e := newEnv(t)
	var asked, release chan struct{}
	e.dnsAddr, asked, release = heldDNS(t)
	up, _ := udpSink(t)
	q := e.startQUIC(t, `
server { allow_private_destinations = true }
resolver { servers = ["DNS_ADDR"] }
policy "p" {
  allow "slow" {
    hosts = ["slow.egress.test"]
    ports = [QUIC_PORT]
  }
}
`, up.Port())
	c := q.socket(t, up)
	h := quicClientHello(t, "slow.egress.test")
	if _, err := c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: []byte{1, 2, 3, 4, 5, 6, 7, 8}, frames: quicCrypto(0, h), padTo: 1200}), q.addr); err != nil {
		t.Fatal(err)
	}
	awaitSignal(t, asked, "the verification lookup")
	decidedBeforeShutdown(t, e.shutdownWith(t, release), "quic")
}

// TestShutdownWaitsForPlainRequests: plain requests still running when the
// grace ends (one in its password check, one waiting for a silent
// upstream) are cut by Shutdown, and their lines come before its last one.
// A cut check or lookup is client_closed, not a failed login.
func TestShutdownWaitsForPlainRequests(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cut    map[string]any // the cut request's line
		checks bool           // the request's password check outlasts the grace
	}{
		{"password check", map[string]any{"message": "decision", "mode": "http", "reason": "client_closed", "detail": "closed by shutdown"}, true},
		{"silent upstream", map[string]any{"message": "close", "mode": "http"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			src := authPolicy(t, "p", "pw")
			release := make(chan struct{})
			defer close(release)
			if tc.checks {
				real := checkPassword
				t.Cleanup(func() { checkPassword = real })
				checkPassword = func(p *policy.Policy, user, password string) bool {
					// The hash work outlasts the grace (a real check
					// ends by itself, so Shutdown waits for it).
					select {
					case <-release:
					case <-time.After(time.Second):
					}
					return real(p, user, password)
				}
			} else {
				silent := serveConns(t, func(c net.Conn) { <-release; c.Close() })
				src = strings.ReplaceAll(src, "HTTP_PORT", fmt.Sprint(silent))
				e.httpPort = silent
			}
			e.start(t, src)
			c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "GET http://plain.egress.test:%d/ HTTP/1.1\r\nHost: plain.egress.test\r\nProxy-Authorization: %s\r\n\r\n", e.httpPort, proxyBasic("ci", "pw"))
			if !tc.checks {
				e.waitLog(t, "decision", map[string]any{"mode": "http", "decision": "allow"})
			} else {
				time.Sleep(100 * time.Millisecond) // in the check
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			e.srv.Shutdown(ctx)
			cut, last := -1, -1
			for i, l := range e.log.lines(t) {
				if matches(l, tc.cut) {
					cut = i
				}
				if l["message"] == "shutdown" {
					last = i
				}
			}
			if cut < 0 || cut > last {
				t.Errorf("no line %v before Shutdown's last line:\n%s", tc.cut, e.log.String())
			}
		})
	}
}

// TestShutdownCutCheckIsNotAFailedLogin: a CONNECT with the right
// password, waiting for its turn at the password check when the grace
// ends, is logged client_closed, not auth_failed.
func TestShutdownCutCheckIsNotAFailedLogin(t *testing.T) {
	e := newEnv(t)
	e.start(t, authPolicy(t, "p", "pw"))
	entered, release := holdFirstCheck(t)
	e.connectAs(t, "other") // holds the client's turn at the check
	awaitSignal(t, entered, "the first password check")
	second := e.connectAs(t, "pw")
	time.Sleep(200 * time.Millisecond) // waiting for its turn
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	go func() { time.Sleep(time.Second); close(release) }()
	e.srv.Shutdown(ctx)
	d := e.clientDecision(t, second, map[string]any{"mode": "connect"})
	if d["reason"] != "client_closed" || d["detail"] != "closed by shutdown" {
		t.Errorf("the right password's CONNECT cut by Shutdown: %v, want client_closed", d)
	}
}

// TestHalfClosedClientFailedLogin: a client that half-closes after
// sending a wrong password still has a failed login logged: the check
// ran. Only a check that never ran (its turn's wait cut) is client_closed.
func TestHalfClosedClientFailedLogin(t *testing.T) {
	e := newEnv(t)
	e.start(t, authPolicy(t, "p", "pw"))
	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET http://plain.egress.test:%d/ HTTP/1.1\r\nHost: plain.egress.test\r\nProxy-Authorization: %s\r\n\r\n", e.httpPort, proxyBasic("ci", "wrong"))
	time.Sleep(20 * time.Millisecond) // the check has started
	c.(*net.TCPConn).CloseWrite()
	if d := e.clientDecision(t, c, map[string]any{"mode": "http"}); d["reason"] != "auth_failed" {
		t.Errorf("a wrong password, then a half-close: %v, want auth_failed", d)
	}
}

// holdFirstCheck makes the first password check wait until release is
// closed (entered is closed when it starts); later checks run at once.
func holdFirstCheck(t *testing.T) (entered, release chan struct{}) {
	real := checkPassword
	t.Cleanup(func() { checkPassword = real })
	entered, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	checkPassword = func(p *policy.Policy, user, password string) bool {
		first := false
		once.Do(func() { close(entered); first = true })
		if first {
			<-release
		}
		return real(p, user, password)
	}
	return entered, release
}

// connectAs sends a CONNECT to allowed.egress.test with ci's credentials
// (password) and returns the connection without reading the answer.
func (e *env) connectAs(t *testing.T, password string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	authority := fmt.Sprintf("allowed.egress.test:%d", e.tlsPort)
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n", authority, authority, proxyBasic("ci", password))
	return c
}

// TestShutdownCutsLookup: a CONNECT or plain request whose DNS lookup is
// unanswered when the grace ends is cut at once (miekg/dns would wait out
// the query timeout: it applies only a context's deadline) and logged
// client_closed.
func TestShutdownCutsLookup(t *testing.T) {
	for _, mode := range []string{"connect", "http"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t)
			var asked, release chan struct{}
			e.dnsAddr, asked, release = heldDNS(t)
			defer close(release)
			e.start(t, `
resolver { servers = ["DNS_ADDR"] }
server { allow_private_destinations = true }
policy "p" {
  allow "slow-tls" {
    hosts = ["slow.egress.test"]
    ports = [TLS_PORT]
  }
  allow "slow-http" {
    hosts       = ["slow.egress.test"]
    ports       = [HTTP_PORT]
    require_tls = false
  }
}
`)
			var c net.Conn
			if mode == "connect" {
				var resp *http.Response
				c, _, resp = e.connect(t, fmt.Sprintf("slow.egress.test:%d", e.tlsPort))
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("CONNECT: %s", resp.Status)
				}
				c.Write(clientHelloBytes("slow.egress.test"))
			} else {
				var err error
				if c, err = net.DialTimeout("tcp", e.proxyAddr, 5*time.Second); err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				fmt.Fprintf(c, "GET http://slow.egress.test:%d/ HTTP/1.1\r\nHost: slow.egress.test\r\n\r\n", e.httpPort)
			}
			awaitSignal(t, asked, "the lookup")
			e.shutdownCutting(t)
			if d := e.clientDecision(t, c, map[string]any{"mode": mode}); d["reason"] != "client_closed" {
				t.Errorf("decision %v, want client_closed", d)
			}
		})
	}
}
