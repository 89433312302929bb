package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// relayChunk is how many bytes one direction moves before the relay looks
// up: the goroutine relay notes activity and renews its deadline (CopyN
// over *net.TCPConn still splices: net's splice path accepts an
// *io.LimitedReader), the epoll relay gives the other direction its turn.
// 4 MiB keeps the per-round overhead far below 0.1% of the bytes moved.
const relayChunk = 4 << 20

// idleChecks is how many times per idle timeout a quiet direction wakes up
// to ask whether the other direction moved data meanwhile.
const idleChecks = 4

// tunnelState is what a tunnel in the goroutine relay keeps besides its
// two connections and two goroutines.
type tunnelState struct {
	last     atomic.Int64 // unix nanoseconds of the last byte moved
	up, down int64
	left     atomic.Int32 // directions still running
	done     func(up, down int64)
}

// startRelay relays client→upstream and upstream→client until both
// directions have ended or the tunnel has been idle for idle; a direction
// that ends with EOF half-closes its destination so the peer sees it, an
// error tears down both. It returns at once, with a function that aborts
// the tunnel. When the relay is over it closes both connections and runs
// done once, with the bytes moved each way; done need not keep either
// connection (an idle tunnel in the epoll relay keeps neither).
//
// Two *net.TCPConn go to the epoll relay (relay_linux.go), which holds no
// goroutine while the tunnel is quiet; anything else (another OS, a
// wrapped connection) gets one goroutine per direction.
func startRelay(client, upstream net.Conn, idle time.Duration, done func(up, down int64)) (abort func()) {
	if abort := epollRelayStart(client, upstream, idle, done); abort != nil {
		return abort
	}
	ts := &tunnelState{done: func(up, down int64) {
		_ = client.Close()
		_ = upstream.Close()
		done(up, down)
	}}
	ts.last.Store(time.Now().UnixNano())
	ts.left.Store(2)
	go ts.run(upstream, client, idle, &ts.up)
	go ts.run(client, upstream, idle, &ts.down)
	return func() {
		client.Close()
		upstream.Close()
	}
}

func (ts *tunnelState) run(dst, src net.Conn, idle time.Duration, n *int64) {
	*n = pipe(dst, src, idle, &ts.last)
	if ts.left.Add(-1) == 0 {
		ts.done(ts.up, ts.down)
	}
}

// pipe moves src→dst in rounds of relayChunk bytes with io.CopyN, which
// for two *net.TCPConn is splice(2): no user-space copy. Each round has a
// read deadline of a fraction of idle; a round that times out without
// moving data ends the tunnel only when the other direction has been quiet
// too for the whole idle period.
func pipe(dst, src net.Conn, idle time.Duration, last *atomic.Int64) int64 {
	var total int64
	tick := max(idle/idleChecks, time.Millisecond)
	for {
		_ = src.SetReadDeadline(time.Now().Add(tick))
		n, err := io.CopyN(dst, src, relayChunk)
		total += n
		now := time.Now()
		if n > 0 {
			last.Store(now.UnixNano())
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, os.ErrDeadlineExceeded):
			if n > 0 || now.Sub(time.Unix(0, last.Load())) < idle {
				continue
			}
			// Idle in both directions: end the whole tunnel.
			_ = dst.Close()
			_ = src.Close()
		case errors.Is(err, io.EOF):
			closeWrite(dst)
		default:
			// Reset or closed: tear down both sides so the other direction
			// does not wait for its own timeout.
			_ = dst.Close()
			_ = src.Close()
		}
		return total
	}
}

// closeWrite propagates a half-close when the connection supports it.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}
