// Package policy parses egressd's HCL configuration and decides whether a
// connection may leave.
//
// The package is pure: configuration bytes go in, a compiled *Policy comes
// out, and Policy.Decide turns a Request into a Decision. It opens no
// sockets, resolves no names, logs nothing and has no mutable package
// state. Load and LoadFS only read files.
//
// # Configuration
//
// A configuration is one HCL file or a directory of *.hcl files, merged in
// name order. At most one server, resolver and log block may appear across
// all files; any number of policy blocks, each holding allow and deny rules:
//
//	server {
//	  http_listen                = "127.0.0.1:3128" # default
//	  allow_private_destinations = false            # default
//	  hello_timeout              = "10s"            # default; Go duration, > 0
//	  idle_timeout               = "5m"             # default
//	  dial_timeout               = "10s"            # default
//	}
//	resolver {
//	  servers = ["127.0.0.1:5353"] # IP[:port], port 53 by default; empty = resolv.conf
//	}
//	log {
//	  format = "json"   # json (default) | console
//	  output = "stdout" # stdout (default) | stderr | a file path
//	}
//	policy "chainguard-images" {
//	  description = "Pull images from cgr.dev"
//	  allow "registry" {
//	    hosts = ["cgr.dev", "*.r2.cloudflarestorage.com"]
//	    ports = [443]
//	  }
//	  deny "no-legacy" {
//	    hosts = ["legacy.cgr.dev"]
//	  }
//	}
//
// Rule attributes (allow and deny):
//
//   - hosts: host names, "*.suffix" (every name strictly below suffix, at
//     any depth, never suffix itself) or "*" (every name; a warning in an
//     allow rule). A "*" anywhere else is an error, and so is an IP address
//     (use cidrs). In an allow rule a wildcard over a public suffix
//     ("*.com", "*.co.uk", "*.github.io") is an error unless
//     allow_public_suffix = true.
//   - cidrs: IP prefixes in canonical form ("10.0.0.0/8", not "10.0.0.1/8");
//     a bare address means /32 or /128.
//   - ports: numbers or strings, "443" or "lo-hi" ranges, 1-65535. An allow
//     rule without ports allows only 443: policy is deny by default, and
//     443 (HTTPS) is what nearly every allow rule means. A deny rule without
//     ports matches every port.
//   - sni: names or wildcards, as hosts.
//   - ja3: JA3 fingerprints (32 hex digits; upper case is accepted).
//   - ja4: FoxIO JA4 fingerprints such as "t13d1516h2_8daaf6152771_e5627efa2ab1".
//   - require_tls: default true. A rule with require_tls = false may not set
//     sni, ja3 or ja4. It has no effect in a deny rule (a warning).
//   - allow_public_suffix: default false.
//   - protocols: "tcp" and/or "quic" (default both): the transports the
//     rule applies to (Request.Protocol).
//   - description: free text.
//
// Every rule needs hosts or cidrs. Policy and rule names are 1-128 letters,
// digits, '-', '_' or '.'; policy names are unique across all files, and
// allow and deny rules of one policy share one namespace.
//
// Every problem is an hcl.Diagnostic whose Subject is the offending
// expression or list element. Parse goes on after an error, so one run
// reports every mistake; FormatDiagnostics prints them one per line as
// "file:line:col: error: summary: detail".
//
// # Names
//
// Host names are compared in the form NormalizeHost returns: lower case,
// without a trailing dot, internationalized labels in ASCII ("xn--") form.
// Labels hold letters, digits, '-' and '_'. Rules are normalized when
// compiled; Request.Host must be normalized by the caller; Request.SNI is
// normalized by Decide (an SNI that is not a valid name never matches).
// IP addresses, including non-canonical IPv4 spellings such as "127.1" or
// "0x7f.0.0.1", are never names.
//
// # Decisions
//
// This is the contract of Policy.Decide.
//
// A rule's destination matches a Request when (r.Host != "" and a hosts
// pattern matches r.Host) or (r.Addr is valid and a cidr contains r.Addr,
// IPv4-mapped addresses being unmapped first), and r.Port is in the rule's
// ports. For a transparent connection (r.Transparent, r.Host == "", a
// parsed ClientHello) an allow rule's destination also matches when a
// hosts pattern matches the normalized SNI, or when the rule has hosts and
// one of its sni patterns matches the SNI; the proxy then verifies the
// original destination (see "Transparent gateway" below).
//
// Deny rules come first. For a deny rule, hosts are also matched against
// the normalized SNI, so that a deny cannot be evaded by connecting to an
// address (transparent mode) or to another name (domain fronting). If a
// deny rule sets sni, ja3 or ja4, those must match as well; they can only
// match a parsed ClientHello (HelloTLS), so with HelloPending such a rule
// is not applied yet. If any deny rule matches, the decision is
// Decision{Allow: false, Reason: "denied_by_rule"} with the policy and
// rule of the first matching deny rule. A deny wins over every allow,
// whatever the order of the policies.
//
// Allow rules are considered in configuration order (file order, then
// block order). A candidate is an allow rule whose destination matches.
// A candidate passes when, in order:
//
//  0. if r.Addr is private (IsPrivate) and allow_private_destinations is
//     false, one of the rule's cidrs that lies wholly in private space
//     contains r.Addr (else "private_destination"; "0.0.0.0/0" does not
//     open 10.0.0.0/8 or 169.254.169.254, "10.0.0.0/8" does);
//  1. HelloPending: it passes (a tentative allow: "some rule could allow
//     this destination");
//  2. HelloHTTP: the rule sets none of sni, ja3, ja4 (else "not_tls");
//     require_tls governs tunnels and does not apply to absolute-form HTTP;
//  3. HelloNotTLS: require_tls is false (else "not_tls");
//  4. HelloTLS: the SNI checks, then fingerprints:
//     if the rule sets sni, the SNI must match an sni pattern or equal
//     r.Host; else if r.Host != "", the SNI must equal r.Host; else if the
//     rule has hosts, the SNI must match one of them; else (a cidrs-only
//     rule) any SNI passes. A failed check is "sni_mismatch", or
//     "sni_missing" when the client sent no SNI. Then, if the rule sets
//     ja3, r.JA3 must be listed ("ja3_mismatch"), and likewise ja4
//     ("ja4_mismatch"). Fingerprints compare case-insensitively.
//
// Any other Hello value fails with "not_tls". The first (lowest-index)
// candidate that passes decides: Allow, "allowed", its policy and rule. If
// candidates exist but none passes, the decision denies with the reason,
// policy and rule of the first candidate. With no candidate at all the
// decision is a deny with reason "no_rule" and empty policy and rule.
//
// After an allow, the proxy checks each address it is about to dial with
// Decision.AddrAllowed: a public address is fine; a private one only if
// the deciding rule has a wholly private cidr containing it, or the
// deciding policy's allow_private_destinations is true. The decision
// carries that setting, so a reload between the decision and the dial
// does not change what is dialed.
//
// # Transparent gateway
//
//	server {
//	  transparent_listen = "0.0.0.0:15001" # default "": off
//	  transparent_mode   = "redirect"      # default; or "tproxy"
//	  verify_destination = "refuse"        # default; or "redirect"
//	  upstream_mark      = 0               # default 0: sockets not marked
//	}
//
// transparent_listen accepts TCP connections redirected to egressd by the
// kernel. transparent_mode says how: "redirect" for iptables/nftables
// REDIRECT (or DNAT), where egressd reads the original destination with
// getsockopt SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6); or
// "tproxy" for TPROXY, where the listener is opened with IP_TRANSPARENT /
// IPV6_TRANSPARENT (needs CAP_NET_ADMIN) and the connection's local address
// is the original destination. "egressd serve --tproxy" sets "tproxy".
//
// A transparent connection has no CONNECT line: egressd decides with the
// original destination address and port, the SNI and the fingerprints.
// Because the SNI is a claim by the client, an allow is followed by
// destination verification: the original destination is accepted when one
// of the deciding rule's cidrs contains it, or when egressd's resolver
// answered it (within the answer's TTL; every recent answer is kept, so
// rotating DNS answers do not cause false denials) for the SNI name or for
// one of the rule's exact hosts. Otherwise verify_destination decides:
// "refuse" denies with reason "dst_mismatch"; "redirect" dials the address
// egressd itself resolves for the SNI name instead. An allow rule may set
// its own verify_destination, which overrides the server's. Bytes that are
// not a ClientHello are allowed only by a require_tls = false rule whose
// cidrs and ports match the original destination.
//
// upstream_mark (0 to 4294967295) sets SO_MARK on every upstream socket
// egressd opens (needs CAP_NET_ADMIN). Exempt that mark from the redirect
// so that egressd's own connections are not sent back to it, for example
// "nft add rule ip nat output meta mark 0x1 return" before the redirect
// rule, or "iptables -t nat -A OUTPUT -m mark --mark 1 -j RETURN".
//
// # Gateway DNS server
//
//	server {
//	  dns_listen = "0.0.0.0:53" # default "": off; UDP and TCP
//	  dns_refuse = "refused"    # default; or "nxdomain"
//	}
//
// dns_listen runs a DNS server for the workloads behind the gateway. It
// answers only names for which Policy.NameAllowed is true: the name
// matches an allow rule's hosts or sni patterns, and no deny rule that
// refuses every connection to it (no sni, ja3, ja4 or ports, both protocols, in
// an enforced policy without a clients block) matches it. Those queries
// (any type: A, AAAA, SRV, TXT, ...) are forwarded to the resolver block's
// servers, and every address in the answer is remembered for destination
// verification, so a workload resolving through egressd never meets a
// false dst_mismatch. Other names get REFUSED, or NXDOMAIN with
// dns_refuse = "nxdomain". dns_listen takes its port on both TCP and UDP
// in the listener overlap check.
//
// Decide does not scan the rules. Compiling builds an index: an exact-name
// map, a map of wildcard suffixes (looked up once per parent suffix of the
// name), the list of "*" rules, and for cidrs one map per prefix length;
// the candidates come from those lookups and the lowest index that passes
// wins. Decide takes well under a microsecond and does not allocate with
// 100,000 rules when r.Host and r.SNI are already normalized.
//
// # Clients, users and audit mode
//
// A policy's clients block (cidrs of client addresses, names of proxy
// users) limits it to those clients: Decide skips the rules of policies
// that do not cover Request.Client or Request.User, and answers
// ReasonNoPolicyForClient when no policy covers the client. Users are
// declared with user "NAME" { password_hash = "..." } blocks or in the
// server's users_file (Load and LoadFS read it; Parse takes it as a File
// with Users set), as bcrypt or argon2id hashes only; Authenticate checks
// a password and pays the same hash cost for unknown users.
// Decision.Identity names the client (the user, or "cidr:POLICY").
//
// mode = "audit" in a policy (or the server block) turns a denial into
// Allow with WouldDeny set and the denial's Reason, when the deciding
// rule's policy is in audit mode, or when no rule matched and every policy
// covering the client is. AddrAllowed still refuses private destinations.
//
// # Tests
//
// test "NAME" blocks (target, mode, tls, sni, ja3, ja4, client, user,
// expect, expect_rule, expect_reason, expect_would_deny) are decoded into
// Config.Tests; Config.RunTests runs them through Decide. expect is the
// enforced verdict: an audit-mode allow counts as a deny.
//
// # Example
//
//	cfg, diags := policy.Load("/etc/egressd")
//	if diags.HasErrors() {
//		fmt.Fprint(os.Stderr, policy.FormatDiagnostics(diags))
//		os.Exit(2)
//	}
//	host, err := policy.NormalizeHost("cgr.dev")
//	if err != nil { /* refuse the request: bad_request */ }
//	d := cfg.Policy.Decide(&policy.Request{Host: host, Port: 443, Hello: policy.HelloPending})
//	if !d.Allow { /* refuse with d.Reason */ }
package policy
