package proxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// wrapped hides a *net.TCPConn's type (keeping CloseWrite), so startRelay
// takes the goroutine relay, as for any connection that is not a plain
// *net.TCPConn and on systems without the epoll relay.
type wrapped struct{ *net.TCPConn }

// TestGoroutineRelay: the fallback relay moves 4 MiB each way byte-exact
// with half-closes, ends a quiet tunnel after idle, and abort ends one at
// once.
func TestGoroutineRelay(t *testing.T) {
	start := func(idle time.Duration) (work, dest *net.TCPConn, abort func(), done chan [2]int64) {
		work, client := tcpPair(t)
		up, dest := tcpPair(t)
		done = make(chan [2]int64, 1)
		abort = startRelay(wrapped{client}, wrapped{up}, idle, func(u, d int64) {
			client.Close()
			up.Close()
			done <- [2]int64{u, d}
		})
		return work, dest, abort, done
	}
	wait := func(done chan [2]int64) [2]int64 {
		t.Helper()
		select {
		case n := <-done:
			return n
		case <-time.After(10 * time.Second):
			t.Fatal("the relay did not end within 10s")
			return [2]int64{}
		}
	}

	t.Run("both ways", func(t *testing.T) {
		work, dest, _, done := start(time.Minute)
		work.SetDeadline(time.Now().Add(10 * time.Second))
		dest.SetDeadline(time.Now().Add(10 * time.Second))
		up, down := make([]byte, 4<<20), make([]byte, 4<<20)
		rand.Read(up)
		rand.Read(down)
		go func() { work.Write(up); work.CloseWrite() }()
		go func() { dest.Write(down); dest.CloseWrite() }()
		gotDown := make(chan []byte, 1)
		go func() { b, _ := io.ReadAll(work); gotDown <- b }()
		if gotUp, _ := io.ReadAll(dest); !bytes.Equal(gotUp, up) {
			t.Errorf("destination got %d bytes, want the %d sent, in order", len(gotUp), len(up))
		}
		if b := <-gotDown; !bytes.Equal(b, down) {
			t.Errorf("workload got %d bytes, want the %d sent, in order", len(b), len(down))
		}
		if n := wait(done); n != [2]int64{int64(len(up)), int64(len(down))} {
			t.Errorf("done%v, want [%d %d]", n, len(up), len(down))
		}
	})
	t.Run("idle", func(t *testing.T) {
		work, _, _, done := start(200 * time.Millisecond)
		begin := time.Now()
		wait(done)
		if el := time.Since(begin); el < 150*time.Millisecond {
			t.Errorf("quiet tunnel ended after %v, want about 200ms", el)
		}
		work.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := work.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Error("the workload's connection is still open after the idle timeout")
		}
	})
	t.Run("abort", func(t *testing.T) {
		_, _, abort, done := start(time.Minute)
		abort()
		wait(done)
	})
}

// tcpPair returns both ends of a loopback TCP connection: a is the
// dialing end, b the accepted one.
func tcpPair(t testing.TB) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { d.Close(); r.c.Close() })
	return d.(*net.TCPConn), r.c.(*net.TCPConn)
}

// TestRelayingAfterForcedShutdown: a tunnel whose relay starts after
// Shutdown's grace ran out (Shutdown saw no abort yet and closed the
// client socket, which leaves the epoll set without an event) is aborted
// by relaying, not left to its idle timeout.
func TestRelayingAfterForcedShutdown(t *testing.T) {
	s := &Server{tunnels: map[*tracked]struct{}{}}
	_, client := tcpPair(t)
	up, _ := tcpPair(t)
	tr := s.track(client)
	if tr == nil {
		t.Fatal("track refused before Shutdown")
	}
	done := make(chan struct{})
	abort := startRelay(client, up, time.Minute, func(int64, int64) { s.untrack(tr); close(done) })
	time.Sleep(50 * time.Millisecond) // the relay's first step found nothing to move: idle
	// Shutdown's grace runs out now, between startRelay and relaying: it
	// finds no abort and closes the client socket.
	s.mu.Lock()
	s.closing, s.forcing = true, true
	s.mu.Unlock()
	client.Close()
	s.relaying(tr, abort)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay that started after the forced shutdown is still running")
	}
}

// TestRelayIdleWriteStall: the workload half-closes and then stops
// reading while the destination keeps sending. No byte moves after the
// socket buffers fill, with one direction ended and the other blocked in
// a write, where no read deadline reaches it: both relays must still end
// the tunnel after idle.
func TestRelayIdleWriteStall(t *testing.T) {
	for _, relay := range []string{"epoll", "goroutines"} {
		t.Run(relay, func(t *testing.T) {
			work, client := tcpPair(t)
			up, dest := tcpPair(t)
			client.SetWriteBuffer(16 << 10)
			work.SetReadBuffer(16 << 10)
			var c, u net.Conn = client, up
			if relay == "goroutines" {
				c, u = wrapped{client}, wrapped{up}
			}
			done := make(chan struct{})
			startRelay(c, u, 300*time.Millisecond, func(int64, int64) {
				client.Close()
				up.Close()
				close(done)
			})
			work.CloseWrite()
			go func() {
				buf := make([]byte, 64<<10)
				dest.SetWriteDeadline(time.Now().Add(5 * time.Second))
				for {
					if _, err := dest.Write(buf); err != nil {
						return
					}
				}
			}()
			select {
			case <-done:
			case <-time.After(4 * time.Second):
				t.Fatal("a tunnel that moved nothing for 4s (idle 300ms) did not end")
			}
		})
	}
}

// TestIdleWatch: a watch stopped in time never fires, leaves the upstream
// open and stays unfired; one left alone closes the upstream, and says it
// fired, for good, once stopped.
func TestIdleWatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		wait bool // wait for the watch to fire before stopping it
	}{{"stopped in time", false}, {"fired", true}} {
		t.Run(tc.name, func(t *testing.T) {
			up, peer := net.Pipe()
			defer peer.Close()
			w := startIdleWatch(20*time.Millisecond, func() { up.Close() })
			if tc.wait {
				peer.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := peer.Read(make([]byte, 1)); err != io.EOF {
					t.Fatalf("the upstream was not closed: %v", err)
				}
			}
			w.stop()
			time.Sleep(60 * time.Millisecond) // three idle periods
			if w.fired() != tc.wait {
				t.Errorf("fired() = %v, want %v", w.fired(), tc.wait)
			}
			if !tc.wait {
				peer.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
				if _, err := peer.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Errorf("a stopped watch closed the upstream: %v", err)
				}
			}
		})
	}
}
