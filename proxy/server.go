package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"
	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/egressd/egressd/policy"
)

const (
	// maxHeaderBytes bounds a proxy request's header block. CONNECT and
	// forwarded requests carry a few hundred bytes; 32 KiB leaves room for
	// large cookies without letting a client park megabytes in memory.
	maxHeaderBytes = 32 << 10
	// readHeaderTimeout bounds how long a client may take to send its
	// request line and headers (slowloris).
	readHeaderTimeout = 10 * time.Second
	// upstreamHeaderTimeout bounds how long a plain-HTTP upstream may take
	// to start answering.
	upstreamHeaderTimeout = 60 * time.Second
	// statusWriteTimeout bounds writing a response egressd makes itself (a
	// refusal, a 502 or 504): a few hundred bytes, which a client that
	// reads at all takes at once. One that stops reading (sending
	// pipelined requests it never reads the answers of) must not hold its
	// connection's goroutine in a write.
	statusWriteTimeout = 5 * time.Second
)

// Server is egressd's HTTP proxy: CONNECT tunnels and absolute-form
// http:// requests, each checked against the policy before anything is
// dialed. Create it with New.
type Server struct {
	cfg policy.Server
	// resolverCfg and logCfg are the configuration's resolver and log
	// blocks, for Reload to name when a new configuration changes them.
	resolverCfg policy.Resolver
	logCfg      policy.Log
	// pol is the policy in force; Reload swaps it. Read it with policy().
	pol      atomic.Pointer[policy.Policy]
	log      zerolog.Logger
	resolver *Resolver
	// auth caches verified proxy credentials; authSalt keys it to this
	// server's configuration.
	auth     authCache
	authSalt string
	authGate *authGate
	// authTiming makes failed password checks last as long as an unknown
	// user's.
	authTiming *authTiming
	// refusing holds a token per over-limit proxy connection being
	// answered 503 (maxRefusing).
	refusing chan struct{}

	// DialContext, when set before Serve, dials every already checked
	// address instead of egressd's own dialer (dial_timeout, TCP
	// keepalive, upstream_mark). Setting it also turns off the transparent
	// front loop (front_linux.go), which connects with raw system calls.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	dialer      *net.Dialer

	// Test hooks, nil in egressd. origDst returns a transparent
	// connection's original destination from its local and peer
	// addresses instead of getsockopt SO_ORIGINAL_DST (or the local
	// address on a TPROXY listener); it must not block. checkDial is asked
	// before every dial of a checked address, on both transparent paths;
	// an error refuses the dial with dial_error.
	origDst   func(local, peer netip.AddrPort) (netip.AddrPort, error)
	checkDial func(network string, dst netip.AddrPort) error
	// noFront turns the transparent front loop off (a test hook: the
	// goroutine path is the one non-Linux systems run).
	noFront bool
	// frontSndBuf, when not 0, is the SO_SNDBUF of the front loop's
	// upstream sockets (a test hook: a small one makes the hello's write
	// wait for room).
	frontSndBuf int
	// headerTimeout is upstreamHeaderTimeout (a test hook: a shorter one
	// shows its 504 without a minute's wait).
	headerTimeout time.Duration

	gp      *goproxy.ProxyHttpServer
	httpSrv *http.Server
	ids     atomic.Uint64

	// metrics is this Server's Prometheus registry and instruments
	// (metrics.go); ready is what /readyz answers (SetReady).
	metrics *metrics
	ready   atomic.Bool

	// limits counts open connections against max_connections and
	// max_connections_per_client (limits.go).
	limits *limiter

	mu      sync.Mutex
	closing bool                  // set by Shutdown; no tunnel starts after it
	forcing bool                  // set by Shutdown when the grace ran out: a tunnel that starts relaying is aborted at once
	tunnels map[*tracked]struct{} // open tunnels
	wg      sync.WaitGroup
	// listeners are the transparent (and DNS TCP) listeners, closed by
	// Shutdown; selfAddrs are their addresses, parsed once for isSelf.
	listeners []net.Listener
	selfAddrs []netip.AddrPort
	// adminAddrs are the admin listener's: no tunnel may reach it, but it
	// is not what a redirect sends to egressd (isSelf), so a workload's
	// own port 9090 elsewhere is not taken for it.
	adminAddrs []netip.AddrPort
	// dnsServers and dnsConns are the gateway DNS servers and their UDP
	// sockets (ServeDNS), stopped by Shutdown.
	dnsServers []*dns.Server
	dnsConns   []net.PacketConn
	// quic are the QUIC gateways (ServeQUIC), stopped by Shutdown;
	// quicHooks, when set by a test, adjusts each before it serves.
	quic      []*quicGateway
	quicHooks func(*quicGateway)
}

// New builds a proxy for cfg that writes its decision log to logger.
func New(cfg *policy.Config, logger zerolog.Logger) (*Server, error) {
	res, err := NewResolver(cfg.Resolver.Servers)
	if err != nil {
		return nil, err
	}
	d := &net.Dialer{Timeout: cfg.Server.DialTimeout, KeepAliveConfig: tunnelKeepAlive,
		Control: markControl(cfg.Server.UpstreamMark)}
	s := &Server{
		cfg:         cfg.Server,
		resolverCfg: cfg.Resolver,
		logCfg:      cfg.Log,
		log:         logger,
		resolver:    res,
		dialer:      d,
		tunnels:     make(map[*tracked]struct{}),
		limits:      newLimiter(cfg.Server.MaxConnections, cfg.Server.MaxConnectionsPerClient),
		metrics:     newMetrics(res),
		authSalt:    randomSalt(),
		authGate:    newAuthGate(),
		refusing:    make(chan struct{}, maxRefusing),
		authTiming:  newAuthTiming(),

		headerTimeout: upstreamHeaderTimeout,
	}
	s.authTiming.calibrate(cfg.Policy)
	s.pol.Store(cfg.Policy)
	s.gp = s.newGoproxy()
	s.httpSrv = &http.Server{
		Handler:           s.wrapClient(s.gp),
		ReadHeaderTimeout: readHeaderTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		IdleTimeout:       cfg.Server.IdleTimeout,
		ErrorLog:          log.New(io.Discard, "", 0),
		// A request net/http reads but refuses itself (limits.go,
		// proxyConnState) gets its decision line too.
		ConnContext: withSlotConn,
		ConnState:   s.proxyConnState,
		// "OPTIONS *" is egressd's to answer (400, a request not in
		// absolute form), not net/http's: its general OPTIONS handler
		// answered 200 and left no decision but slotConn.Write's.
		DisableGeneralOptionsHandler: true,
	}
	return s, nil
}

// newGoproxy configures goproxy for an egress proxy. Its defaults are wrong
// here: the default transport skips upstream TLS verification and follows
// HTTP(S)_PROXY from egressd's own environment, and its CONNECT dialer
// connects before any policy check. Every CONNECT is hijacked so the 200,
// the hello and the relay are ours; plain requests are answered by
// handleHTTP, which dials only the checked address.
func (s *Server) newGoproxy() *goproxy.ProxyHttpServer {
	gp := goproxy.NewProxyHttpServer()
	gp.Logger = log.New(io.Discard, "", 0)
	gp.Tr = &http.Transport{Proxy: nil, DialContext: refuseDial}
	gp.ConnectDial = func(string, string) (net.Conn, error) { return nil, errUncheckedDial }
	gp.ConnectDialWithReq = nil
	gp.OnRequest().HandleConnectFunc(func(string, *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
		return &goproxy.ConnectAction{Action: goproxy.ConnectHijack, Hijack: s.handleConnect}, ""
	})
	// The client's Accept-Encoding goes upstream as sent, and the response
	// body comes back as the upstream encoded it (forward's transport does
	// not ask for gzip and decode it on egressd's CPU).
	gp.KeepAcceptEncoding = true
	gp.NonproxyHandler = http.HandlerFunc(s.handleOriginForm)
	gp.OnRequest().DoFunc(func(req *http.Request, _ *goproxy.ProxyCtx) (*http.Request, *http.Response) {
		// Credentials are read before the hop-by-hop headers, theirs
		// among them, are removed: they are never forwarded upstream.
		// One policy checks the credentials and decides the request,
		// whatever reload comes in between.
		p := s.policy()
		user, ok, cut := s.proxyUser(req.Context(), req, p)
		removeHopHeaders(req.Header)
		return req, s.handleHTTP(req, p, user, ok, cut)
	})
	return gp
}

// hopHeaders are the hop-by-hop header fields (RFC 9110 §7.6.1, and the
// proxy ones of RFC 9110 §11.7 and of old clients): they describe one
// connection, so a proxy does not pass them on. Upgrade is among them:
// egressd does not relay protocol upgrades over plain HTTP.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopHeaders deletes the hop-by-hop fields from h, and those the
// Connection field names, as net/http/httputil.ReverseProxy does.
func removeHopHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for f := range strings.SplitSeq(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, f := range hopHeaders {
		h.Del(f)
	}
}

// wrapClient hands goproxy a ResponseWriter fit for the request.
//
// A CONNECT gets one whose Hijack keeps the bytes net/http already read
// past the request. goproxy ignores the *bufio.ReadWriter Hijack returns,
// so a client that sends its ClientHello together with the CONNECT,
// without waiting for the 200 (pipelining), would lose them: the hello
// reader would then wait for bytes that never come and refuse the tunnel.
// The returned conn yields the buffered bytes first.
//
// A plain request gets a streamingWriter, and its context a plainClient,
// with which forward's idle watch unblocks a client that stopped sending
// or reading; a connection whose watch fired is closed after the request.
func (s *Server) wrapClient(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sc, ok := r.Context().Value(slotConnKey{}).(*slotConn); ok {
			sc.req.Store(reqDone) // this request gets its own decision line
		}
		hj, ok := w.(http.Hijacker)
		switch {
		case !ok:
		case r.Method == http.MethodConnect:
			w = bufferedHijacker{w, hj}
		default:
			// Tracked, so that Shutdown waits for its decision and close
			// lines, and cancels its waits (credentials, lookup, dial)
			// when the grace ends: http.Server.Close closes the socket
			// but cancels a request's context only from a read it may
			// not be doing (a body not yet read). One that starts after
			// Shutdown began is served untracked.
			ctx := r.Context()
			if tr := s.track(nil); tr != nil {
				defer s.untrack(tr)
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				defer cancel()
				defer context.AfterFunc(tr.ctx, cancel)()
			}
			pc := &plainClient{rc: http.NewResponseController(w)}
			w = streamingWriter{w, hj, pc.rc}
			r = r.WithContext(context.WithValue(ctx, plainClientKey{}, pc)) // one copy of the request
			h.ServeHTTP(w, r)
			if pc.watch != nil && pc.watch.fired() && !pc.answered {
				// The idle watch put the connection's deadlines in the
				// past, perhaps just after a complete response: it must
				// not serve another request.
				if c, _, err := pc.rc.Hijack(); err == nil {
					_ = c.Close()
				}
			}
			return
		}
		h.ServeHTTP(w, r)
	})
}

// plainClient is a plain request's client connection as forward sees it,
// in the request's context under plainClientKey: its ResponseController,
// with which the exchange's idle watch unblocks it, and that watch.
type plainClient struct {
	rc    *http.ResponseController
	watch *idleWatch
	// answered: the watch fired before the response head, and forward
	// answered with Connection: close, after which net/http closes the
	// connection itself.
	answered bool
}

type plainClientKey struct{}

// streamingWriter passes a plain-HTTP response on to the client as it
// comes: the head at once, and each write of the body. goproxy flushes
// only for text/event-stream or a chunked Transfer-Encoding, which the
// transport moves out of the header where goproxy looks, so a watch or
// long-poll response was held back until 4 KiB had come or the body
// ended. It keeps Hijack, which goproxy requires of its writer.
type streamingWriter struct {
	http.ResponseWriter
	hj http.Hijacker
	rc *http.ResponseController
}

func (w streamingWriter) WriteHeader(code int) {
	w.ResponseWriter.WriteHeader(code)
	_ = w.rc.Flush()
}

func (w streamingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	if err == nil {
		err = w.rc.Flush()
	}
	return n, err
}

func (w streamingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) { return w.hj.Hijack() }

type bufferedHijacker struct {
	http.ResponseWriter
	hj http.Hijacker
}

func (b bufferedHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := b.hj.Hijack()
	if err != nil || rw == nil || rw.Reader.Buffered() == 0 {
		return c, rw, err
	}
	pre, _ := rw.Reader.Peek(rw.Reader.Buffered())
	return &prefixConn{Conn: c, pre: bytes.Clone(pre)}, rw, nil
}

// prefixConn is a hijacked client connection that first yields the bytes
// net/http had buffered. readHello's first Read takes them all (the buffer
// is larger than net/http's), after which unwrapConn returns the socket
// itself so the relay keeps its splice path.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// unwrapConn returns the socket under a drained prefixConn, else c.
func unwrapConn(c net.Conn) net.Conn {
	if pc, ok := c.(*prefixConn); ok && len(pc.pre) == 0 {
		return pc.Conn
	}
	return c
}

var errUncheckedDial = errors.New("egressd: refusing a dial that did not pass the policy check")

func refuseDial(context.Context, string, string) (net.Conn, error) { return nil, errUncheckedDial }

// Serve accepts proxy clients on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	s.addSelfLocked(ln.Addr()) // a CONNECT to egressd itself is refused (dial)
	s.mu.Unlock()
	err := s.httpSrv.Serve(proxyListener{ln, s})
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, waits for open tunnels and plain-HTTP
// requests until ctx ends, then closes the ones still open. QUIC flows are
// closed at once. It logs a "shutdown started" line and, at the end, a
// "shutdown" line with how many connections drained and how many were
// closed.
func (s *Server) Shutdown(ctx context.Context) error {
	start := time.Now()
	open := s.limits.open()
	ev := s.log.Info().Int(fieldOpen, open)
	if dl, ok := ctx.Deadline(); ok {
		// Rounded: the grace as configured, not the 19,999 ms left of it.
		ev = ev.Int64(fieldGraceMS, time.Until(dl).Round(10*time.Millisecond).Milliseconds())
	}
	ev.Msg(msgShutdownStarted)
	s.ready.Store(false) // first, so that load balancers stop sending
	s.mu.Lock()
	s.closing = true
	for _, ln := range s.listeners {
		_ = ln.Close()
	}
	for _, pc := range s.dnsConns {
		_ = pc.Close()
	}
	dnsServers := s.dnsServers
	quic := s.quic
	s.mu.Unlock()
	// UDP flows have no end to wait for: they are closed (and their close
	// lines logged) at once. Closing the listeners closes no connection:
	// without a QUIC gateway nothing was closed yet (a connection that
	// ended by itself meanwhile, such as a health probe, is drained).
	closed := 0
	for _, g := range quic {
		g.close()
	}
	if len(quic) > 0 {
		closed = max(open-s.limits.open(), 0)
	}
	// The DNS servers wait for their TCP connections' handlers while the
	// proxy port stops and drains, not before it.
	var dnsDone sync.WaitGroup
	for _, d := range dnsServers {
		dnsDone.Go(func() { _ = d.ShutdownContext(ctx) }) // "not started" when the socket closed first
	}
	err := s.httpSrv.Shutdown(ctx)
	dnsDone.Wait()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	if ctx.Err() != nil {
		closed += s.limits.open()
		// Plain-HTTP requests still in flight: http.Server.Shutdown does
		// not close active connections, Close does.
		_ = s.httpSrv.Close()
		s.mu.Lock()
		s.forcing = true
		for t := range s.tunnels {
			t.cancel()
			if t.abort != nil {
				t.abort() // a relaying tunnel (or the front loop): it closes its sockets
			} else if t.client != nil {
				_ = t.client.Close()
			}
		}
		s.mu.Unlock()
	}
	<-done
	closed = min(closed, open)
	s.log.Info().Int(fieldDrained, open-closed).Int(fieldClosed, closed).
		Int64(fieldDurationMS, time.Since(start).Milliseconds()).Msg(msgShutdown)
	return err
}

// isClosing reports whether Shutdown has begun.
func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// tracked is an open tunnel as Shutdown sees it. Until its relay starts,
// closing client ends it; from then on abort does, and client is dropped:
// the epoll relay took its socket over, and an idle tunnel keeps no net
// objects.
type tracked struct {
	client net.Conn
	abort  func()
	// ctx is cancelled when Shutdown gives up waiting (and when the
	// tunnel ends): it bounds the tunnel's destination check, dial and
	// first write, which have no client socket to close.
	ctx    context.Context
	cancel context.CancelFunc
}

// track registers an open tunnel; it returns nil once Shutdown began.
func (s *Server) track(c net.Conn) *tracked { return s.register(c, &s.closing) }

// adopt registers a connection the transparent front loop accepted: it
// may come after Shutdown began (the loop's own entry kept Shutdown
// waiting), but not after Shutdown gave up waiting (nil: close it). c is
// nil when the tunnel goes straight to relaying.
func (s *Server) adopt(c net.Conn) *tracked { return s.register(c, &s.forcing) }

// register adds c to the open tunnels unless *stop, a flag s.mu guards,
// is set.
func (s *Server) register(c net.Conn, stop *bool) *tracked {
	s.mu.Lock()
	defer s.mu.Unlock()
	if *stop {
		return nil
	}
	s.wg.Add(1)
	t := newTracked(c, nil)
	s.tunnels[t] = struct{}{}
	return t
}

func newTracked(client net.Conn, abort func()) *tracked {
	t := &tracked{client: client, abort: abort}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t
}

// relaying records how Shutdown aborts a tracked tunnel that is relaying.
// A tunnel whose relay started after Shutdown gave up waiting is aborted
// here: Shutdown closed its client socket, which took it out of the
// relay's epoll set without an event, so only abort ends it before the
// idle timeout.
func (s *Server) relaying(t *tracked, abort func()) {
	s.mu.Lock()
	_, open := s.tunnels[t]
	if open {
		t.client, t.abort = nil, abort
	}
	forcing := s.forcing
	s.mu.Unlock()
	if open && forcing {
		abort()
	}
}

func (s *Server) untrack(t *tracked) {
	t.cancel()
	s.mu.Lock()
	delete(s.tunnels, t)
	s.mu.Unlock()
	s.wg.Done()
}

func (s *Server) newConn(mode string, remote string) *conn {
	client, _ := netip.ParseAddrPort(remote)
	return s.newConnFrom(mode, client)
}

// newConnFrom starts the record of a connection from client.
func (s *Server) newConnFrom(mode string, client netip.AddrPort) *conn {
	return &conn{id: s.ids.Add(1), mode: mode, start: time.Now(), client: client}
}

// dial resolves t when it is a name, keeps the addresses the decision
// allows, and dials them (network "tcp" or "udp") within dial_timeout
// (dialAddrs). On failure it turns c's decision into a deny with the
// reason and returns nil.
func (s *Server) dial(ctx context.Context, c *conn, t Target, network string) net.Conn {
	addrs := []netip.Addr{t.Addr}
	if t.Host != "" {
		var err error
		if addrs, err = s.resolver.Lookup(ctx, t.Host); err != nil {
			c.refuse(policy.ReasonDNSError, err.Error())
			return nil
		}
	}
	var dsts [maxAddrsPerName]netip.AddrPort
	n := 0
	for _, a := range addrs {
		if !c.decision.AddrAllowed(a) || n == len(dsts) {
			continue
		}
		dst := netip.AddrPortFrom(a, t.Port)
		if s.isOwnListener(dst) {
			c.refuse(policy.ReasonBadRequest, ownListenerDetail(dst))
			return nil
		}
		dsts[n] = dst
		n++
	}
	if n == 0 {
		c.refuse(policy.ReasonPrivateDestination, privateDetail(t, addrs))
		return nil
	}
	t0 := time.Now()
	up, dst, err := s.dialAddrs(ctx, network, interleaveFamilies(dsts[:n]))
	if err != nil {
		c.refuse(policy.ReasonDialError, err.Error())
		return nil
	}
	s.metrics.dialed(c.mode, time.Since(t0))
	c.dst = dst
	return up
}

// happyEyeballsDelay is how long an attempt at one address of a name has
// before the next address is tried beside it (RFC 8305 §5 recommends 250
// ms): an address that swallows SYNs (IPv6 broken on the path, a dead
// server in a DNS answer) delays the connection by this much, not by
// dial_timeout.
const happyEyeballsDelay = 250 * time.Millisecond

// maxDialAttempts is how many attempts of one dial may be pending at once,
// as in Go's own dialer (one per family): a name whose 32 addresses all
// swallow SYNs must not cost 32 sockets per connection, and a connection
// costs at most two descriptors more while it dials.
const maxDialAttempts = 2

// minAttemptTimeout is the least time an attempt gets when dial_timeout is
// shared among many addresses (as Go's dialer, 2 s): enough for a
// connection across the world with a lost SYN or two.
const minAttemptTimeout = 2 * time.Second

// dialAddrs connects to one of dsts, all checked, within dial_timeout for
// the whole dial. Over TCP, several addresses are raced as RFC 8305's
// Happy Eyeballs does: the next attempt starts when the last one failed or
// happyEyeballsDelay after it began, with at most maxDialAttempts pending;
// each attempt has its share of the time left (at least
// minAttemptTimeout), and the first to connect wins; the rest are
// cancelled (and closed, if they connect all the same). A UDP connect
// does not wait for the peer: the first address that connects is taken.
func (s *Server) dialAddrs(ctx context.Context, network string, dsts []netip.AddrPort) (net.Conn, netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	if len(dsts) == 1 || network != "tcp" {
		var lastErr error
		for _, dst := range dsts {
			up, err := s.attempt(ctx, network, dst)
			if err == nil {
				return up, dst, nil
			}
			lastErr = err
		}
		return nil, netip.AddrPort{}, lastErr
	}
	results := make(chan dialResult, len(dsts)) // no attempt ever blocks
	next, pending := 0, 0
	delay := time.NewTimer(happyEyeballsDelay)
	defer delay.Stop()
	startNext := func() {
		dst := dsts[next]
		actx, acancel := context.WithTimeout(ctx, attemptTimeout(ctx, len(dsts)-next))
		next++
		pending++
		go func() {
			defer acancel() // a connection made outlives its dial's context
			up, err := s.attempt(actx, network, dst)
			results <- dialResult{up, dst, err}
		}()
		delay.Reset(happyEyeballsDelay)
	}
	canStart := func() bool { return next < len(dsts) && pending < maxDialAttempts && ctx.Err() == nil }
	startNext()
	var lastErr error
	for pending > 0 {
		select {
		case r := <-results:
			pending--
			if r.err == nil {
				cancel()
				if pending > 0 {
					go closeLosers(results, pending)
				}
				return r.up, r.dst, nil
			}
			lastErr = r.err
			if canStart() {
				startNext()
			}
		case <-delay.C:
			if canStart() {
				startNext()
			}
		}
	}
	return nil, netip.AddrPort{}, lastErr
}

// attemptTimeout is an attempt's share of the time ctx has left when left
// addresses remain to be tried: an equal share, but at least
// minAttemptTimeout (or all that is left, when that is less).
func attemptTimeout(ctx context.Context, left int) time.Duration {
	dl, _ := ctx.Deadline() // dialAddrs set one
	remaining := time.Until(dl)
	share := remaining / time.Duration(max(left, 1))
	if share < minAttemptTimeout {
		share = min(minAttemptTimeout, remaining)
	}
	return share
}

// attempt dials one checked address for dialAddrs.
func (s *Server) attempt(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
	if s.checkDial != nil {
		if err := s.checkDial(network, dst); err != nil {
			return nil, err
		}
	}
	return s.dialContext(ctx, network, dst.String())
}

// dialResult is one attempt of dialAddrs.
type dialResult struct {
	up  net.Conn
	dst netip.AddrPort
	err error
}

// closeLosers waits for the n attempts still running after another won
// (cancelled, they end within moments) and closes any connection one of
// them made all the same.
func closeLosers(results <-chan dialResult, n int) {
	for ; n > 0; n-- {
		if r := <-results; r.up != nil {
			r.up.Close()
		}
	}
}

// interleaveFamilies orders a name's addresses for dialing as RFC 8305 §4
// does: the first address's family first, then alternating, so that a
// family that does not work on this host or path costs one attempt, not
// one per address. It reorders dsts in place.
func interleaveFamilies(dsts []netip.AddrPort) []netip.AddrPort {
	if len(dsts) < 3 {
		return dsts
	}
	var buf [maxAddrsPerName]netip.AddrPort
	first, n := dsts[0].Addr().Is4(), 0
	for _, d := range dsts {
		if d.Addr().Is4() == first {
			buf[n] = d
			n++
		}
	}
	m := n
	for _, d := range dsts {
		if d.Addr().Is4() != first {
			buf[m] = d
			m++
		}
	}
	same, other := buf[:n], buf[n:m]
	out := dsts[:0]
	for i := 0; i < len(same) || i < len(other); i++ {
		if i < len(same) {
			out = append(out, same[i])
		}
		if i < len(other) {
			out = append(out, other[i])
		}
	}
	return out
}

// dialContext dials with DialContext when an embedder set it, else with
// egressd's dialer.
func (s *Server) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if s.DialContext != nil {
		return s.DialContext(ctx, network, addr)
	}
	return s.dialer.DialContext(ctx, network, addr)
}

// privateDetail is the detail of a private_destination refusal.
func privateDetail(t Target, addrs []netip.Addr) string {
	return fmt.Sprintf("every address of %s is private: %v", t.Name(), addrs)
}

// ownListenerDetail is the detail of a refused dial to egressd itself.
func ownListenerDetail(dst netip.AddrPort) string {
	return fmt.Sprintf("%s is egressd's own listener", dst)
}

// isOwnListener reports whether a dial to dst would reach one of
// egressd's own listeners (a proxy loop). A listener on the unspecified
// address is reached on loopback, on the unspecified address and on this
// host's own interface addresses, not on another host's same port.
func (s *Server) isOwnListener(dst netip.AddrPort) bool {
	dst = unmapAddrPort(dst)
	if a := dst.Addr(); a.IsUnspecified() {
		// A connection to the unspecified address goes to this host,
		// over loopback: to a listener on 127.0.0.1 (or ::1) too.
		lo := netip.IPv6Loopback()
		if a.Is4() {
			lo = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
		dst = netip.AddrPortFrom(lo, dst.Port())
	}
	return s.listensOn(dst, true, func(a netip.Addr) bool {
		return a.IsLoopback() || a.IsUnspecified() || isLocalAddr(a)
	})
}

// isSelf reports whether a transparent connection's original destination
// ap is one of egressd's own listeners (not redirected, or a redirect
// loop): a listener on the unspecified address matches ap's port on any
// address, since whatever reached it on that port was sent to egressd.
func (s *Server) isSelf(ap netip.AddrPort) bool {
	return s.listensOn(ap, false, func(netip.Addr) bool { return true })
}

// listensOn reports whether egressd listens on dst (admin: counting the
// admin listener): a listener on exactly dst, or on the unspecified
// address at dst's port when onAny(dst's address) says that listener is
// reached there.
func (s *Server) listensOn(dst netip.AddrPort, admin bool, onAny func(netip.Addr) bool) bool {
	dst = unmapAddrPort(dst)
	s.mu.Lock()
	exact, unspecified := matchListeners(s.selfAddrs, dst)
	if admin {
		e, u := matchListeners(s.adminAddrs, dst)
		exact, unspecified = exact || e, unspecified || u
	}
	s.mu.Unlock()
	return exact || unspecified && onAny(dst.Addr())
}

// matchListeners reports whether one of addrs is dst, and whether one is
// the unspecified address at dst's port that takes dst's family: [::]
// takes both (a dual-stack socket), 0.0.0.0 only IPv4 (listenNetwork).
func matchListeners(addrs []netip.AddrPort, dst netip.AddrPort) (exact, unspecified bool) {
	for _, l := range addrs {
		if l.Port() == dst.Port() {
			exact = exact || l.Addr() == dst.Addr()
			unspecified = unspecified || l.Addr().IsUnspecified() && (l.Addr().Is6() || dst.Addr().Is4())
		}
	}
	return exact, unspecified
}

// interfaceAddrs lists this host's addresses; tests replace it.
var interfaceAddrs = net.InterfaceAddrs

// isLocalAddr reports whether a is one of this host's interface
// addresses. It asks the kernel each time: it runs only for a dial to a
// port egressd listens on with an unspecified address, and interfaces
// change.
func isLocalAddr(a netip.Addr) bool {
	addrs, err := interfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		if p, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(p.IP); ok && ip.Unmap() == a {
				return true
			}
		}
	}
	return false
}

// refuse turns an allow into a deny for a reason found after the policy
// decision (DNS, private address, dial); the deciding rule stays recorded.
// The refusal is real in audit mode too, so an audited allow is no longer
// would_deny (which only an allow carries).
func (c *conn) refuse(r policy.Reason, detail string) {
	c.decision.Allow = false
	c.decision.WouldDeny = false
	c.decision.Reason = r
	c.detail = detail
}

// addListenerLocked records a listener for Shutdown and for isSelf. s.mu
// must be held.
func (s *Server) addListenerLocked(ln net.Listener) {
	s.listeners = append(s.listeners, ln)
	s.addSelfLocked(ln.Addr())
}

// addSelfLocked records one of egressd's own addresses for isSelf. s.mu
// must be held.
func (s *Server) addSelfLocked(a net.Addr) {
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		s.selfAddrs = append(s.selfAddrs, unmapAddrPort(ap))
	}
}
