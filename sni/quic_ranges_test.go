package sni

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Differential tests of the CRYPTO range bookkeeping: addCrypto, which
// finds the ranges a frame meets by binary search, against
// addCryptoLinear, the linear scan it replaced, on the same frames.

// addCryptoLinear is addCrypto (outside a verifier) as it was before the
// binary search: every frame scans all ranges for conflicting bytes, then
// scans from the first to find where it goes. Kept as the reference.
func addCryptoLinear(q *QUICInitial, off uint64, data []byte) error {
	if off > MaxQUICCryptoBytes || uint64(len(data)) > MaxQUICCryptoBytes-off {
		return tooLarge("QUIC CRYPTO data reaches past %d bytes", MaxQUICCryptoBytes)
	}
	if len(data) == 0 {
		return nil
	}
	start, end := int(off), int(off)+len(data)
	if q.crypto == nil {
		q.crypto = make([]byte, MaxQUICCryptoBytes)
	}
	// Received bytes inside [start, end) must match.
	for _, g := range q.ranges[:q.nranges] {
		if lo, hi := max(start, g.start), min(end, g.end); lo < hi &&
			string(q.crypto[lo:hi]) != string(data[lo-start:hi-start]) {
			return quicMalformed("retransmitted CRYPTO data at offset %d differs", lo)
		}
	}
	copy(q.crypto[start:end], data)

	// Merge [start, end) into the sorted ranges: the ones it overlaps or
	// touches, ranges[i:j], become one.
	i := 0
	for i < q.nranges && q.ranges[i].end < start {
		i++
	}
	j := i
	for j < q.nranges && q.ranges[j].start <= end {
		start, end = min(start, q.ranges[j].start), max(end, q.ranges[j].end)
		j++
	}
	if i == j && q.nranges == maxCryptoRanges {
		return tooLarge("QUIC CRYPTO data in more than %d pieces", maxCryptoRanges)
	}
	n := copy(q.ranges[i+1:], q.ranges[j:q.nranges])
	q.ranges[i] = cryptoRange{start, end}
	q.nranges = i + 1 + n
	return nil
}

// cryptoOp is one CRYPTO frame: data at offset off.
type cryptoOp struct {
	off  uint64
	data []byte
}

// cryptoStream returns n bytes of the test CRYPTO stream from off: byte x
// of it is always the same, so frames agree where they overlap unless
// altered.
func cryptoStream(off uint64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		x := off + uint64(i)
		b[i] = byte(x*131 ^ x>>8)
	}
	return b
}

// cryptoAt is a frame of n bytes of the stream at off.
func cryptoAt(off uint64, n int) cryptoOp { return cryptoOp{off, cryptoStream(off, n)} }

// cryptoAltered is cryptoAt with byte k of the data flipped.
func cryptoAltered(off uint64, n, k int) cryptoOp {
	o := cryptoAt(off, n)
	o.data[k] ^= 0xff
	return o
}

// cryptoSpray is count one-byte frames at base, base+step, ...
func cryptoSpray(base, step uint64, count int) []cryptoOp {
	var ops []cryptoOp
	for k := range uint64(count) {
		ops = append(ops, cryptoAt(base+step*k, 1))
	}
	return ops
}

// cryptoOps decodes fuzz input into CRYPTO frames, 4 bytes (c, x, y, z)
// each. The low 3 bits of c pick where the frame goes, bit 7 flips one
// of its bytes (a conflict where it overlaps received bytes).
func cryptoOps(b []byte) []cryptoOp {
	var ops []cryptoOp
	for ; len(b) >= 4; b = b[4:] {
		c, xy, z := b[0], uint64(b[1])<<8|uint64(b[2]), int(b[3])
		n := z % 40 // zero-length frames included
		var off uint64
		switch c & 7 {
		case 0, 1, 2: // a small region: overlaps, adjacency, duplicates
			off = xy % 300
		case 3: // around the end of the buffer, and just past it
			off = MaxQUICCryptoBytes + 8 - xy%64
		case 4: // around the varint limit 2^62, and the top of uint64
			off = 1<<62 - 1 - xy%16
			if xy&0x100 != 0 {
				off = math.MaxUint64 - xy%16
			}
		case 5: // a long frame across many ranges
			off, n = xy%300, z*4
		case 6: // anywhere in the buffer or past it
			off = xy % (MaxQUICCryptoBytes + 1024)
		case 7: // many one-byte frames 2-5 bytes apart: up to the range limit
			ops = append(ops, cryptoSpray(xy%300, 2+uint64(c>>3&3), z%80)...)
			continue
		}
		o := cryptoAt(off, n)
		if c&0x80 != 0 && n > 0 {
			o.data[int(c>>3&0xf)%n] ^= 0xff
		}
		ops = append(ops, o)
	}
	return ops
}

// checkRanges fails unless q's ranges are within the buffer, non-empty,
// sorted, disjoint and not adjacent.
func checkRanges(t testing.TB, q *QUICInitial) {
	t.Helper()
	if q.nranges < 0 || q.nranges > maxCryptoRanges {
		t.Fatalf("%d ranges", q.nranges)
	}
	for k, g := range q.ranges[:q.nranges] {
		if g.start < 0 || g.start >= g.end || g.end > MaxQUICCryptoBytes || k > 0 && q.ranges[k-1].end >= g.start {
			t.Fatalf("ranges %v", q.ranges[:q.nranges])
		}
	}
}

// sameCryptoState fails unless a and b hold the same ranges (the whole
// table, unused entries included) and the same CRYPTO buffer.
func sameCryptoState(t testing.TB, a, b *QUICInitial, frame int) {
	t.Helper()
	if a.nranges != b.nranges || a.ranges != b.ranges {
		t.Fatalf("after frame %d: ranges %v, linear %v", frame, a.ranges[:a.nranges], b.ranges[:b.nranges])
	}
	if (a.crypto == nil) != (b.crypto == nil) || !bytes.Equal(a.crypto, b.crypto) {
		t.Fatalf("after frame %d: CRYPTO buffers differ", frame)
	}
}

// diffCryptoOps applies ops to a QUICInitial through addCrypto and to
// another through addCryptoLinear, going on after errors, and fails at the
// first difference in result or state. It returns addCrypto's results
// and its QUICInitial.
func diffCryptoOps(t testing.TB, ops []cryptoOp) ([]error, *QUICInitial) {
	t.Helper()
	var q, ref QUICInitial
	errs := make([]error, len(ops))
	for k, o := range ops {
		err, want := q.addCrypto(o.off, o.data), addCryptoLinear(&ref, o.off, o.data)
		if (err == nil) != (want == nil) || err != nil && err.Error() != want.Error() ||
			errors.Is(err, ErrMalformed) != errors.Is(want, ErrMalformed) || errors.Is(err, ErrTooLarge) != errors.Is(want, ErrTooLarge) {
			t.Fatalf("frame %d (%d bytes at %d): %v, linear %v", k, len(o.data), o.off, err, want)
		}
		sameCryptoState(t, &q, &ref, k)
		checkRanges(t, &q)
		errs[k] = err
	}
	return errs, &q
}

// TestCryptoRanges: results and ranges for frame sequences chosen for the
// edges, each also checked against addCryptoLinear.
func TestCryptoRanges(t *testing.T) {
	r := func(start, end int) cryptoRange { return cryptoRange{start, end} }
	odd := func(n int) []cryptoRange { // [1,2), [3,4), ...
		var rs []cryptoRange
		for k := range n {
			rs = append(rs, r(2*k+1, 2*k+2))
		}
		return rs
	}
	every4 := func(n int) []cryptoRange { // [1,2), [5,6), ...
		var rs []cryptoRange
		for k := range n {
			rs = append(rs, r(4*k+1, 4*k+2))
		}
		return rs
	}
	const max = MaxQUICCryptoBytes
	malformed := func(lo int) string { return "retransmitted CRYPTO data at offset " + strconv.Itoa(lo) + " differs" }
	pieces := "in more than 64 pieces"
	past := "reaches past 16384 bytes"
	for _, tc := range []struct {
		name   string
		ops    []cryptoOp
		errs   []string // per frame: "" for nil, else a substring of the error
		ranges []cryptoRange
	}{
		{"zero-length", []cryptoOp{cryptoAt(5000, 0), cryptoAt(0, 0), cryptoAt(max, 0)}, []string{"", "", ""}, nil},
		{"zero-length past the end", []cryptoOp{cryptoAt(max+1, 0)}, []string{past}, nil},
		{"zero-length inside a range", []cryptoOp{cryptoAt(10, 10), cryptoAt(15, 0)}, []string{"", ""}, []cryptoRange{r(10, 20)}},
		{"out of order", []cryptoOp{cryptoAt(30, 10), cryptoAt(0, 5), cryptoAt(10, 10)}, []string{"", "", ""}, []cryptoRange{r(0, 5), r(10, 20), r(30, 40)}},
		{"adjacent after", []cryptoOp{cryptoAt(0, 5), cryptoAt(5, 5)}, []string{"", ""}, []cryptoRange{r(0, 10)}},
		{"adjacent before", []cryptoOp{cryptoAt(5, 5), cryptoAt(0, 5)}, []string{"", ""}, []cryptoRange{r(0, 10)}},
		{"one byte apart", []cryptoOp{cryptoAt(0, 5), cryptoAt(6, 5)}, []string{"", ""}, []cryptoRange{r(0, 5), r(6, 11)}},
		{"fills a gap", []cryptoOp{cryptoAt(0, 5), cryptoAt(10, 5), cryptoAt(20, 5), cryptoAt(5, 5)}, []string{"", "", "", ""}, []cryptoRange{r(0, 15), r(20, 25)}},
		{"duplicate", []cryptoOp{cryptoAt(10, 10), cryptoAt(10, 10)}, []string{"", ""}, []cryptoRange{r(10, 20)}},
		{"inside", []cryptoOp{cryptoAt(0, 100), cryptoAt(10, 10)}, []string{"", ""}, []cryptoRange{r(0, 100)}},
		{"overlaps both ends", []cryptoOp{cryptoAt(10, 10), cryptoAt(5, 20)}, []string{"", ""}, []cryptoRange{r(5, 25)}},
		{"across many", append(cryptoSpray(1, 2, 10), cryptoAt(0, 30)), append(make([]string, 10), ""), []cryptoRange{r(0, 30)}},
		{"across many, touching the last", append(cryptoSpray(1, 2, 10), cryptoAt(0, 19)), append(make([]string, 10), ""), []cryptoRange{r(0, 20)}},
		{"conflict", []cryptoOp{cryptoAt(0, 10), cryptoAltered(5, 10, 2)}, []string{"", malformed(5)}, []cryptoRange{r(0, 10)}},
		{"conflict past the overlap is none", []cryptoOp{cryptoAt(0, 10), cryptoAltered(5, 10, 7)}, []string{"", ""}, []cryptoRange{r(0, 15)}},
		{"conflict in the second range met", []cryptoOp{cryptoAt(0, 4), cryptoAt(6, 4), cryptoAt(12, 4), cryptoAltered(2, 12, 6)},
			[]string{"", "", "", malformed(6)}, []cryptoRange{r(0, 4), r(6, 10), r(12, 16)}},
		{"conflict in the last range", append(cryptoSpray(1, 2, 63), cryptoAltered(125, 1, 0)),
			append(make([]string, 63), malformed(125)), odd(63)},
		{"64 ranges", cryptoSpray(1, 2, 64), make([]string, 64), odd(64)},
		{"65 ranges", cryptoSpray(1, 2, 65), append(make([]string, 64), pieces), odd(64)},
		{"at the limit, touching the first, last, and two", append(cryptoSpray(1, 4, 64), cryptoAt(0, 1), cryptoAt(254, 1), cryptoAt(6, 3)),
			append(make([]string, 64), "", "", ""),
			slices.Concat([]cryptoRange{r(0, 2), r(5, 10)}, every4(64)[3:63], []cryptoRange{r(253, 255)})},
		{"at the limit, in gaps and behind", append(cryptoSpray(1, 4, 64), cryptoAt(3, 1), cryptoAt(99, 1), cryptoAt(255, 2)),
			append(make([]string, 64), pieces, pieces, pieces), every4(64)},
		{"at the limit, across all", append(cryptoSpray(1, 4, 64), cryptoAt(0, 300), cryptoAt(400, 1)),
			append(make([]string, 64), "", ""), []cryptoRange{r(0, 300), r(400, 401)}},
		{"up to the end", []cryptoOp{cryptoAt(max-5, 5), cryptoAt(max-1, 1)}, []string{"", ""}, []cryptoRange{r(max-5, max)}},
		{"past the end", []cryptoOp{cryptoAt(max-5, 6), cryptoAt(max, 1), cryptoAt(1, max)}, []string{past, past, past}, nil},
		{"the whole buffer", []cryptoOp{cryptoAt(100, 10), cryptoAt(0, max)}, []string{"", ""}, []cryptoRange{r(0, max)}},
		{"near 2^62", []cryptoOp{cryptoAt(1<<62-1, 1), cryptoAt(1<<62-1, 0), cryptoAt(1<<62-2, 1)}, []string{past, past, past}, nil},
		{"top of uint64", []cryptoOp{cryptoAt(math.MaxUint64, 1), cryptoAt(math.MaxUint64-1, 1), cryptoAt(math.MaxUint64, 0)}, []string{past, past, past}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs, q := diffCryptoOps(t, tc.ops)
			for k, err := range errs {
				if want := tc.errs[k]; (want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), want) {
					t.Errorf("frame %d: %v, want %q", k, err, want)
				}
			}
			if got := q.ranges[:q.nranges]; !slices.Equal(got, tc.ranges) {
				t.Errorf("ranges %v, want %v", got, tc.ranges)
			}
		})
	}
}

// TestCryptoRangesMatchLinear: addCrypto and addCryptoLinear agree on
// random frame sequences, which reach every outcome.
func TestCryptoRangesMatchLinear(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	var frames, malformed, pieces, past, full int
	for range 1000 {
		b := make([]byte, 4*(1+rnd.IntN(120)))
		for k := range b {
			b[k] = byte(rnd.Uint32())
		}
		ops := cryptoOps(b)
		errs, q := diffCryptoOps(t, ops)
		frames += len(ops)
		for _, err := range errs {
			switch {
			case err == nil:
			case errors.Is(err, ErrMalformed):
				malformed++
			case strings.Contains(err.Error(), "pieces"):
				pieces++
			default:
				past++
			}
		}
		if q.nranges == maxCryptoRanges {
			full++
		}
	}
	t.Logf("%d frames: %d conflicts, %d past the range limit, %d past the buffer; %d of 1000 sequences ended with %d ranges",
		frames, malformed, pieces, past, full, maxCryptoRanges)
	if malformed < 100 || pieces < 100 || past < 100 || full < 10 {
		t.Fatal("the generator misses outcomes")
	}
}

// TestCryptoRangesAllocs: once the buffer is allocated, a frame allocates
// nothing, wherever it goes among the ranges.
func TestCryptoRangesAllocs(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("allocation counts differ under -cover/-race")
	}
	var q QUICInitial
	for _, o := range cryptoSpray(1, 4, 63) {
		if err := q.addCrypto(o.off, o.data); err != nil {
			t.Fatal(err)
		}
	}
	saved := q // shares the buffer, which the frames below fill with the same bytes
	frames := []cryptoOp{cryptoAt(0, 1), cryptoAt(126, 2), cryptoAt(250, 1), cryptoAt(3, 1), cryptoAt(100, 60), cryptoAt(0, 300)}
	if got := testing.AllocsPerRun(100, func() {
		q = saved
		for _, o := range frames {
			if err := q.addCrypto(o.off, o.data); err != nil {
				t.Fatal(err)
			}
		}
	}); got != 0 {
		t.Errorf("%v allocs, want 0", got)
	}
}

// FuzzCryptoRanges is TestCryptoRangesMatchLinear on fuzzed frame
// sequences (see cryptoOps).
func FuzzCryptoRanges(f *testing.F) {
	f.Add([]byte{0, 0, 10, 20, 0, 0, 0, 5, 0, 0, 5, 5, 0x80, 0, 2, 10})                           // adjacency, conflict
	f.Add([]byte{7, 0, 1, 64, 7, 0, 1, 64, 7, 0, 200, 1, 0, 0, 0, 39})                            // 64 ranges, one more
	f.Add([]byte{0x0f, 0, 1, 70, 5, 0, 0, 200, 3, 0, 10, 20, 3, 0, 0, 9, 4, 0, 0, 1, 4, 1, 0, 0}) // spray, across, limits
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4*1000 {
			return
		}
		diffCryptoOps(t, cryptoOps(b))
	})
}
