package sni

import (
	"bytes"
	"crypto/aes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The expected values here come from the RFCs, FoxIO and tshark (see
// testdata/README.md), never from this package. Crafted packets are built by
// sealInitial below, which is checked by reproducing the RFC 9001 and RFC
// 9369 sample packets byte for byte.

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

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rfcHello is the ClientHello of RFC 9001 A.2 (also used by RFC 9369 A.2):
// the unprotected CRYPTO frame minus its 4-byte frame header
// (06 00 40f1: type, offset 0, length 241).
func rfcHello(t testing.TB) []byte {
	t.Helper()
	f := readHexFile(t, "rfc9001-a2-crypto-frame.hex")
	if !bytes.HasPrefix(f, []byte{0x06, 0x00, 0x40, 0xf1}) || len(f) != 4+0xf1 {
		t.Fatalf("unexpected CRYPTO frame %x…", f[:8])
	}
	return f[4:]
}

// TestRFC9001CryptoFrame parses the unprotected ClientHello of RFC 9001
// Appendix A.2 directly.
func TestRFC9001CryptoFrame(t *testing.T) {
	msg := rfcHello(t)
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

// addAll feeds datagrams to a fresh QUICInitial and checks each result.
func addAll(t *testing.T, q *QUICInitial, h *Hello, datagrams [][]byte, want []error) {
	t.Helper()
	for i, d := range datagrams {
		orig := slices.Clone(d)
		err := q.Add(d, h)
		if got := sentinel(t, err); got != want[i] {
			t.Fatalf("datagram %d of %d: %v, want %v", i+1, len(datagrams), err, want[i])
		}
		if !bytes.Equal(d, orig) {
			t.Fatalf("datagram %d modified", i+1)
		}
	}
}

// TestQUICInitialVectors decrypts the RFC sample packets, Chrome's Initials
// from FoxIO's captures and quic-go's two-datagram hellos (in both orders),
// and checks SNI, ALPN, JA3 and (where published) JA4 and JA4_r with quic
// set.
func TestQUICInitialVectors(t *testing.T) {
	for _, tc := range []struct{ name, file string }{
		{"rfc9001", "rfc9001-a2-client-initial.hex"},
		{"rfc9369", "rfc9369-a2-client-initial.hex"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var q QUICInitial
			var h Hello
			addAll(t, &q, &h, [][]byte{readHexFile(t, tc.file)}, []error{nil})
			checkRFCHello(t, &h)
			want := quicV1
			if tc.name == "rfc9369" {
				want = quicV2
			}
			if q.Version() != want {
				t.Errorf("Version = %#x, want %#x", q.Version(), want)
			}
		})
	}

	var doc struct{ Vectors []jsonVector }
	if err := json.Unmarshal(readTestdata(t, "ja4-expected.json"), &doc); err != nil {
		t.Fatal(err)
	}
	type quicCase struct {
		name, sni, ja3, ja4, ja4r string
		alpn                      []string
		files                     []string
		version                   uint32
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
		cases = append(cases, quicCase{strings.TrimSuffix(v.Bytes, ".initial.bin"), *v.SNI, v.JA3, v.JA4, v.JA4R, alpn, []string{v.Bytes}, quicV1})
	}
	if len(cases) != 3 {
		t.Fatalf("%d QUIC vectors, want 3", len(cases))
	}
	// quic-go: no published JA4 (see testdata/README.md), JA3 from tshark.
	v1 := []string{"quic-go-v1.initial-1.bin", "quic-go-v1.initial-2.bin"}
	v2 := []string{"quic-go-v2.initial-1.bin", "quic-go-v2.initial-2.bin"}
	const quicGoJA3 = "aeb4a42cd7925b343b143434a712dd00"
	cases = append(cases,
		quicCase{"quic-go-v1", "quic.egress.test", quicGoJA3, "", "", []string{"h3"}, v1, quicV1},
		quicCase{"quic-go-v1-reversed", "quic.egress.test", quicGoJA3, "", "", []string{"h3"}, []string{v1[1], v1[0]}, quicV1},
		quicCase{"quic-go-v2", "quic2.egress.test", quicGoJA3, "", "", []string{"h3"}, v2, quicV2},
		quicCase{"quic-go-v2-reversed", "quic2.egress.test", quicGoJA3, "", "", []string{"h3"}, []string{v2[1], v2[0]}, quicV2},
	)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var datagrams [][]byte
			var want []error
			for range tc.files[1:] {
				want = append(want, ErrNeedMore)
			}
			for _, f := range tc.files {
				datagrams = append(datagrams, readTestdata(t, f))
			}
			var q QUICInitial
			var h Hello
			addAll(t, &q, &h, datagrams, append(want, nil))
			if q.Version() != tc.version {
				t.Errorf("Version = %#x, want %#x", q.Version(), tc.version)
			}
			checkQUICHello(t, &h, tc.sni, tc.alpn, tc.ja3, tc.ja4, tc.ja4r)
		})
	}
}

func checkQUICHello(t *testing.T, h *Hello, sni string, alpn []string, ja3, ja4, ja4r string) {
	t.Helper()
	if h.ServerName != sni || !slices.Equal(h.ALPN, alpn) {
		t.Errorf("SNI %q ALPN %q, want %q %q", h.ServerName, h.ALPN, sni, alpn)
	}
	if _, hash := h.JA3(); hash != ja3 {
		t.Errorf("JA3 = %s, want %s", hash, ja3)
	}
	if ja4 != "" {
		if got := h.JA4(true); got != ja4 {
			t.Errorf("JA4 = %s, want %s", got, ja4)
		}
	}
	if ja4r != "" {
		if got := h.JA4Raw(true); got != ja4r {
			t.Errorf("JA4_r\n got %s\nwant %s", got, ja4r)
		}
	}
	if got := h.JA4(true); !strings.HasPrefix(got, "q13d") {
		t.Errorf("JA4 = %s", got)
	}
}

// TestQUICCoalesced puts several packets in one datagram (RFC 9000 §12.2).
func TestQUICCoalesced(t *testing.T) {
	rfc := readHexFile(t, "rfc9001-a2-client-initial.hex")
	for _, tc := range []struct {
		name      string
		datagrams [][]byte
		want      []error
	}{
		// Each quic-go datagram is one Initial whose Length covers it all
		// (padding is inside the packet), so the two concatenate.
		{"quic-go-v1 both Initials", [][]byte{slices.Concat(readTestdata(t, "quic-go-v1.initial-1.bin"), readTestdata(t, "quic-go-v1.initial-2.bin"))}, []error{nil}},
		{"quic-go-v2 both Initials reversed", [][]byte{slices.Concat(readTestdata(t, "quic-go-v2.initial-2.bin"), readTestdata(t, "quic-go-v2.initial-1.bin"))}, []error{nil}},
		{"Initial then short header", [][]byte{slices.Concat(rfc, []byte{0x41, 0xde, 0xad, 0xbe, 0xef, 0xff, 0xff})}, []error{nil}},
		{"Initial then zero padding", [][]byte{slices.Concat(rfc, make([]byte, 100))}, []error{nil}},
		{"Initial then 0-RTT and Handshake", [][]byte{slices.Concat(rfc,
			longHeader(quicV1, pkt0RTT, rfcDCID, nil, 50), longHeader(quicV1, pktHandshake, rfcDCID, nil, 30))}, []error{nil}},
		{"Initial then a Handshake of another DCID", [][]byte{slices.Concat(rfc, longHeader(quicV1, pktHandshake, []byte{1, 2, 3}, nil, 30))}, []error{ErrMalformed}},
		{"Initial then truncated long header", [][]byte{slices.Concat(rfc, []byte{0xc0, 0, 0})}, []error{ErrMalformed}},
		{"Initial then 0-RTT past the end", [][]byte{slices.Concat(rfc, longHeader(quicV1, pkt0RTT, rfcDCID, nil, 50)[:40])}, []error{ErrMalformed}},
		{"Initial then Retry", [][]byte{slices.Concat(rfc, longHeader(quicV1, pktRetry, rfcDCID, nil, 50))}, []error{ErrMalformed}},
		{"Initial then unknown version", [][]byte{slices.Concat(rfc, longHeader(0x1a2a3a4a, pkt0RTT, rfcDCID, nil, 50))}, []error{ErrMalformed}},
		{"Initial then v2 packet", [][]byte{slices.Concat(rfc, longHeader(quicV2, pkt0RTT, rfcDCID, nil, 50))}, []error{ErrMalformed}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var q QUICInitial
			var h Hello
			addAll(t, &q, &h, tc.datagrams, tc.want)
			if tc.want[len(tc.want)-1] == nil && h.ServerName == "" {
				t.Error("no server name")
			}
		})
	}
}

// TestQUICNotQUIC: what a UDP proxy may see on port 443 that is not a
// v1/v2 client Initial.
func TestQUICNotQUIC(t *testing.T) {
	rfc := readHexFile(t, "rfc9001-a2-client-initial.hex")
	withVersion := func(v uint32) []byte {
		b := slices.Clone(rfc)
		binary.BigEndian.PutUint32(b[1:], v)
		return b
	}
	dns, _ := hex.DecodeString("abcd01000001000000000000076578616d706c6503636f6d0000010001")
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"one byte", rfc[:1]},
		{"four bytes", rfc[:4]},
		{"TLS record", readVector(t, vector{File: "chrome-cloudflare-tcp.clienthello.bin"})},
		{"DNS query", dns},
		{"short header", slices.Concat([]byte{0x40}, rfc[6:])},
		{"draft-29", withVersion(0xff00001d)},
		{"grease version", withVersion(0x1a2a3a4a)},
		{"version negotiation", withVersion(0)},
		{"v1 0-RTT first", longHeader(quicV1, pkt0RTT, rfcDCID, nil, 1200)},
		{"v1 Handshake first", longHeader(quicV1, pktHandshake, rfcDCID, nil, 1200)},
		{"v1 Retry first", longHeader(quicV1, pktRetry, rfcDCID, nil, 1200)},
		{"v2 Retry first", longHeader(quicV2, pktRetry, rfcDCID, nil, 1200)},
		{"v2 Handshake first", longHeader(quicV2, pktHandshake, rfcDCID, nil, 1200)},
		// The v1 type bits of an Initial read as a v2 Retry.
		{"v1 Initial bits with v2 version", withVersion(quicV2)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var q QUICInitial
			var h Hello
			if err := q.Add(tc.b, &h); err != ErrNotQUIC {
				t.Fatalf("%v, want ErrNotQUIC", err)
			}
			if q.Version() != 0 {
				t.Errorf("Version = %#x", q.Version())
			}
			// Sticky, even for a valid Initial.
			if err := q.Add(rfc, &h); err != ErrNotQUIC {
				t.Fatalf("then %v, want ErrNotQUIC", err)
			}
		})
	}
}

// TestQUICTruncated: every strict prefix of a valid Initial is an error:
// ErrNotQUIC until the version is in, ErrMalformed after.
func TestQUICTruncated(t *testing.T) {
	for _, file := range []string{"rfc9001-a2-client-initial.hex", "rfc9369-a2-client-initial.hex"} {
		b := readHexFile(t, file)
		for i := range len(b) {
			var q QUICInitial
			var h Hello
			err := q.Add(b[:i], &h)
			want := ErrMalformed
			if i < 5 {
				want = ErrNotQUIC
			}
			if got := sentinel(t, err); got != want {
				t.Fatalf("%s prefix %d: %v, want %v", file, i, err, want)
			}
		}
	}
}

// TestQUICFlipped: flipping any bit of a valid Initial is an error; in the
// protected payload it fails authentication.
func TestQUICFlipped(t *testing.T) {
	b := readHexFile(t, "rfc9001-a2-client-initial.hex")
	const hdrLen = 22 // c3 00000001 08 8394c8f03e515708 00 00 449e 00000002
	for i := range len(b) {
		for bit := range 8 {
			if i >= hdrLen && bit != i%8 {
				continue // one bit per payload byte is enough
			}
			c := slices.Clone(b)
			c[i] ^= 1 << bit
			var q QUICInitial
			var h Hello
			err := q.Add(c, &h)
			if err == nil {
				t.Fatalf("byte %d bit %d flipped: accepted", i, bit)
			}
			sentinel(t, err)
			if i >= hdrLen && !errors.Is(err, ErrMalformed) {
				t.Fatalf("payload byte %d flipped: %v, want ErrMalformed", i, err)
			}
			if i >= hdrLen && q.Opened() {
				t.Fatalf("payload byte %d flipped: Opened, want a packet that fails authentication", i)
			}
		}
	}
	var q QUICInitial
	var h Hello
	if err := q.Add(b, &h); err != nil || !q.Opened() {
		t.Errorf("the RFC 9001 Initial: %v, Opened %v; want nil, true", err, q.Opened())
	}
}

// TestQUICSticky: after nil or a final error, Add returns the same result.
func TestQUICSticky(t *testing.T) {
	rfc := readHexFile(t, "rfc9001-a2-client-initial.hex")
	var q QUICInitial
	var h Hello
	if err := q.Add(rfc, &h); err != nil {
		t.Fatal(err)
	}
	for _, d := range [][]byte{nil, []byte("garbage"), rfc, readTestdata(t, "quic-go-v1.initial-1.bin")} {
		if err := q.Add(d, &h); err != nil {
			t.Fatalf("after success: %v", err)
		}
	}
	checkRFCHello(t, &h)

	q.Reset()
	if q.Version() != 0 {
		t.Fatalf("Version after Reset = %#x", q.Version())
	}
	bad := slices.Clone(rfc)
	bad[100] ^= 1
	err := q.Add(bad, &h)
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("flipped: %v", err)
	}
	if err2 := q.Add(rfc, &h); err2 != err {
		t.Fatalf("after %v: %v", err, err2)
	}

	// Reset makes q reusable for another attempt, buffers kept.
	q.Reset()
	d1, d2 := readTestdata(t, "quic-go-v2.initial-1.bin"), readTestdata(t, "quic-go-v2.initial-2.bin")
	addAll(t, &q, &h, [][]byte{d1, d2}, []error{ErrNeedMore, nil})
	if h.ServerName != "quic2.egress.test" || q.Version() != quicV2 {
		t.Fatalf("after Reset: %q %#x", h.ServerName, q.Version())
	}
}

// rfcDCID is the client's Destination Connection ID in RFC 9001 A.2 and
// RFC 9369 A.2.
var rfcDCID = []byte{0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08}

// testInitial describes a client Initial packet for sealInitial.
type testInitial struct {
	version           uint32 // default v1
	dcid, scid, token []byte // dcid defaults to rfcDCID
	pn                int64
	pnLen             int    // 1-4, default 4
	frames            []byte // the plaintext payload
	padTo             int    // pad the payload with PADDING up to this packet size
	clearFixed        bool   // clear the fixed bit (0x40)
	reserved          byte   // the two reserved bits
	keyDCID           []byte // derive the keys from this instead of dcid
	noMinPayload      bool   // do not pad a too short payload to the 4 bytes the sample needs
}

// sealInitial builds and protects a client Initial packet (RFC 9001 §5.3,
// §5.4) with the package's key derivation. TestSealInitialRFC checks it
// against the RFC sample packets.
func sealInitial(t testing.TB, p testInitial) []byte {
	t.Helper()
	if p.version == 0 {
		p.version = quicV1
	}
	if p.dcid == nil {
		p.dcid = rfcDCID
	}
	if p.pnLen == 0 {
		p.pnLen = 4
	}
	if p.keyDCID == nil {
		p.keyDCID = p.dcid
	}
	aead, hp, iv, err := initialKeys(p.version, p.keyDCID)
	if err != nil {
		t.Fatal(err)
	}
	hdr := longHeaderPrefix(p.version, pktInitial, p.dcid, p.scid)
	hdr[0] |= p.reserved<<2 | byte(p.pnLen-1)
	if p.clearFixed {
		hdr[0] &^= 0x40
	}
	hdr = appendVarint(hdr, uint64(len(p.token)))
	hdr = append(hdr, p.token...)
	payload := slices.Clone(p.frames)
	if n := p.padTo - (len(hdr) + 2 + p.pnLen + len(payload) + 16); n > 0 {
		payload = append(payload, make([]byte, n)...)
	}
	if n := 4 - p.pnLen - len(payload); n > 0 && !p.noMinPayload {
		payload = append(payload, make([]byte, n)...)
	}
	length := p.pnLen + len(payload) + 16
	hdr = append(hdr, 0x40|byte(length>>8), byte(length)) // 2-byte varint
	pnOffset := len(hdr)
	for i := p.pnLen - 1; i >= 0; i-- {
		hdr = append(hdr, byte(p.pn>>(8*i)))
	}
	nonce := iv
	for i := range 8 {
		nonce[4+i] ^= byte(p.pn >> (56 - 8*i))
	}
	pkt := aead.Seal(hdr, nonce[:], payload, hdr)
	if len(pkt) < pnOffset+4+16 {
		return pkt // no sample: left unprotected, the parser must reject it
	}
	var mask [aes.BlockSize]byte
	hp.Encrypt(mask[:], pkt[pnOffset+4:pnOffset+20])
	pkt[0] ^= mask[0] & 0x0f
	for i := range p.pnLen {
		pkt[pnOffset+i] ^= mask[1+i]
	}
	return pkt
}

// longHeaderPrefix returns first byte (fixed bit set, type mapped for the
// version), version and connection IDs.
func longHeaderPrefix(version uint32, typ int, dcid, scid []byte) []byte {
	bits := byte(typ)
	if version == quicV2 {
		bits = byte(typ+1) & 3 // RFC 9369 §3.2
	}
	b := []byte{0xc0 | bits<<4}
	b = binary.BigEndian.AppendUint32(b, version)
	b = append(b, byte(len(dcid)))
	b = append(b, dcid...)
	b = append(b, byte(len(scid)))
	return append(b, scid...)
}

// longHeader returns an unprotected long-header packet of the given type
// with a Length field covering n random-looking bytes (no token field, so
// for 0-RTT and Handshake packets).
func longHeader(version uint32, typ int, dcid, scid []byte, n int) []byte {
	b := longHeaderPrefix(version, typ, dcid, scid)
	b = append(b, 0x40|byte(n>>8), byte(n))
	for i := range n {
		b = append(b, byte(i*7+3))
	}
	return b
}

func appendVarint(b []byte, v uint64) []byte {
	switch {
	case v < 1<<6:
		return append(b, byte(v))
	case v < 1<<14:
		return binary.BigEndian.AppendUint16(b, uint16(v)|0x4000)
	case v < 1<<30:
		return binary.BigEndian.AppendUint32(b, uint32(v)|0x80000000)
	}
	return binary.BigEndian.AppendUint64(b, v|0xc000000000000000)
}

func cryptoFrame(off uint64, data []byte) []byte {
	b := appendVarint([]byte{0x06}, off)
	b = appendVarint(b, uint64(len(data)))
	return append(b, data...)
}

// TestSealInitialRFC: sealInitial reproduces the RFC sample packets exactly,
// from the unprotected header and payload given in the RFCs.
func TestSealInitialRFC(t *testing.T) {
	frame := readHexFile(t, "rfc9001-a2-crypto-frame.hex")
	for _, tc := range []struct {
		file    string
		version uint32
	}{
		{"rfc9001-a2-client-initial.hex", quicV1},
		{"rfc9369-a2-client-initial.hex", quicV2},
	} {
		got := sealInitial(t, testInitial{version: tc.version, pn: 2, frames: frame, padTo: 1200})
		if want := readHexFile(t, tc.file); !bytes.Equal(got, want) {
			t.Errorf("%s: sealInitial differs\n got %x\nwant %x", tc.file, got, want)
		}
	}
}

// TestQUICCrafted feeds Initials built by sealInitial.
func TestQUICCrafted(t *testing.T) {
	hello := rfcHello(t)
	altered := slices.Clone(hello)
	altered[120] ^= 1
	seal := func(pn int64, frames ...[]byte) []byte {
		return sealInitial(t, testInitial{pn: pn, frames: slices.Concat(frames...), padTo: 1200})
	}
	whole := cryptoFrame(0, hello)
	ack := []byte{0x02, 0x05, 0x00, 0x02, 0x01, 0x00, 0x00, 0x00, 0x00} // largest 5, delay 0, 2 more ranges, first range 1, (gap 0, len 0) x2
	ackECN := []byte{0x03, 0x40, 0x10, 0x01, 0x00, 0x00, 0x01, 0x02, 0x03}
	connClose := []byte{0x1c, 0x0a, 0x06, 0x03, 'b', 'y', 'e'}

	// chaos: the hello in 7-byte pieces, last first, with PING and PADDING
	// between them (what Chrome does with fewer pieces).
	var chaos []byte
	for off := len(hello) / 7 * 7; off >= 0; off -= 7 {
		chaos = append(chaos, cryptoFrame(uint64(off), hello[off:min(off+7, len(hello))])...)
		chaos = append(chaos, 0x01, 0x00, 0x00)
	}
	// gaps(n): n one-byte pieces with a gap before each, then the whole.
	gaps := func(n int) []byte {
		var b []byte
		for i := range n {
			b = append(b, cryptoFrame(uint64(2*i+1), hello[2*i+1:2*i+2])...)
		}
		return b
	}

	type tc struct {
		name      string
		datagrams [][]byte
		want      []error
	}
	cases := []tc{
		{"whole hello", [][]byte{seal(0, whole)}, []error{nil}},
		{"v2 whole hello", [][]byte{sealInitial(t, testInitial{version: quicV2, frames: whole, padTo: 1200})}, []error{nil}},
		{"no padding", [][]byte{sealInitial(t, testInitial{frames: whole})}, []error{nil}},
		{"two packets in order", [][]byte{seal(0, cryptoFrame(0, hello[:100])), seal(1, cryptoFrame(100, hello[100:]))}, []error{ErrNeedMore, nil}},
		{"two packets out of order", [][]byte{seal(1, cryptoFrame(100, hello[100:])), seal(0, cryptoFrame(0, hello[:100]))}, []error{ErrNeedMore, nil}},
		{"coalesced out of order", [][]byte{slices.Concat(
			sealInitial(t, testInitial{pn: 1, frames: cryptoFrame(100, hello[100:])}),
			sealInitial(t, testInitial{pn: 0, frames: cryptoFrame(0, hello[:100])}))}, []error{nil}},
		{"frames out of order in a packet", [][]byte{seal(0, cryptoFrame(50, hello[50:]), cryptoFrame(0, hello[:50]))}, []error{nil}},
		{"chaos protection", [][]byte{seal(0, chaos)}, []error{nil}},
		{"retransmission", [][]byte{seal(0, cryptoFrame(0, hello[:100])), seal(0, cryptoFrame(0, hello[:100])), seal(1, cryptoFrame(0, hello[:100])), seal(2, whole)}, []error{ErrNeedMore, ErrNeedMore, ErrNeedMore, nil}},
		{"overlap, same bytes", [][]byte{seal(0, cryptoFrame(0, hello[:150]), cryptoFrame(100, hello[100:]))}, []error{nil}},
		{"overlap, different bytes", [][]byte{seal(0, cryptoFrame(0, hello[:150])), seal(1, cryptoFrame(100, altered[100:]))}, []error{ErrNeedMore, ErrMalformed}},
		{"overlap inside, different bytes", [][]byte{seal(0, cryptoFrame(110, hello[110:130]), cryptoFrame(0, altered))}, []error{ErrMalformed}},
		{"ACK, ACK_ECN, CONNECTION_CLOSE skipped", [][]byte{seal(0, ack, ackECN, []byte{0x01}, connClose, whole)}, []error{nil}},
		{"zero-length CRYPTO", [][]byte{seal(0, cryptoFrame(5000, nil), whole)}, []error{nil}},
		{"64 gaps", [][]byte{seal(0, gaps(64)), seal(1, whole)}, []error{ErrNeedMore, nil}},
		{"65 gaps", [][]byte{seal(0, gaps(65), whole)}, []error{ErrTooLarge}},
		{"CRYPTO up to the limit", [][]byte{seal(0, cryptoFrame(MaxQUICCryptoBytes-5, []byte("12345")))}, []error{ErrNeedMore}},
		{"CRYPTO past the limit", [][]byte{seal(0, cryptoFrame(MaxQUICCryptoBytes-5, []byte("123456")))}, []error{ErrTooLarge}},
		{"CRYPTO at offset 2^62-1", [][]byte{seal(0, cryptoFrame(1<<62-1, []byte("1")))}, []error{ErrTooLarge}},
		{"hello declares too much", [][]byte{seal(0, cryptoFrame(0, []byte{1, 0, 0x40, 0, 3, 3}))}, []error{ErrTooLarge}},
		{"not a client hello", [][]byte{seal(0, cryptoFrame(0, slices.Concat([]byte{2}, hello[1:])))}, []error{ErrMalformed}},
		{"CRYPTO past the hello", [][]byte{seal(0, cryptoFrame(0, slices.Concat(hello, []byte{0x14})))}, []error{ErrMalformed}},
		{"bad hello", [][]byte{seal(0, cryptoFrame(0, []byte{1, 0, 0, 2, 3, 3}))}, []error{ErrMalformed}},
		{"STREAM frame", [][]byte{seal(0, whole, []byte{0x08, 0x00})}, []error{ErrMalformed}}, // stream 0, data to the end
		{"NEW_TOKEN frame", [][]byte{seal(0, []byte{0x07, 0x01, 'x'}, whole)}, []error{ErrMalformed}},
		{"application CONNECTION_CLOSE", [][]byte{seal(0, []byte{0x1d, 0x00, 0x00}, whole)}, []error{ErrMalformed}},
		{"HANDSHAKE_DONE frame", [][]byte{seal(0, []byte{0x1e}, whole)}, []error{ErrMalformed}},
		{"PADDING as 2-byte varint", [][]byte{seal(0, []byte{0x40, 0x00}, whole)}, []error{ErrMalformed}},
		{"truncated CRYPTO", [][]byte{sealInitial(t, testInitial{frames: whole[:100]})}, []error{ErrMalformed}},
		{"truncated ACK", [][]byte{sealInitial(t, testInitial{frames: slices.Concat(whole, []byte{0x02, 0x05, 0x00, 0x07, 0x01, 0, 0})})}, []error{ErrMalformed}},
		{"truncated ACK_ECN", [][]byte{sealInitial(t, testInitial{frames: slices.Concat(whole, ackECN[:7])})}, []error{ErrMalformed}},
		{"truncated CONNECTION_CLOSE", [][]byte{sealInitial(t, testInitial{frames: slices.Concat(whole, connClose[:6])})}, []error{ErrMalformed}},
		{"no frames", [][]byte{sealInitial(t, testInitial{noMinPayload: true})}, []error{ErrMalformed}},
		{"too short for the sample", [][]byte{sealInitial(t, testInitial{pnLen: 1, frames: []byte{1, 0}, noMinPayload: true})}, []error{ErrMalformed}},
		{"reserved bits", [][]byte{sealInitial(t, testInitial{frames: whole, reserved: 1})}, []error{ErrMalformed}},
		{"fixed bit clear", [][]byte{sealInitial(t, testInitial{frames: whole, clearFixed: true})}, []error{ErrMalformed}},
		{"fixed bit clear with a token", [][]byte{sealInitial(t, testInitial{frames: whole, clearFixed: true, token: []byte("tok")})}, []error{nil}},
		{"7-byte DCID", [][]byte{sealInitial(t, testInitial{frames: whole, dcid: rfcDCID[:7]})}, []error{ErrMalformed}},
		{"4-byte DCID with a token", [][]byte{sealInitial(t, testInitial{frames: whole, dcid: rfcDCID[:4], token: []byte("retry token")})}, []error{nil}},
		{"20-byte DCID and SCID", [][]byte{sealInitial(t, testInitial{frames: whole, dcid: make([]byte, 20), scid: make([]byte, 20)})}, []error{nil}},
		{"21-byte DCID", [][]byte{sealInitial(t, testInitial{frames: whole, dcid: make([]byte, 21)})}, []error{ErrMalformed}},
		{"21-byte SCID", [][]byte{sealInitial(t, testInitial{frames: whole, scid: make([]byte, 21)})}, []error{ErrMalformed}},
		{"wrong keys", [][]byte{sealInitial(t, testInitial{frames: whole, keyDCID: []byte("01234567")})}, []error{ErrMalformed}},
		{"DCID changes", [][]byte{seal(0, cryptoFrame(0, hello[:100])),
			sealInitial(t, testInitial{pn: 1, dcid: []byte("01234567"), frames: cryptoFrame(100, hello[100:])})}, []error{ErrNeedMore, ErrDiscarded}},
		// Keys from the first DCID: only the DCID check rejects it.
		{"DCID changes, same keys", [][]byte{seal(0, cryptoFrame(0, hello[:100])),
			sealInitial(t, testInitial{pn: 1, dcid: []byte("01234567"), keyDCID: rfcDCID, frames: cryptoFrame(100, hello[100:])})}, []error{ErrNeedMore, ErrDiscarded}},
		{"version changes", [][]byte{seal(0, cryptoFrame(0, hello[:100])),
			sealInitial(t, testInitial{version: quicV2, pn: 1, frames: cryptoFrame(100, hello[100:])})}, []error{ErrNeedMore, ErrDiscarded}},
		{"DCID changes in a coalesced packet", [][]byte{slices.Concat(
			sealInitial(t, testInitial{frames: cryptoFrame(0, hello[:100])}),
			sealInitial(t, testInitial{pn: 1, dcid: []byte("01234567"), frames: cryptoFrame(100, hello[100:])}))}, []error{ErrMalformed}},
		{"later 0-RTT-only datagram", [][]byte{seal(0, cryptoFrame(0, hello[:100])),
			longHeader(quicV1, pkt0RTT, rfcDCID, nil, 1200), seal(1, cryptoFrame(100, hello[100:]))}, []error{ErrNeedMore, ErrNeedMore, nil}},
		// A spoofer does not know the DCID: its 0-RTT or Handshake packets
		// must not count as the attempt's.
		{"later 0-RTT of another DCID", [][]byte{seal(0, cryptoFrame(0, hello[:100])),
			longHeader(quicV1, pkt0RTT, nil, nil, 0), longHeader(quicV1, pktHandshake, []byte("01234567"), nil, 100),
			seal(1, cryptoFrame(100, hello[100:]))}, []error{ErrNeedMore, ErrDiscarded, ErrDiscarded, nil}},
		{"later short header", [][]byte{seal(0, cryptoFrame(0, hello[:100])), {0x40, 1, 2, 3}}, []error{ErrNeedMore, ErrDiscarded}},
		{"later empty datagram", [][]byte{seal(0, cryptoFrame(0, hello[:100])), {}}, []error{ErrNeedMore, ErrDiscarded}},
		{"later unknown version", [][]byte{seal(0, cryptoFrame(0, hello[:100])), longHeader(0xff00001d, pktInitial, rfcDCID, nil, 1200)}, []error{ErrNeedMore, ErrDiscarded}},
		{"later Retry", [][]byte{seal(0, cryptoFrame(0, hello[:100])), longHeader(quicV1, pktRetry, rfcDCID, nil, 1200)}, []error{ErrNeedMore, ErrDiscarded}},
		// RFC 9000 §A.3: 0x01 in one byte after 0x2fe is 0x301.
		{"packet number wraps the window", [][]byte{
			sealInitial(t, testInitial{pn: 0x2fe, pnLen: 2, frames: cryptoFrame(0, hello[:100])}),
			sealInitial(t, testInitial{pn: 0x301, pnLen: 1, frames: cryptoFrame(100, hello[100:])})}, []error{ErrNeedMore, nil}},
		{"packet number in the window, 1 byte", [][]byte{
			sealInitial(t, testInitial{pn: 0x2fe, pnLen: 2, frames: cryptoFrame(0, hello[:100])}),
			sealInitial(t, testInitial{pn: 0x2ff, pnLen: 1, frames: cryptoFrame(100, hello[100:])})}, []error{ErrNeedMore, nil}},
		{"packet number behind, 1 byte", [][]byte{
			sealInitial(t, testInitial{pn: 0x305, pnLen: 2, frames: cryptoFrame(100, hello[100:])}),
			sealInitial(t, testInitial{pn: 0x2fe, pnLen: 1, frames: cryptoFrame(0, hello[:100])})}, []error{ErrNeedMore, nil}},
		{"large packet number", [][]byte{sealInitial(t, testInitial{pn: 0x12345678, frames: whole})}, []error{nil}},
		{"packet number too far from the largest", [][]byte{
			sealInitial(t, testInitial{pn: 1000, pnLen: 2, frames: cryptoFrame(0, hello[:100])}),
			sealInitial(t, testInitial{pn: 1200, pnLen: 1, frames: cryptoFrame(100, hello[100:])})}, []error{ErrNeedMore, ErrDiscarded}},
		// RFC 9000 §12.2: a later datagram nothing of which opens is
		// discarded, and the attempt goes on; one that opens and is then
		// wrong came from someone who knows the DCID, and ends it.
		{"discarded datagrams, then the rest", [][]byte{seal(0, cryptoFrame(0, hello[:100])),
			sealInitial(t, testInitial{pn: 1, keyDCID: []byte("01234567"), frames: cryptoFrame(100, altered[100:])}),
			slices.Concat(longHeader(quicV1, pkt0RTT, rfcDCID, nil, 100), []byte{0x40, 1, 2, 3}),
			slices.Concat(longHeader(quicV1, pkt0RTT, rfcDCID, nil, 100), sealInitial(t, testInitial{pn: 1, keyDCID: []byte("01234567"), frames: cryptoFrame(100, altered[100:])})),
			seal(1, cryptoFrame(100, hello[100:]))}, []error{ErrNeedMore, ErrDiscarded, ErrNeedMore, ErrDiscarded, nil}},
		{"later reserved bits", [][]byte{seal(0, cryptoFrame(0, hello[:100])),
			sealInitial(t, testInitial{pn: 1, frames: cryptoFrame(100, hello[100:]), reserved: 1})}, []error{ErrNeedMore, ErrMalformed}},
		{"later coalesced packet fails", [][]byte{seal(0, cryptoFrame(0, hello[:100])), slices.Concat(
			sealInitial(t, testInitial{pn: 1, frames: cryptoFrame(100, hello[100:150])}),
			sealInitial(t, testInitial{pn: 2, keyDCID: []byte("01234567"), frames: cryptoFrame(150, hello[150:])}))}, []error{ErrNeedMore, ErrMalformed}},
		{"first datagram fails authentication", [][]byte{sealInitial(t, testInitial{frames: whole, keyDCID: []byte("01234567")}), seal(0, whole)}, []error{ErrMalformed, ErrMalformed}},
	}
	// The Length field and the datagram disagree.
	p := seal(0, whole)
	cases = append(cases,
		tc{"Length past the datagram", [][]byte{p[:len(p)-1]}, []error{ErrMalformed}},
		tc{"token past the datagram", [][]byte{slices.Concat(longHeaderPrefix(quicV1, pktInitial, rfcDCID, nil), []byte{0x44, 0xff})}, []error{ErrMalformed}},
		tc{"trailing byte", [][]byte{slices.Concat(p, []byte{0xc0})}, []error{ErrMalformed}},
	)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var q QUICInitial
			var h Hello
			addAll(t, &q, &h, tc.datagrams, tc.want)
			if tc.want[len(tc.want)-1] == nil {
				checkRFCHello(t, &h)
			}
		})
	}
}

// TestQUICAllocs: once an attempt's keys are derived, Add allocates nothing
// for a datagram that does not complete the hello, and only the hello's
// strings (here the server name) for the one that does.
func TestQUICAllocs(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("allocation counts differ under -cover/-race")
	}
	d1, d2 := readTestdata(t, "quic-go-v1.initial-1.bin"), readTestdata(t, "quic-go-v1.initial-2.bin")
	var q QUICInitial
	var h Hello
	if err := q.Add(d1, &h); err != ErrNeedMore {
		t.Fatal(err)
	}
	saved := q // shares the buffers, which later Adds fill with the same bytes
	// A retransmission of the first datagram.
	if got := testing.AllocsPerRun(100, func() {
		if err := q.Add(d1, &h); err != ErrNeedMore {
			t.Fatal(err)
		}
	}); got != 0 {
		t.Errorf("Add of a retransmitted datagram: %v allocs, want 0", got)
	}
	if got := testing.AllocsPerRun(100, func() {
		q = saved
		if err := q.Add(d2, &h); err != nil {
			t.Fatal(err)
		}
	}); got != 1 {
		t.Errorf("Add of the completing datagram: %v allocs, want 1 (ServerName)", got)
	}
	if h.ServerName != "quic.egress.test" {
		t.Errorf("ServerName %q", h.ServerName)
	}
}

// TestInitialDCID: the Destination Connection ID of the RFC 9001 and RFC
// 9369 client Initials (8394c8f03e515708, RFC 9001 §A.1), read without
// keys; nothing for other first bytes, versions and packet types, or a
// truncated header.
func TestInitialDCID(t *testing.T) {
	v1 := readHexFile(t, "rfc9001-a2-client-initial.hex")
	v2 := readHexFile(t, "rfc9369-a2-client-initial.hex")
	handshake := slices.Clone(v1)
	handshake[0] = 0xe0 // v1 Handshake
	otherVersion := slices.Clone(v1)
	otherVersion[4] = 2
	for _, tc := range []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"v1 Initial", v1, true},
		{"v2 Initial", v2, true},
		{"v1 Handshake", handshake, false},
		{"version 2 (not v2)", otherVersion, false},
		{"short header", []byte{0x40, 1, 2, 3, 4, 5, 6}, false},
		{"header cut in the DCID", v1[:9], false},
		{"empty", nil, false},
	} {
		id, ok := InitialDCID(tc.b)
		if ok != tc.ok || ok && fmt.Sprintf("%x", id.b[:id.n]) != "8394c8f03e515708" {
			t.Errorf("%s: InitialDCID = %x, %v; want 8394c8f03e515708 only for an Initial (%v)", tc.name, id.b[:id.n], ok, tc.ok)
		}
	}
	// The version is part of the ID: the two vectors share their DCID.
	id1, _ := InitialDCID(v1)
	id2, _ := InitialDCID(v2)
	if id1 == id2 {
		t.Error("the v1 and v2 Initials with one DCID have equal IDs")
	}
}

// TestUnscreened: an Initial coalesced after another packet is found,
// and so is any long-header packet of a version other than v1 and v2, or
// a Retry; an Initial first and alone, or none, is not.
func TestUnscreened(t *testing.T) {
	v1 := readHexFile(t, "rfc9001-a2-client-initial.hex")
	zeroRTT := longHeader(quicV1, pkt0RTT, rfcDCID, nil, 100)
	handshake := longHeader(quicV1, pktHandshake, rfcDCID, nil, 100)
	draft29 := longHeader(0xff00001d, pktInitial, rfcDCID, nil, 100)
	for _, tc := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"Initial alone", v1, false},
		{"Initial, then 0-RTT", slices.Concat(v1, zeroRTT), false},
		{"two Initials", slices.Concat(v1, v1), true},
		{"Initial, 0-RTT, Initial", slices.Concat(v1, zeroRTT, v1), true},
		{"0-RTT, then Initial", slices.Concat(zeroRTT, v1), true},
		{"Handshake, 0-RTT, then Initial", slices.Concat(handshake, zeroRTT, v1), true},
		{"0-RTT, then a short header", slices.Concat(zeroRTT, []byte{0x40, 1, 2, 3}), false},
		{"0-RTT, then an Initial of another version", slices.Concat(zeroRTT, draft29), true},
		{"an Initial of another version", draft29, true},
		{"Initial, then a packet of another version", slices.Concat(v1, draft29), true},
		{"a greased version", longHeader(0x1a2a3a4a, pktHandshake, rfcDCID, nil, 100), true},
		{"version negotiation", slices.Concat([]byte{0x80, 0, 0, 0, 0, 1, 1, 1, 2}, []byte{0, 0, 0, 1}), true},
		{"a Retry", slices.Concat([]byte{0xf0, 0, 0, 0, 1, 1, 1, 1, 2}, make([]byte, 16)), true},
		{"0-RTT whose Length passes the datagram", zeroRTT[:len(zeroRTT)-1], false},
		{"0-RTT whose payload holds an Initial", slices.Concat(longHeaderPrefix(quicV1, pkt0RTT, rfcDCID, nil), []byte{0x40 | byte(len(v1)>>8), byte(len(v1))}, v1), false},
		{"0-RTT, then a truncated Initial header", slices.Concat(zeroRTT, v1[:3]), false},
		{"short header", []byte{0x40, 1, 2, 3, 4, 5, 6}, false},
		{"empty", nil, false},
	} {
		if got := Unscreened(tc.b); got != tc.want {
			t.Errorf("%s: Unscreened = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestQUICVerifier: once the hello is decided, a later Initial of the
// attempt goes on only if it carries the decided hello's bytes. The
// attacks it stops: an allowed hello in packets a server drops (a short
// datagram, a reused packet number, another version), then another hello
// for the same connection ID in packets it keeps.
func TestQUICVerifier(t *testing.T) {
	hello := rfcHello(t)
	other := slices.Clone(hello)
	other[120] ^= 1 // another hello of the same length and header
	seal := func(pn int64, frames ...[]byte) []byte {
		return sealInitial(t, testInitial{pn: pn, frames: slices.Concat(frames...), padTo: 1200})
	}
	toServer := func(pn int64, frames ...[]byte) []byte {
		return sealInitial(t, testInitial{dcid: []byte("server-cid"), keyDCID: rfcDCID, pn: pn, frames: slices.Concat(frames...), padTo: 1200})
	}
	first := seal(0, cryptoFrame(0, hello))
	flipped := slices.Clone(first)
	flipped[len(flipped)-1] ^= 1
	for _, tc := range []struct {
		name     string
		datagram []byte
		ok       bool
	}{
		{"the decided datagram again", first, true},
		{"a retransmission in other pieces", seal(1, cryptoFrame(100, hello[100:]), cryptoFrame(0, hello[:100])), true},
		{"part of the hello, with PING, ACK and PADDING", seal(2, []byte{0x01}, cryptoFrame(10, hello[10:20]), []byte{0x02, 0x00, 0x00, 0x00, 0x00}), true},
		{"no CRYPTO frame", seal(3, []byte{0x01}), true},
		{"an Initial, then a 0-RTT packet", slices.Concat(sealInitial(t, testInitial{pn: 4, frames: cryptoFrame(0, hello)}), longHeader(quicV1, pkt0RTT, rfcDCID, nil, 40)), true},
		{"another hello", seal(1, cryptoFrame(0, other)), false},
		{"another hello's tail, same packet number", seal(0, cryptoFrame(100, other[100:])), false},
		{"bytes past the hello", seal(1, cryptoFrame(uint64(len(hello)), []byte{1})), false},
		{"the hello, then more", seal(1, cryptoFrame(0, append(slices.Clone(hello), 0))), false},
		{"CRYPTO past MaxQUICCryptoBytes", seal(1, cryptoFrame(MaxQUICCryptoBytes-5, []byte("123456"))), false},
		{"CRYPTO at offset 2^62-1", seal(1, cryptoFrame(1<<62-1, []byte("1"))), false},
		{"an empty CRYPTO frame past the hello", seal(1, cryptoFrame(uint64(len(hello))+1, nil)), false},
		{"fails authentication", flipped, false},
		{"the same DCID, version 2", sealInitial(t, testInitial{version: quicV2, frames: cryptoFrame(0, hello), padTo: 1200}), false},
		{"another DCID", sealInitial(t, testInitial{dcid: []byte{1, 2, 3, 4, 5, 6, 7, 8}, frames: cryptoFrame(0, hello), padTo: 1200}), false},
		{"a frame not allowed in Initials", seal(1, []byte{0x08, 0x00}), false},
		// RFC 9000 §7.2: once the server has answered, the client sends to
		// its connection ID, with the keys of rfcDCID.
		{"the hello's tail to the server's connection ID", toServer(1, cryptoFrame(100, hello[100:])), true},
		{"another hello's tail to the server's connection ID", toServer(1, cryptoFrame(100, other[100:])), false},
		{"the hello's tail and a second hello (after a HelloRetryRequest) to the server's connection ID", toServer(1, cryptoFrame(100, append(slices.Clone(hello[100:]), other...))), true},
		{"a second hello alone to the server's connection ID", toServer(1, cryptoFrame(uint64(len(hello)), other)), true},
		{"another hello's tail, then more, to the server's connection ID", toServer(1, cryptoFrame(100, append(slices.Clone(other[100:]), hello...))), false},
		// RFC 9368: after compatible version negotiation the client goes
		// on in version 2, to the server's connection ID, with v2 keys
		// for rfcDCID.
		{"version 2, the hello's tail to the server's connection ID", sealInitial(t, testInitial{version: quicV2, dcid: []byte("server-cid"), keyDCID: rfcDCID, pn: 1, frames: cryptoFrame(100, hello[100:]), padTo: 1200}), true},
		{"version 2, another hello's tail to the server's connection ID", sealInitial(t, testInitial{version: quicV2, dcid: []byte("server-cid"), keyDCID: rfcDCID, pn: 1, frames: cryptoFrame(100, other[100:]), padTo: 1200}), false},
		{"the server's connection ID with keys of its own", sealInitial(t, testInitial{dcid: []byte("server-cid"), pn: 1, frames: cryptoFrame(100, hello[100:]), padTo: 1200}), false},
		{"an Initial, then another hello's", slices.Concat(sealInitial(t, testInitial{pn: 1, frames: cryptoFrame(0, hello)}), sealInitial(t, testInitial{pn: 2, frames: cryptoFrame(0, other)})), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var q QUICInitial
			var h Hello
			if v := q.Verifier(); v != nil {
				t.Fatal("a Verifier before the hello")
			}
			if err := q.Add(first, &h); err != nil {
				t.Fatal(err)
			}
			v := q.Verifier()
			if id, _ := InitialDCID(first); v.ConnID() != id {
				t.Fatalf("ConnID %v, want InitialDCID's %v", v.ConnID(), id)
			}
			q.Reset() // the verifier keeps its own copies
			q.Add(sealInitial(t, testInitial{dcid: []byte{9, 9, 9, 9, 9, 9, 9, 9}, frames: cryptoFrame(0, other), padTo: 1200}), &h)
			err := v.Check(tc.datagram)
			if (err == nil) != tc.ok {
				t.Fatalf("Check = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrMalformed) {
				t.Errorf("Check = %v, want ErrMalformed", err)
			}
			if err := v.Check(first); err != nil {
				t.Errorf("the decided datagram after that: %v", err)
			}
		})
	}
	var q QUICInitial
	var h Hello
	if q.Add(flipped, &h) == nil || q.Verifier() != nil {
		t.Error("a Verifier after an error")
	}
}

// TestQUICVerifierAllocs: Check allocates nothing once its decryption
// buffer has grown to the datagram's size.
func TestQUICVerifierAllocs(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("allocation counts differ under -cover/-race")
	}
	d1, d2 := readTestdata(t, "quic-go-v1.initial-1.bin"), readTestdata(t, "quic-go-v1.initial-2.bin")
	var q QUICInitial
	var h Hello
	q.Add(d1, &h)
	if err := q.Add(d2, &h); err != nil {
		t.Fatal(err)
	}
	v := q.Verifier()
	if got := testing.AllocsPerRun(100, func() {
		if err := v.Check(d1); err != nil {
			t.Fatal(err)
		}
	}); got != 0 {
		t.Errorf("Check: %v allocs, want 0", got)
	}
}
