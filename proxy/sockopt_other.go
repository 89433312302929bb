//go:build !linux

package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

var errNotLinux = errors.New("the transparent gateway needs Linux (netfilter)")

func originalDst(net.Conn) (netip.AddrPort, error) { return netip.AddrPort{}, errNotLinux }

func transparentControl(string, string, syscall.RawConn) error { return errNotLinux }

func markControl(mark uint32) func(string, string, syscall.RawConn) error {
	if mark == 0 {
		return nil
	}
	return func(string, string, syscall.RawConn) error { return errNotLinux }
}

const quicOOBSize = 64

func quicListenControl(string, string, syscall.RawConn) error { return errNotLinux }

func parseOrigDstCmsg([]byte) (netip.AddrPort, bool) { return netip.AddrPort{}, false }

func transparentReply(dst netip.AddrPort, _ uint32) (*net.UDPConn, error) {
	return nil, fmt.Errorf("reply socket for %s: %w", dst, errNotLinux)
}

// listenOptions: elsewhere accepted sockets may not inherit the
// listener's settings, so Go sets keepalive on each.
func listenOptions(lc *net.ListenConfig) { lc.KeepAliveConfig = tunnelKeepAlive }
