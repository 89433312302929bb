package policy

import (
	"net/netip"
	"strings"
)

// Hello says how much of a connection's first bytes the proxy has seen when
// it asks for a Decision.
type Hello uint8

const (
	// HelloPending: the first bytes were not read yet (the CONNECT
	// pre-check). The question is "could any rule allow this destination?".
	HelloPending Hello = iota
	// HelloTLS: a ClientHello was parsed; SNI, JA3 and JA4 are set (SNI may
	// be "" when the client sent none).
	HelloTLS
	// HelloNotTLS: the first bytes of a tunnel were not a TLS ClientHello.
	HelloNotTLS
	// HelloHTTP: a plain-HTTP proxy request (absolute-form), not a tunnel.
	HelloHTTP
)

func (h Hello) String() string {
	switch h {
	case HelloPending:
		return "pending"
	case HelloTLS:
		return "tls"
	case HelloNotTLS:
		return "not_tls"
	case HelloHTTP:
		return "http"
	}
	return "invalid"
}

// Protocol is the transport a connection reached egressd on; a rule's
// protocols attribute lists the ones it applies to.
type Protocol uint8

const (
	// ProtocolTCP: CONNECT tunnels, plain-HTTP requests and transparent TCP
	// connections.
	ProtocolTCP Protocol = iota
	// ProtocolQUIC: UDP flows on the QUIC listener, whether their first
	// datagram is a QUIC Initial (Hello is HelloTLS once the ClientHello
	// is recovered) or other UDP (HelloNotTLS).
	ProtocolQUIC
	numProtocols

	// allProtocols is the bit set of every Protocol.
	allProtocols = 1<<numProtocols - 1
)

func (p Protocol) String() string {
	switch p {
	case ProtocolTCP:
		return "tcp"
	case ProtocolQUIC:
		return "quic"
	}
	return "invalid"
}

// Request is what the proxy knows about a connection when it asks for a
// Decision.
type Request struct {
	// Host is the destination name as the client gave it (CONNECT authority
	// or Host header), already normalized with NormalizeHost; "" when the
	// destination is an IP address.
	Host string
	// Addr is the destination IP when known: an IP-literal CONNECT, or a
	// transparent proxy's original destination. Invalid otherwise.
	Addr netip.Addr
	Port uint16
	// Hello says which of the fields below are meaningful.
	Hello Hello
	// SNI is the server name as the client sent it; Decide normalizes it.
	// An SNI that is not a valid host name never matches.
	SNI string
	// JA3 is the lower-case hex MD5 JA3 fingerprint of the ClientHello.
	JA3 string
	// JA4 is the FoxIO JA4 fingerprint of the ClientHello.
	JA4 string
	// Protocol is the transport: ProtocolTCP (the zero value) or
	// ProtocolQUIC. A rule applies only to the protocols it lists.
	Protocol Protocol
	// Client is the client's address. A policy with a clients block
	// applies only to the clients it lists (by address or user).
	Client netip.Addr
	// User is the proxy user the client authenticated as (Authenticate
	// checked the password); "" when it did not.
	User string
	// Transparent marks a transparent-gateway connection: Host is "" and
	// Addr is the original destination. Allow rules whose hosts match the
	// normalized SNI, or that have hosts and whose sni list matches it, are
	// then candidates as well (the SNI is the only name there is). The SNI is only the client's claim: the proxy must verify
	// the address against the deciding rule (RuleHasCIDR, RuleHosts,
	// VerifyDestination) before it dials.
	Transparent bool
}

// Reason is the machine-readable word that explains a decision. It is
// meant for logs and metrics; every word the proxy logs is defined here.
type Reason string

// Reasons produced by Decide.
const (
	ReasonAllowed            Reason = "allowed"
	ReasonNoRule             Reason = "no_rule"
	ReasonDeniedByRule       Reason = "denied_by_rule"
	ReasonSNIMismatch        Reason = "sni_mismatch"
	ReasonSNIMissing         Reason = "sni_missing"
	ReasonNotTLS             Reason = "not_tls"
	ReasonJA3Mismatch        Reason = "ja3_mismatch"
	ReasonJA4Mismatch        Reason = "ja4_mismatch"
	ReasonPrivateDestination Reason = "private_destination"
	// ReasonNoPolicyForClient: every policy has a clients block and none
	// lists the client (by address or authenticated user).
	ReasonNoPolicyForClient Reason = "no_policy_for_client"
)

// Reasons the proxy produces itself; defined here so that every reason word
// lives in one place.
const (
	ReasonDNSError       Reason = "dns_error"
	ReasonDialError      Reason = "dial_error"
	ReasonHelloTimeout   Reason = "hello_timeout"
	ReasonHelloTooLarge  Reason = "hello_too_large"
	ReasonHelloMalformed Reason = "hello_malformed"
	ReasonBadRequest     Reason = "bad_request"
	ReasonClientClosed   Reason = "client_closed" // the client went away before its first bytes were complete
	// ReasonAuthFailed: an HTTP proxy client sent Proxy-Authorization
	// credentials that are malformed or wrong (an unknown user included:
	// the answer does not tell which).
	ReasonAuthFailed Reason = "auth_failed"
	// ReasonDstMismatch: a transparent connection's original destination is
	// neither in the deciding rule's cidrs nor an address egressd resolved
	// for the SNI name or the rule's exact hosts (verify_destination =
	// "refuse").
	ReasonDstMismatch Reason = "dst_mismatch"
	// ReasonConnectionLimit: refused at once because max_connections or
	// max_connections_per_client connections were already open.
	ReasonConnectionLimit Reason = "connection_limit"
	// ReasonShuttingDown: refused because egressd began shutting down
	// between accepting the connection and opening its tunnel.
	ReasonShuttingDown Reason = "shutting_down"
)

// Reasons lists every Reason, for pre-registering metric label values.
func Reasons() []Reason {
	return []Reason{
		ReasonAllowed, ReasonNoRule, ReasonDeniedByRule, ReasonSNIMismatch,
		ReasonSNIMissing, ReasonNotTLS, ReasonJA3Mismatch, ReasonJA4Mismatch,
		ReasonPrivateDestination, ReasonDNSError, ReasonDialError,
		ReasonHelloTimeout, ReasonHelloTooLarge, ReasonHelloMalformed,
		ReasonBadRequest, ReasonClientClosed, ReasonDstMismatch,
		ReasonConnectionLimit, ReasonShuttingDown, ReasonNoPolicyForClient,
		ReasonAuthFailed,
	}
}

func (r Reason) String() string { return string(r) }

// Decision is the outcome of Policy.Decide.
type Decision struct {
	Allow  bool
	Reason Reason
	Policy string // name of the policy of the deciding rule; "" when none
	Rule   string // name of the deciding rule; "" when none
	// WouldDeny: audit mode. The policy (or the server) is in audit mode,
	// so Allow is true although enforcement would deny for Reason.
	WouldDeny bool
	// Identity names the client as the policies' clients blocks see it:
	// the authenticated user, or "cidr:POLICY" for the first policy whose
	// clients cidrs contain its address; "" when no policy has clients.
	Identity string

	rule  *rule // the deciding rule, for AddrAllowed
	grant *rule // for an audit-mode deny rule: the allow rule that would have allowed, if any
	// The deciding policy's server settings that the checks after a
	// decision read (AddrAllowed, VerifyDestination): carried in the
	// decision, so that a reload between the decision and the dial cannot
	// mix two policies' settings into one connection. Copies rather than
	// the *Policy, so that a long tunnel does not keep a replaced policy's
	// indexes alive.
	allowPrivate bool
	verify       string
}

// Decide applies the policy to r. See the package documentation for the
// exact semantics. Decide does not allocate when r.Host and r.SNI are
// already normalized. It is safe for concurrent use.
func (p *Policy) Decide(r *Request) Decision {
	if r == nil {
		return Decision{Reason: ReasonBadRequest}
	}
	if p == nil {
		return Decision{Reason: ReasonNoRule}
	}
	client := r.Client.Unmap().WithZone("")
	var d Decision
	if p.scoped && !p.open && !p.anyApplies(client, r.User) {
		d = Decision{Reason: ReasonNoPolicyForClient}
	} else {
		d = p.decide(r, client)
	}
	if p.scoped {
		d.Identity = p.identity(client, r.User)
	}
	if !d.Allow && p.audited(d, client, r.User) {
		d.Allow, d.WouldDeny = true, true
	}
	d.allowPrivate, d.verify = p.allowPrivate, p.verify
	return d
}

// decide is Decide without clients and audit mode.
func (p *Policy) decide(r *Request, client netip.Addr) Decision {
	sni, sniOK := "", false
	// dsni is the SNI as deny rules see it: a name that is not ASCII
	// matches no allow rule, but a deny rule still refuses it when IDNA
	// maps it to a name the rule lists (denials fail closed).
	dsni, dsniOK := "", false
	if r.SNI != "" {
		var e hostErr
		sni, e = normalizeSNI(r.SNI)
		sniOK = e == hostOK
		dsni, dsniOK = sni, sniOK
		if e == hostNotASCII {
			dsni, e = normalizeHost(r.SNI)
			dsniOK = e == hostOK
		}
	}
	addr := r.Addr.Unmap().WithZone("")

	// Deny rules first: any match wins over every allow.
	ds := denyScan{p: p, r: r, sni: dsni, sniOK: dsniOK, best: -1, audited: -1, client: client}
	for it := p.denyIdx.names(r.Host); ; {
		ids := it.next()
		if ids == nil {
			break
		}
		ds.visit(ids)
	}
	if dsniOK && dsni != r.Host {
		for it := p.denyIdx.names(dsni); ; {
			ids := it.next()
			if ids == nil {
				break
			}
			ds.visit(ids)
		}
	}
	for it := p.denyIdx.addrs(addr); ; {
		ids := it.next()
		if ids == nil {
			break
		}
		ds.visit(ids)
	}
	if v4, ok := EmbeddedIPv4(addr); ok {
		// A NAT64 or 6to4 address reaches this IPv4 host: its denies
		// hold. (Allows do not widen: an IPv4 prefix allows only IPv4.)
		for it := p.denyIdx.addrs(v4); ; {
			ids := it.next()
			if ids == nil {
				break
			}
			ds.visit(ids)
		}
	}
	if ds.best >= 0 {
		ru := &p.deny[ds.best]
		return Decision{Reason: ReasonDeniedByRule, Policy: ru.policy, Rule: ru.name, rule: ru}
	}

	as := allowScan{p: p, r: r, sni: sni, sniOK: sniOK, addr: addr, pass: -1, fail: -1, client: client}
	as.privAddr = addr.IsValid() && !p.allowPrivate && IsPrivate(addr)
	for it := p.allowIdx.names(r.Host); ; {
		ids := it.next()
		if ids == nil {
			break
		}
		as.visit(ids)
	}
	if r.Transparent && r.Host == "" && r.Hello == HelloTLS && sniOK {
		for it := p.allowIdx.names(sni); ; {
			ids := it.next()
			if ids == nil {
				break
			}
			as.visit(ids)
		}
		for it := p.allowSNIIdx.names(sni); ; {
			ids := it.next()
			if ids == nil {
				break
			}
			as.visit(ids)
		}
	}
	for it := p.allowIdx.addrs(addr); ; {
		ids := it.next()
		if ids == nil {
			break
		}
		as.visit(ids)
	}
	var d Decision
	switch {
	case as.pass >= 0:
		ru := &p.allow[as.pass]
		d = Decision{Allow: true, Reason: ReasonAllowed, Policy: ru.policy, Rule: ru.name, rule: ru}
	case as.fail >= 0:
		ru := &p.allow[as.fail]
		d = Decision{Reason: as.failReason, Policy: ru.policy, Rule: ru.name, rule: ru}
	default:
		d = Decision{Reason: ReasonNoRule}
	}
	// An audit-mode deny rule decides (the connection will go through,
	// would_deny) only when the other rules let the connection through,
	// allowed or audited: it logs a would-be denial and never opens what
	// the configuration without it refuses. Its grant, d's rule (the
	// allow rule that passed, or the one whose failure audit mode lets
	// through; nil for no_rule), still says which private addresses the
	// connection may reach and how its destination is verified.
	if ds.audited >= 0 && (d.Allow || p.audited(d, client, r.User)) {
		ru := &p.deny[ds.audited]
		return Decision{Reason: ReasonDeniedByRule, Policy: ru.policy, Rule: ru.name, rule: ru, grant: d.rule}
	}
	return d
}

// AddrAllowed reports whether the proxy may dial a under decision d: d
// allows, and a is not private (IsPrivate), or d's rule is an allow rule
// that lists a CIDR containing a and lying wholly in private space, or the
// server block of the policy that decided d sets
// allow_private_destinations. When an audit-mode deny
// rule decided d (it lets the connection through), its cidrs name what to
// refuse, not what to open: the allow rule that would have allowed the
// connection, if any, opens private addresses instead. An IPv4-mapped a is
// unmapped first.
func (d *Decision) AddrAllowed(a netip.Addr) bool {
	if !d.Allow || !a.IsValid() {
		return false
	}
	a = a.Unmap().WithZone("")
	if d.allowPrivate || !IsPrivate(a) {
		return true
	}
	ru := d.allowRule()
	return ru != nil && ru.grantsPrivate(a)
}

// allowRule is the allow rule that lets d's connection through: the
// deciding rule, or when an audit-mode deny rule decided d, the allow rule
// that would have allowed the connection (nil if none). A deny rule's
// cidrs and hosts name what to refuse, never what to open or verify.
func (d *Decision) allowRule() *rule {
	if d.rule != nil && d.rule.deny {
		return d.grant
	}
	return d.rule
}

// RuleHasCIDR reports whether the allow rule that lets d's connection
// through (allowRule) lists a cidr that contains a (unmapped first). It is
// the first test of destination verification in transparent mode.
func (d *Decision) RuleHasCIDR(a netip.Addr) bool {
	ru := d.allowRule()
	if ru == nil || !a.IsValid() {
		return false
	}
	return prefixesContain(ru.cidrs, a.Unmap().WithZone(""))
}

// RuleHosts returns the exact (non-wildcard) host names of the allow rule
// that lets d's connection through (allowRule), normalized. Wildcards are
// left out: they name no address to resolve.
func (d *Decision) RuleHosts() []string {
	ru := d.allowRule()
	if ru == nil {
		return nil
	}
	var out []string
	for _, h := range ru.hosts {
		if h.kind == patExact {
			out = append(out, h.name)
		}
	}
	return out
}

// VerifyDestination returns the verify_destination setting that applies to
// decision d: the own setting of the allow rule that lets the connection
// through (allowRule), else the server block's (default VerifyRefuse).
func (d *Decision) VerifyDestination() string {
	if ru := d.allowRule(); ru != nil && ru.verify != "" {
		return ru.verify
	}
	if d.verify != "" {
		return d.verify
	}
	return VerifyRefuse
}

// denyScan finds the lowest-index deny rule that matches, preferring one
// in an enforced policy: a deny rule of an audit-mode policy lets the
// connection through (would_deny), which must not mask another policy's
// enforced deny.
type denyScan struct {
	p       *Policy
	r       *Request
	sni     string
	sniOK   bool
	best    int32 // in an enforced policy
	audited int32 // in an audit-mode policy
	client  netip.Addr
}

func (s *denyScan) visit(ids []int32) {
	for _, id := range ids {
		if s.best >= 0 && id >= s.best {
			return // ids ascend
		}
		ru := &s.p.deny[id]
		if !ru.applies(s.r.Port, s.r.Protocol) || !s.p.policyApplies(ru, s.client, s.r.User) || !s.conditions(ru) {
			continue
		}
		if !s.p.pols[ru.pol].audit {
			s.best = id
			return
		}
		if s.audited < 0 || id < s.audited {
			s.audited = id
		}
	}
}

// conditions reports whether a deny rule's sni/ja3/ja4 conditions hold.
// They hold only for a parsed ClientHello; with HelloPending the rule is
// not applied yet.
func (s *denyScan) conditions(ru *rule) bool {
	if !ru.tlsConds {
		return true
	}
	if s.r.Hello != HelloTLS {
		return false
	}
	if len(ru.sni) > 0 && !(s.sniOK && matchAny(ru.sni, s.sni)) {
		return false
	}
	if len(ru.ja3) > 0 && !containsFold(ru.ja3, s.r.JA3) {
		return false
	}
	if len(ru.ja4) > 0 && !containsFold(ru.ja4, s.r.JA4) {
		return false
	}
	return true
}

// allowScan tracks the lowest-index candidate that passes and the
// lowest-index candidate that fails, with its reason.
type allowScan struct {
	p          *Policy
	r          *Request
	sni        string
	sniOK      bool
	addr       netip.Addr
	privAddr   bool // addr is valid, private, and private destinations are not allowed globally
	pass       int32
	fail       int32
	failReason Reason
	client     netip.Addr
}

func (s *allowScan) visit(ids []int32) {
	for _, id := range ids {
		if s.pass >= 0 && id >= s.pass {
			return // ids ascend; nothing later can decide
		}
		if id == s.fail {
			continue
		}
		ru := &s.p.allow[id]
		if !ru.applies(s.r.Port, s.r.Protocol) || !s.p.policyApplies(ru, s.client, s.r.User) {
			continue
		}
		if reason := s.check(ru); reason == "" {
			s.pass = id
		} else if s.fail < 0 || id < s.fail {
			s.fail, s.failReason = id, reason
		}
	}
}

// check applies a candidate allow rule's conditions; "" means it passes.
func (s *allowScan) check(ru *rule) Reason {
	r := s.r
	if s.privAddr && !ru.grantsPrivate(s.addr) {
		return ReasonPrivateDestination
	}
	switch r.Hello {
	case HelloPending:
		return ""
	case HelloHTTP:
		if ru.tlsConds {
			return ReasonNotTLS
		}
		return ""
	case HelloNotTLS:
		if ru.requireTLS {
			return ReasonNotTLS
		}
		return ""
	case HelloTLS:
		if reason := s.checkSNI(ru); reason != "" {
			return reason
		}
		if len(ru.ja3) > 0 && !containsFold(ru.ja3, r.JA3) {
			return ReasonJA3Mismatch
		}
		if len(ru.ja4) > 0 && !containsFold(ru.ja4, r.JA4) {
			return ReasonJA4Mismatch
		}
		return ""
	}
	return ReasonNotTLS // an unknown Hello value fails closed
}

func (s *allowScan) checkSNI(ru *rule) Reason {
	r := s.r
	switch {
	case len(ru.sni) > 0:
		if r.SNI == "" {
			return ReasonSNIMissing
		}
		if s.sniOK && (matchAny(ru.sni, s.sni) || r.Host != "" && s.sni == r.Host) {
			return ""
		}
		return ReasonSNIMismatch
	case r.Host != "":
		if r.SNI == "" {
			return ReasonSNIMissing
		}
		if s.sniOK && s.sni == r.Host {
			return ""
		}
		return ReasonSNIMismatch
	case len(ru.hosts) > 0:
		if r.SNI == "" {
			return ReasonSNIMissing
		}
		if s.sniOK && matchAny(ru.hosts, s.sni) {
			return ""
		}
		return ReasonSNIMismatch
	}
	return "" // a cidrs-only rule accepts any SNI
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if len(v) == len(s) && strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}
