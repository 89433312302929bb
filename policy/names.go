package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"
)

// hostErr classifies why a string is not a host name. normalizeHost returns
// it instead of an error so that Decide can reject a client's SNI without
// allocating; NormalizeHost turns it into an error message.
type hostErr uint8

const (
	hostOK hostErr = iota
	hostEmpty
	hostTooLong
	hostLabelEmpty
	hostLabelTooLong
	hostBadChar
	hostIPLiteral // only produced by hostError; normalizeHost says hostBadChar or hostNonCanonicalIP
	hostNonCanonicalIP
	hostIDNA
	hostNotASCII // only from normalizeSNI
)

// NormalizeHost returns the canonical form of a host name, the form rules
// and requests are compared in: lower case, one trailing dot removed,
// internationalized labels converted to their ASCII (punycode, "xn--") form.
// Labels may hold letters, digits, '-' and '_' (underscores appear in
// service names such as "_v2-origintunneld._tcp.argotunnel.com"); a label is
// at most 63 bytes and the name at most 253.
//
// IP addresses are not host names: a dotted quad such as "1.2.3.4", an IPv6
// literal, and every non-canonical IPv4 spelling that some resolvers accept
// ("127.1", "0x7f.0.0.1", "017700000001": any name whose last label is all
// digits or starts with "0x") are refused.
//
// When s is already in canonical form NormalizeHost returns it unchanged
// without allocating; a single trailing dot is removed by slicing.
func NormalizeHost(s string) (string, error) {
	n, e := normalizeHost(s)
	if e == hostOK {
		return n, nil
	}
	return "", hostError(s, e)
}

// NormalizeSNI is NormalizeHost for a ClientHello's server_name, which is
// ASCII (RFC 6066 §3: an internationalized name goes in its xn-- form).
// The server gets the name's bytes as the client sent them, so a name
// that only IDNA mapping would turn into an allowed one (fullwidth
// "ｃｇｒ.dev" into "cgr.dev") is refused, not matched.
func NormalizeSNI(s string) (string, error) {
	n, e := normalizeSNI(s)
	if e == hostOK {
		return n, nil
	}
	return "", hostError(s, e)
}

// normalizeSNI is NormalizeSNI without error values.
func normalizeSNI(s string) (string, hostErr) {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return "", hostNotASCII
		}
	}
	return normalizeHost(s)
}

// normalizeHost is NormalizeHost without error values.
func normalizeHost(s string) (string, hostErr) {
	if s == "" {
		return "", hostEmpty
	}
	if len(s) > maxHostInputLen {
		return "", hostTooLong
	}
	ascii, lower := true, true
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 0x80:
			ascii = false
		case 'A' <= c && c <= 'Z':
			lower = false
		case !isNameByte(c) && c != '.':
			// An IPv6 literal lands here too; hostError tells it apart.
			// Classifying it here would cost an allocation per bad SNI.
			return "", hostBadChar
		}
	}
	n := s
	if !ascii {
		// Invalid UTF-8 and U+FFFD would be turned into punycode of the
		// replacement character; refuse them instead.
		if !utf8.ValidString(s) || strings.ContainsRune(s, utf8.RuneError) {
			return "", hostBadChar
		}
		out, err := idnaProfile().ToASCII(s)
		if err != nil {
			return "", hostIDNA
		}
		n = out
	} else if !lower {
		n = strings.ToLower(s)
	}
	if strings.HasSuffix(n, ".") {
		n = n[:len(n)-1]
	}
	if e := checkName(n); e != hostOK {
		return "", e
	}
	return n, hostOK
}

// idnaProfile is the IDNA2008/UTS #46 lookup profile, except that it allows
// the ASCII characters STD3 forbids (so that '_' passes; checkName decides
// what is legal) and does not check hyphen positions (checkName does not
// either, so ASCII and Unicode input are treated alike). It is built per
// call rather than kept in a package variable; only non-ASCII names use it.
func idnaProfile() *idna.Profile {
	return idna.New(
		idna.MapForLookup(),
		idna.StrictDomainName(false),
		idna.CheckHyphens(false),
		idna.CheckJoiners(true),
		idna.BidiRule(),
		idna.Transitional(false),
	)
}

// isNameByte reports whether c may appear in a label.
func isNameByte(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || 'A' <= c && c <= 'Z'
}

// checkName validates a lower-case ASCII name without a trailing dot.
func checkName(n string) hostErr {
	if n == "" {
		return hostEmpty
	}
	if len(n) > maxNameLen {
		return hostTooLong
	}
	start := 0
	for i := 0; i <= len(n); i++ {
		if i < len(n) && n[i] != '.' {
			c := n[i]
			if c >= 0x80 || c >= 'A' && c <= 'Z' || !isNameByte(c) {
				return hostBadChar
			}
			continue
		}
		switch l := i - start; {
		case l == 0:
			return hostLabelEmpty
		case l > maxLabelLen:
			return hostLabelTooLong
		}
		start = i + 1
	}
	last := n[strings.LastIndexByte(n, '.')+1:]
	if allDigits(last) || strings.HasPrefix(last, "0x") {
		// hostError tells a canonical dotted quad apart, for its message.
		return hostNonCanonicalIP
	}
	return hostOK
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// isIPLiteral reports whether s is an IP address in canonical textual form,
// optionally in brackets.
func isIPLiteral(s string) bool {
	if len(s) >= 2 && s[0] == '[' && s[len(s)-1] == ']' {
		s = s[1 : len(s)-1]
	}
	_, err := netip.ParseAddr(s)
	return err == nil
}

// quote quotes a value for an error message, cut to maxDiagValueLen bytes.
func quote(s string) string {
	if len(s) > maxDiagValueLen {
		return fmt.Sprintf("%q…", s[:maxDiagValueLen])
	}
	return fmt.Sprintf("%q", s)
}

// hostError builds the error NormalizeHost returns for input s.
func hostError(s string, e hostErr) error {
	q := quote(s)
	if (e == hostBadChar || e == hostNonCanonicalIP) && isIPLiteral(strings.TrimSuffix(s, ".")) {
		e = hostIPLiteral
	}
	switch e {
	case hostEmpty:
		return errors.New("host name is empty; give a name such as \"example.com\"")
	case hostTooLong:
		return fmt.Errorf("host name %s is longer than %d bytes; a DNS name cannot be that long", q, maxNameLen)
	case hostLabelEmpty:
		return fmt.Errorf("host name %s has an empty label (a leading dot or two dots in a row); write it as \"a.example.com\"", q)
	case hostLabelTooLong:
		return fmt.Errorf("host name %s has a label longer than %d bytes; a DNS label cannot be that long", q, maxLabelLen)
	case hostBadChar:
		return fmt.Errorf("host name %s contains %s, which is not allowed; use only letters, digits, '-', '_' and '.'", q, badChars(s))
	case hostIPLiteral:
		return fmt.Errorf("%s is an IP address, not a host name; match IP addresses with cidrs", q)
	case hostNonCanonicalIP:
		return fmt.Errorf("%s is an IP address in a non-canonical form; refused (a name whose last label is all digits or starts with 0x is read as an IPv4 address by some resolvers); write the address as a dotted quad in cidrs", q)
	case hostNotASCII:
		return fmt.Errorf("server name %s is not ASCII; a TLS client sends an internationalized name in its xn-- form (RFC 6066)", q)
	case hostIDNA:
		_, err := idnaProfile().ToASCII(s)
		return fmt.Errorf("host name %s is not a valid internationalized name (%v); write it in its ASCII (xn--) form", q, err)
	}
	return fmt.Errorf("host name %s is invalid", q)
}

// badChars describes the first offending character of s.
func badChars(s string) string {
	for _, r := range s {
		if r < 0x80 && (isNameByte(byte(r)) || r == '.') {
			continue
		}
		if r == utf8.RuneError {
			return "invalid UTF-8 or U+FFFD"
		}
		if r >= 0x80 {
			// A Unicode character is fine if IDNA maps it to a legal label.
			if m, err := idnaProfile().ToASCII(string(r)); err == nil && m != "" && checkLabelBytes(m) {
				continue
			}
		}
		return fmt.Sprintf("%q", r)
	}
	return "an invalid character"
}

// checkLabelBytes reports whether every byte of s may appear in a label.
func checkLabelBytes(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isNameByte(s[i]) {
			return false
		}
	}
	return true
}

// patKind is the kind of a host pattern.
type patKind uint8

const (
	patExact    patKind = iota // "example.com"
	patWildcard                // "*.example.com": any name strictly below the suffix
	patAny                     // "*": every name
)

// pattern is a compiled hosts or sni entry. For patWildcard, name is the
// suffix without "*.".
type pattern struct {
	kind patKind
	name string
}

// match reports whether the normalized, non-empty name matches p.
func (p pattern) match(name string) bool {
	switch p.kind {
	case patExact:
		return name == p.name
	case patWildcard:
		return hasWildSuffix(name, p.name)
	case patAny:
		return name != ""
	}
	return false
}

// hasWildSuffix reports whether name is strictly below suffix:
// "a.b.example.com" is below "example.com", "example.com" is not.
func hasWildSuffix(name, suffix string) bool {
	n, s := len(name), len(suffix)
	return n > s+1 && name[n-s-1] == '.' && name[n-s:] == suffix
}

func matchAny(ps []pattern, name string) bool {
	for _, p := range ps {
		if p.match(name) {
			return true
		}
	}
	return false
}

// patternError says why a hosts or sni entry is invalid.
type patternError struct {
	summary string
	detail  string
}

// parsePattern parses a hosts or sni entry. attr is "hosts" or "sni", for
// messages.
func parsePattern(s, attr string) (pattern, *patternError) {
	q := quote(s)
	if s == "*" {
		return pattern{kind: patAny}, nil
	}
	body, kind := s, patExact
	if strings.HasPrefix(s, "*.") {
		body, kind = s[2:], patWildcard
	}
	if strings.Contains(body, "*") {
		return pattern{}, &patternError{
			summary: "Invalid wildcard",
			detail: fmt.Sprintf(`%s in %s: "*" may only be the whole first label: "*.example.com" matches every name below example.com (at any depth, but not example.com itself), and "*" alone matches every name. Write for example %s = ["*.example.com"].`,
				q, attr, attr),
		}
	}
	if kind == patExact && isIPLiteral(strings.TrimSuffix(s, ".")) {
		if attr == "sni" {
			return pattern{}, &patternError{
				summary: "IP address in sni",
				detail:  fmt.Sprintf("%s is an IP address; TLS server name indication carries host names only (RFC 6066), so it can never match. Remove it.", q),
			}
		}
		return pattern{}, &patternError{
			summary: "IP address in hosts; use cidrs",
			detail:  fmt.Sprintf("%s is an IP address. hosts holds names; match addresses with cidrs, for example cidrs = [%q].", q, strings.Trim(strings.TrimSuffix(s, "."), "[]")),
		}
	}
	n, e := normalizeHost(body)
	if e != hostOK {
		return pattern{}, &patternError{
			summary: "Invalid host name",
			detail:  fmt.Sprintf("In %s: %v.", attr, hostError(body, e)),
		}
	}
	return pattern{kind: kind, name: n}, nil
}

// isPublicSuffix reports whether s (normalized) is a public suffix, so that
// "*.s" spans unrelated owners: an ICANN suffix such as "com" or "co.uk",
// one from the private section of the list such as "github.io", or a name
// whose every child is a suffix through a wildcard entry of the list
// ("*.ck", "*.kawasaki.jp", "*.compute.amazonaws.com"), found by probing a
// child. For a TLD the list does not know, publicsuffix.PublicSuffix
// returns the last label with icann == false; that is not treated as
// public, so "*.test" is allowed.
func isPublicSuffix(s string) bool {
	ps, icann := publicsuffix.PublicSuffix(s)
	if ps == s && (icann || strings.IndexByte(ps, '.') >= 0) {
		return true
	}
	const probe = "egressd-probe." // a label no exception rule ("!www.ck") names
	ps, _ = publicsuffix.PublicSuffix(probe + s)
	return ps == probe+s
}

// ParseDestination parses a destination's host and port as egressd reads
// CONNECT targets and test targets: a port from 1 to 65535, and a
// canonical IP literal (no zone; IPv4-mapped addresses unmapped) or a
// host name, which comes back normalized.
func ParseDestination(host, port string) (name string, addr netip.Addr, p uint16, err error) {
	n, perr := strconv.ParseUint(port, 10, 16)
	if perr != nil || n == 0 {
		return "", netip.Addr{}, 0, fmt.Errorf("port %s is not a number from 1 to 65535", quote(port))
	}
	if a, aerr := netip.ParseAddr(host); aerr == nil {
		if a.Zone() != "" {
			return "", netip.Addr{}, 0, errors.New("IPv6 zones are not allowed")
		}
		return "", a.Unmap(), uint16(n), nil
	}
	name, e := normalizeHost(host)
	switch {
	case e == hostNonCanonicalIP && !isIPLiteral(strings.TrimSuffix(host, ".")):
		// Not hostError's advice for a rule's hosts (cidrs): a destination.
		return "", netip.Addr{}, 0, fmt.Errorf("%s is an IP address in a non-canonical form; refused, never reinterpreted (some resolvers read a name whose last label is all digits or starts with 0x as an IPv4 address); write the address as a dotted quad such as \"127.0.0.1\"", quote(host))
	case e != hostOK:
		return "", netip.Addr{}, 0, hostError(host, e)
	}
	return name, netip.Addr{}, uint16(n), nil
}

// splitHostPort splits "host:port" or "[v6]:port" the way net.SplitHostPort
// does, without importing the networking package into the policy.
func splitHostPort(s string) (host, port string, err error) {
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 || len(s) < end+2 || s[end+1] != ':' {
			return "", "", fmt.Errorf("address %s: want [host]:port", quote(s))
		}
		return s[1:end], s[end+2:], nil
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 || strings.IndexByte(s[:i], ':') >= 0 {
		return "", "", fmt.Errorf("address %s: want host:port", quote(s))
	}
	return s[:i], s[i+1:], nil
}

// joinHostPort is net.JoinHostPort without the networking package.
func joinHostPort(host, port string) string {
	if strings.IndexByte(host, ':') >= 0 {
		return "[" + host + "]:" + port
	}
	return host + ":" + port
}
