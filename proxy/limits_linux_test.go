//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// TestUnreadAnswersBounded: a client that pipelines refused requests and
// never reads the answers fills its socket buffers; the answer that then
// cannot be written ends its connection after statusWriteTimeout (the
// write would otherwise wait forever), freeing the goroutine and slot.
func TestUnreadAnswersBounded(t *testing.T) {
	e := newEnv(t)
	e.start(t, limitConfig("max_connections = 8"))
	c, err := smallRcvbuf.Dial("tcp", e.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	batch := bytes.Repeat([]byte("GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n"), 64)
	start := time.Now()
	for i := 0; i < 10000 && time.Since(start) < 20*time.Second; i++ {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(batch); err != nil {
			break // egressd stopped reading: it is stuck writing an answer
		}
	}
	if time.Since(start) >= 20*time.Second {
		t.Fatal("egressd kept reading requests for 20 s: its answers never filled the buffers")
	}
	if !eventuallyWithin(statusWriteTimeout+5*time.Second, func() bool {
		return e.srv.limits.open() == 0 && blockedIn("net/http.(*conn).serve", "poll.(*FD).Write") == 0
	}) {
		t.Fatalf("%v after the client stopped reading: %d slots taken, %d goroutines serving a proxy connection blocked in a write",
			statusWriteTimeout+5*time.Second, e.srv.limits.open(), blockedIn("net/http.(*conn).serve", "poll.(*FD).Write"))
	}
}

// TestConnectTunnelsTakeTheEpollRelay: the proxy port's connections carry
// their slot in a wrapper; a CONNECT tunnel must still reach the epoll
// relay with the bare socket, whether its hello came after the 200 or
// together with the CONNECT (pipelined, through prefixConn).
func TestConnectTunnelsTakeTheEpollRelay(t *testing.T) {
	e := newEnv(t)
	e.start(t, limitConfig("max_connections = 8"))
	authority := "127.0.0.1:" + strconv.Itoa(e.echoPort)
	for _, pipelined := range []bool{false, true} {
		before := relayTunnels.Load()
		c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		req := "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\n\r\n"
		if pipelined {
			req += "ping"
		}
		io.WriteString(c, req)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("pipelined %v: CONNECT: %v %v", pipelined, resp, err)
		}
		if !pipelined {
			io.WriteString(c, "ping")
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping" {
			t.Fatalf("pipelined %v: echo %q %v", pipelined, got, err)
		}
		if n := relayTunnels.Load() - before; n != 1 {
			t.Errorf("pipelined %v: %d tunnels taken by the epoll relay, want 1", pipelined, n)
		}
		c.Close()
	}
}
