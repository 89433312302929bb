package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// closeLinesPerAllow checks the decision log's invariant: every allowed
// decision line has exactly one close line with its conn, and nothing
// else has one; and egressd_close_total agrees with the close lines.
func closeLinesPerAllow(t *testing.T, e *env, mode string) {
	t.Helper()
	allowed := map[string]int{}
	closes := map[string]int{}
	for _, l := range e.log.lines(t) {
		if l["mode"] != mode {
			continue
		}
		id := fmt.Sprint(l["conn"])
		switch {
		case l["message"] == "decision" && l["decision"] == "allow":
			allowed[id]++
		case l["message"] == "close":
			closes[id]++
		}
	}
	for id := range allowed {
		if closes[id] != 1 {
			t.Errorf("mode %s: allowed conn %s has %d close lines, want 1", mode, id, closes[id])
		}
	}
	for id, n := range closes {
		if allowed[id] != 1 {
			t.Errorf("mode %s: conn %s has %d close lines and no allow line", mode, id, n)
		}
	}
	got := value(t, gather(t, e.srv), metricCloses, "mode="+mode)
	if want := len(allowed); got != float64(want) {
		t.Errorf("%s{mode=%q} = %v, want %d (one per allowed connection)", metricCloses, mode, got, want)
	}
}

// TestQUICOtherConnectionCloseLine: another QUIC connection that
// is allowed on the socket of a relaying flow gets its own decision line
// with its own conn id ("decision":"allow"). Like every allowed
// connection it must get a close line with that conn when it ends (with
// its flow, here at Shutdown), and be counted in egressd_close_total.
func TestQUICOtherConnectionCloseLine(t *testing.T) {
	e := newEnv(t)
	up, _ := quicUpstream(t, e)
	q := e.startQUIC(t, quicLongIdlePolicy, up.Port())
	tr := &quic.Transport{Conn: q.socket(t, up)}
	defer tr.Close()
	dial := func(name string) *quic.Conn {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := tr.Dial(ctx, q.addr, &tls.Config{ServerName: name, RootCAs: e.ca.pool, NextProtos: []string{quicALPN}}, quicTestConfig())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return c
	}
	first := dial("quic.cftunnel.com")
	defer first.CloseWithError(0, "")
	if err := quicEcho(first, []byte("first")); err != nil {
		t.Fatal(err)
	}
	other := dial("allowed.egress.test")
	defer other.CloseWithError(0, "")
	if err := quicEcho(other, []byte("other")); err != nil {
		t.Fatal(err)
	}
	d := e.waitLog(t, "decision", map[string]any{"mode": "quic", "sni": "allowed.egress.test", "decision": "allow"})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
	e.waitLog(t, "close", map[string]any{"mode": "quic"})
	if n := e.countLines(t, "close", map[string]any{"conn": d["conn"]}); n != 1 {
		t.Errorf("the allowed other connection (conn %v) has %d close lines, want 1:\n%s", d["conn"], n, e.log.String())
	}
	closeLinesPerAllow(t, e, ModeQUIC)
}

// TestQUICEvictedOtherConnectionCloseLine: when a flow holds
// quicMaxOtherConns verdicts, the oldest goes and its connection's next
// first flight is decided again, with a new allow line and conn. The
// evicted allowed connection's close line comes then: without it that
// conn would never get one (the later decision has another conn).
func TestQUICEvictedOtherConnectionCloseLine(t *testing.T) {
	e := newEnv(t)
	up, _ := udpSink(t)
	q := e.startQUIC(t, quicLongIdlePolicy, up.Port())
	c := q.socket(t, up)
	allowed := func() []byte { return quicCrypto(0, quicClientHello(t, "quic.cftunnel.com")) }
	c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: []byte{1, 2, 3, 4, 5, 6, 7, 8}, frames: allowed(), padTo: 1200}), q.addr)
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "allow"})
	// quicMaxOtherConns+1 other connections: the first one's verdict is
	// evicted by the last.
	for i := range quicMaxOtherConns + 1 {
		c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: []byte{9, 9, 9, 9, 9, 9, 9, byte(i)}, frames: allowed(), padTo: 1200}), q.addr)
		waitFor(t, "the other connection's allow line", func() bool {
			return e.countLines(t, "decision", map[string]any{"decision": "allow"}) == i+2
		})
	}
	first := e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "allow", "conn": 2})
	waitFor(t, "the evicted connection's close line", func() bool {
		return e.countLines(t, "close", map[string]any{"conn": first["conn"]}) == 1
	})
	if n := e.countLines(t, "close", nil); n != 1 {
		t.Errorf("%d close lines before Shutdown, want the evicted connection's 1:\n%s", n, e.log.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
	closeLinesPerAllow(t, e, ModeQUIC)
}

// TestUnparsedRequestLogged: a request that net/http refuses
// itself, before egressd's handler sees it (a malformed CONNECT
// authority or URL, a head over the limit, an unknown protocol version,
// TLS sent to the plain proxy port), or whose head is cut short, must
// still get exactly one decision line (README: "A malformed one gets 400
// (reason bad_request)"; one decision per connection or request), and be
// counted. It got none: the probes were invisible. A connection that
// sends nothing, and requests egressd answers itself, keep their one
// line or none.
func TestUnparsedRequestLogged(t *testing.T) {
	e := newEnv(t)
	e.start(t, `
policy "p" {
  allow "a" {
    hosts = ["example.com"]
    ports = [443]
  }
}
`)
	tlsHello := append([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}, make([]byte, 64)...)
	for _, tc := range []struct {
		name   string
		send   []byte
		status int    // answer expected, 0 for none, -1 either
		lines  int    // decision lines from the connection
		want   string // its reason (mode proxy unless handled)
	}{
		{"bracket authority", []byte("CONNECT [::1:443 HTTP/1.1\r\nHost: x\r\n\r\n"), 400, 1, "bad_request"},
		{"bad escape authority", []byte("CONNECT %zz:443 HTTP/1.1\r\nHost: x\r\n\r\n"), 400, 1, "bad_request"},
		{"bad escape URL", []byte("GET http://%zz/ HTTP/1.1\r\nHost: x\r\n\r\n"), 400, 1, "bad_request"},
		{"unknown version", []byte("CONNECT example.com:443 HTTP/9.9\r\nHost: x\r\n\r\n"), 505, 1, "bad_request"},
		{"head too large", []byte("GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nX: " + strings.Repeat("a", maxHeaderBytes+8192) + "\r\n\r\n"), 431, 1, "bad_request"},
		{"TLS to the proxy port", tlsHello, 400, 1, "bad_request"},
		{"head cut short", []byte("CONNECT example.com:443 HTTP/1.1\r\nHo"), -1, 1, "bad_request"},
		{"nothing sent", nil, 0, 0, ""},
		{"refused by egressd", []byte("CONNECT other.example:443 HTTP/1.1\r\nHost: x\r\n\r\n"), 403, 1, "no_rule"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e.dialProxy(t)
			c.Write(tc.send)
			c.(*net.TCPConn).CloseWrite()
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			switch {
			case tc.status < 0:
			case tc.status == 0 && err == nil:
				t.Errorf("answer %s, want none", resp.Status)
			case tc.status != 0 && err != nil:
				t.Fatalf("no answer: %v", err)
			case tc.status != 0 && resp.StatusCode != tc.status:
				t.Errorf("answer %s, want %d", resp.Status, tc.status)
			}
			from := map[string]any{"client": c.LocalAddr().String()}
			if tc.lines > 0 {
				want := map[string]any{"client": c.LocalAddr().String(), "decision": "deny", "reason": tc.want}
				if tc.want == "bad_request" {
					want["mode"] = ModeProxy
				}
				e.waitLog(t, "decision", want)
			} else {
				time.Sleep(100 * time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond) // a second line would come now
			if n := e.countLines(t, "decision", from); n != tc.lines {
				t.Errorf("%d decision lines from the connection, want %d:\n%s", n, tc.lines, e.log.String())
			}
		})
	}
	if got := value(t, gather(t, e.srv), metricDecisions, "mode=proxy", "policy=", "rule=", "decision=deny", "reason=bad_request", "would_deny=false"); got != 7 {
		t.Errorf("%s{mode=proxy,reason=bad_request} = %v, want 7", metricDecisions, got)
	}
}

// TestWatchFailureIsNoReload: when the configuration's files
// cannot be watched (inotify limits reached, for one), a reload is still
// one reload: README's "Each reload writes one line" and
// egressd_reloads_total{outcome} count reloads. The failed watch was
// logged as a refused reload and counted as one, at the start (no reload
// at all) and again at every SIGHUP that then reloaded fine, so an alert
// on failed reloads fired for every good configuration push.
func TestWatchFailureIsNoReload(t *testing.T) {
	old := watchDirsFunc
	watchDirsFunc = func([]string, []string) (*dirWatcher, error) {
		return nil, fmt.Errorf("inotify_init1: %w", syscall.EMFILE)
	}
	defer func() { watchDirsFunc = old }()
	path := filepath.Join(t.TempDir(), "egressd.hcl")
	if err := os.WriteFile(path, []byte(`
policy "p" {
  allow "a" {
    hosts = ["example.com"]
    ports = [443]
  }
}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	hup := make(chan os.Signal, 1)
	w := watching(t, path, path, hup)
	hup <- syscall.SIGHUP
	w.waitReloads(1, "SIGHUP")
	var reloads []string
	for _, l := range strings.Split(strings.TrimSpace(w.log.String()), "\n") {
		if strings.Contains(l, `"message":"reload"`) {
			reloads = append(reloads, l)
		}
	}
	if len(reloads) != 1 || !strings.Contains(reloads[0], `"outcome":"ok"`) {
		t.Errorf("one SIGHUP reload: reload lines %q, want one, ok", reloads)
	}
	if !strings.Contains(w.log.String(), "inotify_init1") {
		t.Errorf("the failed watch is not logged:\n%s", w.log.String())
	}
	mfs := gather(t, w.s)
	for outcome, want := range map[string]float64{reloadOK: 1, reloadError: 0} {
		if got := value(t, mfs, metricReloads, "outcome="+outcome); got != want {
			t.Errorf("%s{outcome=%s} = %v, want %v", metricReloads, outcome, got, want)
		}
	}
}

// heldListener hands out its first connection only once release is
// closed.
type heldListener struct {
	net.Listener
	accepted, release chan struct{}
}

func (l *heldListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	select {
	case <-l.accepted:
	default:
		close(l.accepted)
		<-l.release
	}
	return c, nil
}

// TestTransparentAcceptedAtShutdown: a redirected connection that
// the goroutine path accepted as Shutdown began was closed without any
// decision line; it is refused with shutting_down, as a CONNECT then is.
func TestTransparentAcceptedAtShutdown(t *testing.T) {
	e := newEnv(t)
	e.start(t, `
policy "p" {
  allow "a" {
    cidrs = ["203.0.113.0/24"]
    ports = [443]
  }
}
`)
	g, ln := e.newGateway(t)
	hl := &heldListener{Listener: ln, accepted: make(chan struct{}), release: make(chan struct{})}
	go e.srv.ServeTransparent(hl) // not a *net.TCPListener: the goroutine path
	c := g.dial(t, "203.0.113.1:443")
	<-hl.accepted
	done := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
		close(done)
	}()
	waitFor(t, "Shutdown to begin", e.srv.isClosing)
	close(hl.release)
	<-done
	e.waitLog(t, "decision", map[string]any{"client": c.LocalAddr().String(), "mode": "transparent", "decision": "deny", "reason": "shutting_down", "host": "203.0.113.1", "port": 443})
}
