package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// connLines collects the decision lines logged for the connection whose
// local address is client, waiting for want of them and then a little
// longer for a line too many.
func (e *env) connLines(t *testing.T, client string, want int) []map[string]any {
	t.Helper()
	from := map[string]any{"client": client}
	if want > 0 {
		waitFor(t, "the connection's decision lines", func() bool {
			return e.countLines(t, "decision", from) >= want
		})
	}
	time.Sleep(300 * time.Millisecond) // a line too many would come now
	var got []map[string]any
	for _, l := range e.log.lines(t) {
		if l["message"] == "decision" && l["client"] == client {
			got = append(got, l)
		}
	}
	return got
}

// TestEmptyLineBetweenRequestsNotLogged: RFC 9112 §2.2 lets a client send
// an empty line (CRLF) before a request line, and some send one after a
// POST body; a server SHOULD ignore it. net/http does (it skips CR/LF
// after a POST, and closes silently when the connection ends in one).
// Those bytes, read while the connection was idle, marked a request
// begun (reqReading), and the close that followed logged a bad_request
// "no complete request head" line for a connection whose one request
// was answered and logged: a request that never was, and a second
// decision line for the connection. Its background reader can take the
// CR while the handler runs and leave the LF for the idle read, which
// must not count either.
func TestEmptyLineBetweenRequestsNotLogged(t *testing.T) {
	e := newEnv(t)
	e.start(t, requestLinesPolicy)
	const (
		get  = "GET http://other.example/ HTTP/1.1\r\nHost: other.example\r\n\r\n"
		post = "POST http://other.example/ HTTP/1.1\r\nHost: other.example\r\nContent-Length: 3\r\n\r\nabc"
	)
	for _, tc := range []struct {
		name      string
		req, tail string
		reset     bool
	}{
		{"CRLF after a POST body, then FIN", post, "\r\n", false},
		{"CRLF after a GET, then FIN", get, "\r\n", false},
		{"LF alone after a POST body, then FIN", post, "\n", false},
		{"two CRLF after a POST body, then FIN", post, "\r\n\r\n", false},
		{"CRLF after a POST body, then reset", post, "\r\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e.dialProxy(t)
			c.Write([]byte(tc.req))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			c.Write([]byte(tc.tail))
			time.Sleep(100 * time.Millisecond) // read by the idle connection
			client := c.LocalAddr().String()
			if tc.reset {
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			} else {
				c.(*net.TCPConn).CloseWrite()
			}
			lines := e.connLines(t, client, 1)
			if len(lines) != 1 || lines[0]["reason"] != "no_rule" {
				t.Errorf("decision lines %v, want the request's no_rule line alone:\n%s", lines, e.log.String())
			}
		})
	}
}

// TestEmptyLineBeforeRequestStillCounts: the CR/LF filter must not hide a
// request cut short after its empty line, nor a request line that came
// in the same read as CR/LF.
func TestEmptyLineBeforeRequestStillCounts(t *testing.T) {
	e := newEnv(t)
	e.start(t, requestLinesPolicy)
	const post = "POST http://other.example/ HTTP/1.1\r\nHost: other.example\r\nContent-Length: 3\r\n\r\nabc"
	c := e.dialProxy(t)
	c.Write([]byte(post))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c.Write([]byte("\r\n"))
	time.Sleep(100 * time.Millisecond)
	c.Write([]byte("\r\nCONNECT example.com:443 HTTP/1.1\r\nHo"))
	time.Sleep(100 * time.Millisecond)
	client := c.LocalAddr().String()
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	lines := e.connLines(t, client, 2)
	if len(lines) != 2 || lines[1]["reason"] != "bad_request" || lines[1]["mode"] != ModeProxy {
		t.Errorf("decision lines %v, want no_rule then a proxy bad_request:\n%s", lines, e.log.String())
	}
}

// TestOptionsAsteriskDecidedByEgressd: "OPTIONS * HTTP/1.1" went to
// net/http's own general OPTIONS handler, never to egressd's: the client
// got 200 OK, and slotConn.Write, seeing net/http write before any
// handler, logged a proxy deny "refused by the HTTP parser: HTTP/1.1 200
// OK" (with Expect: 100-continue and a body, "HTTP/1.1 100 Continue").
// egressd's handler must get it, as any request not in absolute form:
// 400, one mode http bad_request line.
func TestOptionsAsteriskDecidedByEgressd(t *testing.T) {
	e := newEnv(t)
	e.start(t, requestLinesPolicy)
	for _, tc := range []struct{ name, req string }{
		{"plain", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"100-continue", "OPTIONS * HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e.dialProxy(t)
			c.Write([]byte(tc.req))
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusContinue {
				if resp, err = http.ReadResponse(br, nil); err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			}
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("answer %s, want 400", resp.Status)
			}
			c.(*net.TCPConn).CloseWrite()
			lines := e.connLines(t, c.LocalAddr().String(), 1)
			if len(lines) != 1 || lines[0]["reason"] != "bad_request" || lines[0]["mode"] != ModeHTTP {
				t.Errorf("decision lines %v, want one http bad_request:\n%s", lines, e.log.String())
			}
		})
	}
}

// TestEmptyLineDuringRequestNotLogged: an empty line a client sends after
// a POST body while egressd still relays the request is split by
// net/http: its background reader takes the CR as the request runs, the
// Peek that waits for the next request reads the LF. That LF marked a
// request begun, and the client's close after the response logged a
// bad_request line beside the request's own.
func TestEmptyLineDuringRequestNotLogged(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		time.Sleep(300 * time.Millisecond) // the client's CRLF comes now
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	e := newEnv(t)
	e.start(t, plainConfig(up))
	c, br := e.plainRequest(t, up, "POST http://UP/ HTTP/1.1\r\nHost: UP\r\nContent-Length: 3\r\n\r\nabc")
	time.Sleep(100 * time.Millisecond)
	c.Write([]byte("\r\n"))
	if resp, body := response(t, br); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("answer %s %q, want 200 ok", resp.Status, body)
	}
	time.Sleep(100 * time.Millisecond)
	c.(*net.TCPConn).CloseWrite()
	lines := e.connLines(t, c.LocalAddr().String(), 1)
	if len(lines) != 1 || lines[0]["reason"] != "allowed" {
		t.Errorf("decision lines %v, want the request's allowed line alone:\n%s", lines, e.log.String())
	}
}
