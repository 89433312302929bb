package proxy

import (
	"net/netip"
	"time"
	"unicode/utf8"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sni"
)

// Decision-log field names. They are the interface security teams build their
// queries on (README documents each), so they are constants and never change
// casually.
const (
	fieldConn       = "conn"
	fieldMode       = "mode"
	fieldClient     = "client"
	fieldHost       = "host"
	fieldPort       = "port"
	fieldDst        = "dst"
	fieldSNI        = "sni"
	fieldALPN       = "alpn"
	fieldTLSVersion = "tls_version"
	fieldJA3        = "ja3"
	fieldJA3Full    = "ja3_full"
	fieldJA4        = "ja4"
	fieldECH        = "ech"
	fieldDecision   = "decision"
	fieldPolicy     = "policy"
	fieldRule       = "rule"
	fieldReason     = "reason"
	fieldDetail     = "detail"
	fieldIdentity   = "identity"
	fieldWouldDeny  = "would_deny"
	fieldBytesUp    = "bytes_up"
	fieldBytesDown  = "bytes_down"
	fieldDurationMS = "duration_ms"
	fieldQType      = "qtype"
	fieldFlows      = "flows"
	fieldDropped    = "dropped"

	msgDecision = "decision"
	msgClose    = "close"

	// Shutdown lines (Server.Shutdown): not decisions, one at the start
	// and one at the end.
	fieldOpen          = "open"
	fieldGraceMS       = "grace_ms"
	fieldDrained       = "drained"
	fieldClosed        = "closed"
	msgShutdownStarted = "shutdown started"
	msgShutdown        = "shutdown"
)

// Modes name the way a connection reached egressd.
const (
	ModeConnect = "connect" // HTTP CONNECT tunnel
	ModeHTTP    = "http"    // absolute-form http:// request
	// ModeTransparent: a TCP connection redirected to the transparent
	// listener; host is the original destination address.
	ModeTransparent = "transparent"
	// ModeDNS: a query to the gateway DNS server (dns_listen); host is the
	// queried name and qtype its type.
	ModeDNS = "dns"
	// ModeProxy: a connection to http_listen refused on accept, before its
	// request was read (connection_limit); host is empty.
	ModeProxy = "proxy"
)

// ModeQUIC is declared in quic.go.

// conn is the per-connection record that the decision and close log lines
// are written from. One value is filled as the connection progresses; the
// decision in it is the one the matcher returned, never recomputed.
type conn struct {
	id     uint64
	mode   string
	start  time.Time
	client netip.AddrPort
	host   string // destination name as the client gave it, or the IP literal
	port   uint16
	dst    netip.AddrPort // the address dialed; zero until dialed

	hello    *sni.Hello // nil when no ClientHello was parsed
	ja3Full  string
	ja3      string
	ja4      string
	qtype    string // DNS query type (mode dns), e.g. "A"
	decision policy.Decision
	// pol is the policy a CONNECT is decided by, from its request until
	// its hello's decision (then nil: a tunnel does not keep a replaced
	// policy alive).
	pol    *policy.Policy
	detail string // short error text for refusals that need one (never credentials)

	// helloWait is how long the ClientHello took to complete from the
	// start of the hello phase (metric egressd_hello_wait_seconds); 0 when
	// none completed.
	helloWait time.Duration
}

// dropHello forgets the ClientHello and its fingerprints once the decision
// line is written: an established tunnel keeps only what its close line
// and metrics need.
func (c *conn) dropHello() {
	c.hello = nil
	c.ja3Full, c.ja3, c.ja4 = "", "", ""
}

// fingerprint parses nothing: it fills the JA3/JA4 fields from an already
// parsed hello, once per connection. quic selects JA4's QUIC marker.
func (c *conn) fingerprint(h *sni.Hello, quic bool) {
	c.hello = h
	c.ja3Full, c.ja3 = h.JA3()
	c.ja4 = h.JA4(quic)
}

func (s *Server) logDecision(c *conn) {
	d := c.decision
	// Addresses are formatted into this buffer, not into new strings: the
	// line is built without allocating (a bracketed IPv6 address with a
	// zone and port fits in 64 bytes).
	var addrBuf [64]byte
	e := s.log.Info().
		Uint64(fieldConn, c.id).
		Str(fieldMode, c.mode)
	if c.client.IsValid() {
		e = e.Bytes(fieldClient, c.client.AppendTo(addrBuf[:0]))
	}
	if c.host != "" {
		e = e.Str(fieldHost, c.host)
	}
	if c.port != 0 {
		e = e.Uint16(fieldPort, c.port)
	}
	if c.qtype != "" {
		e = e.Str(fieldQType, c.qtype)
	}
	if c.dst.IsValid() {
		e = e.Bytes(fieldDst, c.dst.AppendTo(addrBuf[:0]))
	}
	if h := c.hello; h != nil {
		e = e.Str(fieldSNI, cut(h.ServerName, maxLoggedHelloValue)).
			Strs(fieldALPN, loggedALPN(h.ALPN)).
			Str(fieldTLSVersion, tlsVersionName(h)).
			Str(fieldJA3, c.ja3).
			Str(fieldJA3Full, cut(c.ja3Full, maxLoggedHelloValue)).
			Str(fieldJA4, c.ja4)
		if h.ECH {
			e = e.Bool(fieldECH, true)
		}
	}
	verdict := "deny"
	if d.Allow {
		verdict = "allow"
	}
	e = e.Str(fieldDecision, verdict)
	if d.WouldDeny {
		e = e.Bool(fieldWouldDeny, true)
	}
	if d.Identity != "" {
		e = e.Str(fieldIdentity, d.Identity)
	}
	if d.Policy != "" {
		e = e.Str(fieldPolicy, d.Policy).Str(fieldRule, d.Rule)
	}
	e = e.Str(fieldReason, string(d.Reason))
	if c.detail != "" {
		e = e.Str(fieldDetail, c.detail)
	}
	s.metrics.decision(c) // before the line: a reader of the log sees it counted
	e.Msg(msgDecision)
}

func (s *Server) logClose(c *conn, up, down int64) { s.logCloseFailed(c, up, down, nil) }

// maxLoggedValue bounds a value from a client or an upstream that a log
// line quotes unchecked (an upstream's error quoting a malformed status
// line, a request's Host header): either can be up to the 32 KiB header
// limit, and one line of the log must stay readable.
const maxLoggedValue = 200

// maxLoggedHelloValue bounds what a decision line quotes of a ClientHello
// (sni, ja3_full, the alpn list's names together). A hostile hello of the
// 16 KiB egressd reads can make each of them 16-48 KB, and a line past 16
// KiB is split by Docker's and the CRI's log drivers into pieces a log
// shipper cannot parse as JSON. Real hellos stay far below: a DNS name is
// at most 253 bytes, browsers' and TLS libraries' JA3 strings 100-600,
// their ALPN lists a few names of under 10 bytes. ja3 is the hash of the
// whole string all the same.
const maxLoggedHelloValue = 1024

// loggedALPN is alpn, or its first names up to maxLoggedHelloValue bytes
// followed by "…" when the names together are longer.
func loggedALPN(alpn []string) []string {
	n := 0
	for i, a := range alpn {
		if n += len(a); n > maxLoggedHelloValue {
			return append(alpn[:i:i], "…")
		}
	}
	return alpn
}

// logCloseFailed is logClose for a connection that failed after it was
// allowed: the close line's detail says why (err, cut to maxLoggedValue
// bytes), when err is not nil.
func (s *Server) logCloseFailed(c *conn, up, down int64, err error) {
	s.metrics.closed(c, up, down)
	e := s.log.Info().
		Uint64(fieldConn, c.id).
		Str(fieldMode, c.mode).
		Int64(fieldBytesUp, up).
		Int64(fieldBytesDown, down).
		Int64(fieldDurationMS, time.Since(c.start).Milliseconds())
	if err != nil {
		e = e.Str(fieldDetail, cut(err.Error(), maxLoggedValue))
	}
	e.Msg(msgClose)
}

// cut returns s cut to at most n bytes, marked with "…" when cut, and
// never in the middle of a UTF-8 sequence.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// tlsVersionName names the highest version the client offered: the
// supported_versions extension when present (TLS 1.3 clients), else the
// legacy version field.
func tlsVersionName(h *sni.Hello) string {
	v := h.LegacyVersion
	for _, sv := range h.SupportedVersions {
		if sv&0x0f0f == 0x0a0a { // GREASE (RFC 8701)
			continue
		}
		if sv > v && sv <= 0x0304 {
			v = sv
		}
	}
	switch v {
	case 0x0304:
		return "1.3"
	case 0x0303:
		return "1.2"
	case 0x0302:
		return "1.1"
	case 0x0301:
		return "1.0"
	case 0x0300:
		return "ssl3"
	}
	return "unknown"
}
