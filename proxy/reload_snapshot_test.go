package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/quic-go/quic-go"

	"github.com/egressd/egressd/policy"
)

// These tests reload the configuration while a connection is between its
// request and its dial (a DNS lookup held open, a password being hashed,
// a hello not yet sent). A connection must be decided, checked and dialed
// under the one policy that was in force when its request came: never
// partly under the one loaded since.

// reload parses src as start does and reloads e.srv with it.
func (e *env) reload(t *testing.T, src string) {
	t.Helper()
	cfg, diags := policy.Parse([]policy.File{{Name: "reload.hcl", Src: []byte(e.expand(src))}})
	if diags.HasErrors() {
		t.Fatal(policy.FormatDiagnostics(diags))
	}
	if err := e.srv.Reload(cfg, nil); err != nil {
		t.Fatal(err)
	}
}

// heldDNS answers slow.egress.test A 127.0.0.1 only once release is closed
// (or after 5 s); asked is closed at the first such query.
func heldDNS(t *testing.T) (addr string, asked, release chan struct{}) {
	asked, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	addr = serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if q.Question[0].Qtype == dns.TypeA && strings.EqualFold(q.Question[0].Name, "slow.egress.test.") {
			once.Do(func() { close(asked) })
			select {
			case <-release:
			case <-time.After(5 * time.Second):
			}
			rr, _ := dns.NewRR("slow.egress.test. 60 IN A 127.0.0.1")
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	return addr, asked, release
}

func awaitSignal(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// TestReloadDuringLookup: a plain request allowed by a policy that refuses
// private destinations resolves to 127.0.0.1; a reload during the lookup
// loads a policy that opens private destinations (and does not allow the
// host). The address check is the deciding policy's: 403.
func TestReloadDuringLookup(t *testing.T) {
	e := newEnv(t)
	var asked, release chan struct{}
	e.dnsAddr, asked, release = heldDNS(t)
	e.start(t, `
resolver { servers = ["DNS_ADDR"] }
policy "old" {
  allow "slow" {
    hosts       = ["slow.egress.test"]
    ports       = [HTTP_PORT]
    require_tls = false
  }
}
`)
	code := make(chan int, 1)
	go func() {
		resp, err := e.client().Get(fmt.Sprintf("http://slow.egress.test:%d/", e.httpPort))
		if err != nil {
			code <- 0
			return
		}
		resp.Body.Close()
		code <- resp.StatusCode
	}()
	awaitSignal(t, asked, "the lookup")
	e.reload(t, `
resolver { servers = ["DNS_ADDR"] }
server { allow_private_destinations = true }
policy "new" {
  allow "other" {
    hosts       = ["other.egress.test"]
    require_tls = false
  }
}
`)
	close(release)
	if got := <-code; got != http.StatusForbidden {
		t.Errorf("status %d, want 403: the deciding policy refuses private destinations", got)
	}
	e.waitLog(t, "decision", map[string]any{"policy": "old", "decision": "deny", "reason": "private_destination"})
}

// TestReloadDuringVerification: a transparent connection whose original
// destination is not an address of its SNI name, decided by a policy whose
// verify_destination is refuse; a reload during the verification lookup
// loads one with verify_destination = "redirect". It is refused
// (dst_mismatch), not redirected.
func TestReloadDuringVerification(t *testing.T) {
	e := newEnv(t)
	var asked, release chan struct{}
	e.dnsAddr, asked, release = heldDNS(t)
	other := serveEcho(listenOn(t, "127.0.0.9:"+fmt.Sprint(e.tlsPort)))
	g := e.startTransparent(t, `
server { allow_private_destinations = true }
resolver { servers = ["DNS_ADDR"] }
policy "old" {
  allow "web" {
    hosts = ["slow.egress.test"]
    ports = [TLS_PORT]
  }
}
`)
	c := g.dial(t, "127.0.0.9:"+fmt.Sprint(e.tlsPort))
	go c.Write(clientHelloBytes("slow.egress.test"))
	awaitSignal(t, asked, "the verification lookup")
	e.reload(t, `
server {
  allow_private_destinations = true
  verify_destination         = "redirect"
}
resolver { servers = ["DNS_ADDR"] }
policy "new" {
  allow "other" { hosts = ["other.egress.test"] }
}
`)
	close(release)
	d := e.clientDecision(t, c, map[string]any{"mode": "transparent"})
	if d["decision"] != "deny" || d["reason"] != "dst_mismatch" || d["policy"] != "old" {
		t.Errorf("decision %v, want deny dst_mismatch by policy old", d)
	}
	if n := other.Load(); n != 0 {
		t.Errorf("the original destination got %d connections", n)
	}
}

func proxyBasic(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

// TestReloadDuringTunnelHello: a CONNECT authenticated as ci under policy
// "old"; a reload rotates ci's password (policy "new") before the tunnel's
// hello. The hello is decided by "old", which checked the credentials,
// not by "new" under an identity its password check never gave; a new
// CONNECT with the old password is refused.
func TestReloadDuringTunnelHello(t *testing.T) {
	e := newEnv(t)
	e.start(t, authPolicy(t, "old", "old-password"))
	authority := fmt.Sprintf("allowed.egress.test:%d", e.tlsPort)
	connect := func(password string) (net.Conn, int) {
		c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n", authority, authority, proxyBasic("ci", password))
		resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
		if err != nil {
			t.Fatal(err)
		}
		return c, resp.StatusCode
	}
	held, code := connect("old-password")
	if code != http.StatusOK {
		t.Fatalf("CONNECT before the reload: %d", code)
	}
	e.reload(t, authPolicy(t, "new", "new-password"))
	if _, code := connect("old-password"); code != http.StatusProxyAuthRequired {
		t.Errorf("CONNECT with the old password after the reload: %d, want 407", code)
	}
	tc := tls.Client(held, &tls.Config{ServerName: "allowed.egress.test", RootCAs: e.ca.pool})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("the held tunnel's handshake: %v", err)
	}
	d := e.clientDecision(t, held, map[string]any{"mode": "connect", "sni": "allowed.egress.test"})
	if d["policy"] != "old" || d["identity"] != "ci" {
		t.Errorf("the held tunnel's hello was decided by %v as %v, want policy old, which checked its credentials", d["policy"], d["identity"])
	}
}

// TestReloadDuringPasswordCheck: a reload that rotates ci's password lands
// while the old policy hashes the request's password: the request is
// decided by the policy that checked it.
func TestReloadDuringPasswordCheck(t *testing.T) {
	e := newEnv(t)
	e.start(t, authPolicy(t, "old", "old-password"))
	newSrc := authPolicy(t, "new", "new-password")
	real := checkPassword
	t.Cleanup(func() { checkPassword = real })
	var once sync.Once
	checkPassword = func(p *policy.Policy, user, password string) bool {
		ok := real(p, user, password)
		once.Do(func() { e.reload(t, newSrc) })
		return ok
	}
	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET http://plain.egress.test:%d/ HTTP/1.1\r\nHost: plain.egress.test\r\nProxy-Authorization: %s\r\n\r\n", e.httpPort, proxyBasic("ci", "old-password"))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := e.clientDecision(t, c, map[string]any{"mode": "http"})
	if d["policy"] != "old" || d["decision"] != "allow" || resp.StatusCode != http.StatusOK {
		t.Errorf("%d, decision %v: want 200 allowed by policy old, which checked the password", resp.StatusCode, d)
	}
}

// TestReloadReleasesHeldQUICFlows: a QUIC flow denied under the old policy
// drops its socket's datagrams for quicDenyHold; a reload to a policy that
// allows it ends the hold, so the same socket's next connection is decided
// by the new policy.
func TestReloadReleasesHeldQUICFlows(t *testing.T) {
	e := newEnv(t)
	up, _ := quicUpstream(t, e)
	const src = `
server { hello_timeout = "1s" }
resolver { servers = ["DNS_ADDR"] }
policy "cf" {
  allow "tunnel-quic" {
    cidrs = ["127.0.0.0/8"]
    sni   = [SNIS]
    ports = [QUIC_PORT]
  }
}
`
	policyFor := func(snis string) string {
		return strings.NewReplacer("SNIS", snis, "QUIC_PORT", fmt.Sprint(up.Port())).Replace(src)
	}
	q := e.startQUIC(t, policyFor(`"quic.cftunnel.com"`), up.Port())
	tr := &quic.Transport{Conn: q.socket(t, up)}
	t.Cleanup(func() { tr.Close() })
	dial := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		conf := &tls.Config{ServerName: "allowed.egress.test", RootCAs: e.ca.pool, NextProtos: []string{quicALPN}}
		c, err := tr.Dial(ctx, q.addr, conf, quicTestConfig())
		if err != nil {
			return err
		}
		defer c.CloseWithError(0, "")
		return quicEcho(c, []byte("x"))
	}
	if err := dial(); err == nil {
		t.Fatal("allowed before the reload")
	}
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "deny"})
	e.reload(t, policyFor(`"quic.cftunnel.com", "allowed.egress.test"`))
	if err := dial(); err != nil {
		t.Errorf("after a reload that allows it, the denied flow's socket still gets nothing: %v", err)
	}
}
