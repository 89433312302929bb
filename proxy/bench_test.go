package proxy

import (
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sni"
)

// BenchmarkDecisionLog: one decision line and one close line for a CONNECT
// tunnel with a parsed ClientHello, as written for every connection
// (metrics included), to a discarding writer.
func BenchmarkDecisionLog(b *testing.B) {
	s := &Server{log: zerolog.New(io.Discard).With().Timestamp().Logger(), metrics: newMetrics(nil)}
	var h sni.Hello
	if _, err := sni.ParseRecords(clientHelloBytes("allowed.egress.test"), &h); err != nil {
		b.Fatal(err)
	}
	c := &conn{id: 1, mode: ModeConnect, start: time.Now(), client: netip.MustParseAddrPort("10.1.2.3:40000"),
		host: "allowed.egress.test", port: 443, dst: netip.MustParseAddrPort("192.0.2.7:443"), helloWait: time.Millisecond}
	c.fingerprint(&h, false)
	c.decision = policy.Decision{Allow: true, Reason: policy.ReasonAllowed, Policy: "web", Rule: "allowed", Identity: "cidr:web"}
	b.ReportAllocs()
	for b.Loop() {
		s.logDecision(c)
		s.logClose(c, 1000, 2000)
	}
}
