package proxy

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// tunnelKeepAlive is TCP keepalive for both sides of a tunnel: a probe
// after 30 s of silence keeps NAT and conntrack entries on the path alive
// (AWS's NAT gateway forgets a flow after 350 s, many home routers after
// 60-120 s), and 4 unanswered probes 15 s apart find a peer that vanished
// within 90 s of its last word, well before idle_timeout would.
var tunnelKeepAlive = net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 15 * time.Second, Count: 4}

// Listen opens a TCP listener for egressd's proxy or transparent
// listener. The keepalive settings (and, on Linux, SO_OOBINLINE) are set
// once on the listening socket, and Linux copies them to every accepted
// socket: Go's per-connection default would cost four setsockopt calls
// per accepted connection.
func Listen(addr string) (net.Listener, error) {
	return listenConfig(nil).Listen(context.Background(), listenNetwork("tcp", addr), addr)
}

// listenTCP opens a plain TCP listener (the admin and DNS servers'), of
// the address families listenNetwork says.
func listenTCP(addr string) (net.Listener, error) {
	return net.Listen(listenNetwork("tcp", addr), addr)
}

// listenNetwork is network ("tcp" or "udp") for a listener on addr,
// narrowed to IPv4 ("tcp4", "udp4") when addr's host is an IPv4 address.
// Go listens on both families for 0.0.0.0 (net.Listen's documentation);
// an operator who writes 0.0.0.0 means IPv4, as it means in nginx, HAProxy
// and Squid, and a firewall written for IPv4 would not guard the IPv6 side
// of such a listener. "[::]" (or no host) listens on both.
func listenNetwork(network, addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return network // the listen call reports it
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Is4() {
		return network + "4"
	}
	return network
}

// listenConfig is the ListenConfig of Listen, with extra run on the socket
// first (nil for none).
func listenConfig(extra func(network, address string, rc syscall.RawConn) error) *net.ListenConfig {
	lc := &net.ListenConfig{Control: extra}
	listenOptions(lc)
	return lc
}
