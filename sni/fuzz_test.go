package sni

import (
	"crypto/tls"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// fuzzSeeds returns the vectors, some re-framed variants, crypto/tls
// hellos and a few negative inputs.
func fuzzSeeds(f *testing.F) [][]byte {
	var seeds [][]byte
	for _, v := range loadVectors(f) {
		b := readVector(f, v)
		seeds = append(seeds, b)
		msg := handshakeFromRecords(f, b)
		seeds = append(seeds, frame(msg, 7), frameEvery(msg, 300))
	}
	for _, cfg := range []*tls.Config{
		{ServerName: "example.com", NextProtos: []string{"h2", "http/1.1"}},
		{ServerName: "example.com", MaxVersion: tls.VersionTLS12},
		{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10},
	} {
		seeds = append(seeds, goClientHello(f, cfg))
	}
	th := baseHello()
	th.noExts = true
	seeds = append(seeds,
		baseHello().records(),
		th.records(),
		[]byte("GET / HTTP/1.1\r\n\r\n"),
		[]byte("SSH-2.0-x\r\n"),
		[]byte{0x80, 0x2e, 0x01, 0x03, 0x01},
		[]byte{22, 3, 1, 0x40, 0, 1, 0xff, 0xff, 0xff},
		[]byte{22, 3, 1, 0, 0},
	)
	return seeds
}

// FuzzParseRecords checks, for any input: no panic; exactly one sentinel
// error; on success n is within b, every strict prefix of b[:n] is
// ErrNeedMore and the fingerprints can be computed; ErrNeedMore only below
// MaxHelloBytes; other errors are final (every prefix is ErrNeedMore or the
// same error, and more bytes do not change it).
func FuzzParseRecords(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Hello
		n, err := ParseRecords(b, &h)
		kind := sentinel(t, err)
		switch kind {
		case nil:
			if n <= 0 || n > len(b) {
				t.Fatalf("n = %d, len(b) = %d", n, len(b))
			}
			if n > MaxHelloBytes {
				t.Fatalf("n = %d > MaxHelloBytes", n)
			}
			want := summarize(&h)
			if len(want.JA4) != 36 || !strings.HasPrefix(h.JA4(true), "q") {
				t.Fatalf("JA4 %q", want.JA4)
			}
			if full, hash := h.JA3(); full != h.JA3String() || len(hash) != 32 {
				t.Fatalf("JA3 %q %q", full, hash)
			}
			if strings.Contains(want.JA3, "--") {
				t.Fatalf("JA3 %q has an empty value", want.JA3)
			}
			var h2 Hello
			for i := range n {
				if _, err := ParseRecords(b[:i], &h2); err != ErrNeedMore {
					t.Fatalf("prefix %d of accepted %d bytes: %v", i, n, err)
				}
			}
			if n2, err := ParseRecords(b[:n], &h2); err != nil || n2 != n {
				t.Fatalf("b[:n]: %d, %v", n2, err)
			}
			if got := summarize(&h2); !reflect.DeepEqual(got, want) {
				t.Fatalf("b[:n] parses differently:\n%+v\n%+v", got, want)
			}
			// The bare handshake message parses the same.
			msg := handshakeFromRecords(t, b[:n])
			if err := ParseHandshake(msg, &h2); err != nil {
				t.Fatalf("ParseHandshake: %v", err)
			}
			if got := summarize(&h2); !reflect.DeepEqual(got, want) {
				t.Fatalf("ParseHandshake differs:\n%+v\n%+v", got, want)
			}
		case ErrNeedMore:
			if len(b) >= MaxHelloBytes {
				t.Fatalf("ErrNeedMore for %d bytes", len(b))
			}
			if _, err := ParseRecords(b[:len(b)/2], &h); err != ErrNeedMore {
				t.Fatalf("half of a ErrNeedMore input: %v", err)
			}
		default:
			if n != 0 {
				t.Fatalf("n = %d with %v", n, err)
			}
			for i := range len(b) {
				_, perr := ParseRecords(b[:i], &h)
				if perr != ErrNeedMore && perr.Error() != err.Error() {
					t.Fatalf("prefix %d: %v; whole input: %v", i, perr, err)
				}
			}
			more := append(slices.Clip(b), 22, 3, 1, 0, 1, 1)
			if _, err2 := ParseRecords(more, &h); err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("more bytes: %v; before: %v", err2, err)
			}
		}
	})
}

// FuzzParseHandshake checks ParseHandshake the same way and against
// ParseRecords on the message wrapped in one record.
func FuzzParseHandshake(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		if len(s) > 5 && s[0] == 22 {
			f.Add(handshakeFromRecordsLenient(s))
		}
	}
	f.Add(handshake(nil))
	f.Add([]byte{1, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, msg []byte) {
		var h Hello
		err := ParseHandshake(msg, &h)
		kind := sentinel(t, err)
		if kind == ErrNotTLS {
			t.Fatal("ParseHandshake returned ErrNotTLS")
		}
		if kind == nil {
			want := summarize(&h)
			for i := range len(msg) {
				if err := ParseHandshake(msg[:i], &h); err != ErrNeedMore {
					t.Fatalf("prefix %d: %v", i, err)
				}
			}
			if len(msg) > MaxHandshakeBytes {
				t.Fatalf("accepted %d bytes", len(msg))
			}
			var h2 Hello
			if _, err := ParseRecords(frame(msg), &h2); err != nil {
				t.Fatalf("ParseRecords of the framed message: %v", err)
			}
			if got := summarize(&h2); !reflect.DeepEqual(got, want) {
				t.Fatalf("ParseRecords differs:\n%+v\n%+v", got, want)
			}
			return
		}
		if len(msg) <= maxRecordPayload {
			var h2 Hello
			_, err2 := ParseRecords(frame(msg), &h2)
			if k2 := sentinel(t, err2); k2 != kind {
				t.Fatalf("ParseHandshake: %v; ParseRecords of the framed message: %v", err, err2)
			}
		}
	})
}

// handshakeFromRecordsLenient concatenates record payloads, stopping at the
// first incomplete record.
func handshakeFromRecordsLenient(b []byte) []byte {
	var msg []byte
	for len(b) >= 5 {
		n := int(b[3])<<8 | int(b[4])
		if len(b) < 5+n {
			break
		}
		msg = append(msg, b[5:5+n]...)
		b = b[5+n:]
	}
	return msg
}

// FuzzGoTLSDifferential treats the input as a ClientHello body, frames it and
// gives it to both ParseRecords and a crypto/tls server. Whenever crypto/tls
// accepts the hello (its GetConfigForClient runs), ParseRecords must accept it
// too, except for the documented stricter checks, and both must see the
// same values. (The converse does not hold: this package skips the contents
// of extensions it does not use, crypto/tls validates them.)
func FuzzGoTLSDifferential(f *testing.F) {
	// One ALPN name more than maxALPNNames: crypto/tls accepts it, this
	// package reports ErrTooLarge (found by the fuzzer in CI).
	tooManyALPN := withExts(testExt{16, alpnData(slices.Repeat([]string{"x"}, maxALPNNames+1)...)}).records()
	for _, s := range append(fuzzSeeds(f), tooManyALPN) {
		if len(s) > 9 && s[0] == 22 {
			if m := handshakeFromRecordsLenient(s); len(m) > 4 && m[0] == 1 {
				f.Add(m[4:])
			}
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		msg := handshake(body)
		if len(msg) > MaxHandshakeBytes {
			return
		}
		b := frame(msg)
		var h Hello
		_, err := ParseRecords(b, &h)
		chi := goServerSees(b)
		if chi == nil {
			return
		}
		if err != nil {
			if stricterThanGo(err) {
				return
			}
			t.Fatalf("crypto/tls accepted, ParseRecords: %v", err)
		}
		if d := diffGo(&h, chi); d != "" {
			t.Fatalf("differs from crypto/tls: %s", d)
		}
	})
}

// quicFuzzSeeds returns the protected QUIC vector datagrams.
func quicFuzzSeeds(f *testing.F) (single [][]byte, pairs [][2][]byte) {
	for _, name := range []string{"rfc9001-a2-client-initial.hex", "rfc9369-a2-client-initial.hex"} {
		single = append(single, readHexFile(f, name))
	}
	for _, name := range []string{"chrome-cloudflare-quic.initial.bin", "quic-tls-handshake.initial.bin", "quic-with-several-tls-frames.initial.bin"} {
		single = append(single, readTestdata(f, name))
	}
	for _, v := range []string{"v1", "v2"} {
		pairs = append(pairs, [2][]byte{
			readTestdata(f, "quic-go-"+v+".initial-1.bin"),
			readTestdata(f, "quic-go-"+v+".initial-2.bin"),
		})
	}
	return single, pairs
}

// checkQUICAdds feeds up to three datagrams (empty ones are left out) and
// checks: no panic; one sentinel error; ErrNotQUIC only from the first Add;
// ErrDiscarded only after ErrNeedMore, with q unchanged; results are sticky
// after anything but ErrNeedMore and ErrDiscarded; on success the hello's
// fingerprints can be computed.
func checkQUICAdds(t *testing.T, datagrams ...[]byte) {
	var q QUICInitial
	var h Hello
	var last error
	n := 0
	for _, d := range datagrams {
		if len(d) == 0 {
			continue
		}
		before := quicState(&q)
		err := q.Add(d, &h)
		kind := sentinel(t, err)
		if kind == ErrNotTLS || (kind == ErrNotQUIC && n > 0 && last != ErrNotQUIC) {
			t.Fatalf("Add %d: %v", n+1, err)
		}
		if kind == ErrDiscarded {
			// Nothing taken in, and the attempt goes on.
			if n == 0 || last != ErrNeedMore || quicState(&q) != before {
				t.Fatalf("Add %d: %v after %v, state %+v then %+v", n+1, err, last, before, quicState(&q))
			}
			n++
			continue
		}
		if n > 0 && last != ErrNeedMore && err != last {
			t.Fatalf("Add %d: %v after %v", n+1, err, last)
		}
		if v := q.Version(); (kind == nil || kind == ErrNeedMore) && v != quicV1 && v != quicV2 {
			t.Fatalf("Version %#x with %v", v, err)
		}
		if err == nil {
			if len(h.JA4(true)) != 36 || !strings.HasPrefix(h.JA4(true), "q") {
				t.Fatalf("JA4 %q", h.JA4(true))
			}
			if full, hash := h.JA3(); full != h.JA3String() || len(hash) != 32 {
				t.Fatalf("JA3 %q %q", full, hash)
			}
			if h.HasServerName != (h.ServerName != "") {
				t.Fatalf("HasServerName %v, ServerName %q", h.HasServerName, h.ServerName)
			}
		}
		last = err
		n++
	}
	// Once the hello is decided, the verifier checks the same datagrams
	// without panicking: each either passes or is malformed.
	v := q.Verifier()
	if (v != nil) != (n > 0 && last == nil) {
		t.Fatalf("Verifier %v after %v", v != nil, last)
	}
	for _, d := range datagrams {
		if v == nil {
			break
		}
		if _, ok := InitialDCID(d); !ok {
			continue
		}
		if err := v.Check(d); err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("Check: %v", err)
		}
	}
}

// quicStateSummary is what of a QUICInitial a discarded datagram must not
// change.
type quicStateSummary struct {
	version          uint32
	largest          int64
	packets, nranges int
	ranges           [maxCryptoRanges]cryptoRange
	parsed           int
	crypto           string
	done             bool
}

func quicState(q *QUICInitial) quicStateSummary {
	return quicStateSummary{q.version, q.largest, q.packets, q.nranges, q.ranges, q.parsed, string(q.crypto), q.done}
}

// FuzzQUICInitial feeds one to three datagrams to a QUICInitial. Seeds are
// the vector datagrams, in order, reversed and coalesced.
func FuzzQUICInitial(f *testing.F) {
	single, pairs := quicFuzzSeeds(f)
	for _, d := range single {
		f.Add(d, []byte(nil), []byte(nil))
		f.Add(d, d, []byte(nil))
	}
	for _, p := range pairs {
		f.Add(p[0], p[1], []byte(nil))
		f.Add(p[1], p[0], p[1])
		f.Add(slices.Concat(p[0], p[1]), []byte(nil), []byte(nil))
	}
	f.Fuzz(func(t *testing.T, a, b, c []byte) {
		checkQUICAdds(t, a, b, c)
		if len(a) >= 5 && a[0]&0x80 != 0 {
			if _, typ, ok := longHeaderType(a); ok && typ != pktRetry && Unscreened(a) && len(a) < 2*5 {
				t.Fatal("Unscreened for a v1/v2 packet too short to have a second one")
			}
		}
		// A datagram that opens as a connection attempt has the
		// Destination Connection ID InitialDCID reads without keys.
		var q QUICInitial
		var h Hello
		_ = q.Add(a, &h)
		id, ok := InitialDCID(a)
		if q.Opened() && (!ok || string(id.b[:id.n]) != string(q.dcid[:q.dcidLen])) {
			t.Fatalf("opened with DCID %x, InitialDCID %x %v", q.dcid[:q.dcidLen], id.b[:id.n], ok)
		}
	})
}

// FuzzQUICFrames seals the inputs as the plaintext payloads of two client
// Initial packets (packet numbers 0 and 1, same DCID), so that the frame
// parser and CRYPTO reassembly behind the AEAD are fuzzed too. The second is
// sent in its own datagram, or coalesced with the first if coalesce is set.
func FuzzQUICFrames(f *testing.F) {
	hello := rfcHello(f)
	f.Add(cryptoFrame(0, hello), []byte(nil), false)
	f.Add(cryptoFrame(100, hello[100:]), cryptoFrame(0, hello[:120]), true)
	f.Add(slices.Concat([]byte{0x02, 0x05, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01}, cryptoFrame(50, hello[50:])),
		slices.Concat([]byte{0x1c, 0x0a, 0x06, 0x00}, cryptoFrame(0, hello[:50])), false)
	f.Fuzz(func(t *testing.T, p1, p2 []byte, coalesce bool) {
		if len(p1) > 2000 || len(p2) > 2000 {
			return
		}
		d1 := sealInitial(t, testInitial{frames: p1})
		d2 := sealInitial(t, testInitial{pn: 1, frames: p2})
		if coalesce {
			checkQUICAdds(t, slices.Concat(d1, d2))
		} else {
			checkQUICAdds(t, d1, d2)
		}
		// p2 in an Initial to the server's connection ID (RFC 9000 §7.2),
		// once p1 completed a hello: passed or malformed.
		var q QUICInitial
		var h Hello
		if q.Add(d1, &h) == nil {
			toServer := sealInitial(t, testInitial{dcid: []byte("server-cid"), keyDCID: rfcDCID, pn: 1, frames: p2})
			if err := q.Verifier().Check(toServer); err != nil && !errors.Is(err, ErrMalformed) {
				t.Fatalf("Check to the server's connection ID: %v", err)
			}
		}
	})
}
