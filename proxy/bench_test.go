package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sni"
)

// BenchmarkDecisionLog: one decision line and one close line for a CONNECT
// tunnel with a parsed ClientHello, as written for every connection
// (metrics included), to a discarding writer.
func BenchmarkDecisionLog(b *testing.B) {
	s := &Server{log: zerolog.New(io.Discard).With().Timestamp().Logger(), metrics: newMetrics(nil)}
	var h sni.Hello
	if _, err := sni.ParseRecords(clientHelloBytes("allowed.egress.test"), &h); err != nil {
		b.Fatal(err)
	}
	c := &conn{id: 1, mode: ModeConnect, start: time.Now(), client: netip.MustParseAddrPort("10.1.2.3:40000"),
		host: "allowed.egress.test", port: 443, dst: netip.MustParseAddrPort("192.0.2.7:443"), helloWait: time.Millisecond}
	c.fingerprint(&h, false)
	c.decision = policy.Decision{Allow: true, Reason: policy.ReasonAllowed, Policy: "web", Rule: "allowed", Identity: "cidr:web"}
	b.ReportAllocs()
	for b.Loop() {
		s.logDecision(c)
		s.logClose(c, 1000, 2000)
	}
}

// BenchmarkConnectTunnel: one whole CONNECT tunnel on loopback, as the
// egressd-bench connection-rate workers drive it but without TLS crypto:
// dial egressd, CONNECT by name, read the 200, send a ClientHello, read it
// back from an echo upstream, half-close and read to the end. egressd
// parses the request and the hello, decides, resolves (cached), dials,
// relays and writes its two log lines (to a discarding writer). The time
// and allocations are the whole process's: the client's and the echo
// upstream's are in them too.
func BenchmarkConnectTunnel(b *testing.B) {
	e := newEnv(b)
	e.startLogger(b, `
server {
  allow_private_destinations = true
}
resolver { servers = ["DNS_ADDR"] }
policy "bench" {
  allow "echo" {
    hosts = ["echo.egress.test"]
    ports = [ECHO_PORT]
  }
}
`, zerolog.New(io.Discard).With().Timestamp().Logger())
	req := []byte(fmt.Sprintf("CONNECT echo.egress.test:%d HTTP/1.1\r\nHost: echo.egress.test:%d\r\n\r\n", e.echoPort, e.echoPort))
	hello := clientHelloBytes("echo.egress.test")
	buf := make([]byte, 4096)
	once := func() error {
		c, err := net.Dial("tcp", e.proxyAddr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(req); err != nil {
			return err
		}
		n := 0
		for !bytes.Contains(buf[:n], []byte("\r\n\r\n")) {
			m, err := c.Read(buf[n:])
			if err != nil {
				return fmt.Errorf("reading the CONNECT answer: %v", err)
			}
			n += m
		}
		if !bytes.HasPrefix(buf[:n], []byte("HTTP/1.1 200")) {
			return fmt.Errorf("CONNECT answered %q", buf[:n])
		}
		if _, err := c.Write(hello); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, buf[:len(hello)]); err != nil {
			return fmt.Errorf("reading the echoed hello: %v", err)
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		if m, err := c.Read(buf); err != io.EOF {
			return fmt.Errorf("after the half-close: %d bytes, %v; want the end", m, err)
		}
		return nil
	}
	if err := once(); err != nil { // warms the resolver's cache
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := once(); err != nil {
			b.Fatal(err)
		}
	}
}
