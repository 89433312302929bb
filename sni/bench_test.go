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
