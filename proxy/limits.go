package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/policy"
)

// limiter counts the connections egressd holds open (connections to the
// proxy port, with the CONNECT tunnels and plain-HTTP exchanges they
// carry; transparent connections; QUIC flows; DNS-over-TCP connections),
// in total and
// per client address, against server.max_connections and
// server.max_connections_per_client. A client's entry is deleted when its
// count drops to zero, so the map never holds more entries than there are
// open connections.
type limiter struct {
	max, perClient int // 0: no limit

	mu      sync.Mutex
	total   int
	clients map[netip.Addr]int
}

func newLimiter(max, perClient int) *limiter {
	return &limiter{max: max, perClient: perClient, clients: make(map[netip.Addr]int)}
}

// acquire takes a slot for a connection from client. When a limit is
// reached it takes nothing and returns a detail naming the limit; otherwise
// the caller must call release(client) exactly once.
func (l *limiter) acquire(client netip.Addr) (detail string, ok bool) {
	client = client.Unmap().WithZone("")
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max > 0 && l.total >= l.max {
		return fmt.Sprintf("max_connections: %d connections open in total", l.max), false
	}
	if n := l.clients[client]; l.perClient > 0 && n >= l.perClient {
		return fmt.Sprintf("max_connections_per_client: %d connections open from %s", l.perClient, client), false
	}
	l.total++
	l.clients[client]++
	return "", true
}

// release returns a slot taken by acquire.
func (l *limiter) release(client netip.Addr) {
	client = client.Unmap().WithZone("")
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if n := l.clients[client] - 1; n > 0 {
		l.clients[client] = n
	} else {
		delete(l.clients, client)
	}
}

// open returns the number of slots taken.
func (l *limiter) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// slot is a connection's hold on the limiter, released at most once.
type slot struct {
	once   sync.Once
	l      *limiter
	client netip.Addr
}

// acquireSlot takes a slot for c's client. On refusal it turns c's
// decision into a deny with connection_limit and returns nil; the caller
// logs it. A nil *slot's free is a no-op.
func (s *Server) acquireSlot(c *conn) *slot {
	a := c.client.Addr()
	detail, ok := s.limits.acquire(a)
	if !ok {
		c.refuse(policy.ReasonConnectionLimit, detail)
		return nil
	}
	return &slot{l: s.limits, client: a}
}

// free releases the slot; later calls do nothing.
func (sl *slot) free() {
	if sl == nil {
		return
	}
	sl.once.Do(func() { sl.l.release(sl.client) })
}

// proxyListener is the proxy port's listener (http_listen). Each accepted
// connection takes a slot until it is closed, so that a connection between
// requests (its head being read, its credentials being checked, idle after
// a refusal or a finished exchange) counts against max_connections and
// max_connections_per_client as a tunnel does: one client cannot hold
// descriptors and goroutines beyond its share. A CONNECT or http://
// request that is allowed runs on its connection's slot and takes no
// other. A connection over a limit is refused on accept: a deny line of
// mode proxy with reason connection_limit, then (refuseOverLimit) its
// request head is read and answered 503.
type proxyListener struct {
	net.Listener
	s *Server
}

const (
	// maxRefusing bounds the over-limit connections whose request is being
	// read to answer it 503 (refuseOverLimit), each with a goroutine, a
	// descriptor and a refusalHeadBytes buffer for up to refusalTimeout:
	// 64 is 256 KiB and 64 descriptors at most, whatever a client floods.
	// Beyond it an over-limit connection is closed at once.
	maxRefusing = 64
	// refusalTimeout bounds reading an over-limit connection's request
	// head, and what is left of it after the 503 (whose write has
	// statusWriteTimeout): a client sends its request at once.
	refusalTimeout = time.Second
	// refusalHeadBytes is as much of the request head as is read before
	// answering: enough for any CONNECT and most requests; the rest is not
	// needed to refuse.
	refusalHeadBytes = 4 << 10
)

func (l proxyListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err // net/http backs off a temporary error
		}
		sl, detail := l.s.acceptSlot(c, ModeProxy)
		if sl == nil {
			select {
			case l.s.refusing <- struct{}{}:
				go func() {
					refuseOverLimit(c, "egressd: refused: "+string(policy.ReasonConnectionLimit)+" ("+detail+")\n")
					<-l.s.refusing
				}()
			default:
				_ = c.Close()
			}
			continue
		}
		return &slotConn{Conn: c, sl: sl, s: l.s}, nil
	}
}

// acceptSlot takes a slot for a connection a listener accepted (mode
// proxy or dns). Over a limit it logs the deny line (connection_limit) and
// returns nil and the limit's detail; no record is made otherwise.
func (s *Server) acceptSlot(c net.Conn, mode string) (*slot, string) {
	var client netip.AddrPort
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		client = ta.AddrPort()
	} else {
		client, _ = netip.ParseAddrPort(c.RemoteAddr().String())
	}
	detail, ok := s.limits.acquire(client.Addr())
	if !ok {
		rec := s.newConnFrom(mode, client)
		rec.refuse(policy.ReasonConnectionLimit, detail)
		s.logDecision(rec)
		return nil, detail
	}
	return &slot{l: s.limits, client: client.Addr()}, ""
}

// refuseOverLimit answers an over-limit connection 503 with body once its
// request head has come (or refusalHeadBytes of it, or refusalTimeout
// passed), and closes it. Answered before its request was sent, an HTTP
// client takes the 503 for an unsolicited response and fails with an
// error of its own (Go's net/http does); answered after, it shows the
// 503.
func refuseOverLimit(c net.Conn, body string) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(refusalTimeout))
	var buf [refusalHeadBytes]byte
	for n := 0; n < len(buf); {
		k, err := c.Read(buf[n:])
		n += k
		if err != nil || bytes.Contains(buf[max(0, n-k-3):n], []byte("\r\n\r\n")) {
			break
		}
	}
	writeAnswer(c, 1, 1, http.StatusServiceUnavailable, body)
	// Closed with request bytes unread (a body, a head past the buffer),
	// the socket would send a reset, which can reach the client before
	// it reads the 503. Half-close, then read what is left, within the
	// same deadline.
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		_, _ = io.Copy(io.Discard, c)
	}
}

// slotConn is an accepted connection (proxy port, DNS over TCP) with its
// slot, released on Close unless a CONNECT took it over (detachSlot).
type slotConn struct {
	net.Conn
	sl *slot

	// On the proxy port (s set): where the request being read stands
	// (reqNone, reqReading, reqDone), so that one that reaches no handler
	// is logged once (Write, proxyConnState); s to log it with.
	req atomic.Uint32
	s   *Server
}

// A proxy-port connection's request, as slotConn.req. It goes back to
// reqNone when net/http is done with a request (StateIdle), not when the
// next one is seen: net/http reports StateActive after readRequest only
// when that read bytes off the wire or parsed a head, and a keep-alive
// connection's next request usually came whole in the read that woke the
// idle connection (bufio's Peek), or was pipelined behind the last; one
// the parser refuses then (a malformed request line, an unknown version
// or transfer coding) never becomes active, and must be logged all the
// same.
const (
	reqNone    uint32 = iota // no byte of a request read since the last one ended
	reqReading               // bytes read; neither handled nor logged yet
	reqDone                  // handled by egressd (wrapClient), or logged here
)

// Read marks a request begun when bytes come between requests, but not
// for empty lines (CR, LF) alone: RFC 9112 §2.2 lets a client send them
// before a request line (some send one after a POST body), and net/http
// skips them after a POST, or closes without a word when the connection
// ends in them; that is no request.
func (c *slotConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.s != nil && c.req.Load() == reqNone {
		if bytes.ContainsFunc(p[:n], notCRLF) {
			c.req.CompareAndSwap(reqNone, reqReading)
		}
	}
	return n, err
}

func notCRLF(r rune) bool { return r != '\r' && r != '\n' }

// Write logs, before net/http's own answer goes out, a request that
// reached no handler: net/http refuses it itself (a malformed request
// line, URL or Host, a head over the limit, an unknown protocol
// version, an Expect it does not know), and egressd's refusals all have
// a decision line. No other write comes before a request is handled.
func (c *slotConn) Write(p []byte) (int, error) {
	if c.s != nil && c.req.Load() != reqDone && c.req.Swap(reqDone) != reqDone {
		line, _, _ := bytes.Cut(p, []byte("\r\n"))
		c.s.logUnhandled(c, policy.ReasonBadRequest, "refused by the HTTP parser: "+cut(string(line), maxLoggedValue))
	}
	return c.Conn.Write(p)
}

// slotConnKey is the proxy-port connection in a request's context.
type slotConnKey struct{}

// withSlotConn is the proxy server's ConnContext: it puts the connection
// in its requests' contexts, for wrapClient to mark them handled.
func withSlotConn(ctx context.Context, c net.Conn) context.Context {
	if sc, ok := c.(*slotConn); ok {
		return context.WithValue(ctx, slotConnKey{}, sc)
	}
	return ctx
}

// proxyConnState is the proxy server's ConnState. net/http answers some
// requests itself, before any handler (400 for a malformed request line,
// URL or Host, 431, 505, 501, 417: slotConn.Write logs those), or gives
// up on a head cut short or not complete within readHeaderTimeout, or on
// a request read as Shutdown began: such a request would leave no
// decision line. When net/http closes a connection with a request whose
// bytes it read and that neither reached a handler nor was logged, it is
// logged here.
func (s *Server) proxyConnState(nc net.Conn, st http.ConnState) {
	c, ok := nc.(*slotConn)
	if !ok || c.s == nil {
		return
	}
	switch st {
	case http.StateActive:
		c.req.CompareAndSwap(reqNone, reqReading)
	case http.StateIdle:
		c.req.Store(reqNone) // the next request, if any, is new
	case http.StateClosed:
		if c.req.Swap(reqDone) == reqReading {
			if s.isClosing() {
				// net/http drops a request it reads once Shutdown
				// began, unanswered.
				s.logUnhandled(c, policy.ReasonShuttingDown, "egressd is shutting down")
			} else {
				s.logUnhandled(c, policy.ReasonBadRequest, "no complete request head (cut short, or not within the header timeout)")
			}
		}
	}
}

// logUnhandled logs a proxy-port request egressd's handler never saw: a
// deny of mode proxy.
func (s *Server) logUnhandled(c net.Conn, r policy.Reason, detail string) {
	rec := s.newConn(ModeProxy, c.RemoteAddr().String())
	rec.refuse(r, detail)
	s.logDecision(rec)
}

func (c *slotConn) Close() error {
	c.sl.free() // at most once
	return c.Conn.Close()
}

// CloseWrite half-closes the socket: net/http does so (and waits for the
// client) after answering a request whose body it did not read, when the
// connection has this method; without it the client gets a reset.
func (c *slotConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// detachSlot takes the slot of a hijacked proxy-port connection (a
// *slotConn, perhaps under a prefixConn) and returns the connection
// without the wrapper, so the relay gets the socket itself. The caller
// frees the slot when the tunnel ends. For another conn (a test's) it
// returns c and a nil slot.
func detachSlot(c net.Conn) (net.Conn, *slot) {
	switch pc := c.(type) {
	case *slotConn:
		return pc.Conn, pc.sl
	case *prefixConn:
		if inner, ok := pc.Conn.(*slotConn); ok {
			pc.Conn = inner.Conn
			return pc, inner.sl
		}
	}
	return c, nil
}
