package sni

import (
	"fmt"
	"slices"

	"golang.org/x/crypto/cryptobyte"
)

const (
	recordHeaderLen          = 5  // RFC 8446 §5.1: type(1) version(2) length(2)
	handshakeHeaderLen       = 4  // RFC 8446 §4: msg_type(1) length(3)
	recordTypeHandshake      = 22 // RFC 8446 §5.1 ContentType.handshake
	handshakeTypeClientHello = 1  // RFC 8446 §4 HandshakeType.client_hello
	randomLen                = 32 // RFC 8446 §4.1.2 Random
	maxSessionIDLen          = 32 // RFC 8446 §4.1.2 legacy_session_id<0..32>
)

// Extension types parsed by this package (IANA "TLS ExtensionType Values").
const (
	extServerName          uint16 = 0x0000
	extSupportedGroups     uint16 = 0x000a
	extECPointFormats      uint16 = 0x000b
	extSignatureAlgorithms uint16 = 0x000d
	extALPN                uint16 = 0x0010
	extPreSharedKey        uint16 = 0x0029
	extSupportedVersions   uint16 = 0x002b
	extECH                 uint16 = 0xfe0d
)

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

func tooLarge(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrTooLarge}, args...)...)
}

// ParseRecords parses the ClientHello carried in TLS handshake records at the
// start of b, the first bytes a client sent on a TCP stream. The hello may be
// fragmented over several records (they are reassembled) and may be followed
// by other bytes, which are not looked at. On success it returns the number of
// bytes of b taken by the records that carried the hello.
//
// Errors: ErrNeedMore while b is a strict prefix of the records (call again
// with more bytes); ErrNotTLS if b does not start with a TLS handshake record
// (first byte not 22, or record version major not 3: HTTP, SSH, SSLv2);
// ErrTooLarge (wrapped) as soon as a length field shows the hello would
// exceed MaxHandshakeBytes or its records MaxHelloBytes; ErrMalformed (wrapped)
// for anything structurally invalid. Record-layer errors are reported as soon
// as the offending header bytes are in b, so once an error other than
// ErrNeedMore is returned, more bytes will not change it. ErrNeedMore is only
// returned while len(b) < MaxHelloBytes, so a buffer of MaxHelloBytes always
// suffices.
//
// Record rules: every record carrying the hello has content type 22 and
// version major 3, a length of 1..2^14, and the records end exactly where the
// hello ends (a client sends nothing else before the server's reply). The
// record minor version is not checked (clients send 0x0301 or 0x0303).
//
// h is reset first and its slices are reused. b is not retained: the strings
// in h are copies.
func ParseRecords(b []byte, h *Hello) (n int, err error) {
	h.Reset()
	var (
		pos     int                      // start of the current record in b
		hdr     [handshakeHeaderLen]byte // handshake header, may span records
		got     int                      // handshake bytes in the complete records before pos
		msgLen  = -1                     // handshake header + body length, once known
		records int
	)
	for {
		if pos > 0 && pos+recordHeaderLen+1 > MaxHelloBytes {
			// The hello needs another record and even the smallest one
			// would not fit. Checked here so that ErrNeedMore is only ever
			// returned while len(b) < MaxHelloBytes.
			return 0, tooLarge("records carrying it exceed %d bytes", MaxHelloBytes)
		}
		rest := b[pos:]
		if len(rest) == 0 {
			return 0, ErrNeedMore
		}
		if rest[0] != recordTypeHandshake {
			if pos == 0 {
				return 0, ErrNotTLS
			}
			return 0, malformed("record of content type %d inside the client hello", rest[0])
		}
		if len(rest) < 2 {
			return 0, ErrNeedMore
		}
		if rest[1] != 3 {
			if pos == 0 {
				return 0, ErrNotTLS
			}
			return 0, malformed("record version major %d, want 3", rest[1])
		}
		if len(rest) < recordHeaderLen {
			return 0, ErrNeedMore
		}
		fragLen := int(rest[3])<<8 | int(rest[4])
		if fragLen == 0 {
			// RFC 8446 §5.1: zero-length Handshake fragments MUST NOT be sent.
			return 0, malformed("zero-length handshake record")
		}
		if fragLen > maxRecordPayload {
			return 0, malformed("record length %d exceeds 2^14", fragLen)
		}
		end := pos + recordHeaderLen + fragLen
		if end > MaxHelloBytes {
			return 0, tooLarge("records carrying it exceed %d bytes", MaxHelloBytes)
		}

		// Collect the handshake header, which may itself be fragmented.
		frag := rest[recordHeaderLen:min(len(rest), recordHeaderLen+fragLen)]
		for i := 0; got+i < handshakeHeaderLen && i < len(frag); i++ {
			hdr[got+i] = frag[i]
		}
		if known := got + len(frag); known >= 1 && hdr[0] != handshakeTypeClientHello {
			return 0, malformed("handshake message type %d, want client_hello (1)", hdr[0])
		}
		if msgLen < 0 && got+len(frag) >= handshakeHeaderLen {
			bodyLen := int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3])
			if bodyLen > MaxHandshakeBytes-handshakeHeaderLen {
				return 0, tooLarge("declared length %d exceeds %d bytes", handshakeHeaderLen+bodyLen, MaxHandshakeBytes)
			}
			msgLen = handshakeHeaderLen + bodyLen
		}
		if msgLen >= 0 && got+fragLen > msgLen {
			return 0, malformed("record continues %d bytes past the end of the client hello", got+fragLen-msgLen)
		}
		if len(rest) < recordHeaderLen+fragLen {
			return 0, ErrNeedMore
		}
		got += fragLen
		pos = end
		records++
		if got == msgLen {
			break
		}
	}

	var msg []byte
	if records == 1 {
		msg = b[recordHeaderLen : recordHeaderLen+msgLen] // no copy
	} else {
		h.buf = h.buf[:0]
		for p := 0; p < pos; {
			fragLen := int(b[p+3])<<8 | int(b[p+4])
			h.buf = append(h.buf, b[p+recordHeaderLen:p+recordHeaderLen+fragLen]...)
			p += recordHeaderLen + fragLen
		}
		msg = h.buf
	}
	if err := parseClientHello(msg[handshakeHeaderLen:], h); err != nil {
		h.Reset()
		return 0, err
	}
	return pos, nil
}

// ParseHandshake parses one handshake message that must be a ClientHello:
// the 4-byte handshake header (type 1, uint24 length) and the body, with
// nothing after it. This is the form of the hello in a QUIC CRYPTO stream
// (RFC 9001 §4), which carries handshake messages without the record layer.
// It returns ErrNeedMore if msg is a strict prefix of the message, and
// otherwise the same errors as ParseRecords (never ErrNotTLS). h is reset
// first and its slices are reused.
func ParseHandshake(msg []byte, h *Hello) error {
	h.Reset()
	if len(msg) == 0 {
		return ErrNeedMore
	}
	if msg[0] != handshakeTypeClientHello {
		return malformed("handshake message type %d, want client_hello (1)", msg[0])
	}
	if len(msg) < handshakeHeaderLen {
		return ErrNeedMore
	}
	bodyLen := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
	if bodyLen > MaxHandshakeBytes-handshakeHeaderLen {
		return tooLarge("declared length %d exceeds %d bytes", handshakeHeaderLen+bodyLen, MaxHandshakeBytes)
	}
	if len(msg) < handshakeHeaderLen+bodyLen {
		return ErrNeedMore
	}
	if extra := len(msg) - handshakeHeaderLen - bodyLen; extra > 0 {
		return malformed("%d bytes after the client hello", extra)
	}
	if err := parseClientHello(msg[handshakeHeaderLen:], h); err != nil {
		h.Reset()
		return err
	}
	return nil
}

// parseClientHello parses a ClientHello body (RFC 8446 §4.1.2, RFC 5246
// §7.4.1.2) into h, modelled on crypto/tls's clientHelloMsg.unmarshal. Only
// the extensions egressd uses are decoded (and then fully validated); the
// others are skipped, since the origin server, not the proxy, judges them.
func parseClientHello(body []byte, h *Hello) error {
	s := cryptobyte.String(body)

	var sessionID, ciphers, compression cryptobyte.String
	if !s.ReadUint16(&h.LegacyVersion) || !s.Skip(randomLen) {
		return malformed("truncated before the session id")
	}
	if !s.ReadUint8LengthPrefixed(&sessionID) {
		return malformed("truncated session id")
	}
	if len(sessionID) > maxSessionIDLen {
		return malformed("session id of %d bytes, at most %d allowed", len(sessionID), maxSessionIDLen)
	}
	// RFC 8446 §4.1.2: cipher_suites<2..2^16-2>.
	if !s.ReadUint16LengthPrefixed(&ciphers) {
		return malformed("truncated cipher suites")
	}
	if ciphers.Empty() {
		return malformed("empty cipher suite list")
	}
	for !ciphers.Empty() {
		var c uint16
		if !ciphers.ReadUint16(&c) {
			return malformed("odd-length cipher suite list")
		}
		h.CipherSuites = append(h.CipherSuites, c)
	}
	// RFC 8446 §4.1.2: legacy_compression_methods<1..2^8-1>.
	if !s.ReadUint8LengthPrefixed(&compression) {
		return malformed("truncated compression methods")
	}
	if compression.Empty() {
		return malformed("empty compression method list")
	}

	if s.Empty() {
		// RFC 5246 §7.4.1.2: the extensions block is optional (TLS 1.0-1.2
		// clients without extensions end here).
		return nil
	}
	var exts cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&exts) {
		return malformed("truncated extensions block")
	}
	if !s.Empty() {
		return malformed("%d bytes after the extensions block", len(s))
	}

	for !exts.Empty() {
		var typ uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
			return malformed("truncated extension")
		}
		// RFC 8446 §4.2: "There MUST NOT be more than one extension of the
		// same type in a given extension block." GREASE types included.
		if len(h.Extensions) < dupScanLimit && slices.Contains(h.Extensions, typ) {
			return malformed("duplicate extension 0x%04x", typ)
		}
		h.Extensions = append(h.Extensions, typ)

		switch typ {
		case extServerName:
			// RFC 6066 §3: ServerNameList server_name_list<1..2^16-1>, each
			// entry name_type(1) and, for host_name(0), HostName<1..2^16-1>.
			// Like crypto/tls, entries of other types are assumed to have the
			// same 16-bit length prefix and are skipped.
			var list cryptobyte.String
			if !data.ReadUint16LengthPrefixed(&list) {
				return malformed("server_name: truncated list")
			}
			if list.Empty() {
				return malformed("server_name: empty list")
			}
			for !list.Empty() {
				var nameType uint8
				var name cryptobyte.String
				if !list.ReadUint8(&nameType) || !list.ReadUint16LengthPrefixed(&name) {
					return malformed("server_name: truncated entry")
				}
				if name.Empty() {
					return malformed("server_name: empty name")
				}
				if nameType != 0 {
					continue
				}
				// RFC 6066 §3: "The ServerNameList MUST NOT contain more than
				// one name of the same name_type."
				if h.HasServerName {
					return malformed("server_name: more than one host_name")
				}
				h.ServerName = string(name)
				h.HasServerName = true
			}
		case extALPN:
			// RFC 7301 §3.1: ProtocolName protocol_name_list<2..2^16-1>,
			// ProtocolName opaque<1..2^8-1>.
			var list cryptobyte.String
			if !data.ReadUint16LengthPrefixed(&list) {
				return malformed("alpn: truncated list")
			}
			if list.Empty() {
				return malformed("alpn: empty list")
			}
			// Names other than the common ones share one copy of the list
			// from the first of them on: a hello listing many protocols
			// costs one allocation, not one per name.
			var rest string
			for !list.Empty() {
				entry := list
				var proto cryptobyte.String
				if !list.ReadUint8LengthPrefixed(&proto) {
					return malformed("alpn: truncated protocol name")
				}
				if proto.Empty() {
					return malformed("alpn: empty protocol name")
				}
				if len(h.ALPN) == maxALPNNames {
					return tooLarge("alpn: more than %d protocol names", maxALPNNames)
				}
				name := commonALPN(proto)
				if name == "" {
					if rest == "" {
						rest = string(entry)
					}
					at := len(rest) - len(entry) + 1 // past the length byte
					name = rest[at : at+len(proto)]
				}
				h.ALPN = append(h.ALPN, name)
			}
		case extSupportedVersions:
			// RFC 8446 §4.2.1: ClientHello form,
			// ProtocolVersion versions<2..254>.
			var list cryptobyte.String
			if !data.ReadUint8LengthPrefixed(&list) {
				return malformed("supported_versions: truncated list")
			}
			if list.Empty() {
				return malformed("supported_versions: empty list")
			}
			for !list.Empty() {
				var v uint16
				if !list.ReadUint16(&v) {
					return malformed("supported_versions: odd-length list")
				}
				h.SupportedVersions = append(h.SupportedVersions, v)
			}
		case extSupportedGroups:
			// RFC 8446 §4.2.7 (RFC 8422 §5.1.1 elliptic_curves):
			// NamedGroup named_group_list<2..2^16-1>.
			var list cryptobyte.String
			if !data.ReadUint16LengthPrefixed(&list) {
				return malformed("supported_groups: truncated list")
			}
			if list.Empty() {
				return malformed("supported_groups: empty list")
			}
			for !list.Empty() {
				var g uint16
				if !list.ReadUint16(&g) {
					return malformed("supported_groups: odd-length list")
				}
				h.SupportedGroups = append(h.SupportedGroups, g)
			}
		case extECPointFormats:
			// RFC 8422 §5.1.2: ECPointFormat ec_point_format_list<1..2^8-1>.
			var list cryptobyte.String
			if !data.ReadUint8LengthPrefixed(&list) {
				return malformed("ec_point_formats: truncated list")
			}
			if list.Empty() {
				return malformed("ec_point_formats: empty list")
			}
			h.PointFormats = append(h.PointFormats, list...)
		case extSignatureAlgorithms:
			// RFC 8446 §4.2.3: SignatureScheme
			// supported_signature_algorithms<2..2^16-2>.
			var list cryptobyte.String
			if !data.ReadUint16LengthPrefixed(&list) {
				return malformed("signature_algorithms: truncated list")
			}
			if list.Empty() {
				return malformed("signature_algorithms: empty list")
			}
			for !list.Empty() {
				var a uint16
				if !list.ReadUint16(&a) {
					return malformed("signature_algorithms: odd-length list")
				}
				h.SignatureAlgorithms = append(h.SignatureAlgorithms, a)
			}
		case extPreSharedKey:
			// RFC 8446 §4.2.11: pre_shared_key "MUST be the last extension
			// in the ClientHello". Its contents are not needed.
			if !exts.Empty() {
				return malformed("pre_shared_key is not the last extension")
			}
			continue
		case extECH:
			// RFC 9849 §5: encrypted_client_hello. Only its presence is
			// recorded; the payload is opaque to the proxy.
			h.ECH = true
			continue
		default:
			// Not needed by egressd; the origin server validates it.
			continue
		}
		if !data.Empty() {
			return malformed("extension 0x%04x: %d bytes after its contents", typ, len(data))
		}
	}

	if len(h.Extensions) > dupScanLimit {
		h.scratch = append(h.scratch[:0], h.Extensions...)
		slices.Sort(h.scratch)
		for i := 1; i < len(h.scratch); i++ {
			if h.scratch[i] == h.scratch[i-1] {
				return malformed("duplicate extension 0x%04x", h.scratch[i])
			}
		}
	}
	return nil
}

// commonALPN returns p as a string constant if it is one of the common
// protocol names, else "" (the compiler does not allocate for a switch on
// string(p)).
func commonALPN(p []byte) string {
	switch string(p) {
	case "h2":
		return "h2"
	case "http/1.1":
		return "http/1.1"
	case "h3":
		return "h3"
	case "http/1.0":
		return "http/1.0"
	case "acme-tls/1":
		return "acme-tls/1"
	}
	return ""
}
