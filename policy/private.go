package policy

import "net/netip"

// IsPrivate reports whether a is an address an egress proxy must not reach
// unless a rule grants it explicitly: an address that is not on the public
// Internet, or that reaches the proxy's own host or network.
//
// IPv4: 0.0.0.0/8 ("this network", incl. the unspecified address),
// 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 (RFC 1918), 100.64.0.0/10
// (CGNAT, also Alibaba's metadata 100.100.100.200), 127.0.0.0/8 (loopback),
// 169.254.0.0/16 (link-local, incl. the cloud metadata service
// 169.254.169.254), 224.0.0.0/4 (multicast) and 240.0.0.0/4 (reserved,
// incl. the broadcast address 255.255.255.255).
//
// IPv6: ::/96 (unspecified, loopback, and the deprecated IPv4-compatible
// form), fc00::/7 (ULA, incl. AWS's metadata fd00:ec2::254), fe80::/10
// (link-local), fec0::/10 (deprecated site-local), ff00::/8 (multicast),
// 64:ff9b:1::/48 (local-use NAT64: the translator and the position of the
// embedded IPv4 address are chosen by the local operator, so all of it is
// private), and the forms that embed one of the IPv4 ranges above:
// IPv4-mapped ::ffff:a.b.c.d, NAT64 64:ff9b::a.b.c.d (RFC 6052) and 6to4
// 2002:aabb:ccdd::/48 (RFC 3056).
//
// An invalid Addr is reported as private, so that callers which refuse
// private addresses refuse it as well. A zone is ignored.
func IsPrivate(a netip.Addr) bool {
	return !a.IsValid() || privateBits(a) >= 0
}

// privateBits returns the prefix length of the private block that contains
// a, or -1 when a is public. A prefix p lies wholly in private space exactly
// when privateBits(p.Addr()) is between 0 and p.Bits().
func privateBits(a netip.Addr) int {
	if a.Is4() {
		return v4PrivateBits(a.As4())
	}
	if !a.Is6() {
		return -1
	}
	b := a.As16() // As16 drops the zone.
	switch {
	case b[0] == 0 && b[1] == 0 && b[2] == 0 && b[3] == 0 && b[4] == 0 && b[5] == 0 && b[6] == 0 && b[7] == 0:
		switch {
		case b[8] == 0 && b[9] == 0 && b[10] == 0xff && b[11] == 0xff:
			return embedded(96, b[12:16]) // ::ffff:a.b.c.d
		case b[8] == 0 && b[9] == 0 && b[10] == 0 && b[11] == 0:
			return 96 // ::, ::1, ::a.b.c.d
		}
		return -1
	case b[0]&0xfe == 0xfc:
		return 7 // fc00::/7
	case b[0] == 0xfe && b[1]&0xc0 == 0x80:
		return 10 // fe80::/10
	case b[0] == 0xfe && b[1]&0xc0 == 0xc0:
		return 10 // fec0::/10
	case b[0] == 0xff:
		return 8 // ff00::/8
	case b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4] == 0 && b[5] == 1:
		return 48 // 64:ff9b:1::/48
	}
	if v4, prefix, ok := embedded4(b); ok {
		return embedded(prefix, v4[:]) // 64:ff9b::a.b.c.d, 2002:aabb:ccdd::/48
	}
	return -1
}

// embedded4 returns the IPv4 address that b carries by a well-known
// translation, NAT64's 64:ff9b::a.b.c.d (RFC 6052) or 6to4's
// 2002:aabb:ccdd::/48 (RFC 3056), with the length of the IPv6 prefix before
// it.
func embedded4(b [16]byte) (v4 [4]byte, prefix int, ok bool) {
	switch {
	case b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b &&
		b[4] == 0 && b[5] == 0 && b[6] == 0 && b[7] == 0 && b[8] == 0 && b[9] == 0 && b[10] == 0 && b[11] == 0:
		return [4]byte(b[12:16]), 96, true
	case b[0] == 0x20 && b[1] == 0x02:
		return [4]byte(b[2:6]), 16, true
	}
	return v4, 0, false
}

// embedded returns the private block length of the IPv4 address v4 placed
// after an IPv6 prefix of the given length, or -1.
func embedded(prefix int, v4 []byte) int {
	n := v4PrivateBits([4]byte{v4[0], v4[1], v4[2], v4[3]})
	if n < 0 {
		return -1
	}
	return prefix + n
}

func v4PrivateBits(b [4]byte) int {
	switch {
	case b[0] == 0, b[0] == 10, b[0] == 127:
		return 8
	case b[0] == 100 && b[1]&0xc0 == 64:
		return 10 // 100.64.0.0/10
	case b[0] == 169 && b[1] == 254:
		return 16
	case b[0] == 172 && b[1]&0xf0 == 16:
		return 12 // 172.16.0.0/12
	case b[0] == 192 && b[1] == 168:
		return 16
	case b[0] >= 224:
		return 3 // 224.0.0.0/4 multicast + 240.0.0.0/4 reserved = 224.0.0.0/3
	}
	return -1
}

// wholePrivate reports whether every address of p is private. Only such a
// CIDR grants access to private addresses: "0.0.0.0/0" in a rule opens the
// public Internet on its ports, not 10.0.0.0/8 or the metadata service.
func wholePrivate(p netip.Prefix) bool {
	n := privateBits(p.Addr())
	return n >= 0 && n <= p.Bits()
}

// EmbeddedIPv4 returns the IPv4 address that a reaches by a well-known
// translation, NAT64's 64:ff9b::a.b.c.d (RFC 6052) or 6to4's
// 2002:aabb:ccdd::/48 (RFC 3056), and whether it has one. An IPv4-mapped
// address is not one of these: Decide unmaps it first.
func EmbeddedIPv4(a netip.Addr) (netip.Addr, bool) {
	if !a.Is6() || a.Is4In6() {
		return netip.Addr{}, false
	}
	if v4, _, ok := embedded4(a.As16()); ok {
		return netip.AddrFrom4(v4), true
	}
	return netip.Addr{}, false
}
