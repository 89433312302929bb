package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/egressd/egressd/sni"
)

// quicALPN is the application protocol of the test QUIC echo servers.
const quicALPN = "egressd-echo"

// serveQUICEcho runs a QUIC server on pc that echoes every stream back,
// and counts the connections it accepted.
func serveQUICEcho(t *testing.T, pc net.PacketConn, cert tls.Certificate) *atomic.Int32 {
	t.Helper()
	ln, err := quic.Listen(pc, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{quicALPN, "h3"}}, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	var n atomic.Int32
	go func() {
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			n.Add(1)
			go func() {
				for {
					s, err := c.AcceptStream(context.Background())
					if err != nil {
						return
					}
					go func() {
						_, _ = io.Copy(s, s)
						_ = s.Close()
					}()
				}
			}()
		}
	}()
	return &n
}

// serveHTTP3 runs an HTTP/3 server on pc answering "h3 <sni> <path>".
func serveHTTP3(t *testing.T, pc net.PacketConn, cert tls.Certificate) {
	t.Helper()
	srv := &http3.Server{
		TLSConfig: http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}}),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "h3 %s %s", r.TLS.ServerName, r.URL.Path)
		}),
	}
	go srv.Serve(pc)
	t.Cleanup(func() { srv.Close(); pc.Close() })
}

// quicEcho opens a stream on c, sends payload, and checks that the same
// bytes come back.
func quicEcho(c *quic.Conn, payload []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		_, _ = s.Write(payload)
		_ = s.Close()
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo: got %d bytes back, want %d identical", len(got), len(payload))
	}
	return nil
}

// quicTestConfig is the client configuration of the test QUIC dials:
// handshakes that cannot complete give up after two seconds.
func quicTestConfig() *quic.Config {
	return &quic.Config{HandshakeIdleTimeout: 2 * time.Second, MaxIdleTimeout: 5 * time.Second}
}

// captureQUICHello makes one quic-go dial with tlsConf to a plain UDP
// socket and recovers the ClientHello from the datagrams it sends, the way
// a packet capture would. It returns the hello and how many datagrams it
// took.
func captureQUICHello(t *testing.T, tlsConf *tls.Config) (sni.Hello, int) {
	t.Helper()
	sink := listenUDP(t, "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	go func() {
		_, _ = quic.DialAddr(ctx, sink.LocalAddr().String(), tlsConf.Clone(), quicTestConfig())
	}()
	var q sni.QUICInitial
	var h sni.Hello
	buf := make([]byte, 65536)
	for n := 1; ; n++ {
		_ = sink.SetReadDeadline(time.Now().Add(3 * time.Second))
		k, err := sink.Read(buf)
		if err != nil {
			t.Fatalf("capturing the QUIC hello: %v", err)
		}
		err = q.Add(buf[:k], &h)
		if err == nil {
			return h, n
		}
		if !errors.Is(err, sni.ErrNeedMore) {
			t.Fatalf("captured datagram %d: %v", n, err)
		}
	}
}

// longALPN is an ALPN list long enough to push a ClientHello past one
// Initial packet even without a post-quantum key share.
func longALPN() []string {
	out := []string{quicALPN}
	for i := range 40 {
		out = append(out, fmt.Sprintf("egressd-padding-protocol-%02d", i))
	}
	return out
}

// listenUDP opens a UDP socket on addr ("127.0.0.1:0" for any free
// port; in the calling thread's network namespace), closed when the test
// ends.
func listenUDP(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP("udp", ua)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
