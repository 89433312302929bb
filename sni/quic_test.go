package sni

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"
)

// This file feeds ParseHandshake the ClientHello of real QUIC Initial packets.
// The package itself does not decrypt QUIC; the small decryptor below (RFC
// 9001 §5, RFC 9369 §3.3) exists only to get the CRYPTO stream out of the
// captured datagrams. It is checked against the RFC sample packets.

type quicVersion struct {
	version uint32
	salt    string
	label   string // HKDF label prefix: "quic " (v1) or "quicv2 " (v2)
}

var (
	quicV1 = quicVersion{0x00000001, "38762cf7f55934b34d179ae6a4c80cadccbb7f0a", "quic "}   // RFC 9001 §5.2
	quicV2 = quicVersion{0x6b3343cf, "0dede3def700a6db819381be6e269dcbf9bd2ed9", "quicv2 "} // RFC 9369 §3.3.1
)

// hkdfExpandLabel is TLS 1.3's HKDF-Expand-Label (RFC 8446 §7.1) with an
// empty context.
func hkdfExpandLabel(t testing.TB, secret []byte, label string, n int) []byte {
	var b cryptobyte.Builder
	b.AddUint16(uint16(n))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte("tls13 " + label)) })
	b.AddUint8(0)
	out, err := hkdf.Expand(sha256.New, secret, string(b.BytesOrPanic()), n)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func readVarint(t testing.TB, s *cryptobyte.String) uint64 {
	t.Helper()
	var first uint8
	if !s.ReadUint8(&first) {
		t.Fatal("truncated varint")
	}
	v := uint64(first & 0x3f)
	for range 1<<(first>>6) - 1 {
		var b uint8
		if !s.ReadUint8(&b) {
			t.Fatal("truncated varint")
		}
		v = v<<8 | uint64(b)
	}
	return v
}

// quicInitialCrypto decrypts the client Initial packet at the start of a
// datagram and adds its CRYPTO frames to stream (offset → data).
func quicInitialCrypto(t testing.TB, datagram []byte, stream map[uint64][]byte) {
	t.Helper()
	pkt := slices.Clone(datagram)
	s := cryptobyte.String(pkt)
	var first uint8
	var version uint32
	var dcid, scid, token cryptobyte.String
	if !s.ReadUint8(&first) || !s.ReadUint32(&version) ||
		!s.ReadUint8LengthPrefixed(&dcid) || !s.ReadUint8LengthPrefixed(&scid) {
		t.Fatal("bad long header")
	}
	v := quicV1
	if version == quicV2.version {
		v = quicV2
	} else if version != quicV1.version {
		t.Fatalf("version %08x", version)
	}
	tokenLen := readVarint(t, &s)
	if !s.ReadBytes((*[]byte)(&token), int(tokenLen)) {
		t.Fatal("bad token")
	}
	length := int(readVarint(t, &s))
	pnOffset := len(pkt) - len(s)
	if pnOffset+length > len(pkt) {
		t.Fatal("bad length")
	}

	salt, _ := hex.DecodeString(v.salt)
	initial, err := hkdf.Extract(sha256.New, dcid, salt)
	if err != nil {
		t.Fatal(err)
	}
	secret := hkdfExpandLabel(t, initial, "client in", 32)
	key := hkdfExpandLabel(t, secret, v.label+"key", 16)
	iv := hkdfExpandLabel(t, secret, v.label+"iv", 12)
	hp := hkdfExpandLabel(t, secret, v.label+"hp", 16)

	// Header protection (RFC 9001 §5.4).
	hpBlock, err := aes.NewCipher(hp)
	if err != nil {
		t.Fatal(err)
	}
	mask := make([]byte, 16)
	hpBlock.Encrypt(mask, pkt[pnOffset+4:pnOffset+20])
	pkt[0] ^= mask[0] & 0x0f
	pnLen := int(pkt[0]&3) + 1
	var pn uint64
	for i := range pnLen {
		pkt[pnOffset+i] ^= mask[1+i]
		pn = pn<<8 | uint64(pkt[pnOffset+i])
	}

	// Payload protection (RFC 9001 §5.3).
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	nonce := slices.Clone(iv)
	var pnb [8]byte
	binary.BigEndian.PutUint64(pnb[:], pn)
	for i := range 8 {
		nonce[4+i] ^= pnb[i]
	}
	header := pkt[:pnOffset+pnLen]
	payload, err := aead.Open(nil, nonce, pkt[pnOffset+pnLen:pnOffset+length], header)
	if err != nil {
		t.Fatalf("decrypt: %v", err)
	}

	// Frames (RFC 9000 §19): a client's first Initials hold PADDING, PING
	// and CRYPTO.
	f := cryptobyte.String(payload)
	for !f.Empty() {
		var typ uint8
		f.ReadUint8(&typ)
		switch typ {
		case 0x00, 0x01: // PADDING, PING
		case 0x06: // CRYPTO
			off := readVarint(t, &f)
			n := readVarint(t, &f)
			var data []byte
			if !f.ReadBytes(&data, int(n)) {
				t.Fatal("truncated CRYPTO frame")
			}
			stream[off] = data
		default:
			t.Fatalf("unexpected frame type %#x", typ)
		}
	}
}

// cryptoStream reassembles the CRYPTO frames from offset 0.
func cryptoStream(t testing.TB, stream map[uint64][]byte) []byte {
	t.Helper()
	var out []byte
	for {
		data, ok := stream[uint64(len(out))]
		if !ok {
			break
		}
		out = append(out, data...)
	}
	return out
}

func readHexFile(t testing.TB, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	b, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRFC9001CryptoFrame parses the unprotected CRYPTO frame of RFC 9001
// Appendix A.2 (the same ClientHello is in RFC 9369 A.2).
func TestRFC9001CryptoFrame(t *testing.T) {
	frameBytes := readHexFile(t, "rfc9001-a2-crypto-frame.hex")
	s := cryptobyte.String(frameBytes)
	var typ uint8
	s.ReadUint8(&typ)
	if typ != 0x06 || readVarint(t, &s) != 0 {
		t.Fatal("not a CRYPTO frame at offset 0")
	}
	n := readVarint(t, &s)
	if int(n) != len(s) {
		t.Fatalf("CRYPTO length %d, have %d", n, len(s))
	}
	msg := []byte(s)
	var h Hello
	if err := ParseHandshake(msg, &h); err != nil {
		t.Fatal(err)
	}
	checkRFCHello(t, &h)
	for i := range len(msg) {
		if err := ParseHandshake(msg[:i], &h); err != ErrNeedMore {
			t.Fatalf("prefix %d: %v", i, err)
		}
	}
}

func checkRFCHello(t *testing.T, h *Hello) {
	t.Helper()
	full, hash := h.JA3()
	if h.ServerName != "example.com" || !slices.Equal(h.ALPN, []string{"alpn"}) ||
		full != "771,4865-4866,0-65281-10-16-5-51-43-13-45-28-57,29-23-24," || hash != "41bc9ae914d6cb3bd0bd0a5453ab7d7f" {
		t.Errorf("got SNI %q ALPN %q JA3 %s %s", h.ServerName, h.ALPN, full, hash)
	}
	// No published JA4 for this hello; its a part follows from the lists.
	if got := h.JA4(true); got[:10] != "q13d0211an" {
		t.Errorf("JA4 = %s, want q13d0211an_…", got)
	}
}

// TestQUICInitials decrypts the RFC sample packets, Chrome's Initials from
// FoxIO's captures and quic-go's two-datagram hellos, and checks SNI, ALPN,
// JA3 and (where published) JA4 and JA4_r with quic set.
func TestQUICInitials(t *testing.T) {
	t.Run("rfc9001", func(t *testing.T) {
		stream := map[uint64][]byte{}
		quicInitialCrypto(t, readHexFile(t, "rfc9001-a2-client-initial.hex"), stream)
		var h Hello
		if err := ParseHandshake(cryptoStream(t, stream), &h); err != nil {
			t.Fatal(err)
		}
		checkRFCHello(t, &h)
	})
	t.Run("rfc9369", func(t *testing.T) {
		stream := map[uint64][]byte{}
		quicInitialCrypto(t, readHexFile(t, "rfc9369-a2-client-initial.hex"), stream)
		var h Hello
		if err := ParseHandshake(cryptoStream(t, stream), &h); err != nil {
			t.Fatal(err)
		}
		checkRFCHello(t, &h)
	})

	raw, err := os.ReadFile(filepath.Join("testdata", "ja4-expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ Vectors []jsonVector }
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	type quicCase struct {
		name, sni, ja3, ja4, ja4r string
		alpn                      []string
		files                     []string
	}
	var cases []quicCase
	for _, v := range doc.Vectors {
		if v.Transport != "quic" {
			continue
		}
		var alpn []string
		for _, x := range v.ALPNHex {
			b, _ := hex.DecodeString(x)
			alpn = append(alpn, string(b))
		}
		cases = append(cases, quicCase{strings.TrimSuffix(v.Bytes, ".initial.bin"), *v.SNI, v.JA3, v.JA4, v.JA4R, alpn, []string{v.Bytes}})
	}
	if len(cases) != 3 {
		t.Fatalf("%d QUIC vectors, want 3", len(cases))
	}
	// quic-go: no published JA4 (see testdata/README.md), JA3 from tshark.
	cases = append(cases,
		quicCase{"quic-go-v1", "quic.egress.test", "aeb4a42cd7925b343b143434a712dd00", "", "", []string{"h3"},
			[]string{"quic-go-v1.initial-1.bin", "quic-go-v1.initial-2.bin"}},
		quicCase{"quic-go-v2", "quic2.egress.test", "aeb4a42cd7925b343b143434a712dd00", "", "", []string{"h3"},
			[]string{"quic-go-v2.initial-1.bin", "quic-go-v2.initial-2.bin"}},
	)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stream := map[uint64][]byte{}
			var h Hello
			for i, f := range tc.files {
				b, err := os.ReadFile(filepath.Join("testdata", f))
				if err != nil {
					t.Fatal(err)
				}
				quicInitialCrypto(t, b, stream)
				err = ParseHandshake(cryptoStream(t, stream), &h)
				if i < len(tc.files)-1 {
					// Not all of the hello yet.
					if err != ErrNeedMore {
						t.Fatalf("after datagram %d: %v, want ErrNeedMore", i+1, err)
					}
				} else if err != nil {
					t.Fatal(err)
				}
			}
			if h.ServerName != tc.sni || !slices.Equal(h.ALPN, tc.alpn) {
				t.Errorf("SNI %q ALPN %q, want %q %q", h.ServerName, h.ALPN, tc.sni, tc.alpn)
			}
			if _, hash := h.JA3(); hash != tc.ja3 {
				t.Errorf("JA3 = %s, want %s", hash, tc.ja3)
			}
			if tc.ja4 != "" {
				if got := h.JA4(true); got != tc.ja4 {
					t.Errorf("JA4 = %s, want %s", got, tc.ja4)
				}
			}
			if tc.ja4r != "" {
				if got := h.JA4Raw(true); got != tc.ja4r {
					t.Errorf("JA4_r\n got %s\nwant %s", got, tc.ja4r)
				}
			}
			if got := h.JA4(true); !strings.HasPrefix(got, "q13d") {
				t.Errorf("JA4 = %s", got)
			}
		})
	}
}
