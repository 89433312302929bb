package sni

import "errors"

// Limits. Each one bounds memory or work for a hostile peer; none of them is
// reached by any real client (the largest hellos seen in practice, Chrome with
// an X25519MLKEM768 key share plus ECH, are about 2 KiB).
const (
	// maxRecordPayload is the largest TLSPlaintext fragment a peer may send:
	// RFC 8446 §5.1 and RFC 5246 §6.2.1 say length MUST NOT exceed 2^14, and a
	// receiver that gets a longer record must abort with record_overflow.
	maxRecordPayload = 1 << 14

	// MaxHandshakeBytes bounds the ClientHello handshake message, its 4-byte
	// header included. 16 KiB is one full TLS record: 8x the largest
	// post-quantum hello (Go 1.26 and Chrome with X25519MLKEM768 send
	// 1.5-2 KiB, padding and ECH included), yet small enough that a proxy can
	// buffer it for every pending connection. crypto/tls allows 64 KiB; a
	// hello between 16 and 64 KiB is reported as ErrTooLarge.
	MaxHandshakeBytes = 1 << 14

	// MaxHelloBytes bounds the bytes of TLS records (headers included) the
	// proxy buffers while waiting for a complete ClientHello; past it the
	// hello is reported as ErrTooLarge ("hello_too_large"). It is
	// MaxHandshakeBytes plus 256 bytes of record headers: a maximum-size hello
	// fragmented at the smallest standard record size (2^9, RFC 6066 §4
	// max_fragment_length, openssl -max_send_frag 512) takes 32 records, i.e.
	// 160 bytes of headers. A hello cut into more, tinier records than that is
	// not something a real client does.
	MaxHelloBytes = MaxHandshakeBytes + 256

	// maxALPNNames bounds the protocol names kept from the ALPN extension;
	// more is ErrTooLarge. Each name costs a 16-byte string header in
	// Hello.ALPN against 2 bytes on the wire, so a 16 KiB hello of 7,000
	// one-byte names would hold 150 KB per pending connection. Clients
	// list 1-3 (h2, http/1.1; h3), openssl's test vector 37.
	maxALPNNames = 64

	// dupScanLimit is how many extensions are checked for duplicates by a
	// linear scan while parsing (quadratic, but cheapest for the usual 10-20
	// extensions); a hello with more extensions is checked by sorting, so a
	// hostile hello with thousands of extensions costs O(n log n).
	dupScanLimit = 64
)

// Sentinel errors. ParseRecords and ParseHandshake return ErrNeedMore and
// ErrNotTLS as is; ErrTooLarge and ErrMalformed are wrapped in an error that
// says what failed, so compare with errors.Is.
var (
	// ErrNeedMore: the input is a strict prefix of what may still become a
	// valid ClientHello. Read more bytes and call again with all of them.
	ErrNeedMore = errors.New("sni: need more data")
	// ErrNotTLS: the first bytes are not a TLS handshake record (plain HTTP,
	// SSH, an SSLv2-compatible hello, ...).
	ErrNotTLS = errors.New("sni: not a TLS handshake")
	// ErrTooLarge: the ClientHello (or the records carrying it) would exceed
	// MaxHandshakeBytes (MaxHelloBytes). Returned as soon as a length field
	// says so, without waiting for the bytes.
	ErrTooLarge = errors.New("sni: client hello too large")
	// ErrMalformed: the bytes are structurally invalid TLS; the returned
	// error wraps it and names the failed check, e.g.
	// "sni: malformed client hello: duplicate extension 0x0000".
	ErrMalformed = errors.New("sni: malformed client hello")
)

// Hello holds the parts of a ClientHello that egressd uses for policy and
// fingerprinting. Slices hold values in wire order with GREASE values kept;
// the fingerprint methods drop GREASE themselves.
//
// A Hello may be reused across calls: parsing resets it and appends into the
// existing slices, so a long-lived Hello does not allocate for them. Values
// returned by a previous parse are overwritten; copy what must be kept.
type Hello struct {
	// LegacyVersion is the ClientHello client_version / legacy_version field
	// (0x0303 for TLS 1.2 and 1.3 hellos).
	LegacyVersion uint16
	// CipherSuites in wire order, GREASE kept.
	CipherSuites []uint16
	// Extensions holds the extension types in wire order, GREASE kept
	// (JA3 needs the order).
	Extensions []uint16
	// ServerName is the host_name from server_name (RFC 6066 §3) exactly as
	// sent (not lower-cased, not validated as a DNS name; policy judges it).
	// "" if the hello has no host_name.
	ServerName string
	// HasServerName reports whether a host_name entry was present.
	HasServerName bool
	// ALPN protocol names (RFC 7301) in wire order, as raw bytes in a string.
	ALPN []string
	// SupportedVersions from supported_versions (RFC 8446 §4.2.1), wire order.
	SupportedVersions []uint16
	// SupportedGroups from supported_groups 0x000a (RFC 8422 §5.1.1, RFC 8446
	// §4.2.7), wire order.
	SupportedGroups []uint16
	// PointFormats from ec_point_formats 0x000b (RFC 8422 §5.1.2).
	PointFormats []uint8
	// SignatureAlgorithms from signature_algorithms 0x000d only (RFC 8446
	// §4.2.3), wire order. signature_algorithms_cert (0x0032) and
	// delegated_credentials (0x0022) carry other lists and are not included.
	SignatureAlgorithms []uint16
	// ECH reports whether encrypted_client_hello (0xfe0d, RFC 9849) was
	// offered. ServerName is then the outer (public) name.
	ECH bool

	// buf reassembles a hello that spans several records; reused.
	buf []byte
	// scratch is used for the sorted duplicate check of hellos with many
	// extensions; reused.
	scratch []uint16
}

// Reset clears h, keeping the capacity of its slices for reuse.
func (h *Hello) Reset() {
	clear(h.ALPN) // drop references to old strings
	*h = Hello{
		CipherSuites:        h.CipherSuites[:0],
		Extensions:          h.Extensions[:0],
		ALPN:                h.ALPN[:0],
		SupportedVersions:   h.SupportedVersions[:0],
		SupportedGroups:     h.SupportedGroups[:0],
		PointFormats:        h.PointFormats[:0],
		SignatureAlgorithms: h.SignatureAlgorithms[:0],
		buf:                 h.buf[:0],
		scratch:             h.scratch[:0],
	}
}
