//go:build linux

package proxy

import (
	"fmt"
	"net"
	"testing"
	"time"
)

// TestShutdownCutsPlainDial: a plain request still dialing when the grace
// ends is cut at once, whether or not net/http is reading its connection
// (it is not while the request's body is unread), and logged
// client_closed.
func TestShutdownCutsPlainDial(t *testing.T) {
	for _, body := range []bool{false, true} {
		t.Run(fmt.Sprint("body=", body), func(t *testing.T) {
			e := newEnv(t)
			port := int(fullBacklog(t).Port())
			e.start(t, fmt.Sprintf(`
server {
  allow_private_destinations = true
  dial_timeout               = "4s"
}
policy "p" {
  allow "x" {
    cidrs       = ["127.0.0.1/32"]
    ports       = [%d]
    require_tls = false
  }
}
`, port))
			c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if body {
				fmt.Fprintf(c, "POST http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n", port)
			} else {
				fmt.Fprintf(c, "GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n", port)
			}
			time.Sleep(300 * time.Millisecond) // in the dial
			e.shutdownCutting(t)
			d := e.clientDecision(t, c, map[string]any{"mode": "http"})
			if d["reason"] != "client_closed" || d["detail"] != "closed by shutdown" {
				t.Errorf("decision %v, want client_closed, closed by shutdown", d)
			}
		})
	}
}
