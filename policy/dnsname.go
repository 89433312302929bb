package policy

// NameAllowed reports whether some allow rule could allow a connection to
// name, for the gateway DNS server (dns_listen): name matches an allow
// rule's hosts or sni patterns, and no deny rule that refuses every
// connection to it matches it. Such a deny rule has no sni, ja3 or ja4
// conditions and no ports, applies to both protocols, and is in an
// enforced policy without a clients block: a deny for some clients, for
// QUIC only, or in audit mode still lets other connections to the name
// through, so the name is answered. (The server block's audit mode is the
// DNS server's to apply: it answers refused names too.)
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
			if p.refusesName(ru) {
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

// refusesName reports whether deny rule ru refuses every connection to the
// names it matches, whoever the client and whatever the port, protocol or
// ClientHello.
func (p *Policy) refusesName(ru *rule) bool {
	pi := &p.pols[ru.pol]
	return !ru.tlsConds && ru.ports == nil && ru.protos == allProtocols &&
		pi.clients == nil && !pi.audit
}
