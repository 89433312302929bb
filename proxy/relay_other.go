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

// stepUrgentConn: elsewhere the goroutine relay reads with read(2), which
// does not stop at urgent data (it skips the urgent byte).
func stepUrgentConn(dst, src net.Conn) (int64, bool, error) { return 0, false, nil }
