package policy

// NameAllowed reports whether some allow rule could allow a connection to
// name, for the gateway DNS server (dns_listen): name matches an allow
// rule's hosts or sni patterns, and no deny rule without sni, ja3 or ja4
// conditions and without ports (it applies to every port) matches it.
// name must be normalized (NormalizeHost); anything else is not allowed.
//
// When ok, policy and rule name the lowest allow rule that matched; when
// a deny rule refuses the name they name that rule (ok false); otherwise
// both are "". NameAllowed does not allocate.
func (p *Policy) NameAllowed(name string) (policy, rule string, ok bool) {
	if p == nil || name == "" {
		return "", "", false
	}
	if n, e := normalizeHost(name); e != hostOK || n != name {
		return "", "", false
	}
	deny := int32(-1)
	for it := p.denyIdx.names(name); ; {
		ids := it.next()
		if ids == nil {
			break
		}
		for _, id := range ids {
			if deny >= 0 && id >= deny {
				break
			}
			ru := &p.deny[id]
			if !ru.tlsConds && ru.ports == nil {
				deny = id
				break
			}
		}
	}
	if deny >= 0 {
		ru := &p.deny[deny]
		return ru.policy, ru.name, false
	}
	best := int32(-1)
	for _, ix := range [...]*index{&p.allowIdx, &p.allowSNIIdx, &p.allowSNIOnlyIdx} {
		for it := ix.names(name); ; {
			ids := it.next()
			if ids == nil {
				break
			}
			// ids ascend: the first is the lowest of this list.
			if best < 0 || ids[0] < best {
				best = ids[0]
			}
		}
	}
	if best < 0 {
		return "", "", false
	}
	ru := &p.allow[best]
	return ru.policy, ru.name, true
}
