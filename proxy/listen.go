package proxy

import (
	"context"
	"net"
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
	return listenConfig(nil).Listen(context.Background(), "tcp", addr)
}

// listenConfig is the ListenConfig of Listen, with extra run on the socket
// first (nil for none).
func listenConfig(extra func(network, address string, rc syscall.RawConn) error) *net.ListenConfig {
	lc := &net.ListenConfig{Control: extra}
	listenOptions(lc)
	return lc
}
