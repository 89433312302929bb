package sni

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
)

func withExts(exts ...testExt) testHello {
	th := baseHello()
	th.exts = exts
	return th
}

func appendExt(th testHello, exts ...testExt) testHello {
	th.exts = append(append([]testExt(nil), th.exts...), exts...)
	return th
}

// TestParseRecordsErrors is the negative table: each input must fail with
// exactly the given sentinel, and the message must contain the given text.
func TestParseRecordsErrors(t *testing.T) {
	valid := baseHello().records()
	msg := handshake(baseHello().body())

	// A hello whose records exceed MaxHelloBytes although its declared
	// length is allowed: 16000 bytes of handshake in 100-byte records.
	big := baseHello()
	big.exts = append(big.exts, testExt{0x0015, make([]byte, 16000-len(msg)-4)})
	bigMsg := handshake(big.body())
	bigRecords := frameEvery(bigMsg, 100)

	for _, tc := range []struct {
		name    string
		in      []byte
		want    error
		message string
	}{
		{"empty", nil, ErrNeedMore, ""},
		{"one byte", []byte{22}, ErrNeedMore, ""},
		{"record header only", valid[:5], ErrNeedMore, ""},
		{"handshake header only", valid[:9], ErrNeedMore, ""},
		{"all but the last byte", valid[:len(valid)-1], ErrNeedMore, ""},

		{"HTTP GET", []byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"), ErrNotTLS, ""},
		{"HTTP CONNECT", []byte("CONNECT example.com:443 HTTP/1.1\r\n"), ErrNotTLS, ""},
		{"G alone", []byte("G"), ErrNotTLS, ""},
		{"SSH banner", []byte("SSH-2.0-OpenSSH_9.6\r\n"), ErrNotTLS, ""},
		{"SSLv2 compatible hello", []byte{0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10}, ErrNotTLS, ""},
		{"application data record first", []byte{0x17, 3, 3, 0, 5, 1, 2, 3, 4, 5}, ErrNotTLS, ""},
		{"alert record first", []byte{0x15, 3, 1, 0, 2, 2, 40}, ErrNotTLS, ""},
		{"record version major 2", []byte{22, 2, 0, 0, 4}, ErrNotTLS, ""},
		{"record version major 0x30", []byte{22, 0x30}, ErrNotTLS, ""},

		{"zero-length record", []byte{22, 3, 1, 0, 0}, ErrMalformed, "zero-length"},
		{"zero-length record after a fragment", append(frame(msg[:10]), 22, 3, 1, 0, 0), ErrMalformed, "zero-length"},
		{"record longer than 2^14", []byte{22, 3, 1, 0x40, 0x01}, ErrMalformed, "exceeds 2^14"},
		{"handshake type 2 (server_hello)", []byte{22, 3, 3, 0, 4, 2, 0, 0, 0}, ErrMalformed, "handshake message type 2"},
		{"handshake type 2 seen in first byte", []byte{22, 3, 3, 0, 40, 2}, ErrMalformed, "handshake message type 2"},
		{"handshake type 11 (certificate)", []byte{22, 3, 1, 0, 1, 11}, ErrMalformed, "handshake message type 11"},
		{"application data between fragments", append(frame(msg[:10]), 0x17, 3, 3, 0, 1, 0), ErrMalformed, "content type 23"},
		{"alert between fragments", append(frame(msg[:10]), 0x15, 3, 3, 0, 2, 2, 40), ErrMalformed, "content type 21"},
		{"bad record version in second record", append(frame(msg[:10]), 22, 2, 0, 0, 1, 0), ErrMalformed, "record version major 2"},
		{"record continues past the hello", frame(append(append([]byte{}, msg...), 1, 0, 0, 0)), ErrMalformed, "past the end"},
		{"record continues past the hello (header only)", append(frame(msg[:10]), 22, 3, 1, 0x10, 0), ErrMalformed, "past the end"},

		{"declared length over MaxHandshakeBytes", []byte{22, 3, 1, 0x40, 0, 1, 0x00, 0x3f, 0xfd}, ErrTooLarge, "declared length 16385"},
		{"declared length 2^24-1", []byte{22, 3, 1, 0x40, 0, 1, 0xff, 0xff, 0xff}, ErrTooLarge, "declared length"},
		{"declared length in 1-byte records", frameEvery([]byte{1, 0xff, 0xff, 0xff}, 1), ErrTooLarge, "declared length"},
		{"records exceed MaxHelloBytes", bigRecords, ErrTooLarge, "records carrying it exceed"},
		{"records exceed MaxHelloBytes (prefix)", bigRecords[:MaxHelloBytes], ErrTooLarge, "records carrying it exceed"},

		{"empty body", frame(handshake(nil)), ErrMalformed, "truncated before the session id"},
		{"truncated random", frame(handshake([]byte{3, 3, 0, 0})), ErrMalformed, "truncated before the session id"},
		{"truncated session id", frame(handshake(append([]byte{3, 3}, append(make([]byte, 32), 5, 0)...))), ErrMalformed, "truncated session id"},
		{"session id of 33 bytes", func() []byte { th := baseHello(); th.sessionID = make([]byte, 33); return th.records() }(), ErrMalformed, "session id of 33 bytes"},
		{"empty cipher list", func() []byte { th := baseHello(); th.ciphers = nil; return th.records() }(), ErrMalformed, "empty cipher suite list"},
		{"empty compression list", func() []byte { th := baseHello(); th.compression = nil; return th.records() }(), ErrMalformed, "empty compression method list"},
		{"trailing bytes after extensions", func() []byte { th := baseHello(); th.trailing = []byte{0}; return th.records() }(), ErrMalformed, "1 bytes after the extensions block"},
		{"truncated extensions block", frame(handshake(append(baseHello().body(), 0)[:len(baseHello().body())-1])), ErrMalformed, ""},
		{"extensions block length too long", func() []byte {
			th := baseHello()
			th.noExts = true
			th.trailing = []byte{0x00, 0x10, 0x00, 0x00, 0x00, 0x00}
			return th.records()
		}(), ErrMalformed, "truncated extensions block"},
		{"one byte of extensions block", func() []byte { th := baseHello(); th.noExts = true; th.trailing = []byte{0}; return th.records() }(), ErrMalformed, "truncated extensions block"},
		{"truncated extension length", func() []byte {
			th := baseHello()
			th.noExts = true
			th.trailing = []byte{0x00, 0x03, 0x00, 0x00, 0x00}
			return th.records()
		}(), ErrMalformed, "truncated extension"},
		{"extension length past the block", func() []byte {
			th := baseHello()
			th.noExts = true
			th.trailing = []byte{0x00, 0x06, 0x00, 0x15, 0x00, 0x0a, 0x00, 0x00}
			return th.records()
		}(), ErrMalformed, "truncated extension"},

		{"duplicate extension", appendExt(baseHello(), testExt{0x0000, sniData(0, "other.example")}).records(), ErrMalformed, "duplicate extension 0x0000"},
		{"duplicate unknown extension", appendExt(baseHello(), testExt{0x0015, nil}, testExt{0x0015, nil}).records(), ErrMalformed, "duplicate extension 0x0015"},
		{"duplicate GREASE extension", appendExt(baseHello(), testExt{0x0a0a, nil}, testExt{0x0a0a, []byte{0}}).records(), ErrMalformed, "duplicate extension 0x0a0a"},
		{"duplicate after many extensions", func() []byte {
			th := baseHello()
			for i := range 100 {
				th.exts = append(th.exts, testExt{uint16(0x1000 + i), nil})
			}
			th.exts = append(th.exts, testExt{0x1005, nil})
			return th.records()
		}(), ErrMalformed, "duplicate extension 0x1005"},

		{"two host_names", withExts(testExt{0, sniData(0, "a.example", 0, "b.example")}).records(), ErrMalformed, "more than one host_name"},
		{"empty host_name", withExts(testExt{0, sniData(0, "")}).records(), ErrMalformed, "empty name"},
		{"empty name of another type", withExts(testExt{0, sniData(1, "")}).records(), ErrMalformed, "empty name"},
		{"zero-length server_name list", withExts(testExt{0, []byte{0, 0}}).records(), ErrMalformed, "server_name: empty list"},
		{"empty server_name extension", withExts(testExt{0, nil}).records(), ErrMalformed, "server_name: truncated list"},
		{"server_name list length too long", withExts(testExt{0, []byte{0, 9, 0, 0, 1, 'a'}}).records(), ErrMalformed, "server_name: truncated list"},
		{"server_name entry truncated", withExts(testExt{0, []byte{0, 3, 0, 0, 5}}).records(), ErrMalformed, "server_name: truncated entry"},
		{"server_name trailing bytes", withExts(testExt{0, append(sniData(0, "a.example"), 0)}).records(), ErrMalformed, "extension 0x0000: 1 bytes after"},

		{"empty alpn list", withExts(testExt{16, []byte{0, 0}}).records(), ErrMalformed, "alpn: empty list"},
		{"empty alpn name", withExts(testExt{16, alpnData("h2", "")}).records(), ErrMalformed, "alpn: empty protocol name"},
		{"truncated alpn name", withExts(testExt{16, []byte{0, 3, 5, 'h', '2'}}).records(), ErrMalformed, "alpn: truncated protocol name"},
		{"too many alpn names", withExts(testExt{16, alpnData(slices.Repeat([]string{"x"}, maxALPNNames+1)...)}).records(), ErrTooLarge, "alpn: more than 64 protocol names"},
		{"alpn trailing bytes", withExts(testExt{16, append(alpnData("h2"), 1)}).records(), ErrMalformed, "extension 0x0010"},

		{"empty supported_versions", withExts(testExt{43, []byte{0}}).records(), ErrMalformed, "supported_versions: empty list"},
		{"odd supported_versions", withExts(testExt{43, []byte{3, 3, 4, 3}}).records(), ErrMalformed, "supported_versions: odd-length list"},
		{"truncated supported_versions", withExts(testExt{43, []byte{4, 3, 4}}).records(), ErrMalformed, "supported_versions: truncated list"},
		{"empty supported_groups", withExts(testExt{10, []byte{0, 0}}).records(), ErrMalformed, "supported_groups: empty list"},
		{"odd supported_groups", withExts(testExt{10, []byte{0, 3, 0, 29, 0}}).records(), ErrMalformed, "supported_groups: odd-length list"},
		{"empty ec_point_formats", withExts(testExt{11, []byte{0}}).records(), ErrMalformed, "ec_point_formats: empty list"},
		{"truncated ec_point_formats", withExts(testExt{11, nil}).records(), ErrMalformed, "ec_point_formats: truncated list"},
		{"empty signature_algorithms", withExts(testExt{13, []byte{0, 0}}).records(), ErrMalformed, "signature_algorithms: empty list"},
		{"odd signature_algorithms", withExts(testExt{13, []byte{0, 3, 4, 3, 8}}).records(), ErrMalformed, "signature_algorithms: odd-length list"},
		{"pre_shared_key not last", appendExt(baseHello(), testExt{0x0029, []byte{1, 2}}, testExt{0x0015, nil}).records(), ErrMalformed, "pre_shared_key is not the last extension"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Hello
			n, err := ParseRecords(tc.in, &h)
			if got := sentinel(t, err); got != tc.want {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if n != 0 {
				t.Errorf("n = %d on error", n)
			}
			if tc.message != "" && !strings.Contains(err.Error(), tc.message) {
				t.Errorf("err = %q, want it to mention %q", err, tc.message)
			}
			if tc.want == ErrMalformed && !strings.HasPrefix(err.Error(), "sni: malformed client hello: ") {
				t.Errorf("err = %q: want the ErrMalformed text as prefix", err)
			}
			if tc.want == ErrNeedMore && err != ErrNeedMore {
				t.Errorf("ErrNeedMore must be returned unwrapped, got %#v", err)
			}
			if tc.want == ErrNotTLS && err != ErrNotTLS {
				t.Errorf("ErrNotTLS must be returned unwrapped, got %#v", err)
			}
			if tc.want != ErrNeedMore && (h.ServerName != "" || len(h.CipherSuites) != 0 || len(h.Extensions) != 0) {
				t.Errorf("Hello not reset on error: %+v", h)
			}
			// The verdict is final: appending bytes does not change it.
			if tc.want != ErrNeedMore {
				more := append(bytes.Clone(tc.in), valid...)
				if _, err2 := ParseRecords(more, &h); !errors.Is(err2, tc.want) {
					t.Errorf("with more bytes appended: %v, want %v", err2, tc.want)
				}
			}
		})
	}
}

// TestTooLargeIsImmediate: the declared length alone triggers ErrTooLarge,
// and ErrNeedMore is never returned for an input of MaxHelloBytes or more.
func TestTooLargeIsImmediate(t *testing.T) {
	var h Hello
	// Largest allowed declared length: ErrNeedMore, not ErrTooLarge.
	max := MaxHandshakeBytes - 4
	in := []byte{22, 3, 1, 0x40, 0x00, 1, byte(max >> 16), byte(max >> 8), byte(max)}
	if _, err := ParseRecords(in, &h); err != ErrNeedMore {
		t.Fatalf("declared %d: %v, want ErrNeedMore", max, err)
	}
	in[8]++
	if _, err := ParseRecords(in, &h); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("declared %d: %v, want ErrTooLarge", max+1, err)
	}
	// A hello of exactly MaxHandshakeBytes in one record is accepted.
	th := baseHello()
	pad := MaxHandshakeBytes - len(handshake(th.body())) - 4
	th.exts = append(th.exts, testExt{0x0015, make([]byte, pad)})
	m := handshake(th.body())
	if len(m) != MaxHandshakeBytes {
		t.Fatalf("built %d bytes", len(m))
	}
	if _, err := ParseRecords(frame(m), &h); err != nil {
		t.Fatalf("hello of MaxHandshakeBytes: %v", err)
	}
	if err := ParseHandshake(m, &h); err != nil {
		t.Fatalf("ParseHandshake of MaxHandshakeBytes: %v", err)
	}
	// ... and in 512-byte records (32 records, 160 header bytes).
	if _, err := ParseRecords(frameEvery(m, 512), &h); err != nil {
		t.Fatalf("hello of MaxHandshakeBytes in 512-byte records: %v", err)
	}
	// In 64-byte records it needs 256 records: too large, and every prefix
	// up to the point where that is known is ErrNeedMore below MaxHelloBytes.
	in = frameEvery(m, 64)
	for i := 0; i <= len(in); i += 7 {
		_, err := ParseRecords(in[:i], &h)
		if err == ErrNeedMore {
			if i >= MaxHelloBytes {
				t.Fatalf("ErrNeedMore for %d bytes >= MaxHelloBytes", i)
			}
			continue
		}
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("prefix %d: %v", i, err)
		}
	}
}

func TestParseHandshakeErrors(t *testing.T) {
	msg := handshake(baseHello().body())
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrNeedMore},
		{"type only", []byte{1}, ErrNeedMore},
		{"header only", msg[:4], ErrNeedMore},
		{"all but one byte", msg[:len(msg)-1], ErrNeedMore},
		{"type 2", []byte{2, 0, 0, 0}, ErrMalformed},
		{"record header instead", frame(msg), ErrMalformed},
		{"trailing byte", append(append([]byte{}, msg...), 0), ErrMalformed},
		{"too large", []byte{1, 0, 0x40, 0}, ErrTooLarge},
		{"too large 2^24-1", []byte{1, 0xff, 0xff, 0xff}, ErrTooLarge},
		{"empty body", []byte{1, 0, 0, 0}, ErrMalformed},
	} {
		var h Hello
		if got := sentinel(t, ParseHandshake(tc.in, &h)); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestValidVariants checks legal hellos that real clients rarely send.
func TestValidVariants(t *testing.T) {
	for _, tc := range []struct {
		name  string
		th    testHello
		check func(t *testing.T, h *Hello)
	}{
		{"no extensions block (TLS 1.0)", func() testHello {
			th := baseHello()
			th.version = 0x0301
			th.sessionID = nil
			th.noExts = true
			return th
		}(), func(t *testing.T, h *Hello) {
			if h.HasServerName || len(h.Extensions) != 0 || h.LegacyVersion != 0x0301 {
				t.Errorf("%+v", h)
			}
			if got, want := h.JA3String(), "769,4865-4866-49195,,,"; got != want {
				t.Errorf("JA3 %s, want %s", got, want)
			}
			if got := h.JA4(false); !strings.HasPrefix(got, "t10i030000_") || !strings.HasSuffix(got, "_000000000000") {
				t.Errorf("JA4 %s", got)
			}
		}},
		{"empty extensions block", func() testHello { th := baseHello(); th.exts = nil; return th }(), func(t *testing.T, h *Hello) {
			if len(h.Extensions) != 0 {
				t.Errorf("%+v", h)
			}
		}},
		{"other name types are skipped", withExts(testExt{0, sniData(1, "x", 0, "a.example", 255, "y")}), func(t *testing.T, h *Hello) {
			if h.ServerName != "a.example" || !h.HasServerName {
				t.Errorf("%+v", h)
			}
		}},
		{"server_name without host_name", withExts(testExt{0, sniData(1, "x")}), func(t *testing.T, h *Hello) {
			if h.ServerName != "" || h.HasServerName {
				t.Errorf("%+v", h)
			}
			if got := h.JA4(false); got[3] != 'd' {
				t.Errorf("JA4 %s: the extension is present, so 'd'", got)
			}
		}},
		{"name kept exactly as sent", withExts(testExt{0, sniData(0, "ExAmPle.COM.\x00\xff")}), func(t *testing.T, h *Hello) {
			if h.ServerName != "ExAmPle.COM.\x00\xff" {
				t.Errorf("%q", h.ServerName)
			}
		}},
		{"ALPN names kept in order, common and rare", withExts(testExt{16, alpnData("x", "h2", "spdy/3", "http/1.1", "\x00", "h3")}), func(t *testing.T, h *Hello) {
			if want := []string{"x", "h2", "spdy/3", "http/1.1", "\x00", "h3"}; !slices.Equal(h.ALPN, want) {
				t.Errorf("ALPN %q, want %q", h.ALPN, want)
			}
		}},
		{"ECH", appendExt(baseHello(), testExt{0xfe0d, []byte{0, 0, 1, 0, 1, 7}}), func(t *testing.T, h *Hello) {
			if !h.ECH {
				t.Errorf("ECH not set")
			}
		}},
		{"pre_shared_key last", appendExt(baseHello(), testExt{0x0029, []byte{1, 2, 3}}), func(t *testing.T, h *Hello) {
			if h.Extensions[len(h.Extensions)-1] != 0x0029 {
				t.Errorf("%04x", h.Extensions)
			}
		}},
		{"many extensions", func() testHello {
			th := baseHello()
			for i := range 300 {
				th.exts = append(th.exts, testExt{uint16(0x2000 + i), nil})
			}
			return th
		}(), func(t *testing.T, h *Hello) {
			if len(h.Extensions) != 306 {
				t.Errorf("%d extensions", len(h.Extensions))
			}
		}},
		{"uncommon ALPN names", withExts(testExt{16, alpnData("spdy/3.1", "\x00", "h2")}), func(t *testing.T, h *Hello) {
			if len(h.ALPN) != 3 || h.ALPN[0] != "spdy/3.1" || h.ALPN[1] != "\x00" || h.ALPN[2] != "h2" {
				t.Errorf("%q", h.ALPN)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Hello
			b := tc.th.records()
			n, err := ParseRecords(b, &h)
			if err != nil {
				t.Fatal(err)
			}
			if n != len(b) {
				t.Errorf("n = %d, want %d", n, len(b))
			}
			tc.check(t, &h)
		})
	}
}

// TestHelloReuse parses different hellos into one Hello: nothing of an
// earlier parse may survive into a later one.
func TestHelloReuse(t *testing.T) {
	var h Hello
	vs := loadVectors(t)
	for _, v := range vs {
		var fresh Hello
		b := readVector(t, v)
		if _, err := ParseRecords(b, &fresh); err != nil {
			t.Fatal(err)
		}
		if _, err := ParseRecords(b, &h); err != nil {
			t.Fatal(err)
		}
		if a, b := summarize(&h), summarize(&fresh); !equalSummary(a, b) {
			t.Fatalf("%s: reused Hello differs:\n%+v\n%+v", v.Name, a, b)
		}
	}
	h.Reset()
	if got := summarize(&h); !equalSummary(got, summarize(&Hello{})) {
		t.Fatalf("after Reset: %+v", got)
	}
}

func equalSummary(a, b helloSummary) bool {
	return a.Legacy == b.Legacy && a.SNI == b.SNI && a.HasSNI == b.HasSNI && a.ECH == b.ECH &&
		a.JA3 == b.JA3 && a.JA4 == b.JA4 && a.JA4R == b.JA4R &&
		strings.Join(a.ALPN, "\x00") == strings.Join(b.ALPN, "\x00") &&
		len(a.Ciphers) == len(b.Ciphers) && len(a.Exts) == len(b.Exts) && len(a.Vers) == len(b.Vers) &&
		len(a.Groups) == len(b.Groups) && len(a.Sigs) == len(b.Sigs) && len(a.Points) == len(b.Points)
}
