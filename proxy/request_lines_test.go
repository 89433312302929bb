package proxy

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"testing"
	"time"
)

const requestLinesPolicy = `
policy "p" {
  allow "a" {
    hosts = ["example.com"]
    ports = [443]
  }
}
`

// TestKeepAliveRefusedRequestLogged: a request net/http refuses itself
// gets its bad_request line on a keep-alive connection too, not only as
// a connection's first request. net/http reports StateActive after
// readRequest only when that read bytes off the wire or parsed a head;
// the next request of a keep-alive connection is usually read whole by
// the Peek that wakes the idle connection (a pipelined one is in the
// buffer already), so one the parser refuses (malformed request line,
// unknown version, unknown transfer coding) never became active and
// slotConn.Write let the 400, 505 or 501 go out unlogged. Requests
// egressd handles, an Expect: 100-continue among them, keep their one
// line each.
func TestKeepAliveRefusedRequestLogged(t *testing.T) {
	e := newEnv(t)
	e.start(t, requestLinesPolicy)
	const denied = "GET http://other.example/ HTTP/1.1\r\nHost: other.example\r\n\r\n"
	for _, tc := range []struct {
		name    string
		send    []string // written apart, 100 ms between
		answers []int
		reasons []string // decision lines from the connection, in order
	}{
		{"malformed after a request", []string{denied, "GARBAGE\r\n\r\n"}, []int{403, 400}, []string{"no_rule", "bad_request"}},
		{"no Host after a request", []string{denied, "GET http://other.example/ HTTP/1.1\r\n\r\n"}, []int{403, 400}, []string{"no_rule", "bad_request"}},
		{"unknown version after a request", []string{denied, "GET http://other.example/ HTTP/9.9\r\nHost: x\r\n\r\n"}, []int{403, 505}, []string{"no_rule", "bad_request"}},
		{"unknown transfer coding after a request", []string{denied, "POST http://other.example/ HTTP/1.1\r\nHost: other.example\r\nTransfer-Encoding: gzip\r\n\r\n"}, []int{403, 501}, []string{"no_rule", "bad_request"}},
		{"malformed pipelined", []string{denied + "GARBAGE\r\n\r\n"}, []int{403, 400}, []string{"no_rule", "bad_request"}},
		{"two requests", []string{denied, denied}, []int{403, 403}, []string{"no_rule", "no_rule"}},
		{"expect 100-continue", []string{"POST http://other.example/ HTTP/1.1\r\nHost: other.example\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", "abc"}, []int{403}, []string{"no_rule"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e.dialProxy(t)
			for i, s := range tc.send {
				if i > 0 {
					time.Sleep(100 * time.Millisecond)
				}
				c.Write([]byte(s))
			}
			br := bufio.NewReader(c)
			var got []int
			for range tc.answers {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("answers %v, then: %v", got, err)
				}
				resp.Body.Close()
				got = append(got, resp.StatusCode)
			}
			c.(*net.TCPConn).CloseWrite()
			for i, want := range tc.answers {
				if got[i] != want {
					t.Errorf("answers %v, want %v", got, tc.answers)
					break
				}
			}
			from := map[string]any{"client": c.LocalAddr().String()}
			waitFor(t, "the connection's decision lines", func() bool {
				return e.countLines(t, "decision", from) >= len(tc.reasons)
			})
			time.Sleep(100 * time.Millisecond) // a line too many would come now
			var reasons []string
			for _, l := range e.log.lines(t) {
				if l["message"] == "decision" && l["client"] == from["client"] {
					reasons = append(reasons, l["reason"].(string))
				}
			}
			if len(reasons) != len(tc.reasons) {
				t.Fatalf("decision lines %q, want %q:\n%s", reasons, tc.reasons, e.log.String())
			}
			for i := range reasons {
				if reasons[i] != tc.reasons[i] {
					t.Errorf("decision lines %q, want %q", reasons, tc.reasons)
				}
			}
		})
	}
}

// TestRequestReadAtShutdownLogged: net/http drops, unanswered, a request
// whose head it completes once Shutdown began. Its line must say so
// (shutting_down, as a CONNECT then gets), not that its head was cut
// short (bad_request), which it was not.
func TestRequestReadAtShutdownLogged(t *testing.T) {
	e := newEnv(t)
	e.start(t, requestLinesPolicy)
	c := e.dialProxy(t)
	c.Write([]byte("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"))
	time.Sleep(100 * time.Millisecond) // read by net/http: the connection is active
	done := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
		close(done)
	}()
	waitFor(t, "the proxy port to close", func() bool {
		p, err := net.DialTimeout("tcp", e.proxyAddr, time.Second)
		if err == nil {
			p.Close()
		}
		return err != nil
	})
	c.Write([]byte("\r\n")) // the head is complete now
	<-done
	l := e.waitLog(t, "decision", map[string]any{"client": c.LocalAddr().String()})
	if l["reason"] != "shutting_down" {
		t.Errorf("line %v: reason %v, want shutting_down", l, l["reason"])
	}
}

// TestKeepAliveCutShortLogged: a keep-alive connection's next request
// whose head is cut short (here by a reset) gets its bad_request line,
// as a first request's does: the bytes read by the Peek that woke the
// idle connection did not make it active.
func TestKeepAliveCutShortLogged(t *testing.T) {
	e := newEnv(t)
	e.start(t, requestLinesPolicy)
	c := e.dialProxy(t)
	c.Write([]byte("GET http://other.example/ HTTP/1.1\r\nHost: other.example\r\n\r\n"))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c.Write([]byte("CONNECT example.com:443 HTTP/1.1\r\nHo"))
	time.Sleep(100 * time.Millisecond)
	c.(*net.TCPConn).SetLinger(0)
	client := c.LocalAddr().String()
	c.Close()
	e.waitLog(t, "decision", map[string]any{"client": client, "mode": ModeProxy, "reason": "bad_request"})
	time.Sleep(50 * time.Millisecond)
	if n := e.countLines(t, "decision", map[string]any{"client": client}); n != 2 {
		t.Errorf("%d decision lines from the connection, want 2:\n%s", n, e.log.String())
	}
}
