package policy

// Compiling: raw structs (decode.go) → validated settings and a *Policy
// with normalized names and a lookup index. Every check here reports an
// hcl.Diagnostic whose Subject is the offending value, and compiling goes
// on after an error so that one run shows every mistake.

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
)

func errDiag(rng hcl.Range, summary, detail string) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: rng.Ptr()}
}

func warnDiag(rng hcl.Range, summary, detail string) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: summary, Detail: detail, Subject: rng.Ptr()}
}

// --- server -------------------------------------------------------------

func compileServer(raw *rawServer) (Server, hcl.Diagnostics) {
	s := Server{
		HTTPListen:   DefaultHTTPListen,
		HelloTimeout: DefaultHelloTimeout,
		IdleTimeout:  DefaultIdleTimeout,
		DialTimeout:  DefaultDialTimeout,

		TransparentMode:   TransparentRedirect,
		VerifyDestination: VerifyRefuse,
		DNSRefuse:         DNSRefuseRefused,

		Mode:                    ModeEnforce,
		MaxConnections:          DefaultMaxConnections,
		MaxConnectionsPerClient: DefaultMaxConnectionsPerClient,
		ShutdownGrace:           DefaultShutdownGrace,
	}
	if raw == nil {
		return s, nil
	}
	var diags hcl.Diagnostics
	var listeners []listener
	for _, l := range []struct {
		name    string
		raw     *str
		network int
		dst     *string
	}{
		{"http_listen", raw.httpListen, netTCP, &s.HTTPListen},
		{"transparent_listen", raw.transparentListen, netTCP, &s.TransparentListen},
		{"dns_listen", raw.dnsListen, netTCP | netUDP, &s.DNSListen},
		{"quic_listen", raw.quicListen, netUDP, &s.QUICListen},
		{"admin_listen", raw.adminListen, netTCP, &s.AdminListen},
	} {
		if l.raw == nil {
			continue
		}
		if _, _, err := splitListen(l.raw.v); err != nil {
			diags = append(diags, listenDiag(l.name, l.raw, err))
		} else {
			*l.dst = l.raw.v
		}
		listeners = append(listeners, listener{name: l.name, network: l.network, addr: l.raw.v, rng: l.raw.rng})
	}
	diags = append(diags, checkListeners(listeners)...)

	if raw.allowPrivateDestinations != nil {
		s.AllowPrivateDestinations = raw.allowPrivateDestinations.v
	}
	if v := raw.transparentMode; v != nil {
		if v.v == TransparentRedirect || v.v == TransparentTProxy {
			s.TransparentMode = v.v
		} else {
			diags = append(diags, errDiag(v.rng, "Invalid transparent_mode",
				fmt.Sprintf("transparent_mode = %s is not a mode. Use %q (iptables/nft REDIRECT) or %q (TPROXY), for example transparent_mode = %q.", quote(v.v), TransparentRedirect, TransparentTProxy, TransparentRedirect)))
		}
	}
	if v := raw.verifyDestination; v != nil {
		if d := checkVerify(v); d != nil {
			diags = append(diags, d)
		} else {
			s.VerifyDestination = v.v
		}
	}
	if v := raw.dnsRefuse; v != nil {
		if v.v == DNSRefuseRefused || v.v == DNSRefuseNXDomain {
			s.DNSRefuse = v.v
		} else {
			diags = append(diags, errDiag(v.rng, "Invalid dns_refuse",
				fmt.Sprintf("dns_refuse = %s is not a setting. Use %q (answer queries for names no policy allows with REFUSED) or %q (answer them with NXDOMAIN), for example dns_refuse = %q.", quote(v.v), DNSRefuseRefused, DNSRefuseNXDomain, DNSRefuseRefused)))
		}
	}
	if raw.upstreamMark != nil {
		s.UpstreamMark = uint32(raw.upstreamMark.v)
	}
	if v := raw.mode; v != nil {
		if d := checkMode(v); d != nil {
			diags = append(diags, d)
		} else {
			s.Mode = v.v
		}
	}
	if v := raw.usersFile; v != nil {
		if v.v == "" {
			diags = append(diags, errDiag(v.rng, "Empty users_file", `users_file = "" names no file. Remove the attribute, or name the file, for example users_file = "/etc/egressd/users".`))
		} else {
			s.UsersFile = v.v
		}
	}
	for _, n := range []struct {
		name string
		raw  *num
		dst  *int
	}{
		{"max_connections", raw.maxConnections, &s.MaxConnections},
		{"max_connections_per_client", raw.maxConnectionsPerClient, &s.MaxConnectionsPerClient},
	} {
		if n.raw == nil {
			continue
		}
		if n.raw.v < 1 || n.raw.v > maxConnectionsLimit {
			diags = append(diags, errDiag(n.raw.rng, "Invalid "+n.name,
				fmt.Sprintf("%s = %d is out of range: write a number from 1 to %d, for example %s = %d.", n.name, n.raw.v, maxConnectionsLimit, n.name, DefaultMaxConnections/16)))
			continue
		}
		*n.dst = int(n.raw.v)
	}
	if s.MaxConnectionsPerClient > s.MaxConnections {
		s.MaxConnectionsPerClient = s.MaxConnections
	}
	for _, d := range []struct {
		name string
		raw  *str
		dst  *time.Duration
	}{
		{"hello_timeout", raw.helloTimeout, &s.HelloTimeout},
		{"idle_timeout", raw.idleTimeout, &s.IdleTimeout},
		{"dial_timeout", raw.dialTimeout, &s.DialTimeout},
		{"shutdown_grace", raw.shutdownGrace, &s.ShutdownGrace},
	} {
		if d.raw == nil {
			continue
		}
		v, err := time.ParseDuration(d.raw.v)
		switch {
		case err != nil:
			diags = append(diags, errDiag(d.raw.rng, "Invalid duration",
				fmt.Sprintf("%s = %s is not a duration. Write a Go duration: a number with a unit (ns, us, ms, s, m, h), for example %s = %q.", d.name, quote(d.raw.v), d.name, "10s")))
		case v <= 0:
			diags = append(diags, errDiag(d.raw.rng, "Invalid duration",
				fmt.Sprintf("%s = %s must be greater than zero, for example %s = %q.", d.name, quote(d.raw.v), d.name, "10s")))
		default:
			*d.dst = v
		}
	}
	return s, diags
}

// checkMode validates a mode value (server or policy block).
func checkMode(v *str) *hcl.Diagnostic {
	if v.v == ModeEnforce || v.v == ModeAudit {
		return nil
	}
	return errDiag(v.rng, "Invalid mode",
		fmt.Sprintf("mode = %s is not a mode. Use %q (deny what the policy does not allow) or %q (allow it, and log decision \"allow\" with would_deny = true and the reason the policy would have denied it), for example mode = %q.", quote(v.v), ModeEnforce, ModeAudit, ModeAudit))
}

// checkVerify validates a verify_destination value.
func checkVerify(v *str) *hcl.Diagnostic {
	if v.v == VerifyRefuse || v.v == VerifyRedirect {
		return nil
	}
	return errDiag(v.rng, "Invalid verify_destination",
		fmt.Sprintf("verify_destination = %s is not a setting. Use %q (deny a transparent connection whose original destination is not an address of the allowed name: dst_mismatch) or %q (dial the address egressd resolved for the SNI name instead), for example verify_destination = %q.", quote(v.v), VerifyRefuse, VerifyRedirect, VerifyRefuse))
}

// Listener networks, as a bit set: a DNS listener uses both.
const (
	netTCP = 1 << iota
	netUDP
)

// listener is a listen address setting, for the overlap check.
type listener struct {
	name    string // attribute name, e.g. "http_listen"
	network int    // netTCP, netUDP, or both
	addr    string // host:port as configured
	rng     hcl.Range
}

// splitListen parses a listen address "host:port": host may be empty (all
// addresses), an IP address or a host name; port is 0-65535 (0 picks a free
// port).
func splitListen(s string) (host string, port uint16, err error) {
	h, p, err := splitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("port %s is not a number from 0 to 65535", quote(p))
	}
	if h != "" {
		if a, err := netip.ParseAddr(h); err == nil {
			h = a.String()
		} else if nh, err := NormalizeHost(h); err == nil {
			h = nh
		} else {
			return "", 0, fmt.Errorf("host %s is neither an IP address nor a host name", quote(h))
		}
	}
	return h, uint16(n), nil
}

func listenDiag(name string, v *str, err error) *hcl.Diagnostic {
	return errDiag(v.rng, "Invalid listen address",
		fmt.Sprintf("%s = %s: %v. Write host:port, for example %s = \"127.0.0.1:3128\" (or \"[::1]:3128\", or \":3128\" for every address).", name, quote(v.v), err, name))
}

// checkListeners reports listeners that would bind the same port on the
// same network: equal hosts, or one of them is a wildcard address (""
// "0.0.0.0" "::"), which takes the port on every address. Port 0 picks a
// free port and never overlaps. Invalid addresses are skipped (they are
// reported on their own).
func checkListeners(ls []listener) hcl.Diagnostics {
	type parsed struct {
		listener
		host string
		port uint16
	}
	var ok []parsed
	var diags hcl.Diagnostics
	for _, l := range ls {
		host, port, err := splitListen(l.addr)
		if err != nil || port == 0 {
			continue
		}
		for _, o := range ok {
			if o.port != port || o.network&l.network == 0 || !hostsOverlap(o.host, host) {
				continue
			}
			diags = append(diags, errDiag(l.rng, "Overlapping listeners",
				fmt.Sprintf("%s = %s uses the same port as %s = %s (at %s); two listeners cannot bind one port. Give %s another port, for example %q.",
					l.name, quote(l.addr), o.name, quote(o.addr), posString(o.rng), l.name, joinHostPort(host, strconv.Itoa(otherPort(port))))))
			break
		}
		ok = append(ok, parsed{listener: l, host: host, port: port})
	}
	return diags
}

// otherPort is a port next to p, to suggest in place of it.
func otherPort(p uint16) int {
	if p == 65535 {
		return int(p) - 1
	}
	return int(p) + 1
}

func hostsOverlap(a, b string) bool {
	return a == b || isWildcardHost(a) || isWildcardHost(b)
}

func isWildcardHost(h string) bool {
	if h == "" {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.IsUnspecified()
}

// --- resolver -----------------------------------------------------------

func compileResolver(raw *rawResolver) (Resolver, hcl.Diagnostics) {
	var r Resolver
	if raw == nil {
		return r, nil
	}
	var diags hcl.Diagnostics
	for _, s := range raw.servers.items {
		ap, err := parseResolverServer(s.v)
		if err != nil {
			diags = append(diags, errDiag(s.rng, "Invalid resolver server",
				fmt.Sprintf("%s: %v. Write an IP address with an optional port (53 when left out), for example \"127.0.0.1:5353\", \"1.1.1.1\" or \"[2606:4700:4700::1111]:53\".", quote(s.v), err)))
			continue
		}
		r.Servers = append(r.Servers, ap)
	}
	return r, diags
}

// parseResolverServer normalizes "ip", "ip:port", "[ipv6]" or "[ipv6]:port"
// to "ip:port" / "[ipv6]:port". A resolver is given by address: the proxy
// cannot look up the name of the server it looks names up with.
func parseResolverServer(s string) (string, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return "", fmt.Errorf("port must be from 1 to 65535")
		}
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String(), nil
	}
	t := s
	if len(t) >= 2 && t[0] == '[' && t[len(t)-1] == ']' {
		t = t[1 : len(t)-1]
	}
	if a, err := netip.ParseAddr(t); err == nil {
		return netip.AddrPortFrom(a.Unmap(), defaultDNSPort).String(), nil
	}
	if _, p, err := splitHostPort(s); err == nil {
		if _, err := strconv.ParseUint(p, 10, 16); err != nil {
			return "", fmt.Errorf("port %s is not a number from 1 to 65535", quote(p))
		}
	}
	return "", fmt.Errorf("not an IP address (a resolver must be given by address)")
}

// --- log ----------------------------------------------------------------

func compileLog(raw *rawLog) (Log, hcl.Diagnostics) {
	l := Log{Format: DefaultLogFormat, Output: DefaultLogOutput}
	if raw == nil {
		return l, nil
	}
	var diags hcl.Diagnostics
	if raw.format != nil {
		switch raw.format.v {
		case "json", "console":
			l.Format = raw.format.v
		default:
			diags = append(diags, errDiag(raw.format.rng, "Invalid log format",
				fmt.Sprintf("format = %s is not a log format. Use \"json\" (one JSON object per line, for collectors) or \"console\" (human-readable), for example format = \"json\".", quote(raw.format.v))))
		}
	}
	if raw.output != nil {
		switch o := raw.output.v; {
		case o == "" || strings.TrimSpace(o) != o || strings.ContainsRune(o, 0):
			diags = append(diags, errDiag(raw.output.rng, "Invalid log output",
				fmt.Sprintf("output = %s is not usable. Use \"stdout\", \"stderr\", or a file path such as \"/var/log/egressd.log\".", quote(o))))
		default:
			l.Output = o
		}
	}
	return l, diags
}

// --- policies and rules -------------------------------------------------

// checkIdent validates a policy or rule name: names appear in every
// decision log line and in metrics, so they are kept to a safe alphabet.
func checkIdent(kind, name string, rng hcl.Range) *hcl.Diagnostic {
	bad := name == "" || len(name) > maxIdentLen
	for i := 0; i < len(name) && !bad; i++ {
		c := name[i]
		bad = !(isNameByte(c) || c == '.')
	}
	if !bad {
		return nil
	}
	return errDiag(rng, fmt.Sprintf("Invalid %s name", kind),
		fmt.Sprintf("%s name %s must be 1 to %d letters, digits, '-', '_' or '.', for example %s \"chainguard-images\".", kind, quote(name), maxIdentLen, kind))
}

// CheckName reports whether name is a valid name for a policy, rule or
// user block (kind, for the message), with the error a configuration
// would get.
func CheckName(kind, name string) error {
	if d := checkIdent(kind, name, hcl.Range{}); d != nil {
		return errors.New(d.Detail)
	}
	return nil
}

func compilePolicies(raws []*rawPolicy, allowPrivate bool) (*Policy, hcl.Diagnostics) {
	p := &Policy{allowPrivate: allowPrivate}
	var diags hcl.Diagnostics
	seen := make(map[string]hcl.Range, len(raws))
	for _, rp := range raws {
		if d := checkIdent("policy", rp.name, rp.nameRng); d != nil {
			diags = append(diags, d)
		}
		if first, dup := seen[rp.name]; dup {
			diags = append(diags, errDiag(rp.nameRng, "Duplicate policy name",
				fmt.Sprintf("policy %s is already defined at %s. Policy names must be unique across all files; rename one, for example to %q.", quote(rp.name), posString(first), rp.name+"-2")))
		} else {
			seen[rp.name] = rp.nameRng
		}
		p.names = append(p.names, rp.name)
		pi := polInfo{ident: "cidr:" + rp.name}
		if v := rp.mode; v != nil {
			if d := checkMode(v); d != nil {
				diags = append(diags, d)
			}
			pi.audit = v.v == ModeAudit
		}
		if rp.clients != nil {
			pi.clients = compileClients(rp.name, rp.clients, &diags)
			p.scoped = true
			p.needsAuth = p.needsAuth || len(pi.clients.users) > 0
		} else {
			p.open = true
		}
		polIdx := int32(len(p.pols))
		p.pols = append(p.pols, pi)

		ruleSeen := make(map[string]hcl.Range, len(rp.rules))
		for _, rr := range rp.rules {
			if d := checkIdent("rule", rr.name, rr.nameRng); d != nil {
				diags = append(diags, d)
			}
			if first, dup := ruleSeen[rr.name]; dup {
				diags = append(diags, errDiag(rr.nameRng, "Duplicate rule name",
					fmt.Sprintf("%s %s: policy %s already has a rule with this name at %s (allow and deny rules share one namespace). Rename one, for example to %q.", rr.kind(), quote(rr.name), quote(rp.name), posString(first), rr.name+"-2")))
			} else {
				ruleSeen[rr.name] = rr.nameRng
			}
			ru, d := compileRule(rp.name, rr)
			diags = append(diags, d...)
			if ru == nil {
				continue
			}
			ru.pol = polIdx
			if ru.deny {
				id := int32(len(p.deny))
				p.deny = append(p.deny, *ru)
				p.denyIdx.add(ru, id)
			} else {
				id := int32(len(p.allow))
				p.allow = append(p.allow, *ru)
				p.allowIdx.add(ru, id)
				if len(ru.hosts) > 0 {
					// Transparent connections carry no name but the SNI:
					// a rule with hosts is also found by its sni list.
					for _, sp := range ru.sni {
						p.allowSNIIdx.addPattern(sp, id)
					}
				} else {
					for _, sp := range ru.sni {
						p.allowSNIOnlyIdx.addPattern(sp, id)
					}
				}
			}
		}
	}
	return p, diags
}

func (ix *index) add(ru *rule, id int32) {
	for _, h := range ru.hosts {
		ix.addPattern(h, id)
	}
	for _, c := range ru.cidrs {
		ix.addPrefix(c, id)
	}
}

// compileRule validates one rule. It returns nil when the rule has errors.
func compileRule(policy string, rr *rawRule) (*rule, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	ru := &rule{policy: policy, name: rr.name, deny: rr.deny, requireTLS: true}
	kind := rr.kind()
	where := fmt.Sprintf("%s %s in policy %s", kind, quote(rr.name), quote(policy))

	allowPS := rr.allowPublicSuffix != nil && rr.allowPublicSuffix.v
	if rr.requireTLS != nil {
		ru.requireTLS = rr.requireTLS.v
	}
	if v := rr.verifyDestination; v != nil {
		if rr.deny {
			diags = append(diags, warnDiag(v.rng, "verify_destination has no effect in a deny rule",
				"Destination verification checks the address of an allowed transparent connection. Remove verify_destination from this deny rule."))
		} else if d := checkVerify(v); d != nil {
			diags = append(diags, d)
		} else {
			ru.verify = v.v
		}
	}
	if rr.deny {
		// Deny rules fail closed: an over-broad deny only blocks more, so
		// the public-suffix and "*" checks guard allow rules only, and
		// require_tls (which says what an allow admits) has no meaning.
		if rr.requireTLS != nil {
			diags = append(diags, warnDiag(rr.requireTLS.rng, "require_tls has no effect in a deny rule",
				"A deny rule matches its destination whatever the protocol. Remove require_tls from this deny rule."))
		}
		if rr.allowPublicSuffix != nil {
			diags = append(diags, warnDiag(rr.allowPublicSuffix.rng, "allow_public_suffix has no effect in a deny rule",
				"Deny rules may always use wildcards such as \"*.com\". Remove allow_public_suffix from this deny rule."))
		}
	}

	ru.hosts = compilePatterns(rr.hosts, "hosts", rr.deny, allowPS, &diags)
	ru.sni = compilePatterns(rr.sni, "sni", rr.deny, allowPS, &diags)

	for _, it := range rr.cidrs.items {
		c, d := parseCIDR(it)
		if d != nil {
			diags = append(diags, d)
			continue
		}
		ru.cidrs = append(ru.cidrs, c)
		if wholePrivate(c) {
			ru.privCIDRs = append(ru.privCIDRs, c)
		}
	}
	for _, it := range rr.ja3.items {
		v := strings.ToLower(it.v)
		if len(v) != ja3Len || !isHex(v) {
			diags = append(diags, errDiag(it.rng, "Invalid ja3 fingerprint",
				fmt.Sprintf("%s is not a JA3 fingerprint: write the MD5 digest as 32 hex digits, for example ja3 = [\"3fed133de60c35724739b913924b6c24\"].", quote(it.v))))
			continue
		}
		ru.ja3 = append(ru.ja3, v)
	}
	for _, it := range rr.ja4.items {
		v := strings.ToLower(it.v)
		if !isJA4(v) {
			diags = append(diags, errDiag(it.rng, "Invalid ja4 fingerprint",
				fmt.Sprintf("%s is not a JA4 fingerprint (FoxIO format: protocol t/q/d, 2-character TLS version, d or i, 2-digit cipher count, 2-digit extension count, 2-character ALPN, then two 12-hex-digit hashes), for example ja4 = [\"t13d1516h2_8daaf6152771_e5627efa2ab1\"].", quote(it.v))))
			continue
		}
		ru.ja4 = append(ru.ja4, v)
	}

	for _, it := range rr.ports.items {
		pr, err := parsePort(it.v)
		if err != nil {
			diags = append(diags, errDiag(it.rng, "Invalid port",
				fmt.Sprintf("%v. Ports are numbers from 1 to 65535 or \"lo-hi\" ranges, for example ports = [443, \"8000-8080\"].", err)))
			continue
		}
		ru.ports = append(ru.ports, pr)
	}

	// Empty lists are almost always a mistake (an empty sni list would be
	// read as "any SNI" by some and "no SNI" by others): refuse them.
	for _, l := range []struct {
		name string
		set  bool
		n    int
		rng  hcl.Range
	}{
		{"hosts", rr.hosts.set, rr.hosts.elems, rr.hosts.rng},
		{"cidrs", rr.cidrs.set, rr.cidrs.elems, rr.cidrs.rng},
		{"sni", rr.sni.set, rr.sni.elems, rr.sni.rng},
		{"ja3", rr.ja3.set, rr.ja3.elems, rr.ja3.rng},
		{"ja4", rr.ja4.set, rr.ja4.elems, rr.ja4.rng},
		{"ports", rr.ports.set, rr.ports.elems, rr.ports.rng},
		{"protocols", rr.protocols.set, rr.protocols.elems, rr.protocols.rng},
	} {
		if l.set && l.n == 0 {
			diags = append(diags, errDiag(l.rng, fmt.Sprintf("Empty %s list", l.name),
				fmt.Sprintf("%s: %s = [] lists nothing. Remove the attribute, or list at least one value.", where, l.name)))
		}
	}

	if rr.hosts.elems == 0 && rr.cidrs.elems == 0 {
		diags = append(diags, errDiag(rr.def, fmt.Sprintf("%s rule needs hosts or cidrs", kind),
			fmt.Sprintf("%s says nothing about the destination. Add hosts = [\"example.com\"] or cidrs = [\"192.0.2.0/24\"] (use hosts = [\"*\"] to match every name).", where)))
	}

	tlsConds := rr.sni.set || rr.ja3.set || rr.ja4.set
	if !rr.deny && rr.requireTLS != nil && !rr.requireTLS.v && tlsConds {
		for _, l := range []struct {
			name string
			set  bool
			rng  hcl.Range
		}{{"sni", rr.sni.set, rr.sni.rng}, {"ja3", rr.ja3.set, rr.ja3.rng}, {"ja4", rr.ja4.set, rr.ja4.rng}} {
			if l.set {
				diags = append(diags, errDiag(l.rng, fmt.Sprintf("%s needs TLS", l.name),
					fmt.Sprintf("%s sets require_tls = false (at %s), so it admits plain TCP, where there is no ClientHello and %s cannot apply. Remove %s, or remove require_tls = false.",
						where, posString(rr.requireTLS.rng), l.name, l.name)))
			}
		}
	}
	ru.tlsConds = len(ru.sni) > 0 || len(ru.ja3) > 0 || len(ru.ja4) > 0

	if !rr.ports.set {
		if rr.deny {
			ru.ports = nil // every port
		} else {
			ru.ports = []portRange{{httpsPort, httpsPort}}
		}
	} else if ru.ports == nil {
		ru.ports = []portRange{} // invalid entries only; reported above
	}

	ru.protos = allProtocols
	if rr.protocols.set {
		ru.protos = 0
		for _, it := range rr.protocols.items {
			p, ok := parseProtocol(it.v)
			if !ok {
				diags = append(diags, errDiag(it.rng, "Invalid protocol",
					fmt.Sprintf("%s: %s is not a protocol. Use \"tcp\" (CONNECT, plain HTTP and transparent TCP) or \"quic\" (UDP on the QUIC listener), for example protocols = [\"tcp\"].", where, quote(it.v))))
				continue
			}
			ru.protos |= 1 << p
		}
	}

	if diags.HasErrors() {
		return nil, diags
	}
	return ru, diags
}

// parseProtocol parses a protocols entry.
func parseProtocol(s string) (Protocol, bool) {
	for p := range numProtocols {
		if s == p.String() {
			return p, true
		}
	}
	return 0, false
}

// compilePatterns compiles hosts or sni entries. Allow rules refuse
// wildcards over a public suffix unless allowPS, and warn about "*".
func compilePatterns(l list, attr string, deny, allowPS bool, diags *hcl.Diagnostics) []pattern {
	var out []pattern
	for _, it := range l.items {
		p, perr := parsePattern(it.v, attr)
		if perr != nil {
			*diags = append(*diags, errDiag(it.rng, perr.summary, perr.detail))
			continue
		}
		if !deny {
			switch {
			case p.kind == patAny:
				*diags = append(*diags, warnDiag(it.rng, fmt.Sprintf("%q matches every host name", "*"),
					fmt.Sprintf("%s = [\"*\"] in an allow rule admits every name on the rule's ports. If that is intended, keep it; otherwise list the names, for example %s = [\"*.example.com\"].", attr, attr)))
			case p.kind == patWildcard && isPublicSuffix(p.name) && !allowPS:
				*diags = append(*diags, errDiag(it.rng, "Wildcard over a public suffix",
					fmt.Sprintf("%s matches every name under %q, which is a public suffix: names there belong to unrelated owners. Name the domain you mean, for example \"*.example.%s\", or set allow_public_suffix = true in this rule if this is really intended.", quote(it.v), p.name, p.name)))
				continue
			}
		}
		out = append(out, p)
	}
	return out
}

// parseCIDR parses a cidrs entry: a prefix in canonical form, or a bare
// address (a /32 or /128).
func parseCIDR(it str) (netip.Prefix, *hcl.Diagnostic) {
	s := it.v
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, errDiag(it.rng, "Invalid CIDR",
				fmt.Sprintf("%s is neither a CIDR prefix nor an IP address. Write for example cidrs = [\"198.41.192.0/24\", \"2606:4700:a0::/48\", \"203.0.113.7\"].", quote(s)))
		}
		if a.Is4In6() {
			return netip.Prefix{}, mappedDiag(it, netip.PrefixFrom(a.Unmap(), 32).String())
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		why := err.Error() // it quotes s whole: only for a short s
		if len(s) > maxDiagValueLen {
			why = "not a CIDR prefix"
		}
		return netip.Prefix{}, errDiag(it.rng, "Invalid CIDR",
			fmt.Sprintf("%s: %s. Write for example cidrs = [\"198.41.192.0/24\", \"2606:4700:a0::/48\"].", quote(s), why))
	}
	if p.Addr().Is4In6() {
		if p.Bits() >= 96 {
			return netip.Prefix{}, mappedDiag(it, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked().String())
		}
		return netip.Prefix{}, mappedDiag(it, "an IPv4 prefix")
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, errDiag(it.rng, "Non-canonical CIDR",
			fmt.Sprintf("%s has bits set beyond its /%d prefix length; the prefix it means is %q. Write cidrs = [%q] (or %q for the single address).",
				quote(s), p.Bits(), m.String(), m.String(), p.Addr().String()))
	}
	return p, nil
}

func mappedDiag(it str, v4 string) *hcl.Diagnostic {
	return errDiag(it.rng, "IPv4-mapped CIDR",
		fmt.Sprintf("%s is an IPv4-mapped IPv6 form; requests are matched on the plain IPv4 address, so it would never match. Write %s instead.", quote(it.v), v4))
}

// parsePort parses "443" or "lo-hi".
func parsePort(s string) (portRange, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	a, err := parsePortNum(lo)
	if err != nil {
		return portRange{}, err
	}
	if !isRange {
		return portRange{a, a}, nil
	}
	b, err := parsePortNum(hi)
	if err != nil {
		return portRange{}, err
	}
	if a > b {
		return portRange{}, fmt.Errorf("port range \"%d-%d\" is backwards (low-high); write \"%d-%d\"", a, b, b, a)
	}
	return portRange{a, b}, nil
}

func parsePortNum(s string) (uint16, error) {
	if s == "" || !allDigits(s) {
		return 0, fmt.Errorf("%s is not a port number", quote(s))
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %s is out of range (1 to 65535)", quote(s))
	}
	return uint16(n), nil
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isJA4 checks the FoxIO JA4 format (lower case):
// [tqd][0-9s]{2}[di][0-9]{2}[0-9]{2}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}.
func isJA4(s string) bool {
	if len(s) != ja4Len || s[10] != '_' || s[23] != '_' {
		return false
	}
	switch s[0] {
	case 't', 'q', 'd':
	default:
		return false
	}
	for _, c := range []byte{s[1], s[2]} {
		if !isDigit(c) && c != 's' {
			return false
		}
	}
	if s[3] != 'd' && s[3] != 'i' {
		return false
	}
	for i := 4; i < 8; i++ {
		if !isDigit(s[i]) {
			return false
		}
	}
	for i := 8; i < 10; i++ {
		if !isDigit(s[i]) && !('a' <= s[i] && s[i] <= 'z') {
			return false
		}
	}
	return isHex(s[11:23]) && isHex(s[24:36])
}
