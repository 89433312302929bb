package sni

import (
	"errors"
	"reflect"
	"slices"
	"testing"
)

// TestVectors is the golden test: every captured hello in testdata/ gives the
// SNI, ALPN, JA3 string, JA3 hash, JA4 and (where published) JA4_r that other
// tools computed for it (tshark, Salesforce's JA3 baseline, FoxIO).
func TestVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			b := readVector(t, v)
			var h Hello
			n, err := ParseRecords(b, &h)
			if err != nil {
				t.Fatalf("ParseRecords: %v", err)
			}
			if n != len(b) {
				t.Errorf("n = %d, want %d (the file holds exactly the hello's records)", n, len(b))
			}
			if h.ServerName != v.SNI || h.HasServerName != v.HasSNI {
				t.Errorf("SNI = %q/%v, want %q/%v", h.ServerName, h.HasServerName, v.SNI, v.HasSNI)
			}
			if !slices.Equal(h.ALPN, v.ALPN) && !(len(h.ALPN) == 0 && len(v.ALPN) == 0) {
				t.Errorf("ALPN = %q, want %q", h.ALPN, v.ALPN)
			}
			full, hash := h.JA3()
			if full != v.JA3String {
				t.Errorf("JA3 string\n got %s\nwant %s", full, v.JA3String)
			}
			if hash != v.JA3 {
				t.Errorf("JA3 = %s, want %s", hash, v.JA3)
			}
			if s := h.JA3String(); s != full {
				t.Errorf("JA3String() = %s, JA3() = %s", s, full)
			}
			if got := h.JA4(false); got != v.JA4 {
				t.Errorf("JA4 = %s, want %s", got, v.JA4)
			}
			if v.JA4R != "" {
				if got := h.JA4Raw(false); got != v.JA4R {
					t.Errorf("JA4_r\n got %s\nwant %s", got, v.JA4R)
				}
			}
			if got := h.JA4(true); got != "q"+v.JA4[1:] {
				t.Errorf("JA4(quic) = %s, want q%s", got, v.JA4[1:])
			}
		})
	}
}

// TestVectorsPrefixes feeds every vector one byte at a time: every strict
// prefix is ErrNeedMore, and the whole input (also with bytes after it) gives
// the same result.
func TestVectorsPrefixes(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			b := readVector(t, v)
			var h Hello
			if _, err := ParseRecords(b, &h); err != nil {
				t.Fatal(err)
			}
			want := summarize(&h)
			checkPrefixes(t, b, want)
		})
	}
}

// checkPrefixes checks that every strict prefix of b is ErrNeedMore, that b
// parses to want, and that b followed by unrelated bytes parses to want with
// the same n.
func checkPrefixes(t *testing.T, b []byte, want helloSummary) {
	t.Helper()
	var h Hello
	for i := range len(b) {
		if _, err := ParseRecords(b[:i], &h); !errors.Is(err, ErrNeedMore) || err != ErrNeedMore {
			t.Fatalf("prefix of %d/%d bytes: err = %v, want ErrNeedMore", i, len(b), err)
		}
	}
	for _, tail := range [][]byte{nil, {0x17, 3, 3, 0, 1, 0}, []byte("GET / HTTP/1.1\r\n")} {
		in := append(slices.Clip(b), tail...)
		n, err := ParseRecords(in, &h)
		if err != nil {
			t.Fatalf("with %d trailing bytes: %v", len(tail), err)
		}
		if n != len(b) {
			t.Fatalf("with %d trailing bytes: n = %d, want %d", len(tail), n, len(b))
		}
		if got := summarize(&h); !reflect.DeepEqual(got, want) {
			t.Fatalf("with %d trailing bytes:\n got %+v\nwant %+v", len(tail), got, want)
		}
	}
}

// TestVectorsResplit re-frames every vector's handshake message as two
// records at every split offset, and as one record per byte; the result must
// equal the unsplit parse.
func TestVectorsResplit(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			b := readVector(t, v)
			msg := handshakeFromRecords(t, b)
			var h Hello
			if _, err := ParseRecords(frame(msg), &h); err != nil {
				t.Fatal(err)
			}
			want := summarize(&h)
			for k := 1; k < len(msg); k++ {
				in := frame(msg, k)
				n, err := ParseRecords(in, &h)
				if err != nil {
					t.Fatalf("split at %d: %v", k, err)
				}
				if n != len(in) {
					t.Fatalf("split at %d: n = %d, want %d", k, n, len(in))
				}
				if got := summarize(&h); !reflect.DeepEqual(got, want) {
					t.Fatalf("split at %d:\n got %+v\nwant %+v", k, got, want)
				}
				// Prefixes of the re-framed input, for a few split points
				// (all of them would be slow under -race).
				if k == 1 || k == 3 || k == len(msg)/2 || k == len(msg)-1 {
					checkPrefixes(t, in, want)
				}
			}
			// One record per byte: the handshake header itself spans four
			// records.
			in := frameEvery(msg, 1)
			if len(in) > MaxHelloBytes {
				t.Fatalf("test input too large: %d", len(in))
			}
			checkPrefixes(t, in, want)
			// Three records.
			checkPrefixes(t, frame(msg, 2, len(msg)/2), want)
		})
	}
}

// TestVectorsParseHandshake checks that ParseHandshake on the bare handshake
// message agrees with ParseRecords.
func TestVectorsParseHandshake(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			b := readVector(t, v)
			var h Hello
			if _, err := ParseRecords(b, &h); err != nil {
				t.Fatal(err)
			}
			want := summarize(&h)
			msg := handshakeFromRecords(t, b)
			if err := ParseHandshake(msg, &h); err != nil {
				t.Fatal(err)
			}
			if got := summarize(&h); !reflect.DeepEqual(got, want) {
				t.Fatalf("got %+v\nwant %+v", got, want)
			}
			for i := range len(msg) {
				if err := ParseHandshake(msg[:i], &h); err != ErrNeedMore {
					t.Fatalf("prefix %d: %v, want ErrNeedMore", i, err)
				}
			}
			if err := ParseHandshake(append(slices.Clip(msg), 0), &h); sentinel(t, err) != ErrMalformed {
				t.Fatalf("trailing byte: %v, want ErrMalformed", err)
			}
		})
	}
}

// TestVectorRecordLayout pins the record layout of the edge vectors, so that
// the split tests above are known to cover real multi-record input.
func TestVectorRecordLayout(t *testing.T) {
	for file, want := range map[string][]int{
		"curl-7.88.1-split-2records.bin":         {156, 356},
		"openssl-3.0.19-maxfrag512-2records.bin": {512, 81},
		"go1.26-pq-2segments.bin":                {1519},
	} {
		b := readVector(t, vector{File: file})
		var got []int
		for p := 0; p < len(b); {
			n := int(b[p+3])<<8 | int(b[p+4])
			got = append(got, n)
			p += 5 + n
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: record lengths %v, want %v", file, got, want)
		}
	}
}
