package sni

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"sort"
)

// QUIC versions whose Initial packets this package decrypts.
const (
	quicV1 uint32 = 0x00000001 // RFC 9000
	quicV2 uint32 = 0x6b3343cf // RFC 9369
)

// Limits for QUIC Initial reassembly.
const (
	// MaxQUICCryptoBytes bounds the client's Initial CRYPTO stream kept by a
	// QUICInitial: a CRYPTO frame reaching past it is ErrTooLarge. In its
	// first flight a client's Initial CRYPTO stream holds exactly one
	// handshake message, the ClientHello (RFC 9001 §4.1.3), so this is
	// MaxHandshakeBytes, which already counts the 4-byte handshake header.
	MaxQUICCryptoBytes = MaxHandshakeBytes

	// maxCryptoRanges bounds the disjoint byte ranges of the CRYPTO stream
	// held while frames arrive out of order (adjacent and overlapping ranges
	// are merged); more is ErrTooLarge. It bounds the work per frame. Chrome's
	// "chaos protection" cuts its hello into a handful of small CRYPTO frames
	// in random order (3-11 in the captures in testdata), leaving at most that
	// many gaps; 64 is several times that.
	maxCryptoRanges = 64

	maxCIDLen      = 20 // RFC 9000 §17.2: v1 (and v2) connection IDs are at most 20 bytes
	minInitialDCID = 8  // RFC 9000 §7.2: a client's first Destination Connection ID
	hpSampleLen    = 16 // RFC 9001 §5.4.2: AES header protection sample
	maxPNLen       = 4  // RFC 9000 §17.1
)

// Long header packet types (RFC 9000 §17.2), before the per-version mapping.
const (
	pktInitial = iota
	pkt0RTT
	pktHandshake
	pktRetry
)

// ErrNotQUIC: the datagram does not start with a QUIC long-header Initial
// packet of a version this package decrypts (v1 0x00000001, v2 0x6b3343cf).
var ErrNotQUIC = errors.New("sni: not a QUIC v1/v2 Initial packet")

// ErrDiscarded: a datagram after the first one of an attempt fails before
// any Initial packet in it opens with the attempt's keys (another version
// or Destination Connection ID, failed authentication, a short header, a
// truncated header). RFC 9000 §12.2 and RFC 9001 §5.5 have a receiver
// discard such packets rather than end the connection: anyone who can
// spoof the client's address can send them, but only someone who saw the
// Destination Connection ID can make one that opens. Nothing of the
// datagram was taken in, and it must not be sent on either: a server that
// decodes its packet number differently might open it. It is returned
// wrapped together with the ErrMalformed error saying why.
var ErrDiscarded = errors.New("sni: QUIC datagram discarded")

// QUICInitial collects the client Initial packets of one QUIC connection
// attempt and recovers the ClientHello from their CRYPTO frames. The zero
// value is ready to use. Not safe for concurrent use.
//
// The first Initial packet fixes the attempt's version and Destination
// Connection ID, from which the Initial keys are derived once (RFC 9001
// §5.2, RFC 9369 §3.3.1); every later Initial must carry the same ones.
// Memory is bounded: a CRYPTO buffer of MaxQUICCryptoBytes allocated on first
// use, a decryption buffer the size of the largest packet seen, and a fixed
// table of received ranges. Reset keeps the buffers.
type QUICInitial struct {
	version uint32
	dcid    [maxCIDLen]byte
	dcidLen int
	aead    cipher.AEAD  // client Initial payload protection
	hp      cipher.Block // client Initial header protection
	iv      [12]byte
	nonce   [12]byte            // per-packet nonce; a field so it does not escape per call
	mask    [aes.BlockSize]byte // header protection mask, likewise
	largest int64               // largest packet number decrypted, -1 before the first
	packets int                 // Initial packets that passed authentication

	crypto  []byte                       // CRYPTO stream bytes, len MaxQUICCryptoBytes once allocated
	ranges  [maxCryptoRanges]cryptoRange // received parts of crypto, sorted, disjoint, not adjacent
	nranges int
	parsed  int    // length of the contiguous prefix last given to ParseHandshake
	scratch []byte // one packet, decrypted in place

	done bool  // a final result is known
	err  error // the final result, once done

	// verify: a QUICVerifier's copy, whose crypto holds exactly the
	// decided hello's CRYPTO bytes, [0, parsed).
	verify bool
	// toServer: the verifier's current Initial names a DCID other than
	// the attempt's: the server's connection ID (RFC 9000 §7.2).
	toServer bool
}

// cryptoRange is the half-open byte range [start, end) of the CRYPTO stream.
type cryptoRange struct{ start, end int }

// Reset clears q for reuse (keeps allocated buffers).
func (q *QUICInitial) Reset() {
	*q = QUICInitial{crypto: q.crypto, scratch: q.scratch[:0]}
}

// QUICVerifier checks the later client Initial packets of a connection
// attempt whose ClientHello was recovered and decided, so that what a
// server is sent cannot differ from what was decided. A server acts on the
// first complete hello it accepts, and it drops Initials that a
// QUICInitial takes in: in datagrams under 1200 bytes (RFC 9000 §14.1),
// with a packet number already used (§12.3), or of a version it does not
// speak. A client could put an allowed hello in such packets and another
// one, for the same Destination Connection ID, in packets the server
// keeps. Every later Initial of the attempt is therefore checked to carry
// only the decided hello's bytes.
type QUICVerifier struct {
	q  QUICInitial
	id QUICConnID
	// alt checks Initials of the other version (v1 or v2) to the server's
	// connection ID: after compatible version negotiation (RFC 9368) the
	// client goes on in the version the server chose, with that version's
	// keys for its first DCID. Made on first use.
	alt *QUICInitial
}

// Verifier returns a QUICVerifier for the attempt once Add has returned
// nil, and nil before that or after an error. It copies the keys and the
// hello's CRYPTO bytes (at most MaxQUICCryptoBytes; a real hello is 0.3-2
// KiB), so q can be Reset and reused.
func (q *QUICInitial) Verifier() *QUICVerifier {
	if !q.done || q.err != nil {
		return nil
	}
	v := &QUICVerifier{q: QUICInitial{
		version: q.version, dcid: q.dcid, dcidLen: q.dcidLen,
		aead: q.aead, hp: q.hp, iv: q.iv, largest: q.largest, packets: q.packets,
		crypto: append([]byte(nil), q.crypto[:q.parsed]...), parsed: q.parsed,
		verify: true,
	}}
	v.id.v, v.id.n = q.version, uint8(copy(v.id.b[:], q.dcid[:q.dcidLen]))
	return v
}

// ConnID is the attempt's version and Destination Connection ID: the
// InitialDCID of the datagrams Check is for.
func (v *QUICVerifier) ConnID() QUICConnID { return v.id }

// Check reports whether datagram, which starts with an Initial packet, may
// go on to the server: nil when every Initial packet in it has the
// attempt's version, opens with its keys, and holds only frames allowed
// in Initials (RFC 9000 §12.4) whose CRYPTO bytes are the decided hello's,
// at the same offsets (a retransmission). The Initials may name any
// Destination Connection ID: once the server has answered, the client
// sends them to the server's connection ID (RFC 9000 §7.2), with the keys
// of the first one (RFC 9001 §5.2). In those, and only those, CRYPTO bytes
// past the decided hello are let through: a second ClientHello after a
// HelloRetryRequest (RFC 8446 §4.1.4), which a server takes only after the
// decided one. That second hello is not checked. Initials to the server's
// connection ID may also be of the other version (v1 or v2), with its keys
// for the first DCID: compatible version negotiation (RFC 9368).
// 0-RTT and Handshake packets are skipped as in Add. Otherwise it returns
// an ErrMalformed error saying why, and the datagram should be dropped.
// Not safe for concurrent use.
func (v *QUICVerifier) Check(datagram []byte) error {
	// An Initial of the other version (v1 or v2) is checked with that
	// version's keys, but only to the server's connection ID: the first
	// DCID in another version is another connection attempt.
	id, ok := InitialDCID(datagram)
	if !ok || id.v == v.q.version || (id.n == v.id.n && id.b == v.id.b) {
		return v.q.walk(datagram, false)
	}
	if v.alt == nil {
		alt := v.q
		if err := alt.deriveKeys(id.v, v.q.dcid[:v.q.dcidLen]); err != nil {
			return err
		}
		alt.largest = v.q.largest
		v.alt = &alt
	}
	return v.alt.walk(datagram, false)
}

// Opened reports whether an Initial packet added so far passed
// authentication with the keys of its Destination Connection ID: whether
// the datagrams are a connection attempt's first flight, which a server
// can open, whatever the hello in them.
func (q *QUICInitial) Opened() bool { return q.packets > 0 }

// Version returns the QUIC version of the Initials seen (0 before the first).
func (q *QUICInitial) Version() uint32 { return q.version }

// Add decrypts the client Initial packets in one UDP datagram and adds their
// CRYPTO frames. Coalesced packets (RFC 9000 §12.2) are walked: Initial
// packets are decrypted, 0-RTT and Handshake packets skipped by their Length,
// and a short-header packet ends the datagram. datagram is not modified or
// retained.
//
// When the CRYPTO bytes from offset 0 form a complete ClientHello, Add parses
// it into h (see ParseHandshake) and returns nil. Otherwise:
//   - ErrNeedMore: more datagrams are needed. A later datagram
//     holding only 0-RTT or Handshake packets of the attempt's version adds
//     nothing and also returns ErrNeedMore.
//   - ErrNotQUIC: the first packet of the first datagram is not a v1/v2
//     long-header Initial (short header, other or unknown version, version
//     negotiation, Retry, 0-RTT, Handshake, or too short to tell).
//   - ErrDiscarded (wrapped with ErrMalformed): a later datagram fails
//     before any Initial packet in it opens. q is unchanged and
//     Add may be called again with the next datagram; the datagram must be
//     dropped, not sent on.
//   - ErrTooLarge (wrapped): CRYPTO data reaches past MaxQUICCryptoBytes, the
//     stream has more than maxCryptoRanges gaps, or the hello declares a
//     length over MaxHandshakeBytes.
//   - ErrMalformed (wrapped): a bad or truncated header, a coalesced
//     packet that is not an Initial of the attempt's DCID and version or
//     fails AEAD authentication, non-zero reserved bits, a frame not allowed
//     in Initial packets (RFC 9000 §12.4), retransmitted CRYPTO bytes that
//     differ from those received, or the error ParseHandshake returns for
//     the hello.
//
// Header rules: the fixed bit (0x40) must be set unless the Initial carries a
// token (RFC 9287 §3.1 lets a client clear it only then), and an Initial
// without a token must have a Destination Connection ID of at least 8 bytes
// (RFC 9000 §7.2; after a Retry the client uses the server's, possibly
// shorter, connection ID and sends the Retry token). The 1200-byte minimum
// size of datagrams carrying client Initials (RFC 9000 §14.1) is left to the
// server to enforce.
//
// After nil or an error other than ErrNeedMore, further calls return the
// same result without looking at datagram or touching h.
func (q *QUICInitial) Add(datagram []byte, h *Hello) error {
	if q.done {
		return q.err
	}
	err := q.add(datagram, h)
	if err != ErrNeedMore && !errors.Is(err, ErrDiscarded) {
		q.done, q.err = true, err
	}
	return err
}

func (q *QUICInitial) add(datagram []byte, h *Hello) error {
	if err := q.walk(datagram, q.version == 0); err != nil {
		return err
	}
	if q.nranges == 0 || q.ranges[0].start != 0 || q.ranges[0].end == q.parsed {
		return ErrNeedMore
	}
	q.parsed = q.ranges[0].end
	return ParseHandshake(q.crypto[:q.parsed], h)
}

// walk takes the packets of one datagram; first says whether no Initial
// has been accepted yet (an unrecognised datagram is then ErrNotQUIC).
// A later datagram that fails before any of its Initials opens is
// ErrDiscarded: nothing of it was taken in.
func (q *QUICInitial) walk(datagram []byte, first bool) error {
	opened := q.packets
	for b, i := datagram, 0; ; i++ {
		if len(b) == 0 {
			if i == 0 {
				if first {
					return ErrNotQUIC
				}
				return discarded(quicMalformed("empty datagram"))
			}
			break
		}
		if b[0]&0x80 == 0 {
			// Short header (RFC 9000 §17.3): it has no length, so it ends
			// the datagram. A client has no 1-RTT keys before the hello is
			// answered, so it cannot come first.
			if i == 0 {
				if first {
					return ErrNotQUIC
				}
				return discarded(quicMalformed("short header packet"))
			}
			break
		}
		n, err := q.packet(b, first && i == 0)
		if err != nil {
			if !first && q.packets == opened {
				return discarded(err)
			}
			return err
		}
		b = b[n:]
	}
	return nil
}

func discarded(err error) error { return fmt.Errorf("%w: %w", ErrDiscarded, err) }

// packet handles the long header packet at the start of b and returns its
// length. notQUIC says whether an unrecognised packet is ErrNotQUIC.
func (q *QUICInitial) packet(b []byte, notQUIC bool) (int, error) {
	reject := func(format string, args ...any) (int, error) {
		if notQUIC {
			return 0, ErrNotQUIC
		}
		return 0, quicMalformed(format, args...)
	}
	// RFC 9000 §17.2: first byte, version, DCID and SCID, each length
	// prefixed by one byte.
	if len(b) < 5 {
		return reject("truncated long header")
	}
	version, typ, ok := longHeaderType(b)
	if !ok {
		return reject("QUIC version 0x%08x", version)
	}
	if q.version != 0 && version != q.version {
		return 0, quicMalformed("version 0x%08x after 0x%08x", version, q.version)
	}
	if typ != pktInitial && notQUIC {
		return 0, ErrNotQUIC
	}
	if typ == pktRetry {
		return 0, quicMalformed("Retry packet from a client")
	}
	dcid, token, pnOffset, end, problem := longHeaderFields(b, typ)
	if problem != "" {
		return 0, quicMalformed("%s", problem)
	}
	if typ != pktInitial {
		// 0-RTT or Handshake: not ours to decrypt (RFC 9000 §12.2). Until
		// the hello is complete a client sends only 0-RTT, to the
		// attempt's connection ID: another one is not the attempt's (a
		// spoofer's, which must not fill the caller's buffer).
		if q.version != 0 && !q.verify && string(dcid) != string(q.dcid[:q.dcidLen]) {
			return 0, quicMalformed("Destination Connection ID of a 0-RTT or Handshake packet is not the attempt's")
		}
		return end, nil
	}

	if b[0]&0x40 == 0 && len(token) == 0 {
		return 0, quicMalformed("fixed bit clear in an Initial without a token")
	}
	if q.version == 0 {
		if len(token) == 0 && len(dcid) < minInitialDCID {
			return 0, quicMalformed("Destination Connection ID of %d bytes, at least %d required", len(dcid), minInitialDCID)
		}
		if err := q.deriveKeys(version, dcid); err != nil {
			return 0, err
		}
	} else if !q.verify && string(dcid) != string(q.dcid[:q.dcidLen]) {
		return 0, quicMalformed("Destination Connection ID changed")
	}

	// Header protection (RFC 9001 §5.4): the sample starts 4 bytes after
	// the packet number field's start.
	if end < pnOffset+maxPNLen+hpSampleLen {
		return 0, quicMalformed("packet too short for header protection sample")
	}
	q.hp.Encrypt(q.mask[:], b[pnOffset+maxPNLen:pnOffset+maxPNLen+hpSampleLen])
	q.scratch = append(q.scratch[:0], b[:end]...)
	p := q.scratch
	p[0] ^= q.mask[0] & 0x0f
	pnLen := int(p[0]&3) + 1
	var truncated int64
	for i := range pnLen {
		p[pnOffset+i] ^= q.mask[1+i]
		truncated = truncated<<8 | int64(p[pnOffset+i])
	}
	pn := decodePacketNumber(q.largest, truncated, pnLen)

	// Payload protection (RFC 9001 §5.3): nonce = iv XOR packet number,
	// header as associated data. end >= pnOffset+20 leaves room for the tag.
	hdrLen := pnOffset + pnLen
	q.nonce = q.iv
	for i := range 8 {
		q.nonce[4+i] ^= byte(pn >> (56 - 8*i))
	}
	payload, err := q.aead.Open(p[hdrLen:hdrLen], q.nonce[:], p[hdrLen:end], p[:hdrLen])
	if err != nil {
		return 0, quicMalformed("Initial packet %d fails authentication", pn)
	}
	// RFC 9000 §17.2: reserved bits must be 0 once protection is removed.
	q.packets++
	if p[0]&0x0c != 0 {
		return 0, quicMalformed("reserved header bits set")
	}
	q.largest = max(q.largest, pn)
	q.toServer = q.verify && string(dcid) != string(q.dcid[:q.dcidLen])
	if err := q.frames(payload); err != nil {
		return 0, err
	}
	return end, nil
}

// deriveKeys computes the client Initial keys for version and dcid (RFC 9001
// §5.2, RFC 9369 §3.3.1) and fixes them for the attempt.
func (q *QUICInitial) deriveKeys(version uint32, dcid []byte) error {
	aead, hp, iv, err := initialKeys(version, dcid)
	if err != nil {
		return quicMalformed("deriving Initial keys: %v", err)
	}
	q.version = version
	q.dcidLen = copy(q.dcid[:], dcid)
	q.aead, q.hp, q.iv = aead, hp, iv
	q.largest = -1
	return nil
}

// initialKeys returns the AEAD, header protection cipher and IV protecting a
// client's Initial packets sent to dcid.
func initialKeys(version uint32, dcid []byte) (cipher.AEAD, cipher.Block, [12]byte, error) {
	var iv [12]byte
	// RFC 9001 §5.2 and RFC 9369 §3.3.1: initial_salt; "quic " and
	// "quicv2 " label prefixes.
	salt, prefix := []byte{
		0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
		0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a,
	}, "quic "
	if version == quicV2 {
		salt, prefix = []byte{
			0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93,
			0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9,
		}, "quicv2 "
	}
	// HKDF-Extract is HMAC(salt, dcid); each HKDF-Expand-Label output here
	// is at most one SHA-256 block, i.e. HMAC(secret, info || 0x01).
	buf := make([]byte, 0, 5*sha256.Size) // room for every Sum below: one allocation
	mac := hmac.New(sha256.New, salt)
	mac.Write(dcid)
	initial := mac.Sum(buf)
	mac = hmac.New(sha256.New, initial)
	secret := expandLabel(mac, "client in", sha256.Size, initial[len(initial):])
	mac = hmac.New(sha256.New, secret)
	key := expandLabel(mac, prefix+"key", 16, secret[len(secret):])
	ivb := expandLabel(mac, prefix+"iv", 12, key[len(key):])
	hpKey := expandLabel(mac, prefix+"hp", 16, ivb[len(ivb):])
	copy(iv[:], ivb)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, nil, iv, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, nil, iv, err
	}
	hp, err := aes.NewCipher(hpKey)
	if err != nil {
		return nil, nil, iv, err
	}
	return aead, hp, iv, nil
}

// expandLabel is TLS 1.3's HKDF-Expand-Label (RFC 8446 §7.1) with an empty
// context, for outputs of at most one hash block (n <= mac.Size()): the first
// block of HKDF-Expand (RFC 5869 §2.3) truncated to n bytes. mac is keyed
// with the secret; its result is appended to out.
func expandLabel(mac hash.Hash, label string, n int, out []byte) []byte {
	var info [2 + 1 + 6 + 32 + 1 + 1]byte // length, label length, "tls13 ", label<=32, context length, counter
	b := append(info[:0], byte(n>>8), byte(n), byte(6+len(label)))
	b = append(b, "tls13 "...)
	b = append(b, label...)
	b = append(b, 0, 1) // empty context; HKDF-Expand counter 0x01
	mac.Reset()
	mac.Write(b)
	return mac.Sum(out)[:len(out)+n]
}

// decodePacketNumber recovers a full packet number from its pnLen-byte
// truncation, given the largest one received (RFC 9000 §A.3).
func decodePacketNumber(largest, truncated int64, pnLen int) int64 {
	expected := largest + 1
	win := int64(1) << (8 * pnLen)
	hwin := win / 2
	candidate := expected&^(win-1) | truncated
	switch {
	case candidate <= expected-hwin && candidate < 1<<62-win:
		return candidate + win
	case candidate > expected+hwin && candidate >= win:
		return candidate - win
	}
	return candidate
}

// frames processes the frames of a decrypted Initial packet. RFC 9000 §12.4
// allows PADDING, PING, ACK, CRYPTO and CONNECTION_CLOSE (0x1c) in Initial
// packets; anything else is a connection error. Frame types are varints that
// must be minimally encoded, so every allowed type is a single byte.
func (q *QUICInitial) frames(payload []byte) error {
	if len(payload) == 0 {
		// RFC 9000 §12.4: a packet must contain at least one frame.
		return quicMalformed("Initial packet without frames")
	}
	r := quicReader(payload)
	for len(r) > 0 {
		typ := r[0]
		r = r[1:]
		ok := true
		switch typ {
		case 0x00, 0x01: // PADDING, PING
		case 0x02, 0x03: // ACK, ACK with ECN counts (RFC 9000 §19.3)
			var count uint64
			ok = r.skipVarints(2) && r.readVarint(&count) && r.skipVarints(1)
			for ; ok && count > 0; count-- { // each range is 2 bytes at least
				ok = r.skipVarints(2)
			}
			if ok && typ == 0x03 {
				ok = r.skipVarints(3)
			}
		case 0x06: // CRYPTO (RFC 9000 §19.6)
			var off, n uint64
			var data []byte
			if ok = r.readVarint(&off) && r.readVarint(&n) && r.bytes(&data, n); ok {
				if err := q.addCrypto(off, data); err != nil {
					return err
				}
			}
		case 0x1c: // CONNECTION_CLOSE, transport error (RFC 9000 §19.19)
			var n uint64
			var reason []byte
			ok = r.skipVarints(2) && r.readVarint(&n) && r.bytes(&reason, n)
		default:
			return quicMalformed("frame type 0x%02x in an Initial packet", typ)
		}
		if !ok {
			return quicMalformed("truncated frame of type 0x%02x", typ)
		}
	}
	return nil
}

// addCrypto adds CRYPTO stream bytes at offset off. Bytes already received
// must be identical (a retransmission carries the same data).
func (q *QUICInitial) addCrypto(off uint64, data []byte) error {
	if q.verify {
		// Checked first: for a verifier anything outside the decided
		// hello is malformed, whatever its size (Check's contract),
		// except past it in an Initial to the server's connection ID,
		// where a second ClientHello follows a HelloRetryRequest.
		if off > uint64(q.parsed) || uint64(len(data)) > uint64(q.parsed)-off {
			if !q.toServer {
				return quicMalformed("CRYPTO data reaches past the decided ClientHello's %d bytes", q.parsed)
			}
			if off >= uint64(q.parsed) {
				return nil
			}
			data = data[:uint64(q.parsed)-off]
		}
		if string(q.crypto[off:int(off)+len(data)]) != string(data) {
			return quicMalformed("CRYPTO data at offset %d differs from the decided ClientHello", off)
		}
		return nil
	}
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
	// ranges[:nranges] are sorted, disjoint and not adjacent (at least one
	// byte apart), so their starts and their ends both increase. The ones
	// [start, end) overlaps or touches are then ranges[i:j]: from the first
	// ending at or after start (a binary search) up to the first starting
	// past end. Only they can hold bytes of [start, end), which must match,
	// and they merge with it into one range. A frame costs O(log n), plus
	// the ranges it merges away, plus shifting the table when n changes.
	rs := q.ranges[:q.nranges]
	i := sort.Search(len(rs), func(k int) bool { return rs[k].end >= start })
	j := i
	for ; j < len(rs) && rs[j].start <= end; j++ {
		if lo, hi := max(start, rs[j].start), min(end, rs[j].end); lo < hi &&
			string(q.crypto[lo:hi]) != string(data[lo-start:hi-start]) {
			return quicMalformed("retransmitted CRYPTO data at offset %d differs", lo)
		}
	}
	copy(q.crypto[start:end], data)
	if i == j && q.nranges == maxCryptoRanges {
		return tooLarge("QUIC CRYPTO data in more than %d pieces", maxCryptoRanges)
	}
	if i < j {
		start, end = min(start, rs[i].start), max(end, rs[j-1].end)
	}
	n := copy(q.ranges[i+1:], rs[j:])
	q.ranges[i] = cryptoRange{start, end}
	q.nranges = i + 1 + n
	return nil
}

func quicMalformed(format string, args ...any) error {
	return fmt.Errorf("%w: quic: "+format, append([]any{ErrMalformed}, args...)...)
}

// quicReader reads QUIC variable-length integers (RFC 9000 §16) and
// length-prefixed fields.
type quicReader []byte

func (r *quicReader) readVarint(v *uint64) bool {
	var ok bool
	*v, ok = r.varint()
	return ok
}

func (r *quicReader) varint() (uint64, bool) {
	s := *r
	if len(s) == 0 {
		return 0, false
	}
	n := 1 << (s[0] >> 6)
	if len(s) < n {
		return 0, false
	}
	v := uint64(s[0] & 0x3f)
	for _, c := range s[1:n] {
		v = v<<8 | uint64(c)
	}
	*r = s[n:]
	return v, true
}

func (r *quicReader) skipVarints(n int) bool {
	for range n {
		if _, ok := r.varint(); !ok {
			return false
		}
	}
	return true
}

func (r *quicReader) bytes(out *[]byte, n uint64) bool {
	if n > uint64(len(*r)) {
		return false
	}
	*out, *r = (*r)[:n:n], (*r)[n:]
	return true
}

// longHeaderType returns the version of the long header at the start of b
// (at least 5 bytes) and, for v1 and v2 (ok), its packet type as v1
// numbers it.
func longHeaderType(b []byte) (version uint32, typ int, ok bool) {
	version = binary.BigEndian.Uint32(b[1:5])
	typ = int(b[0]>>4) & 3
	switch version {
	case quicV1:
	case quicV2:
		// RFC 9369 §3.2: Initial 0b01, 0-RTT 0b10, Handshake 0b11, Retry 0b00.
		typ = (typ + 3) & 3
	default:
		return version, 0, false
	}
	return version, typ, true
}

// QUICConnID is a QUIC version and connection ID (at most 20 bytes for v1
// and v2), comparable with ==. The version is part of it: Initials of
// another version with the same ID are another connection attempt, with
// other keys, that a server may accept where it dropped the first.
type QUICConnID struct {
	v uint32
	b [maxCIDLen]byte
	n uint8
}

// InitialDCID returns the Destination Connection ID of the v1 or v2
// long-header Initial packet at the start of datagram, read from its
// unprotected header without decrypting anything; ok is false for
// anything else (a short header, another version or packet type, a
// truncated header). It is the cheap first look at a datagram: whether it
// can start a connection attempt, and which.
func InitialDCID(datagram []byte) (id QUICConnID, ok bool) {
	if len(datagram) < 5 || datagram[0]&0x80 == 0 {
		return id, false
	}
	version, typ, ok := longHeaderType(datagram)
	if !ok || typ != pktInitial {
		return id, false
	}
	id.v = version
	r := quicReader(datagram[5:])
	dcid, ok := r.cid()
	if !ok {
		return id, false
	}
	id.n = uint8(copy(id.b[:], dcid))
	return id, true
}

// Unscreened reports whether datagram holds a packet that a look at its
// first packet alone (InitialDCID, or an Add that stops where a packet
// fails) cannot vouch for, walking the coalesced long-header packets by
// their Length fields without decrypting:
//   - a v1 or v2 Initial after the first packet. A client puts at most one
//     Initial packet in a datagram, and first (RFC 9000 §12.2 has senders
//     coalesce in order of encryption level, and one packet per level
//     holds all its frames), so such a datagram is not a client's; a
//     server may still take the later Initial.
//   - a long-header packet of a version other than v1 and v2, anywhere
//     (version negotiation included, which only servers send): this
//     package cannot read it, so it may be a first flight with any hello,
//     for a server that speaks that version.
//   - a Retry packet, which only servers send.
//
// A short header, or a long header too short to name its version, ends
// the walk: a server cannot parse what follows either.
func Unscreened(datagram []byte) bool {
	for b, i := datagram, 0; len(b) >= 5 && b[0]&0x80 != 0; i++ {
		_, typ, ok := longHeaderType(b)
		if !ok || typ == pktRetry || typ == pktInitial && i > 0 {
			return true
		}
		_, _, _, end, problem := longHeaderFields(b, typ)
		if problem != "" {
			return false
		}
		b = b[end:]
	}
	return false
}

// longHeaderFields reads what follows the version of the v1 or v2
// long-header packet at the start of b, of type typ (not Retry): its
// Destination Connection ID, its token (Initial only), and where its
// packet number starts and the packet ends (RFC 9000 §17.2). problem says
// what is wrong, when not "".
func longHeaderFields(b []byte, typ int) (dcid, token []byte, pnOffset, end int, problem string) {
	r := quicReader(b[5:])
	dcid, ok1 := r.cid()
	_, ok2 := r.cid()
	if !ok1 || !ok2 {
		return nil, nil, 0, 0, "bad connection ID length"
	}
	if typ == pktInitial {
		n, ok := r.varint()
		if !ok || !r.bytes(&token, n) {
			return nil, nil, 0, 0, "truncated token"
		}
	}
	length, ok := r.varint()
	if !ok || length > uint64(len(r)) {
		return nil, nil, 0, 0, "packet length exceeds the datagram"
	}
	pnOffset = len(b) - len(r)
	return dcid, token, pnOffset, pnOffset + int(length), ""
}

// cid reads a connection ID: a length byte, at most 20 for v1 and v2.
func (r *quicReader) cid() ([]byte, bool) {
	if len(*r) == 0 || (*r)[0] > maxCIDLen {
		return nil, false
	}
	n := uint64((*r)[0])
	*r = (*r)[1:]
	var id []byte
	ok := r.bytes(&id, n)
	return id, ok
}
