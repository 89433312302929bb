//go:build linux

package proxy

import (
	"bytes"
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
