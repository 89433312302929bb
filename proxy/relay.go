package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// relayChunk is how many bytes one io.CopyN round moves before the relay
// notes activity and renews its deadline. CopyN over *net.TCPConn still
// splices (net's splice path accepts an *io.LimitedReader), so the chunk
// only sets how often we look up, not a buffer size: 4 MiB keeps the
// per-round overhead far below 0.1% of the bytes moved.
const relayChunk = 4 << 20

// idleChecks is how many times per idle timeout a quiet direction wakes up
// to ask whether the other direction moved data meanwhile.
const idleChecks = 4

// relay copies client→upstream and upstream→client until both directions
// have ended or the tunnel has been idle for idle. A direction that ends
// with EOF half-closes its destination so the peer sees it. It returns the
// bytes moved in each direction.
func relay(client, upstream net.Conn, idle time.Duration) (up, down int64) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		down = pipe(client, upstream, idle, &last)
	}()
	up = pipe(upstream, client, idle, &last)
	wg.Wait()
	return up, down
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
