package proxy

import (
	"errors"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// relayChunk is how many bytes one direction of the epoll relay moves
// before the other direction gets its turn. 4 MiB keeps the per-round
// overhead far below 0.1% of the bytes moved.
const relayChunk = 4 << 20

// pipeBuffer is the buffer of one direction of the goroutine relay: 32
// KiB, io.Copy's size, enough for loopback and LAN rates on the paths it
// serves (see pipe), and not kept by a tunnel of the epoll relay.
const pipeBuffer = 32 << 10

// idleChecks is how many times per idle timeout a direction of the
// goroutine relay ends a wait for bytes to note the bytes it moved.
const idleChecks = 4

// epoch is the reference of the relays' and the QUIC flows' idle times,
// which are nanoseconds since it (monoNow): they are read from the
// monotonic clock, as timers count, so that a step of the wall clock
// neither ends quiet tunnels early nor keeps them open late.
var epoch = time.Now()

// monoNow is the monotonic time now, in nanoseconds since epoch.
func monoNow() int64 { return int64(time.Since(epoch)) }

// idleWatch is a watchdog on activity: once last (monoNow of the last
// byte moved, which the watched code stores) is idle old, it runs fire,
// once. Whether it fired is decided under mu, against stop, so that once
// stop has returned fired's answer is final.
type idleWatch struct {
	last  atomic.Int64
	timer *time.Timer

	mu   sync.Mutex
	done bool // stopped
	shot bool // fired
}

func startIdleWatch(idle time.Duration, fire func()) *idleWatch {
	w := &idleWatch{}
	w.last.Store(monoNow())
	check := func() {
		w.mu.Lock()
		if w.done {
			w.mu.Unlock()
			return
		}
		if quiet := time.Duration(monoNow() - w.last.Load()); quiet < idle {
			w.timer.Reset(idle - quiet)
			w.mu.Unlock()
			return
		}
		w.shot = true
		w.mu.Unlock()
		fire()
	}
	w.timer = time.AfterFunc(math.MaxInt64, check) // set before it can fire
	w.timer.Reset(idle)
	return w
}

// stop ends the watch.
func (w *idleWatch) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
	w.timer.Stop()
}

// fired reports whether the watch ran fire; once stop has returned, the
// answer is final.
func (w *idleWatch) fired() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.shot
}

// tunnelState is what a tunnel in the goroutine relay keeps besides its
// two connections and two goroutines.
type tunnelState struct {
	up, down int64
	left     atomic.Int32 // directions still running
	watch    *idleWatch
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
	closeBoth := func() {
		_ = client.Close()
		_ = upstream.Close()
	}
	ts := &tunnelState{done: func(up, down int64) {
		closeBoth()
		done(up, down)
	}}
	ts.left.Store(2)
	// The watchdog, not the directions, ends an idle tunnel: a direction
	// can be stuck in a write to a peer that does not read (after the
	// other direction ended), where no read deadline reaches it.
	ts.watch = startIdleWatch(idle, closeBoth)
	go ts.run(upstream, client, idle, &ts.up)
	go ts.run(client, upstream, idle, &ts.down)
	return closeBoth
}

func (ts *tunnelState) run(dst, src net.Conn, idle time.Duration, n *int64) {
	var eof bool
	*n, eof = pipe(dst, src, idle, &ts.watch.last)
	if ts.left.Add(-1) == 0 {
		ts.watch.stop()
		ts.done(ts.up, ts.down)
		return
	}
	// src sent its FIN while the other way goes on: nothing reads src any
	// more, so a reset from it would wait for the other peer's next byte
	// or the idle timeout. Wait for one until the tunnel ends (its close
	// ends the wait), and pass it on as pipe does.
	if eof && waitReset(src) != nil {
		closeBothWith(true, dst, src)
	}
}

// closeBothWith closes dst and src; with reset, with SO_LINGER 0 first,
// so that each peer gets a reset, as a direct connection that broke
// would give it.
func closeBothWith(reset bool, dst, src net.Conn) {
	for _, c := range [...]net.Conn{dst, src} {
		if l, ok := c.(interface{ SetLinger(int) error }); ok && reset {
			_ = l.SetLinger(0)
		}
		_ = c.Close()
	}
}

// pipe moves src→dst with read(2) and write(2) through a buffer of its
// own, until src ends or either side fails. The goroutine relay serves
// what the epoll relay does not take (another OS, a client whose early
// bytes egressd still holds, two sockets it could not register), so it is
// not splice: Go's splice stops at TCP urgent data as at the end of the
// stream, or waits there, where read(2) with SO_OOBINLINE (inlineUrgent)
// passes the urgent byte on as a byte of the stream. Each read has a
// deadline of a fraction of idle, so that bytes moved are noted in last at
// least that often (the tunnel's watchdog ends it once last is idle old);
// a read that times out just waits again.
func pipe(dst, src net.Conn, idle time.Duration, last *atomic.Int64) (total int64, eof bool) {
	inlineUrgent(src)
	buf := make([]byte, pipeBuffer)
	tick := max(idle/idleChecks, time.Millisecond)
	for {
		_ = src.SetReadDeadline(time.Now().Add(tick))
		n, err := src.Read(buf)
		if n > 0 {
			last.Store(monoNow())
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				err = werr
			}
		}
		switch {
		case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
			continue
		case err == io.EOF:
			closeWrite(dst)
			eof = true
		default:
			// A reset or a broken connection: tear down both sides so
			// the other direction does not wait for its own timeout, with
			// a reset, as a direct connection would end. A conn closed
			// here (the watchdog, an abort, the other direction) is a
			// clean end.
			closeBothWith(!errors.Is(err, net.ErrClosed), dst, src)
		}
		return total, eof
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
