// Package sni parses the TLS ClientHello that opens a tunnelled connection
// and computes its JA3 and JA4 fingerprints, so that egressd can apply its
// policy (server name, ALPN, client fingerprint) before any byte reaches the
// origin.
//
// It is a pure package: byte slices in, values out. It does no I/O, keeps no
// state between calls (but for a QUICInitial's, held in the caller's value),
// never panics on any input and bounds every length it reads (see
// MaxHandshakeBytes, MaxHelloBytes and MaxQUICCryptoBytes). ParseRecords
// takes the first bytes of a TCP stream (TLS records); ParseHandshake takes a
// bare handshake message, as reassembled from a QUIC CRYPTO stream.
//
// What it is not: it does not terminate or validate TLS (no certificates, no
// key shares, no decryption, and extensions egressd does not use are skipped
// unchecked), it does not decide whether a server name is acceptable (names
// are returned exactly as sent; policy judges them), it does not read from a
// connection (the caller owns buffering and deadlines).
//
// QUIC: QUICInitial takes the UDP datagrams that open a QUIC v1 (RFC 9000) or
// v2 (RFC 9369) connection and recovers the ClientHello from the client's
// Initial packets, whose protection uses keys derived from the Destination
// Connection ID alone (RFC 9001 §5.2), so anyone on the path can remove it.
// It derives those keys once per connection attempt, decrypts each Initial
// into a buffer it owns, reassembles the CRYPTO stream (out of order,
// retransmitted, spread over packets and datagrams, at most
// MaxQUICCryptoBytes) and hands the hello to ParseHandshake; JA4 is then
// h.JA4(true). It reads only Initial packets: no server packets, no 1-RTT
// data, no connection state beyond the hello. ErrNotQUIC tells a first
// datagram that is not a v1/v2 client Initial apart from a broken one.
//
// The errors let the caller's read loop tell the cases apart: ErrNeedMore
// (read more and retry), ErrNotTLS (ErrNotQUIC for QUICInitial), ErrTooLarge
// and ErrMalformed (give up); for QUICInitial also ErrDiscarded (drop this
// datagram, which is not of the attempt, and go on).
//
// Example: the proxy's bounded read loop.
//
//	var h sni.Hello // reused across connections
//	buf := make([]byte, 0, sni.MaxHelloBytes)
//	for {
//		n, err := conn.Read(buf[len(buf):cap(buf)])
//		buf = buf[:len(buf)+n]
//		used, perr := sni.ParseRecords(buf, &h)
//		if perr == nil {
//			ja4 := h.JA4(false) // "t13d1516h2_8daaf6152771_e5627efa2ab1"
//			decide(h.ServerName, h.ALPN, ja4)
//			forward(buf) // all of buf: the hello (buf[:used]) and anything after it
//			break
//		}
//		if !errors.Is(perr, sni.ErrNeedMore) || err != nil || len(buf) == cap(buf) {
//			reject(perr, err) // not TLS, malformed, too large, or the client stopped
//			break
//		}
//	}
package sni
