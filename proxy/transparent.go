package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/policy"
)

// frontAccepted and frontHandOffs count connections the front loops
// (front_linux.go) accepted and handed to a goroutine, for tests that
// check which path served them; frontAcceptFails counts their failed
// accepts (EMFILE, ...), and frontShortWrites the hellos whose write
// upstream had to wait for room.
var frontAccepted, frontHandOffs, frontAcceptFails, frontShortWrites atomic.Int64

// verifyTimeout bounds the DNS work of one destination verification.
const verifyTimeout = 5 * time.Second

// verifyNames reports whether a is an address of one of names (Verify),
// within verifyTimeout. The names are tried in order, but one that another
// connection's Verify is asking the servers for is waited for only after
// the others were tried: a name whose lookup is slow or stuck does not use
// up verifyTimeout before the rest are looked at. When none holds a, err
// is the last lookup error, if any.
func verifyNames(ctx context.Context, r *Resolver, names []string, a netip.Addr) (ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, verifyTimeout)
	defer cancel()
	type pending struct {
		name string
		wait <-chan struct{}
	}
	var later []pending
	for _, n := range names {
		ok, wait, verr := r.verifyOrWait(ctx, n, a)
		if ok {
			return true, nil
		}
		if verr != nil {
			err = verr
		}
		if wait != nil {
			later = append(later, pending{n, wait})
		}
	}
	for _, p := range later {
		select {
		case <-p.wait:
		case <-ctx.Done():
		}
		if ok, _ := r.Verify(ctx, p.name, a); ok { // what the lookup waited for remembered
			return true, nil
		}
	}
	return false, err
}

// tproxyListener marks a listener opened with IP_TRANSPARENT: the local
// address of each accepted connection is its original destination.
type tproxyListener struct{ net.Listener }

// ListenTransparent opens the transparent gateway's TCP listener. With
// tproxy it sets IP_TRANSPARENT (IPv4) or IPV6_TRANSPARENT (IPv6) on the
// socket, for connections steered by an iptables/nftables TPROXY rule
// (needs CAP_NET_ADMIN); otherwise it is a plain listener for connections
// redirected with REDIRECT or DNAT.
func ListenTransparent(addr string, tproxy bool) (net.Listener, error) {
	if !tproxy {
		return Listen(addr)
	}
	ln, err := listenConfig(transparentControl).Listen(context.Background(), listenNetwork("tcp", addr), addr)
	if err != nil {
		return nil, err
	}
	return tproxyListener{ln}, nil
}

// ServeTransparent accepts connections redirected to egressd on ln (from
// ListenTransparent) until Shutdown: each is decided from its original
// destination and ClientHello, verified, dialed and relayed. Stop it with
// Shutdown: on Linux, closing ln alone stops the accepting but not the
// front loop (front_linux.go), and ServeTransparent returns only at
// Shutdown.
func (s *Server) ServeTransparent(ln net.Listener) error {
	_, tproxy := ln.(tproxyListener)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		_ = ln.Close()
		return nil
	}
	fl, run := s.newFront(ln, tproxy)
	if run != nil {
		ln = fl // Shutdown's Close stops the loop too
	}
	s.addListenerLocked(ln)
	s.mu.Unlock()
	if run != nil {
		run() // until Shutdown, on the front loop (front_linux.go)
		return nil
	}
	orig := func(c net.Conn) (netip.AddrPort, error) {
		if s.origDst != nil {
			return s.origDst(addrPort(c.LocalAddr()), addrPort(c.RemoteAddr()))
		}
		if tproxy {
			return localDst(c)
		}
		return originalDst(c)
	}
	var delay time.Duration
	for {
		client, err := ln.Accept()
		if err != nil {
			if s.isClosing() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				backoff(&delay)
				continue
			}
			return err
		}
		delay = 0
		tr := s.track(client)
		if tr == nil {
			// Accepted as Shutdown closed the listener: refused, with
			// its line, as a CONNECT that comes then is.
			c := s.newConn(ModeTransparent, client.RemoteAddr().String())
			if dst, err := orig(client); err == nil {
				c.host, c.port = dst.Addr().Unmap().WithZone("").String(), dst.Port()
			}
			c.refuse(policy.ReasonShuttingDown, "egressd is shutting down")
			s.logDecision(c)
			_ = client.Close()
			return nil
		}
		go s.handleTransparent(client, tr, orig)
	}
}

// addrPort is a TCP address as a netip.AddrPort (zero for other kinds).
func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	return netip.AddrPort{}
}

// backoff sleeps after a temporary accept or read error: 5 ms, doubling
// to at most 1 s while errors continue (the caller resets delay to 0).
func backoff(delay *time.Duration) {
	*delay = min(max(2**delay, 5*time.Millisecond), time.Second)
	time.Sleep(*delay)
}

func isTemporary(err error) bool {
	t, ok := err.(interface{ Temporary() bool })
	return ok && t.Temporary()
}

// localDst is the original destination of a TPROXY connection.
func localDst(c net.Conn) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(c.LocalAddr().String())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("local address %s: %w", c.LocalAddr(), err)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// handleTransparent runs one transparent connection: original destination,
// then the same hello, decision, dial and relay as a CONNECT tunnel.
// It owns client, which ServeTransparent tracked as tr: it closes and
// untracks it when done, or hands that to the relay.
func (s *Server) handleTransparent(client net.Conn, tr *tracked, orig func(net.Conn) (netip.AddrPort, error)) {
	handed := false
	defer func() {
		if !handed {
			client.Close()
			s.untrack(tr)
		}
	}()
	c := s.newConn(ModeTransparent, client.RemoteAddr().String())
	dst, err := orig(client)
	if err == nil && (!dst.Addr().IsValid() || dst.Port() == 0) {
		err = fmt.Errorf("invalid original destination %s", dst)
	}
	if err != nil {
		c.decision = policy.Decision{Reason: policy.ReasonBadRequest}
		c.detail = "original destination: " + err.Error()
		s.logDecision(c)
		return
	}
	a := dst.Addr().Unmap().WithZone("")
	c.host, c.port = a.String(), dst.Port()
	sl := s.acquireSlot(c)
	if sl == nil {
		s.logDecision(c) // closed at once: no hello wait, no dial
		return
	}
	defer func() {
		if !handed {
			sl.free()
		}
	}()
	if s.isSelf(netip.AddrPortFrom(a, dst.Port())) {
		c.refuse(policy.ReasonBadRequest, selfDetail)
		s.logDecision(c)
		return
	}
	t := Target{Addr: a, Port: dst.Port()}
	r := policy.Request{Addr: a, Port: t.Port, Transparent: true, Client: c.client.Addr()}
	handed = s.tunnel(c, client, t, &r, tr, func() {
		s.untrack(tr)
		sl.free()
	})
}

// selfDetail explains the refusal of a transparent connection addressed
// to egressd itself (no redirect, or a redirect loop): relaying it would
// connect egressd to itself.
const selfDetail = "original destination is egressd's own listener (not redirected, or a redirect loop)"

// dstKnown reports whether verifyDst would accept t.Addr without asking
// the DNS: it is in the deciding rule's cidrs, or remembered for the SNI
// name or one of the rule's exact hosts.
func (s *Server) dstKnown(d policy.Decision, a netip.Addr, sni string) bool {
	if d.RuleHasCIDR(a) || sni != "" && s.resolver.Knows(sni, a) {
		return true
	}
	for _, h := range d.RuleHosts() {
		if s.resolver.Knows(h, a) {
			return true
		}
	}
	return false
}

// verifyDst checks a transparent connection's original destination after
// an allow (see policy's "Transparent gateway"): in the deciding rule's
// cidrs, or answered by the resolver for the SNI name or one of the rule's
// exact hosts. It returns the target to dial: t itself, or under
// verify_destination = "redirect" the SNI name. ok is false after c was
// refused with dst_mismatch, or client_closed when ctx (cancelled when
// Shutdown gives up waiting) cut the check short.
func (s *Server) verifyDst(ctx context.Context, c *conn, t Target, sni string) (Target, bool) {
	d := c.decision
	if d.RuleHasCIDR(t.Addr) {
		return t, true
	}
	names := make([]string, 0, 4)
	if sni != "" {
		names = append(names, sni)
	}
	for _, h := range d.RuleHosts() {
		if h != sni {
			names = append(names, h)
		}
	}
	ok, lastErr := verifyNames(ctx, s.resolver, names, t.Addr)
	if ok {
		return t, true
	}
	if ctx.Err() != nil {
		// Cut, not failed: dst_mismatch would report a spoofed SNI.
		c.refuse(policy.ReasonClientClosed, "closed by shutdown")
		return t, false
	}
	if d.VerifyDestination() == policy.VerifyRedirect && sni != "" {
		c.detail = fmt.Sprintf("original destination %s is not an address of %s; redirected", t.Addr, sni)
		return Target{Host: sni, Port: t.Port}, true
	}
	detail := fmt.Sprintf("original destination %s is not in the rule's cidrs nor an address of %v", t.Addr, names)
	if len(names) == 0 {
		detail = fmt.Sprintf("original destination %s is not in the rule's cidrs and there is no name to resolve", t.Addr)
	}
	if lastErr != nil {
		detail += " (" + lastErr.Error() + ")"
	}
	c.refuse(policy.ReasonDstMismatch, detail)
	return t, false
}
