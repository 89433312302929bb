package proxy

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
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
	"golang.org/x/crypto/cryptobyte"

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

// quicInitialSpec describes a client Initial packet for sealQUICInitial.
type quicInitialSpec struct {
	version uint32 // 1 (the default), 0x6b3343cf (QUIC v2) or 0xff00001d (draft-29)
	dcid    []byte
	pn      uint32 // sent in 4 bytes
	frames  []byte // the plaintext payload
	padTo   int    // pad the payload with PADDING up to this packet size
	keyDCID []byte // derive the keys from this, not dcid: an Initial to the server's connection ID (RFC 9000 §7.2)
}

// sealQUICInitial builds and protects a client Initial (RFC 9001 §5, RFC
// 9369 §3) with its own key derivation, independent of package sni's.
func sealQUICInitial(t *testing.T, p quicInitialSpec) []byte {
	t.Helper()
	salt := []byte{0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a}
	prefix, first := "quic ", byte(0xc3) // long header, fixed bit, Initial, 4-byte packet number
	if p.version == 0 {
		p.version = 1
	}
	switch p.version {
	case 1:
	case 0xff00001d: // draft-ietf-quic-tls-29 §5.2: v1's labels, its own salt
		salt = []byte{0xaf, 0xbf, 0xec, 0x28, 0x99, 0x93, 0xd2, 0x4c, 0x9e, 0x97, 0x86, 0xf1, 0x9c, 0x61, 0x11, 0xe0, 0x43, 0x90, 0xa8, 0x99}
	default:
		salt = []byte{0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9}
		prefix, first = "quicv2 ", 0xd3 // RFC 9369 §3.2: Initial is 0b01
	}
	label := func(secret []byte, l string, n int) []byte {
		var b cryptobyte.Builder
		b.AddUint16(uint16(n))
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte("tls13 " + l)) })
		b.AddUint8(0)
		out, err := hkdf.Expand(sha256.New, secret, string(b.BytesOrPanic()), n)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	keyDCID := p.dcid
	if p.keyDCID != nil {
		keyDCID = p.keyDCID
	}
	initial, err := hkdf.Extract(sha256.New, keyDCID, salt)
	if err != nil {
		t.Fatal(err)
	}
	cs := label(initial, "client in", 32)
	key, iv, hpKey := label(cs, prefix+"key", 16), label(cs, prefix+"iv", 12), label(cs, prefix+"hp", 16)
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	hp, _ := aes.NewCipher(hpKey)

	hdr := binary.BigEndian.AppendUint32([]byte{first}, p.version)
	hdr = append(hdr, byte(len(p.dcid)))
	hdr = append(hdr, p.dcid...)
	hdr = append(hdr, 0, 0) // no SCID, no token
	const pnLen = 4
	payload := bytes.Clone(p.frames)
	if n := p.padTo - (len(hdr) + 2 + pnLen + len(payload) + 16); n > 0 {
		payload = append(payload, make([]byte, n)...) // PADDING frames
	}
	length := pnLen + len(payload) + 16
	hdr = append(hdr, 0x40|byte(length>>8), byte(length))
	pnOff := len(hdr)
	hdr = binary.BigEndian.AppendUint32(hdr, p.pn)
	nonce := bytes.Clone(iv)
	for i := range 4 {
		nonce[8+i] ^= byte(p.pn >> (24 - 8*i))
	}
	pkt := aead.Seal(hdr, nonce, payload, hdr)
	var mask [16]byte
	hp.Encrypt(mask[:], pkt[pnOff+4:pnOff+20])
	pkt[0] ^= mask[0] & 0x0f
	for i := range pnLen {
		pkt[pnOff+i] ^= mask[1+i]
	}
	return pkt
}

// quicCrypto is a CRYPTO frame (RFC 9000 §19.6) with 2-byte varints.
func quicCrypto(off int, data []byte) []byte {
	b := []byte{0x06, 0x40 | byte(off>>8), byte(off), 0x40 | byte(len(data)>>8), byte(len(data))}
	return append(b, data...)
}

// quicClientHello is a QUIC ClientHello from crypto/tls for name, as a
// client's Initial CRYPTO stream carries it.
func quicClientHello(t *testing.T, name string) []byte {
	t.Helper()
	q := tls.QUICClient(&tls.QUICConfig{TLSConfig: &tls.Config{ServerName: name, NextProtos: []string{quicALPN},
		MinVersion: tls.VersionTLS13, CurvePreferences: []tls.CurveID{tls.X25519}}})
	q.SetTransportParameters([]byte{0x01, 0x02, 0x40, 0x64}) // max_idle_timeout 100 ms
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var out []byte
	for ev := q.NextEvent(); ev.Kind != tls.QUICNoEvent; ev = q.NextEvent() {
		if ev.Kind == tls.QUICWriteData && ev.Level == tls.QUICEncryptionLevelInitial {
			out = append(out, ev.Data...)
		}
	}
	return out
}
