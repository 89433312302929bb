package proxy

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestTransparentBurstTTL0: a burst of connections to a new name whose
// answer has TTL 0. The answer is not reused for dials, but it is
// remembered for minVerifyRefresh for the connections that waited for it;
// before, they found nothing remembered and were refused dst_mismatch.
// (This test and the three below are from a helper's review.)
func TestTransparentBurstTTL0(t *testing.T) {
	var queries atomic.Int32
	dnsAddr := serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if q.Question[0].Qtype == dns.TypeA {
			queries.Add(1)
			time.Sleep(200 * time.Millisecond) // the connections overlap the lookup
			rr, _ := dns.NewRR(q.Question[0].Name + " 0 IN A 127.0.0.5")
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	g, e, p := verifyGateway(t, "127.0.0.5", []string{"ttl0.egress.test"}, dnsAddr)
	const conns = 4
	var wg sync.WaitGroup
	for i := range conns {
		c := g.dial(t, "127.0.0.5:"+p)
		wg.Go(func() {
			first := append(clientHelloBytes("ttl0.egress.test"), fmt.Sprintf("ping %d", i)...)
			if got := exchange(t, c, first); !bytes.Equal(got, first) {
				t.Errorf("connection %d: got %d bytes back, want %d", i, len(got), len(first))
			}
		})
	}
	wg.Wait()
	denied := 0
	for i := range conns {
		denied += e.countLines(t, "decision", map[string]any{"decision": "deny", "conn": i + 1})
	}
	if denied > 0 {
		t.Errorf("%d of %d connections at once to a TTL-0 name refused (%d A queries)", denied, conns, queries.Load())
	}
}

// TestVerifyDuringSlowLookup: a dial's Lookup slower than the Verify that
// waits for it (AAAA dropped, two servers: 2 x dnsQueryTimeout >
// verifyTimeout; scaled down here to 2 x 300 ms > 500 ms). The A answer
// came at once and is remembered as it comes; before, the waiting Verify
// saw nothing until the Lookup ended and was refused.
func TestVerifyDuringSlowLookup(t *testing.T) {
	s1 := serveTestDNS(t, "127.0.0.1:0", dropAAAA)
	s2 := serveTestDNS(t, "127.0.0.1:0", dropAAAA)
	r, err := NewResolver([]string{s1, s2})
	if err != nil {
		t.Fatal(err)
	}
	r.client = &dns.Client{Timeout: 300 * time.Millisecond}
	go r.Lookup(context.Background(), "drop.test") // a CONNECT dialing the name
	waitFor(t, "the Lookup in flight", func() bool { return r.waiting("drop.test") == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	a := netip.MustParseAddr("127.0.0.5")
	if ok, err := r.Verify(ctx, "drop.test", a); !ok {
		t.Errorf("Verify during a slow Lookup = %v, %v; want true (the A answer came at once)", ok, err)
	}
	r.flying.Wait()
}

// TestVerifyRightAfterCancelledLookup: a Verify right after a Lookup was
// cancelled (its plain-HTTP client gone) asks the servers itself: the
// name is un-marked when the Lookup is cancelled, not only once its
// queries have unwound, when the Verify had already been refused.
func TestVerifyRightAfterCancelledLookup(t *testing.T) {
	r, release, _, aaaaQueries := gatedDNS(t)
	a := netip.MustParseAddr("192.0.2.1")
	refused := 0
	const rounds = 20
	for i := range rounds {
		name := fmt.Sprintf("gone%d.test", i)
		before := aaaaQueries.Load()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { r.Lookup(ctx, name); close(done) }()
		waitFor(t, "the Lookup's queries", func() bool { return aaaaQueries.Load() == before+1 })
		cancel()
		<-done // the plain-HTTP client is gone; a transparent connection comes
		vctx, vcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		if ok, _ := r.Verify(vctx, name, a); !ok {
			refused++
		}
		vcancel()
	}
	release()
	if refused > 0 {
		t.Errorf("%d of %d Verifies right after a cancelled Lookup refused 192.0.2.1", refused, rounds)
	}
}

// TestCancelledLookupKeepsVerifyMark: a Lookup cancelled while a Verify of
// the same name is asking gives the name back that Verify's mark: a second
// Verify waits for the first instead of sending queries of its own.
func TestCancelledLookupKeepsVerifyMark(t *testing.T) {
	r, release, _, aaaaQueries := gatedDNS(t)
	a := netip.MustParseAddr("2001:db8::1")
	v1 := make(chan bool, 1)
	go func() { ok, _ := r.Verify(context.Background(), "mark.test", a); v1 <- ok }()
	waitFor(t, "V1's queries", func() bool { return aaaaQueries.Load() == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Lookup(ctx, "mark.test"); close(done) }()
	waitFor(t, "the Lookup's queries", func() bool { return aaaaQueries.Load() == 2 })
	cancel()
	<-done
	r.flying.Wait()
	v2 := make(chan bool, 1)
	go func() { ok, _ := r.Verify(context.Background(), "mark.test", a); v2 <- ok }()
	time.Sleep(100 * time.Millisecond)
	q := aaaaQueries.Load()
	release()
	<-v1
	<-v2
	if q > 2 {
		t.Errorf("a second Verify within %v of the first, which was still asking, sent its own queries (%d AAAA queries, want 2)", minVerifyRefresh, q)
	}
}
