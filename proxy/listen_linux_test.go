package proxy

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// TestListenKeepAliveInherited: sockets accepted by Listen carry
// tunnelKeepAlive and SO_OOBINLINE although egressd never sets them on
// them (Linux copies them from the listening socket).
func TestListenKeepAliveInherited(t *testing.T) {
	ka := tunnelKeepAlive
	want := [...]struct {
		name       string
		level, opt int
		v          int
	}{
		{"SO_KEEPALIVE", syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, int(ka.Idle / time.Second)},
		{"TCP_KEEPINTVL", syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, int(ka.Interval / time.Second)},
		{"TCP_KEEPCNT", syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, ka.Count},
		{"SO_OOBINLINE", syscall.SOL_SOCKET, syscall.SO_OOBINLINE, 1},
	}
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		ln, err := Listen(addr)
		if err != nil {
			if addr[0] == '[' {
				needIPv6(t, err)
			}
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		a, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		rc, _ := a.(*net.TCPConn).SyscallConn()
		rc.Control(func(fd uintptr) {
			for _, w := range want {
				got, err := syscall.GetsockoptInt(int(fd), w.level, w.opt)
				if err != nil || got != w.v {
					t.Errorf("%s: accepted socket's %s = %d (%v), want %d", addr, w.name, got, err, w.v)
				}
			}
		})
	}
}

// TestListenQUICFamilies: quic_listen on 0.0.0.0 is an IPv4 socket, on
// [::] a dual-stack one (with the IPv6 options as well), as the other
// listeners (TestListenFamilies).
func TestListenQUICFamilies(t *testing.T) {
	needRoot(t, "quic_listen's IP_TRANSPARENT needs CAP_NET_ADMIN")
	udpFamilies(t, "quic_listen", func(addr string) (net.PacketConn, func(), error) {
		pc, err := ListenQUIC(addr)
		if err != nil {
			return nil, nil, err
		}
		return pc, func() { pc.Close() }, nil
	})
}
