package proxy

import (
	"net"
	"net/netip"
	"testing"
)

// TestOwnListener: which destinations reach egressd's own listeners, for
// a dial (a proxy loop) and for a transparent connection's original
// destination. No packet is sent: the host's interface addresses are
// replaced.
func TestOwnListener(t *testing.T) {
	saved := interfaceAddrs
	t.Cleanup(func() { interfaceAddrs = saved })
	interfaceAddrs = func() ([]net.Addr, error) {
		return []net.Addr{
			&net.IPNet{IP: net.ParseIP("192.0.2.10"), Mask: net.CIDRMask(24, 32)},
			&net.IPNet{IP: net.ParseIP("2001:db8::10"), Mask: net.CIDRMask(64, 128)},
		}, nil
	}
	s := &Server{}
	// 0.0.0.0 is IPv4 only, [::] both families (listenNetwork).
	for _, a := range []string{"0.0.0.0:3128", "127.0.0.1:9000", "[::]:8080"} {
		s.selfAddrs = append(s.selfAddrs, netip.MustParseAddrPort(a))
	}
	tests := []struct {
		dst          string
		dial, origin bool
	}{
		{"127.0.0.1:3128", true, true},  // the unspecified listener on loopback
		{"127.0.0.7:3128", true, true},  // any loopback address
		{"0.0.0.0:3128", true, true},    // the unspecified address itself
		{"192.0.2.10:3128", true, true}, // this host's LAN address: a loop
		{"[::ffff:192.0.2.10]:3128", true, true},
		{"192.0.2.11:3128", false, true}, // another host's proxy on the same port
		{"198.51.100.1:3128", false, true},
		{"198.51.100.1:443", false, false},
		{"127.0.0.1:9000", true, true}, // the exact listener
		{"127.0.0.2:9000", false, false},
		{"[::1]:3128", false, false}, // another program's IPv6 listener
		{"[::]:3128", false, false},
		{"[2001:db8::10]:3128", false, false},
		{"[::1]:8080", true, true}, // the dual-stack listener, either family
		{"127.0.0.1:8080", true, true},
		{"0.0.0.0:8080", true, true},
		{"[2001:db8::10]:8080", true, true},
		{"[2001:db8::11]:8080", false, true},
	}
	for _, tt := range tests {
		dst := netip.MustParseAddrPort(tt.dst)
		if got := s.isOwnListener(dst); got != tt.dial {
			t.Errorf("isOwnListener(%s) = %v, want %v", dst, got, tt.dial)
		}
		if got := s.isSelf(dst); got != tt.origin {
			t.Errorf("isSelf(%s) = %v, want %v", dst, got, tt.origin)
		}
	}
}
