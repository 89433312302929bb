package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"
)

// Socket options the syscall package does not name.
const (
	soOriginalDst     = 80 // SO_ORIGINAL_DST, level SOL_IP (linux/netfilter_ipv4.h)
	ip6tSoOriginalDst = 80 // IP6T_SO_ORIGINAL_DST, level SOL_IPV6 (linux/netfilter_ipv6/ip6_tables.h)
	ipv6Transparent   = 75 // IPV6_TRANSPARENT, level SOL_IPV6 (linux/in6.h)
)

// originalDst returns the destination a REDIRECT/DNAT'ed connection was
// sent to, from the conntrack entry: getsockopt SO_ORIGINAL_DST for IPv4,
// IP6T_SO_ORIGINAL_DST for IPv6 (the listener's family decides which one
// answers; an IPv4 connection on a dual-stack socket uses the IPv4 one).
//
// syscall.GetsockoptIPv6MTUInfo is used as a getsockopt into a 32-byte
// buffer that starts with a RawSockaddrInet6: room for a sockaddr_in (16
// bytes) or a sockaddr_in6 (28), which is what the kernel writes.
func originalDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("not a TCP connection (%T)", c)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	local, _ := netip.ParseAddrPort(c.LocalAddr().String())
	var (
		ap   netip.AddrPort
		serr error
	)
	cerr := rc.Control(func(fd uintptr) {
		if !local.Addr().Unmap().Is4() {
			if ap, serr = getOrigDst(int(fd), syscall.SOL_IPV6, ip6tSoOriginalDst); serr == nil {
				return
			}
		}
		ap, serr = getOrigDst(int(fd), syscall.SOL_IP, soOriginalDst)
	})
	if cerr != nil {
		return netip.AddrPort{}, cerr
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w (was the connection redirected by iptables/nft REDIRECT or DNAT?)", serr)
	}
	return ap, nil
}

func getOrigDst(fd, level, opt int) (netip.AddrPort, error) {
	info, err := syscall.GetsockoptIPv6MTUInfo(fd, level, opt)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return parseRawSockaddr((*[unsafe.Sizeof(info.Addr)]byte)(unsafe.Pointer(&info.Addr))[:])
}

// parseRawSockaddr decodes a sockaddr_in or sockaddr_in6 as the kernel
// wrote it: family in host order, port in network order.
func parseRawSockaddr(b []byte) (netip.AddrPort, error) {
	if len(b) < 28 {
		return netip.AddrPort{}, errors.New("short sockaddr")
	}
	family := *(*uint16)(unsafe.Pointer(&b[0]))
	port := binary.BigEndian.Uint16(b[2:4])
	switch family {
	case syscall.AF_INET:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
	case syscall.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])).Unmap(), port), nil
	}
	return netip.AddrPort{}, fmt.Errorf("unexpected address family %d", family)
}

// transparentControl sets IP_TRANSPARENT and, on IPv6 sockets,
// IPV6_TRANSPARENT, so that a TPROXY'ed connection to any address is
// accepted with that address as its local address.
func transparentControl(network, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		if network == "tcp6" {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_IPV6, ipv6Transparent, 1)
			return
		}
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_IP, syscall.IP_TRANSPARENT, 1)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setting IP_TRANSPARENT (TPROXY needs CAP_NET_ADMIN): %w", serr)
	}
	return nil
}

// markControl returns a net.Dialer Control that sets SO_MARK on upstream
// sockets (0: none), so that a redirect rule can exempt egressd's own
// connections ("meta mark MARK return").
func markControl(mark uint32) func(string, string, syscall.RawConn) error {
	if mark == 0 {
		return nil
	}
	return func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(mark))
		})
		if err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("setting SO_MARK %d (needs CAP_NET_ADMIN): %w", mark, serr)
		}
		return nil
	}
}
