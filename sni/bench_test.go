package sni

import (
	"testing"
)

var benchVectors = []struct{ name, file string }{
	{"go-pq", "go1.26-pq-2segments.bin"},                // Go 1.26, X25519MLKEM768, 1524 bytes
	{"chrome", "chrome-cloudflare-tcp.clienthello.bin"}, // Chrome with GREASE, 517 bytes
	{"openssl-2records", "openssl-3.0.19-maxfrag512-2records.bin"},
}

// BenchmarkParseJA3JA4 measures what the proxy does per connection: parse
// the hello into a reused Hello, then compute JA3 and JA4.
func BenchmarkParseJA3JA4(b *testing.B) {
	for _, bv := range benchVectors {
		in := readVector(b, vector{File: bv.file})
		b.Run(bv.name, func(b *testing.B) {
			var h Hello
			b.ReportAllocs()
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				if _, err := ParseRecords(in, &h); err != nil {
					b.Fatal(err)
				}
				_, _ = h.JA3()
				_ = h.JA4(false)
			}
		})
	}
}

func BenchmarkParseRecords(b *testing.B) {
	for _, bv := range benchVectors {
		in := readVector(b, vector{File: bv.file})
		b.Run(bv.name, func(b *testing.B) {
			var h Hello
			b.ReportAllocs()
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				if _, err := ParseRecords(in, &h); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkFingerprints(b *testing.B) {
	in := readVector(b, vector{File: "chrome-cloudflare-tcp.clienthello.bin"})
	var h Hello
	if _, err := ParseRecords(in, &h); err != nil {
		b.Fatal(err)
	}
	b.Run("JA3", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = h.JA3()
		}
	})
	b.Run("JA4", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = h.JA4(false)
		}
	})
	b.Run("JA4Raw", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = h.JA4Raw(false)
		}
	})
}

// BenchmarkNeedMore is the cost of the proxy's read loop before the hello is
// complete: a call that only looks at record headers.
func BenchmarkNeedMore(b *testing.B) {
	in := readVector(b, vector{File: "go1.26-pq-2segments.bin"})[:1460]
	var h Hello
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseRecords(in, &h); err != ErrNeedMore {
			b.Fatal(err)
		}
	}
}

// TestAllocs pins the allocation bound: ParseRecords into a reused Hello
// allocates only for the strings it returns: one for ServerName, plus one
// that all ALPN names other than the common ones (h2, http/1.1, h3,
// http/1.0, acme-tls/1, which are interned) share, however many there are. The reassembly buffer for multi-record
// hellos lives in the Hello and is reused. JA4 allocates its result string,
// JA3 its two strings, for hellos whose lists fit the stack buffers (all real
// ones do).
func TestAllocs(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("allocation counts differ under -cover/-race")
	}
	for _, tc := range []struct {
		file        string
		parseAllocs float64
	}{
		{"chrome-cloudflare-tcp.clienthello.bin", 1},      // SNI; ALPN h2, http/1.1 interned
		{"go1.26-pq-2segments.bin", 1},                    // SNI; ALPN interned
		{"curl-7.88.1-split-2records.bin", 1},             // two records: reassembly buffer reused
		{"https-connect.clienthello.bin", 0},              // no SNI, no ALPN
		{"openssl-3.0.19-maxfrag512-2records.bin", 1 + 1}, // SNI + 33 of its 37 ALPN names in one string (h2, http/1.1, h3, acme-tls/1 are interned)
		{"tls-non-ascii-alpn.clienthello.bin", 1 + 1},     // SNI + ALPN "\xba\xad"
		{"openssl-3.0.19-nosni.bin", 0},                   // ALPN only, all interned
		{"https3-301-get.clienthello.bin", 1},             // no extensions but SNI
	} {
		in := readVector(t, vector{File: tc.file})
		var h Hello
		if _, err := ParseRecords(in, &h); err != nil {
			t.Fatal(err)
		}
		got := testing.AllocsPerRun(100, func() {
			if _, err := ParseRecords(in, &h); err != nil {
				t.Fatal(err)
			}
		})
		if got != tc.parseAllocs {
			t.Errorf("%s: ParseRecords allocs = %v, want %v", tc.file, got, tc.parseAllocs)
		}
		if got := testing.AllocsPerRun(100, func() { _ = h.JA4(false) }); got != 1 {
			t.Errorf("%s: JA4 allocs = %v, want 1", tc.file, got)
		}
		if got := testing.AllocsPerRun(100, func() { _, _ = h.JA3() }); got != 2 {
			t.Errorf("%s: JA3 allocs = %v, want 2", tc.file, got)
		}
		if got := testing.AllocsPerRun(100, func() { _ = h.JA3String() }); got != 1 {
			t.Errorf("%s: JA3String allocs = %v, want 1", tc.file, got)
		}
	}
	// A hello can list maxALPNNames short protocol names: still one string
	// for them all.
	var many []string
	for i := range maxALPNNames / 2 {
		many = append(many, string([]byte{'a' + byte(i%26), 'a' + byte(i/26%26)}), "h2")
	}
	in := withExts(testExt{0, sniData(0, "a.example")}, testExt{16, alpnData(many...)}).records()
	var h Hello
	if _, err := ParseRecords(in, &h); err != nil || len(h.ALPN) != len(many) {
		t.Fatalf("%d ALPN names: got %d, %v", len(many), len(h.ALPN), err)
	}
	if got := testing.AllocsPerRun(100, func() { _, _ = ParseRecords(in, &h) }); got != 1+1 {
		t.Errorf("%d ALPN names: ParseRecords allocs = %v, want 2 (SNI, one string for the names)", len(many), got)
	}
	// ErrNeedMore does not allocate.
	in = readVector(t, vector{File: "go1.26-pq-2segments.bin"})[:1000]
	if got := testing.AllocsPerRun(100, func() { _, _ = ParseRecords(in, &h) }); got != 0 {
		t.Errorf("ErrNeedMore allocs = %v, want 0", got)
	}
}

// BenchmarkQUICInitial measures what the proxy does per QUIC connection
// attempt: derive the Initial keys, decrypt the datagrams, reassemble and
// parse the hello, then compute JA3 and JA4.
func BenchmarkQUICInitial(b *testing.B) {
	for _, bc := range []struct {
		name  string
		files []string
	}{
		{"chrome", []string{"chrome-cloudflare-quic.initial.bin"}},
		{"quic-go-2datagrams", []string{"quic-go-v1.initial-1.bin", "quic-go-v1.initial-2.bin"}},
	} {
		var datagrams [][]byte
		size := 0
		for _, f := range bc.files {
			datagrams = append(datagrams, readTestdata(b, f))
			size += len(datagrams[len(datagrams)-1])
		}
		b.Run(bc.name, func(b *testing.B) {
			var q QUICInitial
			var h Hello
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				q.Reset()
				var err error
				for _, d := range datagrams {
					err = q.Add(d, &h)
				}
				if err != nil {
					b.Fatal(err)
				}
				_, _ = h.JA3()
				_ = h.JA4(true)
			}
		})
	}
}

// maxBenchDatagram is the largest datagram egressd's QUIC reader takes
// (proxy's maxQUICDatagram).
const maxBenchDatagram = 9216

// tinyCryptoInitial seals one Initial of maxBenchDatagram bytes: the
// CRYPTO frames of setup (one byte each, at the given offsets), then as
// many one-byte CRYPTO frames at next(0), next(1), ... as fit. Every byte
// at offset x is byte(x), so overlaps agree.
func tinyCryptoInitial(tb testing.TB, setup []uint64, next func(i int) uint64) []byte {
	tb.Helper()
	one := func(b []byte, off uint64) []byte { return append(b, cryptoFrame(off, []byte{byte(off)})...) }
	var frames []byte
	for _, off := range setup {
		frames = one(frames, off)
	}
	// Header: 1+4 + 1+8 + 1 + 1 (token length) + 2 (Length) + 4 (packet
	// number); 16 bytes of AEAD tag.
	room := maxBenchDatagram - 22 - 16
	for i := 0; ; i++ {
		f := one(nil, next(i))
		if len(frames)+len(f) > room {
			break
		}
		frames = append(frames, f...)
	}
	d := sealInitial(tb, testInitial{frames: frames, padTo: maxBenchDatagram})
	if len(d) != maxBenchDatagram {
		tb.Fatalf("datagram of %d bytes", len(d))
	}
	return d
}

// BenchmarkQUICCryptoRanges measures CRYPTO reassembly of a hostile
// datagram-sized Initial made of tiny frames against a normal Initial:
// "normal" is the RFC 9001 hello in one frame (1200 bytes); the others are
// 9216-byte Initials of one-byte CRYPTO frames (about 1,800) that
//   - one-range: extend a single range (frame parsing alone);
//   - last-of-63: extend the last of 63 ranges;
//   - first-of-63: extend the first of 63 ranges;
//   - front-churn: alternately open a 64th range in front of the first and
//     join the two, so that every frame shifts the whole range table.
//
// Each iteration resets the QUICInitial, so the Initial keys are derived
// every time, as for a new connection attempt.
func BenchmarkQUICCryptoRanges(b *testing.B) {
	odd := func(n int, base uint64) []uint64 { // n one-byte ranges at base, base+2, ...
		var offs []uint64
		for k := range n {
			offs = append(offs, base+2*uint64(k))
		}
		return offs
	}
	const far = 8000 // past where the extended first range grows
	for _, bc := range []struct {
		name    string
		d       []byte
		want    error
		nranges int
	}{
		{"normal", sealInitial(b, testInitial{frames: cryptoFrame(0, rfcHello(b)), padTo: 1200}), nil, 1},
		{"one-range", tinyCryptoInitial(b, nil, func(i int) uint64 { return uint64(1 + i) }), ErrNeedMore, 1},
		{"last-of-63", tinyCryptoInitial(b, odd(63, 1), func(i int) uint64 { return uint64(2*62 + 2 + i) }), ErrNeedMore, 63},
		{"first-of-63", tinyCryptoInitial(b, append([]uint64{1}, odd(62, far)...), func(i int) uint64 { return uint64(2 + i) }), ErrNeedMore, 63},
		{"front-churn", tinyCryptoInitial(b, odd(63, far), func(i int) uint64 { return uint64(far - 2 - 2*(i/2) + i%2) }), ErrNeedMore, 63},
	} {
		var q QUICInitial
		var h Hello
		if err := q.Add(bc.d, &h); err != bc.want || q.nranges != bc.nranges {
			b.Fatalf("%s: %v with %d ranges, want %v with %d", bc.name, err, q.nranges, bc.want, bc.nranges)
		}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.d)))
			for b.Loop() {
				q.Reset()
				if err := q.Add(bc.d, &h); err != bc.want {
					b.Fatal(err)
				}
			}
		})
	}
}
