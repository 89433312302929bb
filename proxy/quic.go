package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sni"
)

// The QUIC gateway: UDP steered to egressd by a TPROXY rule arrives on one
// socket, each datagram with its original destination in a control message.
// Datagrams are grouped into flows by (client address, original
// destination). A flow buffers its first datagrams until the ClientHello in
// their Initial packets is complete, is decided once, and then either relays
// datagrams both ways or drops them for quicDenyHold.

const (
	// maxQUICFlows bounds the flow table: pending, relaying and denied flows
	// together. A relaying flow holds two sockets and one goroutine, so
	// 4096 flows stay within an 8192-descriptor budget. At the limit new
	// flows are dropped; existing ones keep working.
	maxQUICFlows = 4096
	// maxQUICDatagram is the largest datagram relayed. QUIC keeps its
	// datagrams within the path MTU (RFC 9000 §14), 1500 bytes or less on
	// the Internet; 9216 covers jumbo-frame networks. A larger datagram is
	// dropped, never relayed truncated.
	maxQUICDatagram = 9216
	// maxPendingDatagrams and maxPendingBytes bound what one flow buffers
	// before its decision. A post-quantum ClientHello (X25519MLKEM768)
	// takes two or three Initial packets, and a resuming client may send
	// 0-RTT packets right behind them; 16 datagrams and 32 KiB leave room
	// for both. A hello that does not complete within them is refused as
	// hello_too_large.
	maxPendingDatagrams = 16
	maxPendingBytes     = 32 << 10
	// quicDenyHold is how long a denied flow's datagrams are dropped
	// without a new decision: QUIC clients retransmit their Initials for
	// several seconds, and each retransmission would otherwise log again.
	quicDenyHold = 30 * time.Second
	// quicSweepInterval is how often expired flows are looked for: the
	// precision of the hello timeout, the idle timeout and the deny hold.
	quicSweepInterval = 500 * time.Millisecond
	// quicFullLogInterval rate-limits the "flow table full" warning.
	quicFullLogInterval = 10 * time.Second
)

// ModeQUIC: a UDP flow on the QUIC listener; host is the original
// destination address.
const ModeQUIC = "quic"

// quicReplier sends a flow's datagrams back to its client with the original
// destination as their source address.
type quicReplier interface {
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
	Close() error
}

// ListenQUIC opens the QUIC gateway's UDP socket for datagrams steered by a
// TPROXY rule: IP_TRANSPARENT (IPV6_TRANSPARENT) so that datagrams to any
// address are delivered to it, and IP_RECVORIGDSTADDR
// (IPV6_RECVORIGDSTADDR) so that each comes with its original destination.
// It needs CAP_NET_ADMIN.
func ListenQUIC(addr string) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: quicListenControl}
	pc, err := lc.ListenPacket(context.Background(), listenNetwork("udp", addr), addr)
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

type flowKey struct{ client, dst netip.AddrPort }

type flowState uint8

const (
	flowPending  flowState = iota // collecting the ClientHello
	flowDeciding                  // decided and verified in its own goroutine
	flowRelaying
	flowDenied // datagrams dropped until holdUntil
	flowClosed // removed from the table
)

// flow is one (client, original destination) pair. mu guards everything
// but the atomics; the reader goroutine, the flow's decide and pump
// goroutines and the sweeper share it.
type flow struct {
	key flowKey
	c   *conn
	// slot is the flow's connection slot (limits.go), set when the flow is
	// created and freed when it is denied or closed; nil when the
	// connection limit refused the flow.
	slot *slot

	mu        sync.Mutex
	state     flowState
	q         *sni.QUICInitial // nil after the decision
	hello     sni.Hello
	pend      []byte // datagrams buffered before the decision, back to back
	pendLen   []int
	holdUntil time.Time
	up        *net.UDPConn
	reply     quicReplier

	// Set when the flow is allowed on a QUIC ClientHello: the checks of
	// the decided connection's later Initials (its ConnID is the decided
	// connection's), its SNI, and the other connections the client opened
	// on the same socket (screen).
	verify *sni.QUICVerifier
	sni    string
	others []*otherConn

	last      atomic.Int64 // monoNow of the last datagram either way
	bytesUp   atomic.Int64
	bytesDown atomic.Int64
}

func (f *flow) touch() { f.last.Store(monoNow()) }

// buffer keeps a copy of b for relaying after the decision; false when the
// flow's buffer is full.
func (f *flow) buffer(b []byte) bool {
	if len(f.pendLen) >= maxPendingDatagrams || len(f.pend)+len(b) > maxPendingBytes {
		return false
	}
	f.pend = append(f.pend, b...)
	f.pendLen = append(f.pendLen, len(b))
	return true
}

// release drops what only the hello phase needs, the parsed hello and its
// fingerprints included: it is called once the flow's decision line is
// written, and a held or relaying flow keeps only what its close line
// needs (as a TCP tunnel does, conn.dropHello). f.mu must be held.
func (f *flow) release() {
	if f.q != nil {
		putInitial(f.q)
		f.q = nil
	}
	f.pend, f.pendLen = nil, nil
	f.c.dropHello()
	f.hello = sni.Hello{}
}

// initialPool recycles the QUIC Initial reassembly buffers (up to
// sni.MaxQUICCryptoBytes each) between flows.
var initialPool = sync.Pool{New: func() any { return new(sni.QUICInitial) }}

// putInitial returns q, reset, to initialPool.
func putInitial(q *sni.QUICInitial) {
	q.Reset()
	initialPool.Put(q)
}

// quicGateway serves one QUIC listener.
type quicGateway struct {
	s  *Server
	pc *net.UDPConn
	// origDst finds a datagram's original destination in its control
	// messages; reply opens the socket a flow answers its client from.
	// Tests replace both to run without TPROXY.
	origDst func(from netip.AddrPort, oob []byte) (netip.AddrPort, bool)
	reply   func(dst netip.AddrPort) (quicReplier, error)

	mu       sync.Mutex
	flows    map[flowKey]*flow
	closed   bool
	dropped  int64 // datagrams dropped because the table was full
	evicted  int64 // held (denied) flows removed to make room for new ones
	lastFull time.Time
	done     chan struct{}
}

// ServeQUIC relays the QUIC (and other UDP) flows arriving on pc, from
// ListenQUIC, until Shutdown.
func (s *Server) ServeQUIC(pc *net.UDPConn) error {
	g := &quicGateway{s: s, pc: pc, flows: make(map[flowKey]*flow), done: make(chan struct{})}
	g.origDst, g.reply = func(_ netip.AddrPort, oob []byte) (netip.AddrPort, bool) { return parseOrigDstCmsg(oob) }, func(dst netip.AddrPort) (quicReplier, error) {
		uc, err := transparentReply(dst, s.cfg.UpstreamMark)
		if err != nil {
			return nil, err
		}
		return uc, nil
	}
	if s.quicHooks != nil {
		s.quicHooks(g)
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		_ = pc.Close()
		return nil
	}
	s.quic = append(s.quic, g)
	s.addSelfLocked(pc.LocalAddr())
	s.mu.Unlock()
	defer close(g.done)
	go g.sweep()

	buf := make([]byte, maxQUICDatagram+1) // +1: a datagram that fills buf is too large
	oob := make([]byte, quicOOBSize)
	var delay time.Duration
	for {
		n, oobn, _, from, err := pc.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if s.isClosing() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if isTemporary(err) {
				backoff(&delay)
				continue
			}
			return fmt.Errorf("reading the QUIC listener %s: %w", pc.LocalAddr(), err)
		}
		delay = 0
		if n > maxQUICDatagram {
			continue
		}
		from = unmapAddrPort(from)
		dst, ok := g.origDst(from, oob[:oobn])
		g.handle(from, dst, ok, buf[:n])
	}
}

func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

// handle routes one datagram from a client to its flow.
func (g *quicGateway) handle(from, dst netip.AddrPort, dstOK bool, b []byte) {
	if dstOK {
		dst = unmapAddrPort(dst)
	}
	key := flowKey{from, dst}
	g.mu.Lock()
	f := g.flows[key]
	if f == nil {
		if g.closed {
			g.mu.Unlock()
			return
		}
		if len(g.flows) >= maxQUICFlows && !g.evictHeldLocked() {
			g.full()
			g.mu.Unlock()
			return
		}
		f = &flow{key: key, c: g.s.newConn(ModeQUIC, from.String()), q: initialPool.Get().(*sni.QUICInitial)}
		if dst.IsValid() {
			f.c.host, f.c.port = dst.Addr().String(), dst.Port()
		}
		f.slot = g.s.acquireSlot(f.c)
		f.touch()
		g.flows[key] = f
	}
	g.mu.Unlock()

	f.mu.Lock()
	switch f.state {
	case flowRelaying:
		up := f.up
		pass, held := g.screen(f, b)
		f.mu.Unlock()
		if pass {
			if _, err := up.Write(b); err == nil {
				f.bytesUp.Add(int64(len(b)))
			}
		}
		for _, d := range held {
			if _, err := up.Write(d); err == nil {
				f.bytesUp.Add(int64(len(d)))
			}
		}
		f.touch()
		return
	case flowDeciding:
		f.buffer(b) // when full, dropped: QUIC retransmits
		f.mu.Unlock()
		return
	case flowDenied, flowClosed:
		f.mu.Unlock()
		return
	}
	defer f.mu.Unlock()
	switch {
	case f.slot == nil: // at the connection limit: refused at once
		g.deny(f, policy.ReasonConnectionLimit, f.c.detail)
		return
	case !dstOK || !dst.Addr().IsValid() || dst.Port() == 0:
		g.deny(f, policy.ReasonBadRequest, "no original destination with the datagram: was it steered to egressd by a TPROXY rule?")
		return
	case g.s.isSelf(dst):
		g.deny(f, policy.ReasonBadRequest, "original destination is egressd's own listener (not redirected, or a redirect loop)")
		return
	}
	err := f.q.Add(b, &f.hello)
	if errors.Is(err, sni.ErrDiscarded) {
		// Not of the attempt (RFC 9000 §12.2): dropped, neither buffered
		// nor sent on, so a spoofed datagram cannot end or fill the flow.
		return
	}
	if !f.buffer(b) {
		detail := fmt.Sprintf("no complete ClientHello within %d datagrams (%d bytes)", len(f.pendLen)+1, len(f.pend)+len(b))
		if err == nil {
			// Complete, but past the buffer: refused all the same, and
			// logged with the hello's name and fingerprints.
			f.c.fingerprint(&f.hello, true)
			detail = fmt.Sprintf("the ClientHello completed in datagram %d (%d bytes), past the %d datagrams (%d bytes) buffered before a decision",
				len(f.pendLen)+1, len(f.pend)+len(b), maxPendingDatagrams, maxPendingBytes)
		}
		g.deny(f, policy.ReasonHelloTooLarge, detail)
		return
	}
	switch {
	case err == nil:
		f.c.helloWait = max(time.Since(f.c.start), time.Nanosecond)
		g.startDecide(f, true)
	case errors.Is(err, sni.ErrNeedMore):
	case errors.Is(err, sni.ErrNotQUIC) && len(f.pendLen) == 1:
		g.startDecide(f, false) // other UDP: only require_tls = false rules admit it
	case errors.Is(err, sni.ErrTooLarge):
		g.deny(f, policy.ReasonHelloTooLarge, err.Error())
	default:
		g.deny(f, policy.ReasonHelloMalformed, err.Error())
	}
}

// quicEvictSample is how many flows a full table looks at for a held one
// to evict, per new flow.
const quicEvictSample = 64

// evictHeldLocked makes room in a full table by removing a denied flow
// whose datagrams are being held (dropped): it holds no socket and no
// buffer, only a log-volume saving. Without this, a flood of garbage
// Initials from random ports (each one a new, denied flow) would fill the
// table and lock every new flow out for quicDenyHold. The evicted flow's
// next datagram is decided (and logged) anew. It looks at up to
// quicEvictSample flows, in the map's random order, and reports whether it
// removed one. g.mu must be held.
func (g *quicGateway) evictHeldLocked() bool {
	n := 0
	for k, f := range g.flows {
		if n++; n > quicEvictSample {
			return false
		}
		if g.dropHeldLocked(k, f) {
			g.evicted++
			return true
		}
	}
	return false
}

// dropHeldLocked removes f (under key k) from the table if it is a held
// denied flow, and reports whether it did. g.mu must be held.
func (g *quicGateway) dropHeldLocked(k flowKey, f *flow) bool {
	f.mu.Lock()
	held := f.state == flowDenied
	if held {
		f.state = flowClosed
	}
	f.mu.Unlock()
	if held {
		delete(g.flows, k)
	}
	return held
}

// forgetHeld removes every denied flow whose datagrams are being held
// (dropped), after a reload: a policy loaded since may allow what the old
// one denied, and their next datagrams are decided (and logged) anew
// rather than dropped for the rest of quicDenyHold.
func (g *quicGateway) forgetHeld() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, f := range g.flows {
		g.dropHeldLocked(k, f)
	}
}

// full counts a datagram dropped because the flow table is full and warns
// now and then. g.mu must be held.
func (g *quicGateway) full() {
	g.dropped++
	if now := time.Now(); now.Sub(g.lastFull) >= quicFullLogInterval {
		g.lastFull = now
		g.s.log.Warn().Int(fieldFlows, len(g.flows)).Int64(fieldDropped, g.dropped).
			Msg("quic flow table full: datagrams of new flows are dropped")
	}
}

// deny refuses a flow before its decision could be made (f.mu held) and
// logs the decision.
func (g *quicGateway) deny(f *flow, r policy.Reason, detail string) {
	f.c.decision = policy.Decision{Reason: r}
	f.c.detail = detail
	g.s.logDecision(f.c)
	f.hold()
}

// hold drops the flow's datagrams for quicDenyHold. f.mu must be held.
func (f *flow) hold() {
	f.state = flowDenied
	f.holdUntil = time.Now().Add(quicDenyHold)
	f.release()
	f.slot.free() // a held flow holds no sockets
}

// startDecide hands f to decide, in its own goroutine registered with
// Shutdown: Shutdown waits for its decision line, and cancels its DNS
// lookups when the grace ends. Once Shutdown has begun the flow is refused
// at once.
func (g *quicGateway) startDecide(f *flow, isQUIC bool) {
	tr := g.s.track(nil)
	if tr == nil {
		if isQUIC {
			f.c.fingerprint(&f.hello, true)
		}
		g.deny(f, policy.ReasonShuttingDown, "egressd is shutting down")
		return
	}
	f.state = flowDeciding
	go g.decide(f, isQUIC, tr)
}

// decide runs once per flow, in its own goroutine (verification may wait
// for DNS): decision, verification, sockets, then the buffered datagrams.
func (g *quicGateway) decide(f *flow, isQUIC bool, tr *tracked) {
	defer g.s.untrack(tr)
	s, c := g.s, f.c
	r := policy.Request{Addr: f.key.dst.Addr(), Port: f.key.dst.Port(), Hello: policy.HelloNotTLS,
		Protocol: policy.ProtocolQUIC, Transparent: true, Client: f.key.client.Addr()}
	var hello *sni.Hello
	if isQUIC {
		hello = &f.hello
	}
	var up *net.UDPConn
	var reply quicReplier
	if t, ok := s.decideHello(tr.ctx, c, &r, hello, true, Target{Addr: r.Addr, Port: r.Port}); ok {
		up, reply = g.open(tr.ctx, c, t, f.key.dst)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == flowClosed && (up != nil || tr.ctx.Err() != nil) {
		// Shut down while it was decided (and, when the grace ended,
		// its lookup or dial cancelled): nothing was relayed, and an
		// allow would have no close line.
		if up != nil {
			_ = up.Close()
			_ = reply.Close()
			up = nil
		}
		c.refuse(policy.ReasonClientClosed, "closed by shutdown")
	}
	s.logDecision(c)
	if f.state == flowClosed || up == nil {
		if f.state == flowClosed {
			f.release() // left to this goroutine by close
			f.slot.free()
		} else {
			f.hold()
		}
		return
	}
	f.up, f.reply = up, reply
	if isQUIC {
		f.verify, f.sni = f.q.Verifier(), helloName(&r)
	}
	off := 0
	for _, n := range f.pendLen {
		// Datagrams that came while the flow was decided are screened
		// like later ones: another connection's must wait for its own.
		d := f.pend[off : off+n]
		pass, held := g.screen(f, d)
		if pass {
			held = append(held, d)
		}
		for _, d := range held {
			if _, err := up.Write(d); err == nil {
				f.bytesUp.Add(int64(len(d)))
			}
		}
		off += n
	}
	f.release()
	f.state = flowRelaying
	s.metrics.relaying(ModeQUIC, 1) // until end
	f.touch()
	go g.pump(f, up, reply)
}

// open dials the upstream socket for an allowed flow and opens its reply
// socket, bound to the flow's original destination orig; on failure it
// refuses c and returns nils.
func (g *quicGateway) open(ctx context.Context, c *conn, t Target, orig netip.AddrPort) (*net.UDPConn, quicReplier) {
	s := g.s
	uc := s.dial(ctx, c, t, "udp")
	if uc == nil {
		return nil, nil
	}
	up, ok := uc.(*net.UDPConn)
	if !ok {
		_ = uc.Close()
		c.refuse(policy.ReasonDialError, fmt.Sprintf("upstream is %T, not a UDP socket", uc))
		return nil, nil
	}
	reply, err := g.reply(orig)
	if err != nil {
		_ = up.Close()
		c.refuse(policy.ReasonDialError, "reply socket: "+err.Error())
		return nil, nil
	}
	return up, reply
}

// pump relays the upstream's datagrams back to the client until the flow
// is closed.
func (g *quicGateway) pump(f *flow, up *net.UDPConn, reply quicReplier) {
	buf := make([]byte, maxQUICDatagram+1)
	for {
		n, err := up.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ECONNREFUSED and the like: an ICMP error for an earlier
			// datagram, reported once. The flow idles out if it persists;
			// the pause keeps an unexpected persistent error from spinning.
			time.Sleep(time.Millisecond)
			continue
		}
		if n > maxQUICDatagram {
			continue
		}
		if _, err := reply.WriteToUDPAddrPort(buf[:n], f.key.client); err == nil {
			f.bytesDown.Add(int64(n))
		}
		f.touch()
	}
}

// sweep expires flows: pending ones past the hello timeout, relaying ones
// idle for the idle timeout, denied ones at the end of their hold.
func (g *quicGateway) sweep() {
	tick := time.NewTicker(quicSweepInterval)
	defer tick.Stop()
	for {
		select {
		case <-g.done:
			return
		case <-tick.C:
		}
		g.expire(time.Now())
	}
}

func (g *quicGateway) expire(now time.Time) {
	hello, idle := g.s.cfg.HelloTimeout, g.s.cfg.IdleTimeout
	var timedOut, ended, waiting []*flow
	g.mu.Lock()
	for k, f := range g.flows {
		f.mu.Lock()
		last := epoch.Add(time.Duration(f.last.Load())) // with epoch's monotonic reading
		switch f.state {
		case flowPending:
			if now.Sub(f.c.start) >= hello {
				timedOut = append(timedOut, f)
			}
		case flowRelaying:
			if now.Sub(last) >= idle {
				ended = append(ended, f)
				f.state = flowClosed
				delete(g.flows, k)
			} else if slices.ContainsFunc(f.others, func(o *otherConn) bool { return o.state == flowPending }) {
				waiting = append(waiting, f)
			}
		case flowDenied:
			if now.After(f.holdUntil) {
				f.state = flowClosed
				delete(g.flows, k)
			}
		}
		f.mu.Unlock()
	}
	g.mu.Unlock()
	for _, f := range timedOut {
		f.mu.Lock()
		if f.state == flowPending {
			g.deny(f, policy.ReasonHelloTimeout, fmt.Sprintf("no complete ClientHello within %s (%d datagrams)", hello, len(f.pendLen)))
		}
		f.mu.Unlock()
	}
	for _, f := range waiting {
		f.mu.Lock()
		if f.state == flowRelaying {
			g.abandonOthers(f, now.Add(-hello), policy.ReasonHelloTimeout,
				"another QUIC connection on the flow's socket: no complete ClientHello within "+hello.String())
		}
		f.mu.Unlock()
	}
	for _, f := range ended {
		g.end(f)
	}
}

// end closes a relaying flow's sockets and logs its close line. The flow is
// already out of the table and marked closed.
func (g *quicGateway) end(f *flow) {
	f.mu.Lock()
	g.abandonOthers(f, time.Now(), policy.ReasonClientClosed, "the flow ended before another QUIC connection's ClientHello was complete")
	for _, o := range f.others {
		g.closeOther(o)
	}
	f.mu.Unlock()
	_ = f.up.Close()
	_ = f.reply.Close()
	f.slot.free()
	g.s.metrics.relaying(ModeQUIC, -1)
	g.s.logClose(f.c, f.bytesUp.Load(), f.bytesDown.Load())
}

// close stops the gateway: every flow is closed (relaying ones logged
// with a close line, pending ones with their decision line).
func (g *quicGateway) close() {
	_ = g.pc.Close()
	g.mu.Lock()
	g.closed = true
	var ended, pending []*flow
	for k, f := range g.flows {
		f.mu.Lock()
		switch f.state {
		case flowRelaying:
			ended = append(ended, f)
		case flowDeciding:
			// decide still reads the hello; it releases the flow.
		case flowPending:
			pending = append(pending, f)
		default:
			f.release()
			f.slot.free()
		}
		f.state = flowClosed
		f.mu.Unlock()
		delete(g.flows, k)
	}
	g.mu.Unlock()
	for _, f := range pending {
		f.mu.Lock()
		f.c.refuse(policy.ReasonClientClosed, fmt.Sprintf("closed by shutdown before the ClientHello was complete (%d datagrams)", len(f.pendLen)))
		g.s.logDecision(f.c)
		f.release()
		f.slot.free()
		f.mu.Unlock()
	}
	for _, f := range ended {
		g.end(f)
	}
}

// A client may open another QUIC connection on the socket of an allowed
// flow: same address and port, same destination, a new Destination
// Connection ID and its own ClientHello. Relayed as part of the flow, its
// SNI would go unchecked, and an allow for one name on a shared (CDN)
// address would open every name served there. So a relaying flow screens
// its client's long-header Initial packets: one whose DCID is not the
// decided connection's and which opens with the keys of its own DCID is
// another connection's first flight (the flow's own later Initials use the
// server's connection ID with the first keys, and do not open). Its
// datagrams are held until its hello is complete and decided like the
// flow's, with its own decision line: allowed when the policy allows it
// and the destination is verified for its SNI (the flow's SNI, or one the
// resolver knows the destination for, without a query); otherwise dropped.
// A Retry's new Initial is such a connection too, and so is one with the
// decided DCID in another version (a server that does not speak the first
// version drops its Initials).
//
// The decided connection's later Initials, and an allowed other
// connection's, to the first connection ID or the server's, go on only
// when they carry the decided hello's bytes (sni.QUICVerifier); others
// are dropped. A server drops Initials that the
// reassembly took in (in a datagram under 1200 bytes, or with a packet
// number already used), so without this a client could have one hello
// decided and send the server another for the same connection ID.

// quicMaxOtherConns bounds the other connections one flow keeps verdicts
// for; at most one at a time is held undecided (its reassembly buffer).
const quicMaxOtherConns = 8

// otherConn is another connection on a relaying flow.
type otherConn struct {
	dcid  sni.QUICConnID
	state flowState         // flowPending, then flowRelaying (allowed) or flowDenied
	q     *sni.QUICInitial  // while pending
	v     *sni.QUICVerifier // once allowed
	hello sni.Hello
	pend  [][]byte // its datagrams while pending
	size  int      // their bytes; pend is bounded like a flow's
	start time.Time
	// c is the record its allow line was written from: an allowed
	// connection gets a close line with that conn when its verdict goes
	// (closeOther), as every allowed connection does.
	c *conn
}

// screen says what of client datagram b may go upstream on relaying flow
// f: b itself (pass), or nothing but held, the datagrams of another
// connection whose hello b completed and which is allowed (b among them).
// It allocates nothing for the flow's own datagrams (its Initials to the
// server's connection ID included). f.mu must be held.
func (g *quicGateway) screen(f *flow, b []byte) (pass bool, held [][]byte) {
	if f.verify == nil { // not decided on a QUIC ClientHello
		return true, nil
	}
	id, ok := sni.InitialDCID(b)
	if !ok {
		// Not a first flight, unless an Initial hides behind a 0-RTT or
		// Handshake packet, which no client sends, or it is of a version
		// the screen cannot read: dropped, or a hello would reach the
		// server unscreened.
		return !sni.Unscreened(b), nil
	}
	if id == f.verify.ConnID() {
		return f.verify.Check(b) == nil, nil
	}
	for _, o := range f.others {
		if o.dcid == id {
			if o.state != flowPending {
				return o.state == flowRelaying && o.v.Check(b) == nil, nil
			}
			err := o.q.Add(b, &o.hello)
			if errors.Is(err, sni.ErrDiscarded) {
				return false, nil
			}
			return false, g.otherDatagram(f, o, b, err)
		}
	}
	// An Initial that opens with the keys of the decided connection (or
	// of an allowed other one) but names another DCID is that
	// connection's, sent to the server's connection ID (RFC 9000 §7.2):
	// it goes on only with the decided hello's bytes, as the Initials to
	// the first DCID do. Checked before any key derivation for id, which
	// allocates; no server opens it with id's keys either.
	if f.verify.Check(b) == nil {
		return true, nil
	}
	for _, o := range f.others {
		if o.state == flowRelaying && o.v.Check(b) == nil {
			return true, nil
		}
	}
	q := initialPool.Get().(*sni.QUICInitial)
	var hello sni.Hello
	err := q.Add(b, &hello)
	if !q.Opened() {
		// Not a first flight, nor a connection's Initial to the server's
		// connection ID: no server could open it either, unless it hides
		// an Initial the reassembly did not reach. Dropped.
		putInitial(q)
		return false, nil
	}
	if slices.ContainsFunc(f.others, func(o *otherConn) bool { return o.state == flowPending }) {
		putInitial(q)
		return false, nil // dropped: the client retransmits
	}
	if len(f.others) >= quicMaxOtherConns {
		// The oldest verdict goes (none is pending): forgotten, its
		// connection's next first flight is decided again. Otherwise a
		// sender spoofing the client's address could use up the table
		// and lock the client's own new connections out.
		g.closeOther(f.others[0])
		f.others = slices.Delete(f.others, 0, 1)
	}
	o := &otherConn{dcid: id, q: q, hello: hello, start: time.Now()}
	f.others = append(f.others, o)
	return false, g.otherDatagram(f, o, b, err)
}

// otherDatagram holds datagram b of pending connection o, whose hello
// reassembly said err, and decides o once that is final; it returns o's
// held datagrams when o is allowed.
func (g *quicGateway) otherDatagram(f *flow, o *otherConn, b []byte, err error) [][]byte {
	complete := err == nil
	if len(o.pend) >= maxPendingDatagrams || o.size+len(b) > maxPendingBytes {
		what := "no complete ClientHello within"
		if complete {
			what = "the ClientHello completed past the buffer, in"
		}
		err = fmt.Errorf("%s %d datagrams (%d bytes): %w", what, len(o.pend)+1, o.size+len(b), sni.ErrTooLarge)
	} else {
		o.pend = append(o.pend, bytes.Clone(b))
		o.size += len(b)
	}
	if errors.Is(err, sni.ErrNeedMore) {
		return nil
	}
	v := o.q.Verifier() // nil unless err is nil
	send := o.pend
	c := g.decideOther(f, o, err, complete)
	o.release() // after the decision line, which needs o.hello
	if c.decision.Allow {
		c.dropHello() // kept for its close line only (closeOther)
		o.state, o.v, o.c = flowRelaying, v, c
		return send
	}
	o.state = flowDenied
	return nil
}

// decideOther decides another connection o of relaying flow f on its
// hello (err: why there is none), logs the decision and returns its
// record. It is decided on the address its datagrams go to, the flow's
// upstream: under verify_destination = "redirect" that is not the
// original destination. complete says whether o.hello is a complete
// ClientHello, which a refusal's line carries too.
func (g *quicGateway) decideOther(f *flow, o *otherConn, err error, complete bool) *conn {
	s := g.s
	c := g.otherConn(f)
	c.helloWait = max(time.Since(o.start), time.Nanosecond)
	if complete && err != nil {
		c.fingerprint(&o.hello, true)
	}
	switch {
	case errors.Is(err, sni.ErrTooLarge):
		c.refuse(policy.ReasonHelloTooLarge, err.Error())
	case err != nil:
		c.refuse(policy.ReasonHelloMalformed, err.Error())
	default:
		r := policy.Request{Addr: f.c.dst.Addr(), Port: f.c.dst.Port(), Protocol: policy.ProtocolQUIC, Transparent: true, Client: f.key.client.Addr()}
		if s.decide(c, &r, &o.hello, true) {
			if name := helloName(&r); name != f.sni && !s.dstKnown(c.decision, r.Addr, name) {
				c.refuse(policy.ReasonDstMismatch, fmt.Sprintf("another QUIC connection on the socket of flow %d names %s, which %s is not known to serve (decided without a DNS query)", f.c.id, name, r.Addr))
			}
		}
	}
	s.logDecision(c)
	return c
}

// closeOther writes the close line of another connection o whose verdict
// goes (its flow ended, or the verdict was evicted), when it was allowed.
// Its datagrams crossed the flow's socket: their bytes are in the flow's
// close line, so its own says 0. f.mu must be held.
func (g *quicGateway) closeOther(o *otherConn) {
	if o.state == flowRelaying && o.c != nil {
		g.s.logClose(o.c, 0, 0)
		o.c = nil
	}
}

// otherConn is the conn another connection on flow f is logged as.
func (g *quicGateway) otherConn(f *flow) *conn {
	c := g.s.newConnFrom(ModeQUIC, f.key.client)
	c.host, c.port, c.dst = f.c.host, f.c.port, f.c.dst
	return c
}

// release drops what only o's hello phase needs, its parsed hello
// included: a verdict kept in f.others needs only its state, verifier
// and, allowed, the record its close line is written from.
func (o *otherConn) release() {
	putInitial(o.q)
	o.q, o.pend, o.size = nil, nil, 0
	o.hello = sni.Hello{}
}

// abandonOthers refuses, with reason and a line each, the other
// connections of f whose hello is still incomplete and that started
// before since. f.mu must be held.
func (g *quicGateway) abandonOthers(f *flow, since time.Time, r policy.Reason, detail string) {
	for _, o := range f.others {
		if o.state != flowPending || o.start.After(since) {
			continue
		}
		c := g.otherConn(f)
		c.refuse(r, fmt.Sprintf("%s (%d datagrams)", detail, len(o.pend)))
		g.s.logDecision(c)
		o.release()
		o.state = flowDenied
	}
}
