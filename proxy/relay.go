package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
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

// tunnelState is all an established tunnel keeps besides its two
// connections and two goroutines: small, so that idle tunnels are cheap.
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
// the tunnel; done runs once, when the relay is over, with the bytes moved
// each way.
//
// Two *net.TCPConn go to the epoll relay (relay_linux.go), which holds no
// goroutine while the tunnel is quiet; anything else (another OS, a
// wrapped connection) gets one goroutine per direction.
func startRelay(client, upstream net.Conn, idle time.Duration, done func(up, down int64)) (abort func()) {
	if abort := epollRelayStart(client, upstream, idle, done); abort != nil {
		return abort
	}
	ts := &tunnelState{done: done}
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
//
// Before each round the goroutine waits for data a few frames deep
// (direction.wait) instead of inside splice, whose call path needs a 4 KiB
// stack: a direction that has not moved data since the hello (the usual
// idle tunnel's upstream→client side until the server speaks) keeps the
// minimum 2 KiB goroutine stack.
func pipe(dst, src net.Conn, idle time.Duration, last *atomic.Int64) int64 {
	d := newDirection(dst, src)
	var total int64
	tick := max(idle/idleChecks, time.Millisecond)
	for {
		_ = src.SetReadDeadline(time.Now().Add(tick))
		var n int64
		err := d.wait()
		if err == nil {
			n, err = io.CopyN(dst, src, relayChunk)
		}
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

// direction is what pipe reuses every round, so that a round allocates
// nothing.
type direction struct {
	dst, src net.Conn
	rc       syscall.RawConn // nil when src has no file descriptor
	ready    func(fd uintptr) bool
	peek     [1]byte
	// err is an error the peek consumed (a reset): the socket reports it
	// only once, so wait returns it instead of the next read's EOF.
	err error
}

func newDirection(dst, src net.Conn) *direction {
	d := &direction{dst: dst, src: src}
	if sc, ok := src.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			d.rc = rc
		}
	}
	d.ready = d.readable
	return d
}

// wait blocks until src has data (or EOF, an error, or the read deadline).
func (d *direction) wait() error {
	if d.rc == nil {
		return nil
	}
	if err := d.rc.Read(d.ready); err != nil {
		return err
	}
	return d.err
}

// closeWrite propagates a half-close when the connection supports it.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}
