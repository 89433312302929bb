package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
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
			if ap, serr = rawSockaddr(int(fd), syscall.SYS_GETSOCKOPT, syscall.SOL_IPV6, ip6tSoOriginalDst); serr == nil {
				return
			}
		}
		ap, serr = rawSockaddr(int(fd), syscall.SYS_GETSOCKOPT, syscall.SOL_IP, soOriginalDst)
	})
	if cerr != nil {
		return netip.AddrPort{}, cerr
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w (was the connection redirected by iptables/nft REDIRECT or DNAT?)", serr)
	}
	return ap, nil
}

// parseRawSockaddr decodes a sockaddr_in (16 bytes) or sockaddr_in6 (28)
// as the kernel wrote it: family in host order, port in network order.
func parseRawSockaddr(b []byte) (netip.AddrPort, error) {
	if len(b) < 2 {
		return netip.AddrPort{}, errors.New("short sockaddr")
	}
	family := *(*uint16)(unsafe.Pointer(&b[0]))
	switch family {
	case syscall.AF_INET:
		if len(b) < syscall.SizeofSockaddrInet4 {
			return netip.AddrPort{}, errors.New("short sockaddr_in")
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4])), nil
	case syscall.AF_INET6:
		if len(b) < syscall.SizeofSockaddrInet6 {
			return netip.AddrPort{}, errors.New("short sockaddr_in6")
		}
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])).Unmap(), binary.BigEndian.Uint16(b[2:4])), nil
	}
	return netip.AddrPort{}, fmt.Errorf("unexpected address family %d", family)
}

// transparentControl sets IP_TRANSPARENT and, on IPv6 sockets,
// IPV6_TRANSPARENT, so that a TPROXY'ed connection to any address is
// accepted with that address as its local address.
func transparentControl(network, _ string, rc syscall.RawConn) error {
	if network == "tcp6" {
		return setsockopts(rc, sockopt{syscall.SOL_IPV6, ipv6Transparent, 1, "IPV6_TRANSPARENT (TPROXY needs CAP_NET_ADMIN)"})
	}
	return setsockopts(rc, sockopt{syscall.SOL_IP, syscall.IP_TRANSPARENT, 1, "IP_TRANSPARENT (TPROXY needs CAP_NET_ADMIN)"})
}

// sockopt is one integer socket option and, for errors, its name.
type sockopt struct {
	level, name, v int
	what           string
}

// setsockopts sets opts on rc's socket in order and stops at the first
// that fails, naming it.
func setsockopts(rc syscall.RawConn, opts ...sockopt) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		for _, o := range opts {
			if err := syscall.SetsockoptInt(int(fd), o.level, o.name, o.v); err != nil {
				serr = fmt.Errorf("setting %s: %w", o.what, err)
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// markControl returns a net.Dialer Control that sets SO_MARK on upstream
// sockets (0: none), so that a redirect rule can exempt egressd's own
// connections ("meta mark MARK return").
func markControl(mark uint32) func(string, string, syscall.RawConn) error {
	if mark == 0 {
		return nil
	}
	opt := markOpt(mark)
	return func(_, _ string, rc syscall.RawConn) error { return setsockopts(rc, opt) }
}

func markOpt(mark uint32) sockopt {
	return sockopt{syscall.SOL_SOCKET, syscall.SO_MARK, int(mark), fmt.Sprintf("SO_MARK %d (needs CAP_NET_ADMIN)", mark)}
}

// Socket options for the QUIC listener (linux/in.h, linux/in6.h). The
// RECV and the control-message type share a number.
const (
	ipRecvOrigDstAddr   = 20 // IP_RECVORIGDSTADDR / IP_ORIGDSTADDR, level SOL_IP
	ipv6RecvOrigDstAddr = 74 // IPV6_RECVORIGDSTADDR / IPV6_ORIGDSTADDR, level SOL_IPV6
)

// quicOOBSize holds one control message with a sockaddr_in6 (the original
// destination), with room to spare.
var quicOOBSize = syscall.CmsgSpace(syscall.SizeofSockaddrInet6) * 2

// quicListenControl prepares the QUIC listener: IP_TRANSPARENT and
// IP_RECVORIGDSTADDR, and on IPv6 sockets their IPv6 forms as well (a
// dual-stack socket receives IPv4 datagrams through the IPv4 options).
func quicListenControl(network, _ string, rc syscall.RawConn) error {
	opts := []sockopt{
		{syscall.SOL_IP, syscall.IP_TRANSPARENT, 1, "IP_TRANSPARENT (TPROXY needs CAP_NET_ADMIN)"},
		{syscall.SOL_IP, ipRecvOrigDstAddr, 1, "IP_RECVORIGDSTADDR"},
	}
	if network == "udp6" {
		opts = append(opts,
			sockopt{syscall.SOL_IPV6, ipv6Transparent, 1, "IPV6_TRANSPARENT (TPROXY needs CAP_NET_ADMIN)"},
			sockopt{syscall.SOL_IPV6, ipv6RecvOrigDstAddr, 1, "IPV6_RECVORIGDSTADDR"})
	}
	return setsockopts(rc, opts...)
}

// parseOrigDstCmsg finds the original destination in a datagram's control
// messages (IP_ORIGDSTADDR or IPV6_ORIGDSTADDR). It checks every length
// and does not allocate.
func parseOrigDstCmsg(oob []byte) (netip.AddrPort, bool) {
	hdr := syscall.CmsgLen(0)
	for len(oob) >= hdr {
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < hdr || l > len(oob) {
			return netip.AddrPort{}, false
		}
		if h.Level == syscall.SOL_IP && h.Type == ipRecvOrigDstAddr ||
			h.Level == syscall.SOL_IPV6 && h.Type == ipv6RecvOrigDstAddr {
			ap, err := parseRawSockaddr(oob[hdr:l])
			return ap, err == nil
		}
		next := syscall.CmsgSpace(l - hdr)
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	return netip.AddrPort{}, false
}

// transparentReply opens the socket a QUIC flow answers its client from:
// bound to the flow's original destination (IP_TRANSPARENT allows the
// foreign address; SO_REUSEADDR lets flows of several clients to one
// destination share it) and marked like upstream sockets, so that the
// redirect rules leave it alone. It is never connected, so the TPROXY
// rule keeps steering the client's datagrams to the listener.
func transparentReply(dst netip.AddrPort, mark uint32) (*net.UDPConn, error) {
	network, level, opt := "udp4", syscall.SOL_IP, syscall.IP_TRANSPARENT
	if dst.Addr().Is6() {
		network, level, opt = "udp6", syscall.SOL_IPV6, ipv6Transparent
	}
	opts := []sockopt{
		{syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1, "SO_REUSEADDR"},
		{level, opt, 1, "IP_TRANSPARENT (needs CAP_NET_ADMIN)"},
	}
	if mark != 0 {
		opts = append(opts, sockopt{syscall.SOL_SOCKET, syscall.SO_MARK, int(mark), "SO_MARK"})
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error { return setsockopts(rc, opts...) }}
	pc, err := lc.ListenPacket(context.Background(), network, dst.String())
	if err != nil {
		return nil, fmt.Errorf("binding a reply socket to %s: %w", dst, err)
	}
	return pc.(*net.UDPConn), nil
}

// listenOptions sets listenOpts on the listening socket, whose settings
// Linux copies to the sockets it accepts, instead of on each.
func listenOptions(lc *net.ListenConfig) {
	extra := lc.Control
	lc.KeepAlive = -1
	lc.Control = func(network, address string, rc syscall.RawConn) error {
		if extra != nil {
			if err := extra(network, address, rc); err != nil {
				return err
			}
		}
		return setsockopts(rc, listenOpts...)
	}
}

// keepAliveOpts are tunnelKeepAlive as socket options.
var keepAliveOpts = [...]sockopt{
	{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
	{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, int(tunnelKeepAlive.Idle / time.Second), "TCP_KEEPIDLE"},
	{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, int(tunnelKeepAlive.Interval / time.Second), "TCP_KEEPINTVL"},
	{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, tunnelKeepAlive.Count, "TCP_KEEPCNT"},
}

// listenOpts are keepAliveOpts and SO_OOBINLINE: a client's TCP urgent
// byte (telnet's and FTP's interrupts) is a byte of the stream for every
// read. Without it a read at the urgent mark skips the byte, and the
// hello phase's first read is at the mark when the byte comes first: it
// was lost before the relay set SO_OOBINLINE (stepUrgent).
var listenOpts = append(keepAliveOpts[:len(keepAliveOpts):len(keepAliveOpts)],
	sockopt{syscall.SOL_SOCKET, syscall.SO_OOBINLINE, 1, "SO_OOBINLINE"})

func setIntOpt(fd, level, name, v int) syscall.Errno {
	iv := int32(v)
	_, _, e := syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name), uintptr(unsafe.Pointer(&iv)), 4, 0)
	return e
}

func getIntOpt(fd, level, name int) (int, syscall.Errno) {
	var v int32
	l := uint32(4)
	_, _, e := syscall.RawSyscall6(syscall.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name), uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
	return int(v), e
}

// rawSockaddr reads a socket address: getsockname (level and opt unused)
// or getsockopt SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST, which write a
// sockaddr_in or sockaddr_in6 into a buffer with room for either.
func rawSockaddr(fd int, call uintptr, level, opt int) (netip.AddrPort, error) {
	var b [syscall.SizeofSockaddrInet6 + 4]byte
	l := uint32(len(b))
	var e syscall.Errno
	if call == syscall.SYS_GETSOCKNAME {
		_, _, e = syscall.RawSyscall(call, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&l)))
	} else {
		_, _, e = syscall.RawSyscall6(call, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&l)), 0)
	}
	if e != 0 {
		return netip.AddrPort{}, e
	}
	ap, err := parseRawSockaddr(b[:min(int(l), len(b))])
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), err
}

// putRawSockaddr writes ap as a sockaddr_in (IPv4) or sockaddr_in6 into b
// (at least SizeofSockaddrInet6 bytes) and returns its length.
func putRawSockaddr(b []byte, ap netip.AddrPort) int {
	port := ap.Port()
	b[2], b[3] = byte(port>>8), byte(port)
	if a := ap.Addr(); a.Is4() {
		*(*uint16)(unsafe.Pointer(&b[0])) = syscall.AF_INET
		a4 := a.As4()
		copy(b[4:8], a4[:])
		return syscall.SizeofSockaddrInet4
	}
	*(*uint16)(unsafe.Pointer(&b[0])) = syscall.AF_INET6
	a16 := ap.Addr().As16()
	copy(b[8:24], a16[:])
	return syscall.SizeofSockaddrInet6
}
