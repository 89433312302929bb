package proxy

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestHelloRefusalKeepsIdentity: a CONNECT authenticated as ci whose
// first bytes are then refused before any rule decides them (a malformed
// hello, no hello within hello_timeout, the client gone) is logged with
// identity "ci" all the same: the user was known from the request, and a
// security team attributing refusals to proxy users must find it there.
func TestHelloRefusalKeepsIdentity(t *testing.T) {
	e := newEnv(t)
	src := strings.Replace(authPolicy(t, "ci", "s3cret"), "server { allow_private_destinations = true }",
		"server {\n  allow_private_destinations = true\n  hello_timeout = \"300ms\"\n}", 1)
	e.start(t, src)
	for _, tc := range []struct {
		reason string
		send   func(net.Conn)
	}{
		{"hello_malformed", func(c net.Conn) { c.Write([]byte{0x16, 3, 1, 0, 8, 1, 0, 0, 4, 0xff, 0xff, 0xff, 0xff}) }},
		{"hello_timeout", func(net.Conn) {}},
		{"client_closed", func(c net.Conn) { c.Close() }},
	} {
		t.Run(tc.reason, func(t *testing.T) {
			c := e.connectAs(t, "s3cret")
			c.SetDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("CONNECT as ci: %d, want 200", resp.StatusCode)
			}
			addr := c.LocalAddr().String()
			tc.send(c)
			d := e.waitLog(t, "decision", map[string]any{"client": addr, "reason": tc.reason})
			if d["decision"] != "deny" || d["identity"] != "ci" {
				t.Errorf("decision line %v: want deny with identity ci", d)
			}
		})
	}
}
