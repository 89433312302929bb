package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sni"
)

// handleConnect runs one CONNECT tunnel: pre-check the destination, answer
// 200, read the ClientHello, decide with SNI and fingerprints, and only
// then dial the checked address and relay.
func (s *Server) handleConnect(req *http.Request, client net.Conn, _ *goproxy.ProxyCtx) {
	// The connection's slot, taken on accept (proxyListener), is the
	// tunnel's: it is freed when the tunnel ends.
	client, sl := detachSlot(client)
	// Registered with Shutdown from the start, so that it waits for this
	// CONNECT's decision line (a password check can take seconds) and
	// cancels its waits when the grace ends; nil once Shutdown began.
	tr := s.track(client)
	// handed: the relay owns the client now and cleans up when it ends;
	// this handler (and net/http's goroutine with its buffers) returns.
	handed := false
	defer func() {
		if !handed {
			client.Close()
			sl.free()
			if tr != nil {
				s.untrack(tr)
			}
		}
	}()
	c := s.newConn(ModeConnect, client.RemoteAddr().String())
	// The target as the client sent it, not net/http's URL parse of it,
	// which drops userinfo ("user@host:443") and decodes %-escapes
	// ("a%2eb"): it must be the plain authority-form host:port (RFC 9110
	// §9.3.6).
	t, err := ParseTarget(req.RequestURI, 0)
	if err != nil {
		c.host, c.detail = req.RequestURI, err.Error()
		if i := strings.LastIndexByte(c.host, '@'); i >= 0 {
			// Userinfo ("user:password@host:port"): its password must not
			// reach the log, in the host or in the parse error.
			c.host = c.host[i+1:]
			c.detail = "CONNECT target with userinfo (user:password@host:port): send credentials in Proxy-Authorization"
		}
		// Cut after the userinfo is gone: the client's bytes, up to the
		// header limit.
		c.host, c.detail = cut(c.host, maxLoggedValue), cut(c.detail, maxLoggedValue)
		c.decision = policy.Decision{Reason: policy.ReasonBadRequest}
		s.logDecision(c)
		writeStatus(client, req, http.StatusBadRequest, c)
		return
	}
	c.host, c.port = t.Name(), t.Port
	if tr == nil {
		c.refuse(policy.ReasonShuttingDown, "egressd is shutting down")
		s.logDecision(c)
		writeStatus(client, req, http.StatusServiceUnavailable, c)
		return
	}
	// The policy in force now checks the credentials and makes both of
	// the tunnel's decisions (here and on its hello), whatever reload
	// comes in between.
	c.pol = s.policy()
	user, authOK, cut := s.proxyUser(tr.ctx, req, c.pol)
	if cut {
		// The check never ran: Shutdown's grace ended while it waited.
		c.refuse(policy.ReasonClientClosed, "closed by shutdown")
		s.logDecision(c)
		return
	}
	if !authOK {
		c.decision = policy.Decision{Reason: policy.ReasonAuthFailed}
		s.logDecision(c)
		writeStatus(client, req, http.StatusProxyAuthRequired, c)
		return
	}
	r := policy.Request{Host: t.Host, Addr: t.Addr, Port: t.Port, Hello: policy.HelloPending, Client: c.client.Addr(), User: user}
	d := c.pol.Decide(&r)
	c.decision = d
	if !d.Allow {
		s.logDecision(c)
		writeStatus(client, req, denyStatus(c.pol, d, user), c)
		return
	}
	if s.isClosing() {
		// Shutdown began while it was checked: no new tunnel.
		c.refuse(policy.ReasonShuttingDown, "egressd is shutting down")
		s.logDecision(c)
		writeStatus(client, req, http.StatusServiceUnavailable, c)
		return
	}
	end := func() {
		s.untrack(tr)
		sl.free()
	}
	handed = true
	ok := false
	if _, err := client.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		c.refuse(policy.ReasonClientClosed, "writing the 200: "+err.Error())
		s.logDecision(c)
	} else {
		ok = s.tunnel(c, client, t, &r, tr, end)
	}
	if !ok {
		client.Close()
		end()
	}
}

// tunnel is the part of a tunnel after the 200 (or, for a transparent
// connection, after accept): hello, decision, dial, relay. For a
// transparent connection (r.Transparent) an allow is followed by
// destination verification, which may refuse or re-point the dial.
//
// When the tunnel is relaying, tunnel hands it to the relay and returns
// true at once: the goroutine that read the hello (with its grown stack
// and, for CONNECT, net/http's buffers) ends, so an idle tunnel costs only
// the relay. The relay closes client, and end then runs; when tunnel
// returns false (refused, failed) the caller closes client and runs end
// itself. tr is client's entry in s.tunnels.
func (s *Server) tunnel(c *conn, client net.Conn, t Target, r *policy.Request, tr *tracked, end func()) bool {
	var f firstBytes
	defer f.release()
	helloStart := time.Now()
	if reason, err := readHello(client, s.cfg.HelloTimeout, &f); reason != "" {
		if f.tls {
			c.fingerprint(&f.hello, false)
		}
		// No rule decided the first bytes, but a CONNECT's client was
		// identified by its request (its user, or cidr:POLICY): the line
		// keeps that identity. A transparent connection has none yet.
		c.decision = policy.Decision{Reason: reason, Identity: c.decision.Identity}
		c.detail = err.Error()
		s.logDecision(c)
		return false
	}
	r.Hello = policy.HelloNotTLS
	var hello *sni.Hello
	if f.tls {
		c.helloWait = max(time.Since(helloStart), time.Nanosecond)
		hello = &f.hello
	}
	t, ok := s.decideHello(tr.ctx, c, r, hello, false, t)
	if !ok {
		s.logDecision(c)
		return false
	}
	return s.dialAndRelay(c, client, &f, t, tr, end)
}

// dialAndRelay is the end of an allowed tunnel, whose first bytes f were
// read: dial t, log the decision, send f upstream and hand client and the
// upstream conn to the relay (see tunnel for client, tr and end). It
// releases f.
func (s *Server) dialAndRelay(c *conn, client net.Conn, f *firstBytes, t Target, tr *tracked, end func()) bool {
	defer f.release()
	up := s.dial(tr.ctx, c, t, "tcp")
	if tr.ctx.Err() != nil { // Shutdown gave up waiting: nothing goes upstream
		if up != nil {
			up.Close()
			up = nil
		}
		c.refuse(policy.ReasonClientClosed, "closed by shutdown")
	}
	s.logDecision(c)
	if up == nil {
		return false
	}
	// The first bytes must leave within dial_timeout (an upstream that
	// accepts and does not read would hold the tunnel before its idle
	// watch starts), and a forced Shutdown cuts them short too.
	_ = up.SetWriteDeadline(time.Now().Add(s.cfg.DialTimeout))
	stop := context.AfterFunc(tr.ctx, func() { _ = up.Close() }) // also for a DialContext conn without deadlines
	n, err := up.Write(f.bytes())
	if !stop() || err != nil {
		up.Close()
		if err == nil {
			err = errors.New("closed by shutdown")
		}
		s.logCloseFailed(c, int64(n), 0, fmt.Errorf("writing the first bytes upstream: %w", err))
		return false
	}
	_ = up.SetWriteDeadline(time.Time{})
	sent := int64(f.n)
	f.release()
	c.dropHello() // the log lines are written; the relay keeps only what logClose needs
	// A CONNECT client's bytes buffered with its request were all read
	// with the hello: relay on the socket itself (splice).
	abort := startRelay(unwrapConn(client), up, s.cfg.IdleTimeout, s.relayDone(c, sent, end))
	s.relaying(tr, abort)
	return true
}

// relayDone counts c as relaying and returns the relay's done callback:
// c's close line, with the sent bytes of the hello phase added, then end.
func (s *Server) relayDone(c *conn, sent int64, end func()) func(up, down int64) {
	s.metrics.relaying(c.mode, 1)
	return func(up, down int64) {
		s.metrics.relaying(c.mode, -1)
		s.logClose(c, sent+up, down)
		end()
	}
}

// decideHello decides r with the ClientHello (nil: the first bytes were not
// one), fingerprinted for TLS over TCP or QUIC, and verifies a transparent
// request's destination against the deciding rule. It returns the target
// to dial and whether to dial it; c.decision says why not.
func (s *Server) decideHello(ctx context.Context, c *conn, r *policy.Request, hello *sni.Hello, quic bool, t Target) (Target, bool) {
	if !s.decide(c, r, hello, quic) {
		return t, false
	}
	if !r.Transparent {
		return t, true
	}
	return s.verifyDst(ctx, c, t, helloName(r))
}

// decide fingerprints hello (nil: none) into c and r and records the
// policy's decision on r in c; it reports whether r is allowed. The policy
// is c.pol when the connection has one (a CONNECT's, from its request),
// else the one in force. It is c's last decision: c.pol is dropped, and
// what the checks after it need is in the decision.
func (s *Server) decide(c *conn, r *policy.Request, hello *sni.Hello, quic bool) bool {
	if hello != nil {
		c.fingerprint(hello, quic)
		r.Hello, r.SNI, r.JA3, r.JA4 = policy.HelloTLS, hello.ServerName, c.ja3, c.ja4
	}
	p := c.pol
	if p == nil {
		p = s.policy()
	}
	c.decision, c.pol = p.Decide(r), nil
	return c.decision.Allow
}

// helloName is r's SNI as a policy host name ("" when it is none).
func helloName(r *policy.Request) string {
	name, _ := policy.NormalizeSNI(r.SNI)
	return name
}

// writeStatus answers a refused CONNECT with a one-line plain-text reason.
func writeStatus(w net.Conn, req *http.Request, code int, c *conn) {
	writeAnswer(w, max(req.ProtoMajor, 1), req.ProtoMinor, code, refusalBody(code, c))
}

// writeAnswer writes a plain-text answer of egressd's own on a connection
// net/http does not serve (a hijacked CONNECT, one refused on accept),
// with Connection: close and a statusWriteTimeout deadline.
func writeAnswer(w net.Conn, major, minor, code int, body string) {
	challenge := ""
	if code == http.StatusProxyAuthRequired {
		challenge = "Proxy-Authenticate: " + proxyRealm + "\r\n"
	}
	resp := fmt.Sprintf("HTTP/%d.%d %d %s\r\n%sContent-Type: text/plain; charset=utf-8\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s",
		major, minor, code, http.StatusText(code), challenge, strconv.Itoa(len(body)), body)
	_ = w.SetWriteDeadline(time.Now().Add(statusWriteTimeout))
	_, _ = io.WriteString(w, resp)
}

// denyStatus is the HTTP status for a denial: 407 when the client gave no
// credentials and only a proxy user could be covered by a policy (p, the
// policy that decided d), else 403.
func denyStatus(p *policy.Policy, d policy.Decision, user string) int {
	if d.Reason == policy.ReasonNoPolicyForClient && user == "" && p.NeedsAuth() {
		return http.StatusProxyAuthRequired
	}
	return http.StatusForbidden
}

// refusalBody is the one-line text of a refusal, the same for CONNECT
// and plain HTTP: "egressd: denied HOST: REASON".
func refusalBody(code int, c *conn) string {
	return "egressd: " + verdictWord(code) + " " + c.host + ": " + string(c.decision.Reason) + "\n"
}

func verdictWord(code int) string {
	switch code {
	case http.StatusProxyAuthRequired:
		return "authentication required for"
	case http.StatusForbidden:
		return "denied"
	case http.StatusServiceUnavailable:
		return "refused"
	}
	return "bad request"
}
