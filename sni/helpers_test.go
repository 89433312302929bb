package sni

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"
)

// vector is one ClientHello from testdata/ with the values other tools
// computed for it (see testdata/README.md for each source).
type vector struct {
	Name      string
	File      string
	SNI       string // "" = no server_name
	HasSNI    bool
	ALPN      []string
	JA3String string
	JA3       string
	JA4       string
	JA4R      string // "" if not published
}

type jsonVector struct {
	Bytes     string   `json:"bytes"`
	Transport string   `json:"transport"`
	SNI       *string  `json:"sni"`
	ALPN      []string `json:"alpn"`
	ALPNHex   []string `json:"alpn_hex"`
	JA3String string   `json:"ja3_string"`
	JA3       string   `json:"ja3"`
	JA4       string   `json:"ja4"`
	JA4Spec   string   `json:"ja4_spec"`
	JA4R      string   `json:"ja4_r"`
}

// loadVectors reads the TCP vectors of the three expected-value files.
func loadVectors(t testing.TB) []vector {
	t.Helper()
	var out []vector
	for _, f := range []string{"ja3-expected.json", "ja4-expected.json", "edge-expected.json"} {
		raw, err := os.ReadFile(filepath.Join("testdata", f))
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Vectors     []jsonVector `json:"vectors"`
			PCAPVectors []jsonVector `json:"pcap_vectors"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, jv := range append(doc.PCAPVectors, doc.Vectors...) {
			if jv.Transport != "" && jv.Transport != "tcp" {
				continue // QUIC Initials: see quic_test.go
			}
			v := vector{
				Name:      strings.TrimSuffix(strings.TrimSuffix(jv.Bytes, ".bin"), ".clienthello"),
				File:      jv.Bytes,
				JA3String: jv.JA3String,
				JA3:       jv.JA3,
				JA4:       jv.JA4,
				JA4R:      jv.JA4R,
				ALPN:      jv.ALPN,
			}
			if jv.SNI != nil {
				v.SNI, v.HasSNI = *jv.SNI, true
			}
			if jv.ALPNHex != nil {
				v.ALPN = nil
				for _, x := range jv.ALPNHex {
					b, err := hex.DecodeString(x)
					if err != nil {
						t.Fatal(err)
					}
					v.ALPN = append(v.ALPN, string(b))
				}
			}
			if jv.JA4Spec != "" {
				// egressd follows the JA4 spec for a non-alphanumeric ALPN
				// (see JA4 doc comment): the a part differs from FoxIO's
				// tools, the b and c parts do not.
				if v.JA4R != "" {
					v.JA4R = jv.JA4Spec[:10] + v.JA4R[10:]
				}
				v.JA4 = jv.JA4Spec
			}
			out = append(out, v)
		}
	}
	if len(out) != 15 {
		t.Fatalf("loaded %d TCP vectors, want 15", len(out))
	}
	return out
}

func readVector(t testing.TB, v vector) []byte {
	t.Helper()
	return readTestdata(t, v.File)
}

// handshakeFromRecords concatenates the payloads of the TLS records in b.
// It is a deliberately simple, independent reader for well-formed test input.
func handshakeFromRecords(t testing.TB, b []byte) []byte {
	t.Helper()
	var msg []byte
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("truncated record header")
		}
		n := int(b[3])<<8 | int(b[4])
		if len(b) < 5+n {
			t.Fatalf("truncated record")
		}
		msg = append(msg, b[5:5+n]...)
		b = b[5+n:]
	}
	return msg
}

// frame wraps msg in handshake records with the given payload sizes; the
// last record takes whatever is left.
func frame(msg []byte, sizes ...int) []byte {
	var out []byte
	for i := 0; len(msg) > 0; i++ {
		n := len(msg)
		if i < len(sizes) && sizes[i] < n {
			n = sizes[i]
		}
		out = append(out, 22, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// frameEvery wraps msg in records of at most size bytes each.
func frameEvery(msg []byte, size int) []byte {
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, 22, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// handshake prefixes body with a client_hello handshake header.
func handshake(body []byte) []byte {
	n := len(body)
	return append([]byte{1, byte(n >> 16), byte(n >> 8), byte(n)}, body...)
}

// testHello builds ClientHello bodies, valid or deliberately broken.
type testHello struct {
	version     uint16
	sessionID   []byte
	ciphers     []uint16
	compression []byte
	noExts      bool // omit the extensions block
	exts        []testExt
	trailing    []byte // appended after the extensions block
}

type testExt struct {
	typ  uint16
	data []byte
}

func baseHello() testHello {
	return testHello{
		version:     0x0303,
		sessionID:   make([]byte, 32),
		ciphers:     []uint16{0x1301, 0x1302, 0xc02b},
		compression: []byte{0},
		exts: []testExt{
			{0x0000, sniData(0, "example.com")},
			{0x0010, alpnData("h2", "http/1.1")},
			{0x002b, u8list16(0x0304, 0x0303)},
			{0x000a, u16list16(0x001d, 0x0017)},
			{0x000b, u8list8(0)},
			{0x000d, u16list16(0x0403, 0x0804)},
		},
	}
}

func (th testHello) body() []byte {
	var b cryptobyte.Builder
	b.AddUint16(th.version)
	b.AddBytes(make([]byte, 32))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(th.sessionID) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, c := range th.ciphers {
			b.AddUint16(c)
		}
	})
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(th.compression) })
	if !th.noExts {
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, e := range th.exts {
				b.AddUint16(e.typ)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.data) })
			}
		})
	}
	b.AddBytes(th.trailing)
	return b.BytesOrPanic()
}

func (th testHello) records() []byte { return frame(handshake(th.body())) }

// sniData builds server_name extension data with (type, name) pairs.
func sniData(pairs ...any) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for i := 0; i < len(pairs); i += 2 {
			b.AddUint8(uint8(pairs[i].(int)))
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(pairs[i+1].(string))) })
		}
	})
	return b.BytesOrPanic()
}

func alpnData(protos ...string) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, p := range protos {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p)) })
		}
	})
	return b.BytesOrPanic()
}

func u16list16(vs ...uint16) []byte {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, v := range vs {
			b.AddUint16(v)
		}
	})
	return b.BytesOrPanic()
}

func u8list16(vs ...uint16) []byte {
	var b cryptobyte.Builder
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, v := range vs {
			b.AddUint16(v)
		}
	})
	return b.BytesOrPanic()
}

func u8list8(vs ...uint8) []byte {
	var b cryptobyte.Builder
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(vs) })
	return b.BytesOrPanic()
}

// sentinel returns which of the package's sentinel errors err is, and fails
// the test if it is none or more than one of them.
func sentinel(t testing.TB, err error) error {
	t.Helper()
	if errors.Is(err, ErrDiscarded) {
		if !errors.Is(err, ErrMalformed) {
			t.Fatalf("error %q is ErrDiscarded without ErrMalformed", err)
		}
		return ErrDiscarded
	}
	var found error
	for _, s := range []error{ErrNeedMore, ErrNotQUIC, ErrNotTLS, ErrTooLarge, ErrMalformed} {
		if errors.Is(err, s) {
			if found != nil {
				t.Fatalf("error %q matches both %v and %v", err, found, s)
			}
			found = s
		}
	}
	if err != nil && found == nil {
		t.Fatalf("error %q matches no sentinel", err)
	}
	return found
}

// helloSummary is everything ParseRecords/ParseHandshake return, flattened
// for comparison.
type helloSummary struct {
	Legacy                      uint16
	Ciphers, Exts, Vers, Groups []uint16
	Sigs                        []uint16
	Points                      []uint8
	SNI                         string
	HasSNI, ECH                 bool
	ALPN                        []string
	JA3, JA4, JA4R              string
}

func summarize(h *Hello) helloSummary {
	full, _ := h.JA3()
	return helloSummary{
		Legacy:  h.LegacyVersion,
		Ciphers: slices.Clone(h.CipherSuites),
		Exts:    slices.Clone(h.Extensions),
		Vers:    slices.Clone(h.SupportedVersions),
		Groups:  slices.Clone(h.SupportedGroups),
		Sigs:    slices.Clone(h.SignatureAlgorithms),
		Points:  slices.Clone(h.PointFormats),
		SNI:     h.ServerName,
		HasSNI:  h.HasServerName,
		ECH:     h.ECH,
		ALPN:    slices.Clone(h.ALPN),
		JA3:     full,
		JA4:     h.JA4(false),
		JA4R:    h.JA4Raw(false),
	}
}
