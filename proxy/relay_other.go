//go:build !linux

package proxy

import (
	"net"
	"time"
)

// epollRelayStart is the epoll relay's entry point; elsewhere tunnels are
// relayed by goroutines.
func epollRelayStart(client, upstream net.Conn, idle time.Duration, done func(up, down int64)) func() {
	return nil
}

// inlineUrgent: elsewhere read(2) skips an urgent byte (it does not stop
// the stream either).
func inlineUrgent(net.Conn) {}

// waitReset: elsewhere a reset after a peer's FIN is met by the other
// direction's next write, or the idle timeout.
func waitReset(net.Conn) error { return nil }
