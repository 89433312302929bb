package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/policy"
)

// handleHTTP decides an absolute-form http:// request on its host and port,
// and forwards it through a transport that can dial only the address this
// request was checked for. It returns the response goproxy writes back. p
// is the policy that checked the request's credentials.
func (s *Server) handleHTTP(req *http.Request, p *policy.Policy, user string, authOK, authCut bool) *http.Response {
	c := s.newConn(ModeHTTP, req.RemoteAddr)
	// req.URL.Host has no userinfo; it is the client's bytes, up to the
	// header limit, so a refusal logs it cut.
	if req.URL.Scheme != "http" {
		c.host = cut(req.URL.Host, maxLoggedValue)
		return s.refuseHTTP(req, c, http.StatusBadRequest, policy.ReasonBadRequest, "only http:// URLs can be proxied; use CONNECT for https")
	}
	t, err := ParseTarget(req.URL.Host, 80)
	if err != nil {
		c.host = cut(req.URL.Host, maxLoggedValue)
		return s.refuseHTTP(req, c, http.StatusBadRequest, policy.ReasonBadRequest, cut(err.Error(), maxLoggedValue))
	}
	c.host, c.port = t.Name(), t.Port
	if authCut {
		// The check never ran: the request's context ended while it
		// waited for its turn (the client went away, or Shutdown).
		c.refuse(policy.ReasonClientClosed, goneDetail(s))
		s.logDecision(c)
		return textResponse(req, http.StatusServiceUnavailable, "egressd: "+c.host+": "+string(c.decision.Reason)+"\n")
	}
	if !authOK {
		c.decision = policy.Decision{Reason: policy.ReasonAuthFailed}
		s.logDecision(c)
		return challengeResponse(req, c)
	}
	c.decision = p.Decide(&policy.Request{Host: t.Host, Addr: t.Addr, Port: t.Port, Hello: policy.HelloHTTP, Client: c.client.Addr(), User: user})
	if !c.decision.Allow {
		s.logDecision(c)
		if code := denyStatus(p, c.decision, user); code != http.StatusProxyAuthRequired {
			return textResponse(req, code, refusalBody(code, c))
		}
		return challengeResponse(req, c)
	}
	// The exchange runs on its client connection's slot (proxyListener).
	up := s.dial(req.Context(), c, t, "tcp")
	if up == nil && req.Context().Err() != nil {
		// The lookup or dial was cancelled, not failed.
		c.refuse(policy.ReasonClientClosed, goneDetail(s))
	}
	s.logDecision(c)
	if up == nil {
		if code := dialRefusalStatus(c.decision.Reason); code != http.StatusBadGateway {
			return textResponse(req, code, refusalBody(code, c))
		}
		return textResponse(req, http.StatusBadGateway, "egressd: "+c.host+": "+string(c.decision.Reason)+"\n")
	}
	return s.forward(req, c, up)
}

// dialRefusalStatus is the answer to a plain request refused at its dial:
// the checks there are the policy's as much as the decision's (every
// address private: 403, as a denied request; egressd's own listener: 400,
// as that CONNECT), and only a failed lookup or dial is the upstream's
// (502).
func dialRefusalStatus(r policy.Reason) int {
	switch r {
	case policy.ReasonPrivateDestination:
		return http.StatusForbidden
	case policy.ReasonBadRequest:
		return http.StatusBadRequest
	}
	return http.StatusBadGateway
}

// goneDetail says why a plain request's context ended before its answer:
// Shutdown closed its connection, or the client went away.
func goneDetail(s *Server) string {
	if s.isClosing() {
		return "closed by shutdown"
	}
	return "the client went away"
}

// forward sends req over the already dialed connection up and returns the
// response with a body that logs the close event when goproxy finishes
// copying it.
func (s *Server) forward(req *http.Request, c *conn, up net.Conn) *http.Response {
	// The transport may use only the connection dialed for this request's
	// checked address, and only once.
	var handed atomic.Bool
	wire := &wireConn{Conn: up}
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			if handed.Swap(true) {
				return nil, errUncheckedDial
			}
			return wire, nil
		},
		DisableKeepAlives:      true,
		DisableCompression:     true,
		ResponseHeaderTimeout:  s.headerTimeout,
		MaxResponseHeaderBytes: maxHeaderBytes,
	}
	out := req.Clone(req.Context())
	out.RequestURI = ""
	out.Host = ""
	if _, ok := out.Header["User-Agent"]; !ok {
		// The client sent none; net/http's transport would send its own
		// ("Go-http-client/1.1"). An empty value sends none, as
		// httputil.ReverseProxy does.
		out.Header.Set("User-Agent", "")
	}
	var client *http.ResponseController
	pc, _ := req.Context().Value(plainClientKey{}).(*plainClient)
	if pc != nil {
		client = pc.rc
	}
	// Once no body byte has moved either way for idle_timeout, the
	// exchange ends as an idle tunnel does: the upstream is closed and the
	// client connection's deadlines put in the past. That unblocks a
	// client that stopped sending its body or reading the response, and an
	// upstream that stopped sending or reading, each of which would
	// otherwise hold a connection slot and the upstream socket for as long
	// as it liked. Before the response head came, the client can still
	// read one: its write deadline stays, and it gets a 504. A connection
	// whose watch fired is closed once the request is done (wrapClient).
	var headed atomic.Bool
	past := time.Unix(1, 0)
	w := startIdleWatch(s.cfg.IdleTimeout, func() {
		h := headed.Load() // before closing up ends the wait for the head
		_ = up.Close()
		if client != nil {
			_ = client.SetReadDeadline(past)
			if h {
				_ = client.SetWriteDeadline(past)
			}
		}
	})
	if pc != nil {
		pc.watch = w
	}
	if out.Body != nil {
		out.Body = &watchedBody{ReadCloser: out.Body, last: &w.last}
	}
	resp, err := tr.RoundTrip(out)
	w.last.Store(monoNow()) // the response head came (or the exchange failed)
	switch {
	case err != nil:
	case resp.StatusCode == http.StatusSwitchingProtocols:
		// goproxy would write the 101 and then drop the upgraded
		// connection (never closing the body): refuse upgrades instead.
		_ = resp.Body.Close()
		err = errors.New("protocol upgrade")
	case resp.StatusCode < 100:
		// The transport takes any three digits; net/http's server panics
		// on writing a status under 100.
		_ = resp.Body.Close()
		err = fmt.Errorf("invalid status code %03d", resp.StatusCode)
	}
	if err != nil {
		w.stop()
		up.Close()
		code := http.StatusBadGateway
		var ne net.Error
		fired := w.fired()
		switch {
		case fired:
			code, err = http.StatusGatewayTimeout, fmt.Errorf("no response within idle_timeout (%v)", s.cfg.IdleTimeout)
		case errors.As(err, &ne) && ne.Timeout():
			code = http.StatusGatewayTimeout
		}
		err = fmt.Errorf("upstream: %w", err)
		s.logCloseFailed(c, wire.up.Load(), wire.down.Load(), err)
		resp := textResponse(req, code, "egressd: "+c.host+": "+cut(err.Error(), maxLoggedValue)+"\n")
		if fired && pc != nil {
			// The client's read deadline is past: net/http ends the
			// connection after this answer, rather than wrapClient
			// cutting it before its last chunk.
			resp.Header.Set("Connection", "close")
			pc.answered = true
		}
		return resp
	}
	headed.Store(true)
	if w.fired() && client != nil {
		_ = client.SetWriteDeadline(past) // it fired before headed was set
	}
	// The upstream's hop-by-hop fields are not the client's: among them,
	// Connection: Upgrade with Upgrade: websocket on a response that is
	// not a 101 would make goproxy hijack the client and drop the body.
	removeHopHeaders(resp.Header)
	// So are those among its trailers: goproxy announces the ones the head
	// declares, and copies what the body's end brings (responseBody
	// removes the hop-by-hop ones there again).
	removeHopHeaders(resp.Trailer)
	resp.Body = &responseBody{resp: resp, watchedBody: watchedBody{ReadCloser: resp.Body, last: &w.last, onClose: func(err error) {
		w.stop()
		tr.CloseIdleConnections()
		switch {
		case err == nil:
		case w.fired(): // it closed up
			err = fmt.Errorf("no body byte within idle_timeout (%v)", s.cfg.IdleTimeout)
		case req.Context().Err() != nil:
			err = nil // the client went away: not the upstream's failure
		default:
			err = fmt.Errorf("upstream body: %w", err)
		}
		s.logCloseFailed(c, wire.up.Load(), wire.down.Load(), err)
	}}}
	return resp
}

// wireConn counts a plain-HTTP exchange's bytes as they cross the upstream
// connection, heads included: the close line's bytes, so that a request
// that carries its data in a long URL or header fields is not logged as
// 0 bytes up.
type wireConn struct {
	net.Conn
	up, down atomic.Int64
}

func (c *wireConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.down.Add(int64(n))
	return n, err
}

// Write counts p before writing it: the upstream can answer, and the
// exchange end and be logged, before the writing goroutine runs again
// after its write returns (on a loaded machine it waits for a CPU). What
// was not written is taken back.
func (c *wireConn) Write(p []byte) (int, error) {
	c.up.Add(int64(len(p)))
	n, err := c.Conn.Write(p)
	c.up.Add(int64(n - len(p)))
	return n, err
}

// responseBody is an upstream response's body as goproxy copies it to the
// client. When the upstream's body fails (it reset or closed before the
// length its framing promised, or broke its chunking), the copy is cut
// off as httputil.ReverseProxy does: the close is logged with the error
// and the handler aborted, so that net/http closes the client connection
// without the end of a chunked body. goproxy would only note the error and
// finish the response, and the client would take what came for the whole
// body.
//
// At the body's end the transport has added the trailers that came with
// it to resp.Trailer: their hop-by-hop fields are removed before goproxy
// copies them to the client.
type responseBody struct {
	watchedBody
	resp *http.Response
}

func (b *responseBody) Read(p []byte) (int, error) {
	n, err := b.watchedBody.Read(p)
	if err != nil && err != io.EOF {
		b.fail(err)
		panic(http.ErrAbortHandler)
	}
	if err == io.EOF {
		removeHopHeaders(b.resp.Trailer)
	}
	return n, err
}

// handleOriginForm answers a request for a path ("GET /metrics"), not a
// URL: egressd serves nothing itself on its proxy listener (the admin
// listener has the metrics and health endpoints), so it is a bad request,
// logged like any refusal.
func (s *Server) handleOriginForm(w http.ResponseWriter, req *http.Request) {
	c := s.newConn(ModeHTTP, req.RemoteAddr)
	c.host = cut(req.Host, maxLoggedValue)
	c.refuse(policy.ReasonBadRequest, "a request for a path, not a URL: egressd is a proxy; set HTTP_PROXY or HTTPS_PROXY to it, or use the admin listener for metrics and health")
	s.logDecision(c)
	answerDeadline(req)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusBadRequest)
	_, _ = io.WriteString(w, "egressd: "+c.detail+"\n")
}

func (s *Server) refuseHTTP(req *http.Request, c *conn, code int, r policy.Reason, detail string) *http.Response {
	c.decision = policy.Decision{Reason: r}
	c.detail = detail
	s.logDecision(c)
	return textResponse(req, code, "egressd: "+detail+"\n")
}

// challengeResponse is a 407 asking for proxy credentials.
func challengeResponse(req *http.Request, c *conn) *http.Response {
	resp := textResponse(req, http.StatusProxyAuthRequired, refusalBody(http.StatusProxyAuthRequired, c))
	resp.Header.Set("Proxy-Authenticate", proxyRealm)
	return resp
}

// answerDeadline bounds the writing of a response egressd makes itself to
// a plain request's client (statusWriteTimeout): a client that sends
// requests and never reads the answers must not hold the goroutine
// serving it in a write. It bounds the reading of what is left of the
// request's body too (refusalTimeout): net/http reads it (up to 256 KiB)
// before it writes the answer, and again as the request ends, with no
// deadline of its own, so a client that declared a body and stopped
// sending it would hold the connection, unanswered, for as long as it
// liked. Past that deadline net/http answers all the same, with
// Connection: close; the write's deadline is the later one, so that the
// answer still goes out. A read deadline the exchange's idle watch put in
// the past stays there. net/http clears both once the request is done
// (server.go, after finishRequest, and as it reads the next request), so
// a later request on the connection, a relayed response or a CONNECT
// tunnel, does not inherit them.
func answerDeadline(req *http.Request) {
	if pc, _ := req.Context().Value(plainClientKey{}).(*plainClient); pc != nil {
		now := time.Now()
		_ = pc.rc.SetWriteDeadline(now.Add(statusWriteTimeout))
		if pc.watch == nil || !pc.watch.fired() {
			_ = pc.rc.SetReadDeadline(now.Add(refusalTimeout))
		}
	}
}

// textResponse is a response egressd makes itself, with its write bounded
// by answerDeadline.
func textResponse(req *http.Request, code int, body string) *http.Response {
	answerDeadline(req)
	resp := &http.Response{
		StatusCode:    code,
		Status:        http.StatusText(code),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
	return resp
}

// watchedBody notes in last when a byte was last read through it, for the
// exchange's idle watch, and runs onClose (when set) once, when it is
// closed or fails.
type watchedBody struct {
	io.ReadCloser
	last    *atomic.Int64
	once    sync.Once
	onClose func(err error)
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.last.Store(monoNow())
	}
	return n, err
}

func (b *watchedBody) Close() error {
	err := b.ReadCloser.Close()
	b.report(nil)
	return err
}

// fail closes the body after a read failed with err, and reports err.
func (b *watchedBody) fail(err error) {
	_ = b.ReadCloser.Close()
	b.report(err)
}

func (b *watchedBody) report(err error) {
	if b.onClose != nil {
		b.once.Do(func() { b.onClose(err) })
	}
}
