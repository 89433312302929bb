package proxy

import (
	"errors"
	"net/netip"
	"syscall"
)

// bindLoopback is a net.Dialer Control that binds the socket to the
// loopback address ip on a port the kernel picks and gives that address to
// bound before the connect: a test registers a connection's original
// destination before egressd accepts it.
func bindLoopback(ip netip.Addr, bound func(netip.AddrPort)) func(string, string, syscall.RawConn) error {
	return func(_, _ string, rc syscall.RawConn) error {
		var err error
		cerr := rc.Control(func(fd uintptr) {
			if err = syscall.Bind(int(fd), &syscall.SockaddrInet4{Addr: ip.As4()}); err != nil {
				return
			}
			var sa syscall.Sockaddr
			if sa, err = syscall.Getsockname(int(fd)); err == nil {
				a := sa.(*syscall.SockaddrInet4)
				bound(netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)))
			}
		})
		return errors.Join(cerr, err)
	}
}
