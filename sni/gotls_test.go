package sni

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// captureConn is a net.Conn that records what is written to it and serves
// reads from r (EOF when r is nil). It lets crypto/tls run a handshake
// synchronously, without goroutines or sockets.
type captureConn struct {
	r io.Reader
	w bytes.Buffer
}

func (c *captureConn) Read(p []byte) (int, error) {
	if c.r == nil {
		return 0, io.EOF
	}
	return c.r.Read(p)
}
func (c *captureConn) Write(p []byte) (int, error)      { return c.w.Write(p) }
func (c *captureConn) Close() error                     { return nil }
func (c *captureConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *captureConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *captureConn) SetDeadline(time.Time) error      { return nil }
func (c *captureConn) SetReadDeadline(time.Time) error  { return nil }
func (c *captureConn) SetWriteDeadline(time.Time) error { return nil }

// goClientHello returns the bytes a crypto/tls client writes first: the TLS
// records carrying its ClientHello.
func goClientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	conn := &captureConn{}
	if err := tls.Client(conn, cfg).Handshake(); err == nil {
		t.Fatal("handshake against EOF succeeded")
	}
	if conn.w.Len() == 0 {
		t.Fatal("client wrote nothing")
	}
	return conn.w.Bytes()
}

var errSeen = errors.New("seen")

// goServerSees feeds b to a crypto/tls server and returns the
// ClientHelloInfo its GetConfigForClient callback got, or nil if crypto/tls
// rejected the hello before that.
func goServerSees(b []byte) *tls.ClientHelloInfo {
	var seen *tls.ClientHelloInfo
	cfg := &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		seen = chi
		return nil, errSeen
	}}
	_ = tls.Server(&captureConn{r: bytes.NewReader(b)}, cfg).Handshake()
	return seen
}

// diffGo compares our parse with what crypto/tls saw; it returns a
// description of the first difference, or "".
func diffGo(h *Hello, chi *tls.ClientHelloInfo) string {
	curves := make([]uint16, len(chi.SupportedCurves))
	for i, c := range chi.SupportedCurves {
		curves[i] = uint16(c)
	}
	sigs := make([]uint16, len(chi.SignatureSchemes))
	for i, s := range chi.SignatureSchemes {
		sigs[i] = uint16(s)
	}
	switch {
	case chi.ServerName != h.ServerName:
		return "ServerName " + chi.ServerName + " vs " + h.ServerName
	case !slices.Equal(chi.SupportedProtos, h.ALPN):
		return "ALPN"
	case !slices.Equal(chi.CipherSuites, h.CipherSuites):
		return "CipherSuites"
	case !slices.Equal(chi.Extensions, h.Extensions):
		return "Extensions"
	case !slices.Equal(curves, h.SupportedGroups):
		return "SupportedGroups"
	case !slices.Equal(chi.SupportedPoints, h.PointFormats):
		return "PointFormats"
	case !slices.Equal(sigs, h.SignatureAlgorithms):
		return "SignatureAlgorithms"
	// Without the extension crypto/tls extrapolates a list from
	// legacy_version; compare only real lists.
	case len(h.SupportedVersions) > 0 && !slices.Equal(chi.SupportedVersions, h.SupportedVersions):
		return "SupportedVersions"
	}
	return ""
}

// stricterThanGo lists the checks this package makes that crypto/tls's
// ClientHello parser leaves to later stages (after GetConfigForClient): the
// RFC 8446 §4.1.2 vector bounds of cipher_suites, legacy_compression_methods
// and legacy_session_id. It also accepts the package's own explicit bounds
// that a hello within MaxHandshakeBytes can reach (maxALPNNames), which
// crypto/tls does not have.
func stricterThanGo(err error) bool {
	if errors.Is(err, ErrTooLarge) {
		return strings.Contains(err.Error(), "protocol names")
	}
	for _, s := range []string{"empty cipher suite list", "empty compression method list", "session id of"} {
		if errors.Is(err, ErrMalformed) && strings.Contains(err.Error(), s) {
			return true
		}
	}
	return false
}

func selfSigned(t testing.TB, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// resumptionConfig returns a client config whose session cache holds a
// ticket from a real handshake, so its next hello offers a PSK.
func resumptionConfig(t testing.TB, maxVersion uint16) *tls.Config {
	t.Helper()
	const name = "resume.example"
	scfg := &tls.Config{Certificates: []tls.Certificate{selfSigned(t, name)}}
	ccfg := &tls.Config{
		ServerName:         name,
		InsecureSkipVerify: true,
		ClientSessionCache: tls.NewLRUClientSessionCache(4),
		MaxVersion:         maxVersion,
	}
	// Loopback TCP rather than net.Pipe: both sides write at once during a
	// TLS 1.3 handshake, which deadlocks an unbuffered pipe.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		s := tls.Server(c, scfg)
		_, err = s.Write([]byte("x")) // handshake, ticket, one byte
		s.Close()
		done <- err
	}()
	conn, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(conn, ccfg)
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return ccfg
}

// echConfigList builds an ECHConfigList (RFC 9849 §4) with one X25519,
// HKDF-SHA256, AES-128-GCM config whose public_name is publicName.
func echConfigList(t testing.TB, publicName string) []byte {
	t.Helper()
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(0xfe0d)
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddUint8(7)       // config_id
			b.AddUint16(0x0020) // DHKEM(X25519, HKDF-SHA256)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(key.PublicKey().Bytes()) })
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint16(0x0001) // HKDF-SHA256
				b.AddUint16(0x0001) // AES-128-GCM
			})
			b.AddUint8(0) // maximum_name_length
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(publicName)) })
			b.AddUint16(0) // extensions
		})
	})
	return b.BytesOrPanic()
}

// TestGoClientHellos generates hellos with crypto/tls clients of various
// configurations and checks ParseRecords against the config and against
// what a crypto/tls server sees in the same bytes.
func TestGoClientHellos(t *testing.T) {
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61)
	for _, tc := range []struct {
		name     string
		cfg      func(t *testing.T) *tls.Config
		wantSNI  string
		wantALPN []string
		wantECH  bool
		wantExt  uint16 // an extension that must be present, 0 for none
		wantJA4  string // prefix of the JA4 a part
	}{
		{name: "default", cfg: func(*testing.T) *tls.Config { return &tls.Config{ServerName: "example.com"} },
			wantSNI: "example.com", wantJA4: "t13d"},
		{name: "alpn", cfg: func(*testing.T) *tls.Config {
			return &tls.Config{ServerName: "example.com", NextProtos: []string{"h2", "http/1.1"}}
		}, wantSNI: "example.com", wantALPN: []string{"h2", "http/1.1"}, wantJA4: "t13d"},
		{name: "many alpn", cfg: func(*testing.T) *tls.Config {
			return &tls.Config{ServerName: "example.com", NextProtos: []string{"h3", "spdy/3.1", "acme-tls/1", "x"}}
		}, wantSNI: "example.com", wantALPN: []string{"h3", "spdy/3.1", "acme-tls/1", "x"}},
		{name: "tls12 max", cfg: func(*testing.T) *tls.Config {
			return &tls.Config{ServerName: "example.com", MaxVersion: tls.VersionTLS12}
		}, wantSNI: "example.com", wantJA4: "t12d"},
		{name: "tls11 max", cfg: func(*testing.T) *tls.Config {
			return &tls.Config{ServerName: "example.com", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}
		}, wantSNI: "example.com", wantJA4: "t11d"},
		{name: "tls10 only", cfg: func(*testing.T) *tls.Config {
			return &tls.Config{ServerName: "example.com", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10}
		}, wantSNI: "example.com", wantJA4: "t10d"},
		{name: "no server name", cfg: func(*testing.T) *tls.Config { return &tls.Config{InsecureSkipVerify: true} },
			wantJA4: "t13i"},
		{name: "ip address", cfg: func(*testing.T) *tls.Config { return &tls.Config{ServerName: "192.0.2.1"} },
			wantJA4: "t13i"},
		{name: "trailing dot stripped by the client", cfg: func(*testing.T) *tls.Config { return &tls.Config{ServerName: "example.com."} },
			wantSNI: "example.com"},
		{name: "mixed case kept", cfg: func(*testing.T) *tls.Config { return &tls.Config{ServerName: "ExAmple.COM"} },
			wantSNI: "ExAmple.COM"},
		{name: "long name", cfg: func(*testing.T) *tls.Config { return &tls.Config{ServerName: long} }, wantSNI: long},
		{name: "idn", cfg: func(*testing.T) *tls.Config { return &tls.Config{ServerName: "xn--bcher-kva.example"} },
			wantSNI: "xn--bcher-kva.example"},
		{name: "x25519 only, two suites", cfg: func(*testing.T) *tls.Config {
			return &tls.Config{ServerName: "example.com", MaxVersion: tls.VersionTLS12, CurvePreferences: []tls.CurveID{tls.X25519},
				CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305}}
		}, wantSNI: "example.com", wantJA4: "t12d02"},
		{name: "post-quantum only", cfg: func(*testing.T) *tls.Config {
			return &tls.Config{ServerName: "pq.example", CurvePreferences: []tls.CurveID{tls.X25519MLKEM768}}
		}, wantSNI: "pq.example", wantExt: 0x0033},
		{name: "ech", cfg: func(t *testing.T) *tls.Config {
			return &tls.Config{ServerName: "secret.example", MinVersion: tls.VersionTLS13,
				EncryptedClientHelloConfigList: echConfigList(t, "public.example")}
		}, wantSNI: "public.example", wantECH: true, wantExt: 0xfe0d},
		{name: "tls13 resumption (pre_shared_key)", cfg: func(t *testing.T) *tls.Config { return resumptionConfig(t, 0) },
			wantSNI: "resume.example", wantExt: 0x0029},
		{name: "tls12 resumption (session ticket)", cfg: func(t *testing.T) *tls.Config { return resumptionConfig(t, tls.VersionTLS12) },
			wantSNI: "resume.example", wantExt: 0x0023},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := goClientHello(t, tc.cfg(t))
			var h Hello
			n, err := ParseRecords(b, &h)
			if err != nil {
				t.Fatalf("ParseRecords: %v\n%x", err, b)
			}
			if n != len(b) {
				t.Errorf("n = %d, want %d", n, len(b))
			}
			if h.ServerName != tc.wantSNI || h.HasServerName != (tc.wantSNI != "") {
				t.Errorf("SNI = %q (%v), want %q", h.ServerName, h.HasServerName, tc.wantSNI)
			}
			if !slices.Equal(h.ALPN, tc.wantALPN) {
				t.Errorf("ALPN = %q, want %q", h.ALPN, tc.wantALPN)
			}
			if h.ECH != tc.wantECH {
				t.Errorf("ECH = %v, want %v", h.ECH, tc.wantECH)
			}
			if tc.wantExt != 0 && !slices.Contains(h.Extensions, tc.wantExt) {
				t.Errorf("extension %04x missing from %04x", tc.wantExt, h.Extensions)
			}
			if tc.wantExt == 0x0029 && h.Extensions[len(h.Extensions)-1] != 0x0029 {
				t.Errorf("pre_shared_key not last")
			}
			if ja4 := h.JA4(false); !strings.HasPrefix(ja4, tc.wantJA4) || len(ja4) != 36 {
				t.Errorf("JA4 = %s, want prefix %s", ja4, tc.wantJA4)
			}
			chi := goServerSees(b)
			if chi == nil {
				t.Fatal("crypto/tls server rejected the hello")
			}
			if d := diffGo(&h, chi); d != "" {
				t.Errorf("differs from crypto/tls: %s", d)
			}
			// And once more split into records of 100 bytes.
			m := handshakeFromRecords(t, b)
			var h2 Hello
			if _, err := ParseRecords(frameEvery(m, 100), &h2); err != nil {
				t.Fatal(err)
			}
			if d := diffGo(&h2, chi); d != "" {
				t.Errorf("re-framed: differs from crypto/tls: %s", d)
			}
		})
	}
}

// goQUICClientHello returns the ClientHello a crypto/tls QUIC client writes
// into its Initial CRYPTO stream.
func goQUICClientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	q := tls.QUICClient(&tls.QUICConfig{TLSConfig: cfg})
	q.SetTransportParameters([]byte{0x01, 0x02, 0x40, 0x64}) // max_idle_timeout 100
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var out []byte
	for {
		ev := q.NextEvent()
		if ev.Kind == tls.QUICNoEvent {
			break
		}
		if ev.Kind == tls.QUICWriteData && ev.Level == tls.QUICEncryptionLevelInitial {
			out = append(out, ev.Data...)
		}
	}
	if len(out) == 0 {
		t.Fatal("no Initial data")
	}
	return out
}

// TestGoQUICClientHello parses a crypto/tls QUIC ClientHello with
// ParseHandshake and compares it with what a crypto/tls QUIC server sees.
func TestGoQUICClientHello(t *testing.T) {
	msg := goQUICClientHello(t, &tls.Config{ServerName: "quic.example", NextProtos: []string{"h3"}, MinVersion: tls.VersionTLS13})
	var h Hello
	if err := ParseHandshake(msg, &h); err != nil {
		t.Fatal(err)
	}
	if h.ServerName != "quic.example" || !slices.Equal(h.ALPN, []string{"h3"}) || !slices.Contains(h.Extensions, 0x0039) {
		t.Errorf("got %+v", h)
	}
	if ja4 := h.JA4(true); !strings.HasPrefix(ja4, "q13d") {
		t.Errorf("JA4 = %s", ja4)
	}
	for i := range len(msg) {
		if err := ParseHandshake(msg[:i], &h); err != ErrNeedMore {
			t.Fatalf("prefix %d: %v", i, err)
		}
	}
	if err := ParseHandshake(msg, &h); err != nil {
		t.Fatal(err)
	}

	var seen *tls.ClientHelloInfo
	srv := tls.QUICServer(&tls.QUICConfig{TLSConfig: &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			seen = chi
			return nil, errSeen
		}}})
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_ = srv.HandleData(tls.QUICEncryptionLevelInitial, msg)
	if seen == nil {
		t.Fatal("crypto/tls QUIC server did not reach GetConfigForClient")
	}
	if d := diffGo(&h, seen); d != "" {
		t.Errorf("differs from crypto/tls: %s", d)
	}
}
