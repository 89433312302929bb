package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/policy"
)

const (
	// dnsReadTimeout bounds how long a TCP client may take to send a query
	// (and how long a UDP read waits before the server checks for
	// shutdown); dnsWriteTimeout bounds writing the answer.
	dnsReadTimeout  = 5 * time.Second
	dnsWriteTimeout = 5 * time.Second
	// dnsMaxTCPQueries bounds the queries one TCP connection may send.
	dnsMaxTCPQueries = 128
	// dnsUDPSize is the largest UDP query read; larger ones are cut off
	// and rejected as malformed.
	dnsUDPSize = dns.DefaultMsgSize
	// dnsMaxUDPAnswer caps a UDP answer whatever EDNS0 size the query
	// claims: 1232 bytes, DNS Flag Day 2020's size, fits any path without
	// fragmentation. A client that claims 65,000 with a spoofed source
	// would otherwise turn a 44-byte query into an answer of kilobytes
	// (fetched over TCP upstream) aimed at its victim. Larger answers come
	// back truncated (TC), and the client asks again over TCP.
	dnsMaxUDPAnswer = 1232
	// dnsForwardTimeout bounds forwarding one query to the servers.
	dnsForwardTimeout = 6 * time.Second
	// dnsMaxInFlight bounds the queries forwarded at once; more are
	// answered SERVFAIL at once instead of piling up goroutines.
	dnsMaxInFlight = 512
	// dnsMaxInFlightPerClient bounds one client address's share of them,
	// so that a client asking for names that resolve slowly cannot take
	// every slot and have every other client answered SERVFAIL. A quarter:
	// a node-local cache forwarding for many pods is one client.
	dnsMaxInFlightPerClient = dnsMaxInFlight / 4
)

// ServeDNS runs the gateway DNS server (server { dns_listen }) on pc (UDP)
// and ln (TCP); either may be nil. It answers only names some allow rule
// could allow (policy.NameAllowed), forwards those queries to the resolver
// block's servers, and remembers every address it hands out in the
// destination verification cache. It returns when Shutdown is called, or
// with the first error of either server.
func (s *Server) ServeDNS(pc net.PacketConn, ln net.Listener) error {
	h := &dnsHandler{s: s, inFlight: newLimiter(dnsMaxInFlight, dnsMaxInFlightPerClient)}
	var srvs []*dns.Server
	if pc != nil {
		srvs = append(srvs, &dns.Server{PacketConn: pc, Handler: h, UDPSize: dnsUDPSize,
			ReadTimeout: dnsReadTimeout, WriteTimeout: dnsWriteTimeout})
	}
	if ln != nil {
		srvs = append(srvs, &dns.Server{Listener: dnsListener{ln, s}, Handler: h, ReadTimeout: dnsReadTimeout,
			MaxTCPQueries: dnsMaxTCPQueries, // dnsConn.Write bounds writes: miekg/dns ignores WriteTimeout
			IdleTimeout:   func() time.Duration { return dnsReadTimeout }})
	}
	if len(srvs) == 0 {
		return errors.New("ServeDNS: no listener")
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		if pc != nil {
			_ = pc.Close()
		}
		if ln != nil {
			_ = ln.Close()
		}
		return nil
	}
	s.dnsServers = append(s.dnsServers, srvs...)
	if pc != nil {
		s.dnsConns = append(s.dnsConns, pc)
	}
	if ln != nil {
		s.addListenerLocked(ln)
	}
	s.mu.Unlock()

	errc := make(chan error, len(srvs))
	for _, d := range srvs {
		go func() { errc <- d.ActivateAndServe() }()
	}
	var first error
	for range srvs {
		err := <-errc
		if err != nil && !s.isClosing() && first == nil {
			first = err
			// One server failed: stop the other too.
			for _, d := range srvs {
				_ = d.Shutdown()
			}
			if pc != nil {
				_ = pc.Close()
			}
			if ln != nil {
				_ = ln.Close()
			}
		}
	}
	return first
}

type dnsHandler struct {
	s        *Server
	inFlight *limiter // queries being forwarded, in total and per client
}

// ServeDNS answers one query (dns.Handler).
func (h *dnsHandler) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	s := h.s
	c := s.newConn(ModeDNS, w.RemoteAddr().String())
	reply := func(rcode int) {
		m := new(dns.Msg)
		m.SetRcode(req, rcode)
		m.RecursionAvailable = true
		_ = w.WriteMsg(m)
	}
	if req.Opcode != dns.OpcodeQuery {
		c.decision = policy.Decision{Reason: policy.ReasonBadRequest}
		c.detail = "opcode " + dns.OpcodeToString[req.Opcode]
		s.logDecision(c)
		reply(dns.RcodeNotImplemented)
		return
	}
	if len(req.Question) != 1 {
		c.decision = policy.Decision{Reason: policy.ReasonBadRequest}
		c.detail = "not exactly one question"
		s.logDecision(c)
		reply(dns.RcodeFormatError)
		return
	}
	q := req.Question[0]
	c.qtype = dns.TypeToString[q.Qtype]
	if c.qtype == "" {
		c.qtype = dns.Type(q.Qtype).String()
	}
	name, err := policy.NormalizeHost(q.Name)
	if err != nil {
		name = q.Name
	}
	c.host = name
	refuse := func(d policy.Decision) {
		c.decision = d
		s.logDecision(c)
		if s.cfg.DNSRefuse == policy.DNSRefuseNXDomain {
			reply(dns.RcodeNameError)
		} else {
			reply(dns.RcodeRefused)
		}
	}
	if err != nil || q.Qclass != dns.ClassINET {
		if err != nil {
			c.detail = err.Error()
		} else {
			c.detail = "class " + dns.Class(q.Qclass).String()
		}
		refuse(policy.Decision{Reason: policy.ReasonNoRule})
		return
	}
	p := s.policy() // one policy decides the query, whatever reload comes in between
	pol, rule, ok := p.NameAllowed(name)
	switch {
	case ok:
		c.decision = policy.Decision{Allow: true, Reason: policy.ReasonAllowed, Policy: pol, Rule: rule}
	case p.Audit():
		// Server audit mode: answer, so the workload goes on to connect
		// and its connection shows what it needs.
		c.decision = policy.Decision{Allow: true, WouldDeny: true, Reason: policy.ReasonNoRule}
		if pol != "" {
			c.decision = policy.Decision{Allow: true, WouldDeny: true, Reason: policy.ReasonDeniedByRule, Policy: pol, Rule: rule}
		}
	default:
		d := policy.Decision{Reason: policy.ReasonNoRule}
		if pol != "" {
			d = policy.Decision{Reason: policy.ReasonDeniedByRule, Policy: pol, Rule: rule}
		}
		refuse(d)
		return
	}
	client := c.client.Addr()
	if _, ok := h.inFlight.acquire(client); !ok {
		c.refuse(policy.ReasonDNSError, fmt.Sprintf("too many queries in flight (%d in total, %d from one client)", dnsMaxInFlight, dnsMaxInFlightPerClient))
		s.logDecision(c)
		reply(dns.RcodeServerFailure)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), dnsForwardTimeout)
	in, err := s.resolver.Exchange(ctx, req)
	cancel()
	h.inFlight.release(client)
	if err != nil {
		c.refuse(policy.ReasonDNSError, err.Error())
		s.logDecision(c)
		reply(dns.RcodeServerFailure)
		return
	}
	// Hand out only the addresses remembered, for no longer than they are
	// remembered, so that every one verifies.
	trimAnswer(in)
	capTTLs(in)
	s.resolver.Remember(name, in)
	s.logDecision(c)
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if o := req.IsEdns0(); o != nil {
			size = min(max(int(o.UDPSize()), dns.MinMsgSize), dnsMaxUDPAnswer)
		}
		in.Truncate(size)
	}
	_ = w.WriteMsg(in)
}

// dnsListener is the DNS server's TCP listener. Each connection counts
// against max_connections and max_connections_per_client (one over a
// limit is closed at once, with a connection_limit decision line), and an
// accept error such as EMFILE backs off as the proxy's listeners do:
// miekg/dns retries a temporary error at once, which spins while the
// descriptor table is full.
type dnsListener struct {
	net.Listener
	s *Server
}

func (l dnsListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if isTemporary(err) && !l.s.isClosing() {
				backoff(&delay)
				continue
			}
			return nil, err
		}
		delay = 0
		sl, _ := l.s.acceptSlot(c, ModeDNS)
		if sl == nil {
			_ = c.Close()
			continue
		}
		return &dnsConn{slotConn{Conn: c, sl: sl}}, nil
	}
}

// dnsConn is a DNS-over-TCP connection with its slot.
type dnsConn struct{ slotConn }

// Write bounds each answer's write by dnsWriteTimeout (miekg/dns does not
// apply its Server.WriteTimeout), and closes the connection when a write
// fails: a client that sends queries and does not read the answers gets no
// more of them, and its slot and goroutine are freed rather than each
// further answer waiting out the timeout again.
func (c *dnsConn) Write(b []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(dnsWriteTimeout))
	n, err := c.Conn.Write(b)
	if err != nil {
		_ = c.Close()
	}
	return n, err
}
