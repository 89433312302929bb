package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"weak"

	"github.com/rs/zerolog"
)

// relayed is a tunnel through startRelay: work is the workload's end,
// dest the destination's end.
type relayed struct {
	work, dest *net.TCPConn
	client, up *net.TCPConn // egressd's ends, handed to startRelay
	abort      func()
	done       chan [2]int64
}

func startRelayed(t testing.TB, idle time.Duration, epoll ...bool) *relayed {
	t.Helper()
	work, client := tcpPair(t)
	up, dest := tcpPair(t)
	r := &relayed{work: work, dest: dest, client: client, up: up, done: make(chan [2]int64, 1)}
	before := relayTunnels.Load()
	r.abort = startRelay(client, up, idle, func(u, d int64) {
		client.Close()
		up.Close()
		r.done <- [2]int64{u, d}
	})
	if want := len(epoll) == 0 || epoll[0]; (relayTunnels.Load() != before) != want {
		t.Fatalf("two *net.TCPConn relayed by the epoll relay: %v, want %v", !want, want)
	}
	return r
}

func (r *relayed) wait(t testing.TB) [2]int64 {
	t.Helper()
	select {
	case n := <-r.done:
		return n
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not end within 10s")
		return [2]int64{}
	}
}

// TestEpollRelayTakesSocketsOver: the relay works on descriptors of its
// own, so the two conns handed to it are closed at once (their poll
// descriptors and heap objects freed while the tunnel idles), bytes still
// flow both ways, and teardown closes the sockets themselves.
func TestEpollRelayTakesSocketsOver(t *testing.T) {
	r := startRelayed(t, time.Minute)
	for _, c := range []*net.TCPConn{r.client, r.up} {
		if err := c.SetDeadline(time.Time{}); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("conn handed to the relay: SetDeadline = %v, want net.ErrClosed", err)
		}
	}
	echo := func(from, to *net.TCPConn, msg string) {
		t.Helper()
		if _, err := from.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		to.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(to, got); err != nil || string(got) != msg {
			t.Fatalf("%q arrived as %q, %v", msg, got, err)
		}
	}
	echo(r.work, r.dest, "up")
	echo(r.dest, r.work, "down")
	r.abort()
	if n := r.wait(t); n != [2]int64{2, 4} {
		t.Errorf("done counted %v, want [2 4]", n)
	}
	for _, c := range []*net.TCPConn{r.work, r.dest} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("after teardown, a peer's read = %v, want EOF or reset", err)
		}
	}
}

// TestEpollRelayBothWays: 8 MiB each way at once, then half-closes in
// both orders; every byte arrives in order and done counts them.
func TestEpollRelayBothWays(t *testing.T) {
	for _, name := range []string{"work closes first", "dest closes first"} {
		t.Run(name, func(t *testing.T) {
			r := startRelayed(t, time.Minute)
			up, down := make([]byte, 8<<20), make([]byte, 8<<20)
			rand.Read(up)
			rand.Read(down)
			send := func(c *net.TCPConn, p []byte, delay time.Duration) {
				time.Sleep(delay)
				c.Write(p)
				c.CloseWrite()
			}
			wd, dd := time.Duration(0), 50*time.Millisecond
			if name == "dest closes first" {
				wd, dd = dd, wd
			}
			go send(r.work, up, wd)
			go send(r.dest, down, dd)
			gotDown := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(r.work)
				gotDown <- b
			}()
			gotUp, _ := io.ReadAll(r.dest)
			if !bytes.Equal(gotUp, up) {
				t.Errorf("upstream got %d bytes, want the %d sent, in order", len(gotUp), len(up))
			}
			if b := <-gotDown; !bytes.Equal(b, down) {
				t.Errorf("workload got %d bytes, want the %d sent, in order", len(b), len(down))
			}
			if n := r.wait(t); n != [2]int64{int64(len(up)), int64(len(down))} {
				t.Errorf("done(%d, %d), want (%d, %d)", n[0], n[1], len(up), len(down))
			}
		})
	}
}

// TestEpollRelayResponseAfterHalfClose: the workload sends a request and
// half-closes; the destination answers after that and closes. The
// destination's socket then reports a hang-up with the answer still
// queued: all of it must reach the workload.
func TestEpollRelayResponseAfterHalfClose(t *testing.T) {
	r := startRelayed(t, time.Minute)
	r.work.Write([]byte("request"))
	r.work.CloseWrite()
	req, err := io.ReadAll(r.dest)
	if err != nil || string(req) != "request" {
		t.Fatalf("destination read %q, %v", req, err)
	}
	answer := bytes.Repeat([]byte("answer "), 100_000)
	r.dest.Write(answer)
	r.dest.Close()
	got, _ := io.ReadAll(r.work)
	if !bytes.Equal(got, answer) {
		t.Fatalf("workload got %d bytes, want %d", len(got), len(answer))
	}
	if n := r.wait(t); n != [2]int64{7, int64(len(answer))} {
		t.Errorf("done%v, want [7 %d]", n, len(answer))
	}
}

// TestEpollRelayIdle: a tunnel quiet in both directions for idle ends;
// traffic in one direction keeps it open.
func TestEpollRelayIdle(t *testing.T) {
	r := startRelayed(t, 300*time.Millisecond)
	start := time.Now()
	buf := make([]byte, 1)
	var quiet time.Time
	for range 6 { // 600 ms of upstream-only traffic, every 100 ms
		time.Sleep(100 * time.Millisecond)
		r.work.Write([]byte("x"))
		if _, err := io.ReadFull(r.dest, buf); err != nil {
			t.Fatal(err)
		}
		quiet = time.Now()
	}
	select {
	case <-r.done:
		t.Fatalf("the tunnel ended after %v with traffic every 100ms", time.Since(start))
	default:
	}
	n := r.wait(t)
	if el := time.Since(quiet); el < 250*time.Millisecond || el > 3*time.Second {
		t.Errorf("idle tunnel ended %v after the last byte, want about 300ms", el)
	}
	if n != [2]int64{6, 0} {
		t.Errorf("done%v, want [6 0]", n)
	}
	r.work.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.work.Read(buf); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Error("the workload's connection is still open after the idle timeout")
	}
}

// TestEpollRelayAbortAndReset: abort ends a quiet tunnel at once; a reset
// from the destination ends it too.
func TestEpollRelayAbortAndReset(t *testing.T) {
	r := startRelayed(t, time.Minute)
	r.abort()
	r.wait(t)
	r.work.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.work.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("after abort the workload reads %v, want the end", err)
	}

	r = startRelayed(t, time.Minute)
	r.dest.SetLinger(0)
	r.dest.Close() // RST
	r.wait(t)
}

// TestRelayResetAfterFIN: a peer that half-closes and then resets ends
// the tunnel at once, not at its idle timeout: its direction is over, so
// no read meets the reset, and the other way has nothing to write to it.
// Both relays: the epoll relay, and the goroutine relay it falls back to.
func TestRelayResetAfterFIN(t *testing.T) {
	for _, relay := range []string{"epoll", "goroutines"} {
		for _, tc := range []struct {
			name string
			end  func(r *relayed) (resets, peer *net.TCPConn)
		}{
			{"the workload", func(r *relayed) (*net.TCPConn, *net.TCPConn) { return r.work, r.dest }},
			{"the destination", func(r *relayed) (*net.TCPConn, *net.TCPConn) { return r.dest, r.work }},
		} {
			t.Run(relay+"/"+tc.name, func(t *testing.T) {
				if relay == "goroutines" {
					noEpollWatches(t)
				}
				r := startRelayed(t, time.Minute, relay == "epoll")
				c, peer := tc.end(r)
				c.Write([]byte("x"))
				c.CloseWrite()
				peer.SetReadDeadline(time.Now().Add(5 * time.Second))
				if b, err := io.ReadAll(peer); err != nil || string(b) != "x" {
					t.Fatalf("the other end read %q, %v; want x and the FIN", b, err)
				}
				c.SetLinger(0)
				c.Close() // RST
				r.wait(t)
			})
		}
	}
}

// TestRelayResetPassedOn: a peer's reset reaches the other peer as a
// reset, after the bytes that came before it, not as a clean end: a
// reader until the end would take the cut stream for a whole one. Both
// relays: the epoll relay, and the goroutine relay it falls back to when
// a socket cannot join its epoll set.
func TestRelayResetPassedOn(t *testing.T) {
	for _, relay := range []string{"epoll", "goroutines"} {
		for _, from := range []string{"destination", "workload"} {
			t.Run(relay+"/"+from, func(t *testing.T) {
				if relay == "goroutines" {
					noEpollWatches(t)
				}
				r := startRelayed(t, time.Minute, relay == "epoll")
				resets, peer := r.dest, r.work
				if from == "workload" {
					resets, peer = r.work, r.dest
				}
				resets.Write([]byte("partial"))
				got := make([]byte, len("partial"))
				peer.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(peer, got); err != nil {
					t.Fatalf("before the reset: %q, %v", got, err)
				}
				resets.SetLinger(0)
				resets.Close()
				_, err := peer.Read(make([]byte, 1))
				if !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("after the %s's reset, the other end read %v, want ECONNRESET", from, err)
				}
				r.wait(t)
			})
		}
	}
}

// TestRelayCleanEndsStayClean: a tunnel the relay itself ends (its idle
// timeout, an abort) ends with a FIN for both peers, not a reset: only a
// peer's error is passed on as one (TestRelayResetPassedOn). 20 rounds
// each, since in the goroutine relay the order in which the two
// directions see the close varies.
func TestRelayCleanEndsStayClean(t *testing.T) {
	for _, relay := range []string{"epoll", "goroutines"} {
		for _, end := range []string{"idle", "abort"} {
			t.Run(relay+"/"+end, func(t *testing.T) {
				if relay == "goroutines" {
					noEpollWatches(t)
				}
				idle := time.Minute
				if end == "idle" {
					idle = 20 * time.Millisecond
				}
				for range 20 {
					r := startRelayed(t, idle, relay == "epoll")
					if end == "abort" {
						time.Sleep(5 * time.Millisecond)
						r.abort()
					}
					r.wait(t)
					for _, c := range []*net.TCPConn{r.work, r.dest} {
						c.SetReadDeadline(time.Now().Add(2 * time.Second))
						if _, err := c.Read(make([]byte, 1)); err != io.EOF {
							t.Fatalf("a peer read %v after the tunnel's %s, want EOF", err, end)
						}
					}
				}
			})
		}
	}
}

// TestEpollRelayIdleHoldsNoGoroutine: 200 quiet tunnels hold no
// goroutines (the goroutine relay held two each).
func TestEpollRelayIdleHoldsNoGoroutine(t *testing.T) {
	base := runtime.NumGoroutine()
	rs := make([]*relayed, 200)
	for i := range rs {
		rs[i] = startRelayed(t, time.Minute)
		rs[i].work.Write([]byte("hello"))
	}
	for _, r := range rs {
		if _, err := io.ReadFull(r.dest, make([]byte, 5)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine() - base
		if n <= 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("200 idle tunnels hold %d goroutines", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, r := range rs {
		r.abort()
		r.wait(t)
	}
}

// BenchmarkEpollRelayRoundTrip: one byte each way through an established
// tunnel per op (the relay's per-message path: event, splice in, splice
// out); allocs/op shows that relaying a message allocates nothing.
func BenchmarkEpollRelayRoundTrip(b *testing.B) {
	r := startRelayed(b, time.Minute)
	var buf [1]byte
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := r.work.Write(buf[:]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(r.dest, buf[:]); err != nil {
			b.Fatal(err)
		}
		if _, err := r.dest.Write(buf[:]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(r.work, buf[:]); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	r.abort()
	r.wait(b)
}

// TestEpollRelayRegistrationFails: when the destination's socket cannot
// join the epoll set (ENOSPC past fs.epoll.max_user_watches), startRelay
// undoes the client's registration, leaves both conns untouched and relays
// them with goroutines; the epoll set keeps no entry for either socket,
// and the next tunnel takes the epoll relay again.
func TestEpollRelayRegistrationFails(t *testing.T) {
	work, client := tcpPair(t)
	up, dest := tcpPair(t)
	upIno := inode(t, up)
	orig := epollAdd
	t.Cleanup(func() { epollAdd = orig })
	epollAdd = func(epfd, fd int, ev *syscall.EpollEvent) error {
		var st syscall.Stat_t
		if syscall.Fstat(fd, &st) == nil && st.Ino == upIno {
			return syscall.ENOSPC // only this test's destination socket
		}
		return orig(epfd, fd, ev)
	}
	before := relayTunnels.Load()
	done := make(chan [2]int64, 1)
	startRelay(client, up, time.Minute, func(u, d int64) {
		client.Close()
		up.Close()
		done <- [2]int64{u, d}
	})
	if relayTunnels.Load() != before {
		t.Fatal("the epoll relay counted a tunnel whose registration failed")
	}
	registered := epollInodes(t)
	for _, c := range []*net.TCPConn{client, up} {
		if registered[inode(t, c)] {
			t.Errorf("socket %v is still in the relay's epoll set after the undo", c.LocalAddr())
		}
	}
	for _, m := range []struct {
		from, to *net.TCPConn
		msg      string
	}{{work, dest, "up"}, {dest, work, "down"}} {
		if _, err := m.from.Write([]byte(m.msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(m.msg))
		m.to.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(m.to, got); err != nil || string(got) != m.msg {
			t.Fatalf("through the goroutine relay, %q arrived as %q, %v", m.msg, got, err)
		}
	}
	work.CloseWrite()
	dest.CloseWrite()
	select {
	case n := <-done:
		if n != [2]int64{2, 4} {
			t.Errorf("done counted %v, want [2 4]", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the goroutine relay did not end within 10s of both half-closes")
	}
	epollAdd = orig
	_, client2 := tcpPair(t)
	up2, _ := tcpPair(t)
	inos := []uint64{inode(t, client2), inode(t, up2)}
	done2 := make(chan struct{})
	abort := startRelay(client2, up2, time.Minute, func(int64, int64) { close(done2) })
	if relayTunnels.Load() != before+1 {
		t.Fatal("the next tunnel did not take the epoll relay")
	}
	registered = epollInodes(t)
	for _, ino := range inos {
		if !registered[ino] {
			t.Errorf("a relayed socket (inode %d) is not in the epoll set %v: fdinfo not read right", ino, registered)
		}
	}
	abort()
	select {
	case <-done2:
	case <-time.After(10 * time.Second):
		t.Fatal("the aborted tunnel did not end within 10s")
	}
}

// inode is the socket inode of c's descriptor (shared by its duplicates).
func inode(t *testing.T, c *net.TCPConn) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.Fstat(int(fd), &st) }); err != nil || serr != nil {
		t.Fatalf("fstat: %v %v", err, serr)
	}
	return st.Ino
}

// epollInodes reads the relay's epoll set from /proc/self/fdinfo: the
// inodes of the files registered in it.
func epollInodes(t *testing.T) map[uint64]bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", getRelay().epfd))
	if err != nil {
		t.Fatal(err)
	}
	inos := map[uint64]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		// tfd:        9 events: 8000201d data: ... pos:0 ino:2a1b sdev:8
		if !strings.HasPrefix(line, "tfd:") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if h, ok := strings.CutPrefix(f, "ino:"); ok {
				ino, err := strconv.ParseUint(h, 16, 64)
				if err != nil {
					t.Fatalf("fdinfo line %q: %v", line, err)
				}
				inos[ino] = true
			}
		}
	}
	return inos
}

// recordingListener keeps a weak pointer to every connection it accepts.
type recordingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []weak.Pointer[net.TCPConn]
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		l.mu.Lock()
		l.conns = append(l.conns, weak.Make(tc))
		l.mu.Unlock()
	}
	return c, err
}

// TestIdleTunnelKeepsNoConns: once the epoll relay has taken a tunnel's
// sockets over, nothing in egressd keeps either *net.TCPConn (the
// accepted client, the dialed upstream) or what hangs off it (poll and
// netFD state, addresses): an idle tunnel costs only the relay's state.
func TestIdleTunnelKeepsNoConns(t *testing.T) {
	e := newEnv(t)
	rl := &recordingListener{}
	e.wrapListener = func(ln net.Listener) net.Listener { rl.Listener = ln; return rl }
	e.start(t, baseConfig)
	var dialed []weak.Pointer[net.TCPConn]
	var mu sync.Mutex
	e.srv.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := e.srv.dialer.DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			mu.Lock()
			dialed = append(dialed, weak.Make(tc))
			mu.Unlock()
		}
		return c, err
	}
	before := relayTunnels.Load()
	const n = 3
	for range n {
		c, br, resp := e.connect(t, "127.0.0.1:"+strconv.Itoa(e.echoPort))
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		c.Write([]byte("x"))
		if b, err := br.ReadByte(); err != nil || b != 'x' {
			t.Fatalf("echo: %q %v", b, err)
		}
	}
	if got := relayTunnels.Load() - before; got != n {
		t.Fatalf("the epoll relay took %d tunnels, want %d", got, n)
	}
	live := func() (clients, ups int) {
		runtime.GC()
		rl.mu.Lock()
		defer rl.mu.Unlock()
		mu.Lock()
		defer mu.Unlock()
		for _, w := range rl.conns {
			if w.Value() != nil {
				clients++
			}
		}
		for _, w := range dialed {
			if w.Value() != nil {
				ups++
			}
		}
		return clients, ups
	}
	rl.mu.Lock()
	mu.Lock()
	accepted, dials := len(rl.conns), len(dialed)
	mu.Unlock()
	rl.mu.Unlock()
	if accepted != n || dials != n {
		t.Fatalf("recorded %d accepted and %d dialed conns, want %d each", accepted, dials, n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		clients, ups := live()
		if clients == 0 && ups == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d idle tunnels still keep %d client and %d upstream *net.TCPConn", n, clients, ups)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkIdleTunnelHeap: the live heap an idle relayed tunnel keeps,
// reported as live-B/tunnel: each op opens idleTunnels tunnels (CONNECT,
// a byte echoed, left open), measures the heap after a GC, and closes
// them. The test's own client conns (about 650 B each) are counted in it
// too.
func BenchmarkIdleTunnelHeap(b *testing.B) {
	const idleTunnels = 500 // 5 descriptors each in this process; RLIMIT_NOFILE may be 20,000
	e := newEnv(b)
	e.startLogger(b, `
server {
  allow_private_destinations = true
}
policy "bench" {
  allow "echo" {
    cidrs       = ["127.0.0.1/32"]
    ports       = [ECHO_PORT]
    require_tls = false
  }
}
`, zerolog.New(io.Discard).With().Timestamp().Logger())
	authority := "127.0.0.1:" + strconv.Itoa(e.echoPort)
	heap := func() uint64 {
		time.Sleep(100 * time.Millisecond) // handler goroutines end, closed tunnels' lines are written
		return heapAlloc()
	}
	var perTunnel float64
	conns := make([]net.Conn, 0, idleTunnels)
	for b.Loop() {
		h0 := heap()
		for range idleTunnels {
			c, br, resp, err := dialConnect(e.proxyAddr, "", authority)
			if err != nil || resp.StatusCode != 200 {
				b.Fatalf("CONNECT: %v %v", resp, err)
			}
			conns = append(conns, c)
			if _, err := c.Write([]byte("x")); err != nil {
				b.Fatal(err)
			}
			if _, err := br.ReadByte(); err != nil {
				b.Fatal(err)
			}
		}
		perTunnel += float64(int64(heap())-int64(h0)) / idleTunnels
		for _, c := range conns {
			c.Close()
		}
		conns = conns[:0]
	}
	b.ReportMetric(perTunnel/float64(b.N), "live-B/tunnel")
}

// TestConnectUrgentByteFirst: a client's TCP urgent byte among its first
// bytes, which egressd reads before it decides (a require_tls = false
// rule), reaches the destination in the stream: the socket was accepted
// with SO_OOBINLINE (Listen). Without it a read at the urgent mark skips
// the byte, and the hello phase's first read is at the mark when the byte
// comes first.
func TestConnectUrgentByteFirst(t *testing.T) {
	e := newEnv(t)
	e.wrapListener = func(ln net.Listener) net.Listener {
		ln.Close()
		pl, err := Listen("127.0.0.1:0") // egressd's own listener
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pl.Close() })
		return pl
	}
	e.start(t, baseConfig)
	target := "127.0.0.1:" + strconv.Itoa(e.echoPort)
	for _, before := range []string{"", "before "} {
		c := e.dialProxy(t)
		// The CONNECT and the first bytes in one go, the urgent byte
		// among them: all of it is there before egressd reads the head.
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n%s", target, target, before)
		sendUrgent(t, c.(*net.TCPConn), "!")
		c.Write([]byte(" after"))
		c.(*net.TCPConn).CloseWrite()
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT %s: %v %v", target, resp, err)
		}
		got, err := io.ReadAll(br)
		if want := before + "! after"; err != nil || string(got) != want {
			t.Errorf("the destination echoed %q (%v), want %q", got, err, want)
		}
	}
}

// sendUrgent sends b on c as TCP urgent data (MSG_OOB).
func sendUrgent(t *testing.T, c *net.TCPConn, b string) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if cerr := rc.Control(func(fd uintptr) { err = syscall.Sendto(int(fd), []byte(b), syscall.MSG_OOB, nil) }); cerr != nil || err != nil {
		t.Fatalf("sending urgent data: %v %v", cerr, err)
	}
}

// noEpollWatches has the epoll relay's registrations fail (ENOSPC: no
// watch left) until the test ends, so that tunnels go to its goroutine
// fallback.
func noEpollWatches(t *testing.T) {
	orig := epollAdd
	t.Cleanup(func() { epollAdd = orig })
	epollAdd = func(int, int, *syscall.EpollEvent) error { return syscall.ENOSPC }
}

// TestRelayUrgentData: TCP urgent data (MSG_OOB: telnet's and FTP's
// interrupts) neither stalls nor ends a tunnel, with or without a FIN
// after it. splice stops at the urgent mark for good, so the epoll relay
// steps over it with recv; the goroutine relay it falls back to reads
// with read(2). The urgent byte goes on inline, before the bytes sent
// after it.
func TestRelayUrgentData(t *testing.T) {
	for _, relay := range []string{"epoll", "goroutines"} {
		for _, tc := range []struct {
			pause bool // the urgent byte arrives alone, before the rest
			fin   bool // the rest is followed by a FIN
		}{{true, true}, {false, true}, {true, false}} {
			t.Run(fmt.Sprintf("%s/pause=%v/fin=%v", relay, tc.pause, tc.fin), func(t *testing.T) {
				work, client := tcpPair(t)
				up, dest := tcpPair(t)
				if relay == "goroutines" { // the fallback for sockets the epoll relay cannot take
					noEpollWatches(t)
				}
				startRelay(client, up, time.Minute, func(int64, int64) { client.Close(); up.Close() })
				work.Write([]byte("before "))
				sendUrgent(t, work, "!")
				if tc.pause {
					time.Sleep(50 * time.Millisecond)
				}
				work.Write([]byte(" after"))
				const want = "before ! after"
				got := make([]byte, len(want))
				dest.SetReadDeadline(time.Now().Add(2 * time.Second)) // the tunnel's idle timeout is a minute
				if tc.fin {
					work.CloseWrite()
					got, err := io.ReadAll(dest)
					if err != nil || string(got) != want {
						t.Fatalf("destination got %q, %v; want %q and the end (a stall at the urgent byte?)", got, err, want)
					}
					return
				}
				if _, err := io.ReadFull(dest, got); err != nil || string(got) != want {
					t.Errorf("destination got %q, %v; want %q at once (a stall at the urgent byte?)", got, err, want)
				}
			})
		}
	}
}
