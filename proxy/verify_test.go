package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestVerifyDuringSlowLookup: a dial's Lookup slower than the Verify that
// waits for it (AAAA dropped, two servers: 2 x dnsQueryTimeout >
// verifyTimeout; scaled down here to 2 x 300 ms > 500 ms). The A answer
// came at once and is remembered as it comes; before, the waiting Verify
// saw nothing until the Lookup ended and was refused. (This test and the
// two below are from a helper's review.)
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
