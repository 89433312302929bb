package sni

import (
	"crypto/md5"
	"crypto/sha256"
	"slices"
	"strconv"
)

// Sizes of the stack buffers the fingerprint functions build into. Typical
// hellos fit (Chrome: 16 ciphers, 16 extensions, a JA3 string of ~180 bytes);
// larger ones spill to the heap through append, they are not truncated.
const (
	fpTextBuf = 1024 // JA3 string or one JA4 hashed list
	fpListBuf = 128  // sorted copy of a cipher/extension/signature list
)

const hexDigits = "0123456789abcdef"

// isGREASE reports whether v is one of the 16 RFC 8701 §2 GREASE values
// 0x0a0a, 0x1a1a, ..., 0xfafa (both bytes equal, low nibble 0xa). JA3 and JA4
// ignore them everywhere.
func isGREASE(v uint16) bool {
	return v&0x0f0f == 0x0a0a && v>>8 == v&0xff
}

// JA3String returns the JA3 string (salesforce/ja3):
// "version,ciphers,extensions,groups,pointformats", where version is
// LegacyVersion (never supported_versions), each list is the decimal values in
// wire order joined with "-", GREASE values are removed from every list, and
// an empty list leaves an empty field (the commas stay).
func (h *Hello) JA3String() string {
	var buf [fpTextBuf]byte
	return string(h.appendJA3(buf[:0]))
}

// JA3 returns the JA3 string and its fingerprint, the lowercase hex MD5 of
// the string.
func (h *Hello) JA3() (full, hash string) {
	var buf [fpTextBuf]byte
	s := h.appendJA3(buf[:0])
	return string(s), ja3Hash(s)
}

// ja3Hash returns the JA3 fingerprint of a JA3 string: its MD5 in lowercase
// hex.
func ja3Hash(s []byte) string {
	sum := md5.Sum(s)
	var hx [2 * md5.Size]byte
	for i, c := range sum {
		hx[2*i] = hexDigits[c>>4]
		hx[2*i+1] = hexDigits[c&0xf]
	}
	return string(hx[:])
}

func (h *Hello) appendJA3(dst []byte) []byte {
	dst = strconv.AppendUint(dst, uint64(h.LegacyVersion), 10)
	dst = append(dst, ',')
	dst = appendDecList(dst, h.CipherSuites)
	dst = append(dst, ',')
	dst = appendDecList(dst, h.Extensions)
	dst = append(dst, ',')
	dst = appendDecList(dst, h.SupportedGroups)
	dst = append(dst, ',')
	for i, p := range h.PointFormats {
		// Point formats are 8-bit, so no GREASE value can occur.
		if i > 0 {
			dst = append(dst, '-')
		}
		dst = strconv.AppendUint(dst, uint64(p), 10)
	}
	return dst
}

func appendDecList(dst []byte, vs []uint16) []byte {
	first := true
	for _, v := range vs {
		if isGREASE(v) {
			continue
		}
		if !first {
			dst = append(dst, '-')
		}
		first = false
		dst = strconv.AppendUint(dst, uint64(v), 10)
	}
	return dst
}

// JA4 returns the FoxIO JA4 TLS client fingerprint
// (FoxIO-LLC/ja4 technical_details/JA4.md), e.g.
// "t13d1516h2_8daaf6152771_e5627efa2ab1"; the first character is "q" if quic
// is set (the hello came from a QUIC Initial), else "t".
//
//   - version: the highest non-GREASE supported_versions entry if that
//     extension is present, else LegacyVersion; 0x0304 "13", 0x0303 "12",
//     0x0302 "11", 0x0301 "10", 0x0300 "s3", 0x0002 "s2", DTLS 0xfeff "d1",
//     0xfefd "d2", 0xfefc "d3", anything else (e.g. draft 0x7f17) "00".
//   - "d" if the server_name extension is present, else "i".
//   - number of ciphers and of extensions (SNI and ALPN included), GREASE not
//     counted, two digits, capped at 99.
//   - first and last character of the first ALPN value, "00" without ALPN.
//     If either byte is not an ASCII letter or digit, the first hex digit of
//     the first byte and the last hex digit of the last byte are used
//     instead. This is the spec's rule; FoxIO's own tools print "99" for
//     non-ASCII values and FoxIO's maintainer said the spec is correct
//     (FoxIO-LLC/ja4 issues #178, #326), so egressd follows the spec. A
//     single-byte value gives that character twice (spec; FoxIO's Rust tool
//     prints it followed by "0").
//   - b: the first 12 hex digits of SHA-256 over the sorted non-GREASE cipher
//     suites as 4-digit lowercase hex joined by ",", or "000000000000" if
//     there are none.
//   - c: the same over the sorted non-GREASE extension types without SNI
//     (0x0000) and ALPN (0x0010), then "_" and the non-GREASE signature
//     algorithms of signature_algorithms (0x000d) in wire order (no "_" if
//     there are none); "000000000000" if the sorted extension list is empty.
func (h *Hello) JA4(quic bool) string {
	var buf [40]byte
	return string(h.appendJA4(buf[:0], quic, false))
}

// JA4Raw returns JA4_r: the JA4 fingerprint with the b and c lists unhashed
// (sorted, as hashed by JA4), e.g.
// "t13d1516h2_002f,0035,..._0005,000a,..._0403,0804,...". An empty cipher or
// extension list gives an empty field.
func (h *Hello) JA4Raw(quic bool) string {
	var buf [fpTextBuf]byte
	return string(h.appendJA4(buf[:0], quic, true))
}

func (h *Hello) appendJA4(dst []byte, quic, raw bool) []byte {
	// Part a.
	if quic {
		dst = append(dst, 'q')
	} else {
		dst = append(dst, 't')
	}
	dst = append(dst, h.ja4Version()...)
	if slices.Contains(h.Extensions, extServerName) {
		dst = append(dst, 'd')
	} else {
		dst = append(dst, 'i')
	}
	var cbuf, ebuf, sbuf [fpListBuf]uint16
	ciphers := appendNonGREASE(cbuf[:0], h.CipherSuites)
	nExt := 0
	exts := ebuf[:0]
	for _, e := range h.Extensions {
		if isGREASE(e) {
			continue
		}
		nExt++
		if e != extServerName && e != extALPN {
			exts = append(exts, e)
		}
	}
	dst = appendCount(dst, len(ciphers))
	dst = appendCount(dst, nExt)
	a0, a1 := h.ja4ALPN()
	dst = append(dst, a0, a1, '_')

	// Part b.
	slices.Sort(ciphers)
	var tbuf [fpTextBuf]byte
	t := appendHexList(tbuf[:0], ciphers)
	if raw {
		dst = append(dst, t...)
	} else {
		dst = appendHash12(dst, t, len(ciphers) == 0)
	}
	dst = append(dst, '_')

	// Part c.
	slices.Sort(exts)
	t = appendHexList(tbuf[:0], exts)
	sigs := appendNonGREASE(sbuf[:0], h.SignatureAlgorithms)
	if len(sigs) > 0 {
		t = append(t, '_')
		t = appendHexList(t, sigs)
	}
	if raw {
		dst = append(dst, t...)
	} else {
		dst = appendHash12(dst, t, len(exts) == 0)
	}
	return dst
}

func (h *Hello) ja4Version() string {
	v := h.LegacyVersion
	if len(h.SupportedVersions) > 0 {
		found := false
		for _, x := range h.SupportedVersions {
			if !isGREASE(x) && (!found || x > v) {
				v, found = x, true
			}
		}
		if !found {
			return "00" // only GREASE offered: no known version
		}
	}
	switch v {
	case 0x0304:
		return "13"
	case 0x0303:
		return "12"
	case 0x0302:
		return "11"
	case 0x0301:
		return "10"
	case 0x0300:
		return "s3"
	case 0x0002:
		return "s2"
	case 0xfeff:
		return "d1"
	case 0xfefd:
		return "d2"
	case 0xfefc:
		return "d3"
	}
	return "00"
}

func (h *Hello) ja4ALPN() (byte, byte) {
	if len(h.ALPN) == 0 || len(h.ALPN[0]) == 0 {
		return '0', '0'
	}
	p := h.ALPN[0]
	first, last := p[0], p[len(p)-1]
	if isAlnum(first) && isAlnum(last) {
		return first, last
	}
	return hexDigits[first>>4], hexDigits[last&0xf]
}

func isAlnum(c byte) bool {
	return '0' <= c && c <= '9' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z'
}

func appendCount(dst []byte, n int) []byte {
	n = min(n, 99)
	return append(dst, byte('0'+n/10), byte('0'+n%10))
}

func appendNonGREASE(dst, vs []uint16) []uint16 {
	for _, v := range vs {
		if !isGREASE(v) {
			dst = append(dst, v)
		}
	}
	return dst
}

func appendHexList(dst []byte, vs []uint16) []byte {
	for i, v := range vs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, hexDigits[v>>12], hexDigits[v>>8&0xf], hexDigits[v>>4&0xf], hexDigits[v&0xf])
	}
	return dst
}

// appendHash12 appends the first 12 hex digits of SHA-256(s), or 12 zeros if
// empty is set (JA4 marks an empty list with zeros rather than the hash of
// nothing).
func appendHash12(dst, s []byte, empty bool) []byte {
	if empty {
		return append(dst, "000000000000"...)
	}
	sum := sha256.Sum256(s)
	for _, c := range sum[:6] {
		dst = append(dst, hexDigits[c>>4], hexDigits[c&0xf])
	}
	return dst
}
