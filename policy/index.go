package policy

import "net/netip"

// Policy is a compiled set of rules. It is immutable and safe for
// concurrent use. The zero value and a nil *Policy deny everything.
type Policy struct {
	allow       []rule // in configuration order
	deny        []rule // in configuration order
	allowIdx    index
	allowSNIIdx index // allow rules with hosts, by their sni patterns (transparent mode)
	// allowSNIOnlyIdx: allow rules without hosts, by their sni patterns
	// (cidrs plus sni); only NameAllowed uses it.
	allowSNIOnlyIdx index
	denyIdx         index
	allowPrivate    bool
	verify          string   // server verify_destination; "" = VerifyRefuse
	names           []string // policy names in configuration order

	// Per-workload policies and audit mode (clients.go).
	pols      []polInfo // by policy, in configuration order; rule.pol indexes it
	scoped    bool      // some policy has a clients block
	open      bool      // some policy has none (it applies to every client)
	audit     bool      // server mode = "audit"
	users     map[string]pwHash
	decoys    []pwHash // CheckDecoy's, one per kind of hash declared
	needsAuth bool
}

// Rules returns the number of compiled rules, allow and deny.
func (p *Policy) Rules() int {
	if p == nil {
		return 0
	}
	return len(p.allow) + len(p.deny)
}

// RuleNames yields the policy and rule name of every rule, allow rules
// first, each in configuration order.
func (p *Policy) RuleNames(yield func(policy, rule string) bool) {
	if p == nil {
		return
	}
	for _, rules := range [][]rule{p.allow, p.deny} {
		for i := range rules {
			if !yield(rules[i].policy, rules[i].name) {
				return
			}
		}
	}
}

// Names returns the policy names in configuration order.
func (p *Policy) Names() []string {
	if p == nil {
		return nil
	}
	return append([]string(nil), p.names...)
}

// AllowPrivateDestinations reports the server block's
// allow_private_destinations setting the policy was compiled with.
func (p *Policy) AllowPrivateDestinations() bool {
	return p != nil && p.allowPrivate
}

// rule is a compiled, validated rule with normalized names.
type rule struct {
	pol    int32 // index into Policy.pols
	policy string
	name   string
	deny   bool

	hosts []pattern
	cidrs []netip.Prefix
	// privCIDRs are the cidrs that lie wholly in private space; only they
	// grant access to private addresses.
	privCIDRs []netip.Prefix
	ports     []portRange // nil: every port (deny rules without ports)
	protos    uint8       // bit set of 1<<Protocol the rule applies to

	sni        []pattern
	ja3        []string
	ja4        []string
	requireTLS bool
	tlsConds   bool   // sni, ja3 or ja4 is set
	verify     string // verify_destination; "" = the server's setting
}

type portRange struct{ lo, hi uint16 }

// applies reports whether the rule covers a connection on this port and
// transport.
func (ru *rule) applies(port uint16, p Protocol) bool {
	return ru.protos&(1<<p) != 0 && ru.portMatch(port)
}

func (ru *rule) portMatch(port uint16) bool {
	if ru.ports == nil {
		return true
	}
	for _, pr := range ru.ports {
		if pr.lo <= port && port <= pr.hi {
			return true
		}
	}
	return false
}

func (ru *rule) grantsPrivate(a netip.Addr) bool { return prefixesContain(ru.privCIDRs, a) }

// prefixesContain reports whether one of ps contains a (false for the
// zero Addr).
func prefixesContain(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// index maps names and addresses to the indices of the rules whose hosts
// or cidrs match them. Every []int32 is in ascending order (rules are added
// in order), which lets a scan stop early.
type index struct {
	exact map[string][]int32 // "example.com" → rules listing it
	wild  map[string][]int32 // "example.com" → rules listing "*.example.com"
	any   []int32            // rules listing "*"

	v4     [33]map[netip.Prefix][]int32 // by prefix length
	v6     [129]map[netip.Prefix][]int32
	v4Bits []uint8 // prefix lengths present in v4, ascending
	v6Bits []uint8
}

// appendID appends id unless it is already the last element (a rule that
// lists the same name twice).
func appendID(ids []int32, id int32) []int32 {
	if n := len(ids); n > 0 && ids[n-1] == id {
		return ids
	}
	return append(ids, id)
}

func (ix *index) addPattern(p pattern, id int32) {
	switch p.kind {
	case patExact:
		if ix.exact == nil {
			ix.exact = make(map[string][]int32)
		}
		ix.exact[p.name] = appendID(ix.exact[p.name], id)
	case patWildcard:
		if ix.wild == nil {
			ix.wild = make(map[string][]int32)
		}
		ix.wild[p.name] = appendID(ix.wild[p.name], id)
	case patAny:
		ix.any = appendID(ix.any, id)
	}
}

func (ix *index) addPrefix(p netip.Prefix, id int32) {
	bits := p.Bits()
	if p.Addr().Is4() {
		if ix.v4[bits] == nil {
			ix.v4[bits] = make(map[netip.Prefix][]int32)
			ix.v4Bits = insertBits(ix.v4Bits, uint8(bits))
		}
		ix.v4[bits][p] = appendID(ix.v4[bits][p], id)
		return
	}
	if ix.v6[bits] == nil {
		ix.v6[bits] = make(map[netip.Prefix][]int32)
		ix.v6Bits = insertBits(ix.v6Bits, uint8(bits))
	}
	ix.v6[bits][p] = appendID(ix.v6[bits][p], id)
}

func insertBits(list []uint8, b uint8) []uint8 {
	i := 0
	for i < len(list) && list[i] < b {
		i++
	}
	list = append(list, 0)
	copy(list[i+1:], list[i:])
	list[i] = b
	return list
}

// nameIter yields the candidate lists for a normalized name: the exact
// entry, the wildcard entry of every proper parent suffix, and "*". It is a
// plain struct rather than a callback so that Decide does not allocate;
// a lookup costs O(labels) map probes with substrings of name.
type nameIter struct {
	ix    *index
	name  string
	stage uint8
	pos   int // next byte of name to scan for a '.' in stage 1
}

func (ix *index) names(name string) nameIter {
	return nameIter{ix: ix, name: name}
}

// next returns the next non-empty candidate list, or nil when done.
func (it *nameIter) next() []int32 {
	if it.name == "" {
		return nil
	}
	for {
		switch it.stage {
		case 0:
			it.stage = 1
			if ids := it.ix.exact[it.name]; len(ids) > 0 {
				return ids
			}
		case 1:
			if len(it.ix.wild) == 0 {
				it.stage = 2
				continue
			}
			for it.pos < len(it.name) {
				i := it.pos
				it.pos++
				if it.name[i] == '.' {
					if ids := it.ix.wild[it.name[i+1:]]; len(ids) > 0 {
						return ids
					}
				}
			}
			it.stage = 2
		case 2:
			it.stage = 3
			if len(it.ix.any) > 0 {
				return it.ix.any
			}
		default:
			return nil
		}
	}
}

// addrIter yields the candidate lists of the rules with a cidr that
// contains an address (unmapped, without zone): one map probe per prefix
// length present in the index.
type addrIter struct {
	ix *index
	a  netip.Addr
	i  int
}

func (ix *index) addrs(a netip.Addr) addrIter {
	return addrIter{ix: ix, a: a}
}

func (it *addrIter) next() []int32 {
	bitsList, maps := it.ix.v6Bits, it.ix.v6[:]
	if it.a.Is4() {
		bitsList, maps = it.ix.v4Bits, it.ix.v4[:]
	} else if !it.a.Is6() {
		return nil
	}
	for it.i < len(bitsList) {
		bits := bitsList[it.i]
		it.i++
		p, err := it.a.Prefix(int(bits))
		if err != nil {
			continue
		}
		if ids := maps[bits][p]; len(ids) > 0 {
			return ids
		}
	}
	return nil
}
