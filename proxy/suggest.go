package proxy

// Suggest (egressd suggest): decision-log lines in, HCL allow rules out.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/egressd/egressd/policy"
)

// Bounds: suggest reads logs of any size in constant memory.
const (
	// suggestMaxLine is the longest line read (a decision line is well
	// under 4 KiB); longer lines are skipped and counted.
	suggestMaxLine = 1 << 20
	// suggestMaxRules bounds the distinct (client, destination) rules kept;
	// lines that would add more are counted, not kept.
	suggestMaxRules = 10000
	// suggestMaxSet bounds each rule's ports, SNI names and modes (a line
	// that would add more is counted, not kept) and each client group's
	// addresses (more are left out of its clients block).
	suggestMaxSet = 64
	// maxNameLen is policy's limit on policy and rule names.
	maxNameLen = 128
)

// logLine holds the decision-line fields suggest uses (proxy/log.go).
type logLine struct {
	Message   string `json:"message"`
	Mode      string `json:"mode"`
	Client    string `json:"client"`
	Identity  string `json:"identity"`
	Host      string `json:"host"`
	Port      int    `json:"port"`
	SNI       string `json:"sni"`
	Decision  string `json:"decision"`
	WouldDeny bool   `json:"would_deny"`
	Reason    string `json:"reason"`
}

// fixable lists the denial reasons an allow rule can fix. denied_by_rule
// cannot (deny beats allow), private_destination is never suggested (it
// would open the internal network), and the others come from the network
// or the client, not the policy.
var fixable = map[string]bool{
	string(policy.ReasonNoRule):            true,
	string(policy.ReasonSNIMismatch):       true,
	string(policy.ReasonSNIMissing):        true, // for an address destination only
	string(policy.ReasonNotTLS):            true,
	string(policy.ReasonJA3Mismatch):       true,
	string(policy.ReasonJA4Mismatch):       true,
	string(policy.ReasonNoPolicyForClient): true,
}

// Why a denial is not suggested, besides its reason.
const (
	unfixPrivate  = "private address"
	unfixNoDest   = "no destination"
	unfixSNI      = "invalid sni"
	unfixIdentity = "invalid identity"
	unfixReason   = "unknown reason"
)

// knownReasons are the reasons egressd writes. Any other reason of a line
// is counted as unfixReason, not under its own text: the unfixable counts
// would otherwise grow with every distinct reason a log holds.
var knownReasons = func() map[string]bool {
	m := make(map[string]bool)
	for _, r := range policy.Reasons() {
		m[string(r)] = true
	}
	return m
}()

// connModes are the modes of connection decision lines (not dns).
var connModes = map[string]bool{ModeConnect: true, ModeHTTP: true, ModeTransparent: true, ModeQUIC: true}

// hello categories of a suggested rule.
const (
	catTLS   = "tls"   // a TLS ClientHello
	catPlain = "plain" // a tunnel or UDP flow whose first bytes are not TLS/QUIC
	catHTTP  = "http"  // a plain http:// request
)

// destKey identifies one suggested rule inside a client group.
type destKey struct {
	host string     // normalized name, or "" for an address
	addr netip.Addr // address destination
	quic bool
	cat  string
	// anySNI: an address destination reached with a ClientHello without
	// SNI; its rule has no sni list (any SNI).
	anySNI bool
	// port: set for a rule with an sni list, which is kept to one port: a
	// rule admits every pairing of its sni names and ports, and the log
	// showed only some.
	port uint16
}

type destAgg struct {
	key       destKey
	count     int
	wouldDeny int
	ports     map[uint16]bool
	snis      map[string]bool // sni list entries (names other than host)
	modes     map[string]bool
	reasons   map[string]bool
}

type clientGroup struct {
	label   string // identity, or client address
	user    string // identity that is a user
	cidrPol string // identity "cidr:POLICY": that policy
	addrs   map[netip.Addr]bool
	cut     bool // more client addresses than suggestMaxSet were seen
	count   int
	dests   map[destKey]*destAgg
}

// suggestion is the aggregated log.
type suggestion struct {
	groups map[string]*clientGroup
	rules  int

	lines      int
	notJSON    int
	tooLong    int
	notDecided int // JSON, but not a connection decision line (close, dns, ...)
	allowed    int // allowed and not would-deny: nothing to suggest
	unfixable  map[string]int
	overLimit  int
}

func newSuggestion() *suggestion {
	return &suggestion{groups: map[string]*clientGroup{}, unfixable: map[string]int{}}
}

// Suggest reads decision-log lines from r (the JSON lines this package
// writes) and returns HCL allow rules for the denials an allow rule could
// fix and for audit mode's would-be denials: one policy per client
// (identity, else address), one rule per destination, and a comment
// saying what was read and skipped. It reads logs of any size in
// constant memory.
func Suggest(r io.Reader) ([]byte, error) {
	s := newSuggestion()
	if err := s.read(r); err != nil {
		return nil, err
	}
	return s.format(), nil
}

// read consumes decision lines until EOF.
func (s *suggestion) read(r io.Reader) error {
	br := bufio.NewReaderSize(r, suggestMaxLine)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			s.lines++
			s.tooLong++
			for errors.Is(err, bufio.ErrBufferFull) { // skip the rest of it
				_, err = br.ReadSlice('\n')
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			continue
		}
		if len(bytes.TrimSpace(line)) > 0 {
			s.lines++
			s.add(line)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// add aggregates one line.
func (s *suggestion) add(line []byte) {
	var l logLine
	if err := json.Unmarshal(line, &l); err != nil {
		s.notJSON++
		return
	}
	if l.Message != msgDecision || !connModes[l.Mode] || (l.Decision != "allow" && l.Decision != "deny") {
		s.notDecided++
		return
	}
	if l.Decision == "allow" && !l.WouldDeny {
		s.allowed++
		return
	}
	if !validIdentity(l.Identity) {
		s.unfixable[unfixIdentity]++ // not a user or policy name: not egressd's
		return
	}
	key, sni, ok := s.destination(&l)
	if !ok {
		return
	}
	if sni != "" {
		key.port = uint16(l.Port)
	}
	client, _ := netip.ParseAddrPort(l.Client)
	caddr := client.Addr().Unmap().WithZone("")
	label := l.Identity
	if label == "" && caddr.IsValid() {
		label = caddr.String()
	}
	g := s.groups[label]
	d := (*destAgg)(nil)
	if g != nil {
		d = g.dests[key]
	}
	if d == nil && s.rules >= suggestMaxRules {
		s.overLimit++
		return
	}
	// Refuse the line before changing anything when a set is full.
	full := func(m map[string]bool, v string) bool { return v != "" && !m[v] && len(m) >= suggestMaxSet }
	if d != nil && ((!d.ports[uint16(l.Port)] && len(d.ports) >= suggestMaxSet) || full(d.snis, sni) || full(d.modes, l.Mode)) {
		s.overLimit++
		return
	}
	if g == nil {
		g = &clientGroup{label: label, addrs: map[netip.Addr]bool{}, dests: map[destKey]*destAgg{}}
		switch {
		case strings.HasPrefix(l.Identity, "cidr:"):
			g.cidrPol = strings.TrimPrefix(l.Identity, "cidr:")
		case l.Identity != "":
			g.user = l.Identity
		}
		s.groups[label] = g
	}
	if d == nil {
		d = &destAgg{key: key, ports: map[uint16]bool{}, snis: map[string]bool{}, modes: map[string]bool{}, reasons: map[string]bool{}}
		g.dests[key] = d
		s.rules++
	}
	switch {
	case !caddr.IsValid() || g.user != "" && g.cidrPol == "":
	case g.addrs[caddr]:
	case len(g.addrs) >= suggestMaxSet:
		// The clients block is advice; the rules still take the line.
		g.cut = true
	default:
		g.addrs[caddr] = true
	}
	g.count++
	d.count++
	if l.WouldDeny {
		d.wouldDeny++
	}
	d.ports[uint16(l.Port)] = true
	if sni != "" {
		d.snis[sni] = true
	}
	d.modes[l.Mode] = true
	if len(d.reasons) < suggestMaxSet {
		d.reasons[l.Reason] = true
	}
}

// validIdentity reports whether id is an identity egressd writes: "" (no
// clients blocks), a user name, or "cidr:" and a policy name.
func validIdentity(id string) bool {
	if id == "" {
		return true
	}
	if name, ok := strings.CutPrefix(id, "cidr:"); ok {
		return policy.CheckName("policy", name) == nil
	}
	return policy.CheckName("user", id) == nil
}

// destination works out the rule a line needs, or counts it as unfixable.
func (s *suggestion) destination(l *logLine) (destKey, string, bool) {
	reason := l.Reason
	unfix := func(why string) (destKey, string, bool) {
		s.unfixable[why]++
		return destKey{}, "", false
	}
	if !fixable[reason] {
		if !knownReasons[reason] {
			return unfix(unfixReason)
		}
		return unfix(reason)
	}
	var k destKey
	var err error
	if k.host, k.addr, _, err = policy.ParseDestination(l.Host, strconv.Itoa(l.Port)); err != nil {
		return unfix(unfixNoDest)
	}
	k.quic = l.Mode == ModeQUIC
	switch {
	case l.Mode == ModeHTTP:
		k.cat = catHTTP
	case reason == string(policy.ReasonNotTLS):
		k.cat = catPlain
	default:
		k.cat = catTLS
	}
	sni := ""
	if k.cat == catTLS {
		switch {
		case l.SNI == "" && k.host != "":
			if reason == string(policy.ReasonSNIMissing) {
				// A CONNECT by name must carry its SNI: no rule admits it.
				return unfix(reason)
			}
			// Refused before the ClientHello was read (the CONNECT
			// pre-check): the rule needs no sni list; the SNI must then be
			// the host.
		case l.SNI == "":
			k.anySNI = true // a rule without sni accepts any SNI (or none)
		default:
			n, err := policy.NormalizeSNI(l.SNI)
			if err != nil {
				return unfix(unfixSNI)
			}
			if n != k.host {
				sni = n
			}
		}
	}
	if k.addr.IsValid() && policy.IsPrivate(k.addr) {
		return unfix(unfixPrivate)
	}
	return k, sni, true
}

// format renders the suggestion as HCL, deterministically.
func (s *suggestion) format() []byte {
	var b strings.Builder
	groups := slices.Collect(maps.Values(s.groups))
	sort.Slice(groups, func(i, j int) bool {
		if groups[i].count != groups[j].count {
			return groups[i].count > groups[j].count
		}
		return groups[i].label < groups[j].label
	})
	if len(groups) == 0 {
		b.WriteString("# egressd suggest: no denied or would-deny connections that an allow rule could admit.\n")
	}
	policyNames := map[string]bool{}
	for _, g := range groups {
		dests := slices.Collect(maps.Values(g.dests))
		sort.Slice(dests, func(i, j int) bool {
			if dests[i].count != dests[j].count {
				return dests[i].count > dests[j].count
			}
			return dests[i].key.less(dests[j].key)
		})
		who := "client " + g.label
		switch {
		case g.label == "":
			who = "no client address"
		case g.user != "" || g.cidrPol != "":
			who = "identity " + g.label
		}
		fmt.Fprintf(&b, "# %s: %s, %s\n", comment(who), plural(len(dests), "destination"), plural(g.count, "connection"))
		base := "suggested-" + strings.TrimPrefix(g.label, "cidr:")
		if g.label == "" {
			base = "suggested-any-client"
		}
		pname := uniqueName(identName(base), policyNames)
		fmt.Fprintf(&b, "policy %s {\n", hclString(pname))
		g.writeClients(&b)
		ruleNames := map[string]bool{}
		for _, d := range dests {
			d.write(&b, ruleNames)
		}
		b.WriteString("}\n\n")
	}
	s.writeSkipped(&b)
	return []byte(b.String())
}

func (g *clientGroup) writeClients(b *strings.Builder) {
	addrs := make([]netip.Addr, 0, len(g.addrs))
	for a := range g.addrs {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	var cidrs []string
	for _, a := range addrs {
		cidrs = append(cidrs, netip.PrefixFrom(a, a.BitLen()).String())
	}
	switch {
	case g.user != "":
		b.WriteString("  # the proxy user; remove the clients block to apply the rules to every client\n")
		fmt.Fprintf(b, "  clients {\n    users = [%s]\n  }\n", hclString(g.user))
	case g.cidrPol != "" && len(cidrs) > 0:
		fmt.Fprintf(b, "  # the addresses seen; the clients cidrs of policy %s cover them: copy those here, or move the rules into that policy\n", comment(g.cidrPol))
		if g.cut {
			fmt.Fprintf(b, "  # (more than %d addresses were seen: only the first %d are listed)\n", suggestMaxSet, suggestMaxSet)
		}
		fmt.Fprintf(b, "  clients {\n    cidrs = %s\n  }\n", hclList(cidrs))
	case len(cidrs) > 0:
		b.WriteString("  # remove the clients block to apply the rules to every client\n")
		fmt.Fprintf(b, "  clients {\n    cidrs = %s\n  }\n", hclList(cidrs))
	default:
		b.WriteString("  # no client address in the log: these rules apply to every client\n")
	}
}

func (d *destAgg) write(b *strings.Builder, names map[string]bool) {
	k := d.key
	unit := "connection"
	if k.quic {
		unit = "flow"
	}
	var parts []string
	parts = append(parts, fmt.Sprintf("%s (%s %s)", plural(d.count, unit), pluralWord(len(d.modes), "mode"), strings.Join(slices.Sorted(maps.Keys(d.modes)), ", ")))
	if len(d.snis) > 0 {
		parts = append(parts, "SNI "+strings.Join(slices.Sorted(maps.Keys(d.snis)), ", "))
	}
	if k.anySNI {
		parts = append(parts, "no SNI seen (the rule accepts any)")
	}
	parts = append(parts, pluralWord(len(d.reasons), "reason")+" "+strings.Join(slices.Sorted(maps.Keys(d.reasons)), ", "))
	if d.wouldDeny > 0 {
		parts = append(parts, fmt.Sprintf("%d would-deny (audit)", d.wouldDeny))
	}
	fmt.Fprintf(b, "  # %s\n", comment(strings.Join(parts, ", ")))
	if d.reasons[string(policy.ReasonJA3Mismatch)] || d.reasons[string(policy.ReasonJA4Mismatch)] {
		b.WriteString("  # a fingerprint check refused these: this rule admits any client TLS stack\n")
	}

	ports := make([]int, 0, len(d.ports))
	for p := range d.ports {
		ports = append(ports, int(p))
	}
	slices.Sort(ports)
	name := k.dest()
	for _, p := range ports {
		name += "-" + strconv.Itoa(p)
	}
	if k.quic {
		name += "-quic"
	}
	if k.cat != catTLS {
		name += "-" + k.cat
	}
	name = uniqueName(identName(name), names)
	var attrs [][2]string
	if k.host != "" {
		attrs = append(attrs, [2]string{"hosts", hclList([]string{k.host})})
	} else {
		attrs = append(attrs, [2]string{"cidrs", hclList([]string{netip.PrefixFrom(k.addr, k.addr.BitLen()).String()})})
	}
	if len(d.snis) > 0 {
		attrs = append(attrs, [2]string{"sni", hclList(slices.Sorted(maps.Keys(d.snis)))})
	}
	ps := make([]string, len(ports))
	for i, p := range ports {
		ps[i] = strconv.Itoa(p)
	}
	attrs = append(attrs, [2]string{"ports", "[" + strings.Join(ps, ", ") + "]"})
	if k.cat == catPlain {
		attrs = append(attrs, [2]string{"require_tls", "false"})
	}
	// The transport seen, and only it: a rule without protocols would
	// admit QUIC too.
	proto := `["tcp"]`
	if k.quic {
		proto = `["quic"]`
	}
	attrs = append(attrs, [2]string{"protocols", proto})
	fmt.Fprintf(b, "  allow %s {\n", hclString(name))
	width := 0
	for _, a := range attrs {
		width = max(width, len(a[0]))
	}
	for _, a := range attrs {
		fmt.Fprintf(b, "    %-*s = %s\n", width, a[0], a[1])
	}
	b.WriteString("  }\n")
}

func (k destKey) dest() string {
	if k.host != "" {
		return k.host
	}
	return k.addr.String()
}

func (k destKey) less(o destKey) bool {
	if a, b := k.dest(), o.dest(); a != b {
		return a < b
	}
	if k.quic != o.quic {
		return !k.quic
	}
	if k.cat != o.cat {
		return k.cat < o.cat
	}
	if k.anySNI != o.anySNI {
		return !k.anySNI
	}
	return k.port < o.port
}

func (s *suggestion) writeSkipped(b *strings.Builder) {
	fmt.Fprintf(b, "# %s read", plural(s.lines, "line"))
	var parts []string
	add := func(n int, what string) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(s.notJSON, "not JSON")
	add(s.tooLong, fmt.Sprintf("longer than %d bytes", suggestMaxLine))
	add(s.notDecided, "not connection decisions")
	add(s.allowed, "allowed")
	for _, r := range slices.Sorted(maps.Keys(s.unfixable)) {
		switch r {
		case unfixPrivate:
			add(s.unfixable[r], "to private addresses (never suggested)")
		case unfixNoDest:
			add(s.unfixable[r], "without a usable destination")
		case unfixSNI:
			add(s.unfixable[r], "with an SNI that is not a host name")
		case unfixIdentity:
			add(s.unfixable[r], "with an identity that is not a user or policy name")
		case unfixReason:
			add(s.unfixable[r], "with a reason egressd does not write")
		default:
			add(s.unfixable[r], "denied with "+r+" (no allow rule fixes it)")
		}
	}
	add(s.overLimit, fmt.Sprintf("over the limits (%d rules, %d ports/SNIs/modes per rule)", suggestMaxRules, suggestMaxSet))
	if len(parts) > 0 {
		fmt.Fprintf(b, "; skipped: %s", comment(strings.Join(parts, "; ")))
	}
	b.WriteString("\n")
}

// identName turns s into a valid policy or rule name: letters and digits
// are kept, everything else becomes '-', runs of '-' are squeezed.
func identName(s string) string {
	var b strings.Builder
	dash := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' {
			b.WriteByte(c)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	n := strings.TrimRight(b.String(), "-")
	if len(n) > maxNameLen-8 {
		n = strings.TrimRight(n[:maxNameLen-8], "-")
	}
	if n == "" {
		n = "x"
	}
	return n
}

func uniqueName(n string, seen map[string]bool) string {
	out := n
	for i := 2; seen[out]; i++ {
		out = n + "-" + strconv.Itoa(i)
	}
	seen[out] = true
	return out
}

// hclString quotes s as an HCL string literal: quotes and backslashes
// escaped, template sequences (${, %{) doubled, control characters as \u.
func hclString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '$' || r == '%':
			b.WriteRune(r)
			if i+1 < len(s) && s[i+1] == '{' {
				b.WriteRune(r)
			}
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04x", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func hclList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = hclString(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// comment makes s safe inside a '#' comment: one line, printable.
func comment(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '\u2028' || r == '\u2029' {
			return '?'
		}
		return r
	}, s)
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

func pluralWord(n int, what string) string {
	if n == 1 {
		return what
	}
	return what + "s"
}
