package proxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// countingDNS answers A queries for ttl0.test (TTL 0), ttl60.test (TTL 60)
// and v6.test (AAAA only), NXDOMAIN for nx.test and SERVFAIL for
// fail.test, counting the queries it sees.
func countingDNS(t *testing.T) (addr string, queries *atomic.Int64) {
	t.Helper()
	queries = new(atomic.Int64)
	addr = serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		queries.Add(1)
		m := new(dns.Msg)
		m.SetReply(q)
		name, qt := strings.ToLower(q.Question[0].Name), q.Question[0].Qtype
		add := func(rr string) {
			r, _ := dns.NewRR(rr)
			m.Answer = append(m.Answer, r)
		}
		switch {
		case name == "nx.test.":
			m.Rcode = dns.RcodeNameError
		case name == "fail.test.":
			m.Rcode = dns.RcodeServerFailure
		case name == "ttl0.test." && qt == dns.TypeA:
			add("ttl0.test. 0 IN A 192.0.2.1")
		case name == "ttl60.test." && qt == dns.TypeA:
			add("ttl60.test. 60 IN A 192.0.2.2")
		case name == "v6.test." && qt == dns.TypeAAAA:
			add("v6.test. 60 IN AAAA 2001:db8::6")
		case name == "half.test." && qt == dns.TypeAAAA:
			add("half.test. 300 IN AAAA 2001:db8::7")
		case name == "half.test.":
			m.Rcode = dns.RcodeServerFailure
		case name == "v4half.test." && qt == dns.TypeA:
			add("v4half.test. 300 IN A 192.0.2.8")
		case name == "v4half.test.":
			m.Rcode = dns.RcodeServerFailure
		case name == "cname.test." && qt == dns.TypeA:
			add("cname.test. 60 IN CNAME ttl60.test.")
			add("ttl60.test. 60 IN A 192.0.2.2")
		}
		w.WriteMsg(m)
	})
	return addr, queries
}

// countingResolver is a Resolver asking countingDNS, on a clock the test
// sets through now.
func countingResolver(t *testing.T) (r *Resolver, queries *atomic.Int64, now *time.Time) {
	t.Helper()
	addr, queries := countingDNS(t)
	r, err := NewResolver([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	now = new(time.Time)
	*now = time.Now()
	r.now = func() time.Time { return *now }
	return r, queries, now
}

func TestResolverTTLCache(t *testing.T) {
	r, queries, clock := countingResolver(t)
	now := *clock
	r.now = func() time.Time { return now }
	ctx := context.Background()
	lookup := func(name string) []netip.Addr {
		t.Helper()
		a, err := r.Lookup(ctx, name)
		if err != nil {
			t.Fatalf("Lookup %s: %v", name, err)
		}
		return a
	}
	// Each uncached lookup asks A and AAAA: two queries.
	if got := lookup("ttl60.test"); len(got) != 1 || got[0] != netip.MustParseAddr("192.0.2.2") {
		t.Fatalf("ttl60.test = %v", got)
	}
	lookup("ttl60.test")
	if n := queries.Load(); n != 2 {
		t.Fatalf("second lookup within the TTL asked the server: %d queries, want 2", n)
	}
	now = now.Add(61 * time.Second)
	lookup("ttl60.test")
	if n := queries.Load(); n != 4 {
		t.Fatalf("lookup after the TTL: %d queries, want 4", n)
	}
	lookup("ttl0.test")
	lookup("ttl0.test")
	if n := queries.Load(); n != 8 {
		t.Fatalf("TTL 0 answers must not be cached: %d queries, want 8", n)
	}
	if got := lookup("v6.test"); len(got) != 1 || !got[0].Is6() {
		t.Fatalf("v6.test = %v, want its AAAA", got)
	}
	if got := lookup("cname.test"); len(got) != 1 || got[0] != netip.MustParseAddr("192.0.2.2") {
		t.Fatalf("cname.test = %v, want the CNAME target's address", got)
	}
	for _, name := range []string{"nx.test", "fail.test", "empty.test"} {
		if a, err := r.Lookup(ctx, name); err == nil {
			t.Errorf("Lookup %s = %v, want an error", name, a)
		}
	}
}

// TestResolverPartialAnswer: when the A query fails and AAAA answers, the
// answer is used but kept only partialAnswerTTL, not the AAAA TTL (300 s):
// an IPv4-only host would otherwise be left without the name's A records
// for five minutes after one lost or SERVFAIL'd query. A failed AAAA query
// (middleboxes drop them) does not shorten an A answer.
func TestResolverPartialAnswer(t *testing.T) {
	r, queries, now := countingResolver(t)
	ctx := context.Background()
	if got, err := r.Lookup(ctx, "half.test"); err != nil || len(got) != 1 || got[0] != netip.MustParseAddr("2001:db8::7") {
		t.Fatalf("half.test = %v, %v; want its AAAA", got, err)
	}
	asked := queries.Load()
	r.Lookup(ctx, "half.test")
	if n := queries.Load(); n != asked {
		t.Errorf("a lookup within partialAnswerTTL asked again: %d queries, want %d", n, asked)
	}
	*now = now.Add(partialAnswerTTL + time.Second)
	r.Lookup(ctx, "half.test")
	if n := queries.Load(); n == asked {
		t.Errorf("the failed family was not asked again %v later (the answer was kept for its TTL)", partialAnswerTTL+time.Second)
	}

	if got, err := r.Lookup(ctx, "v4half.test"); err != nil || len(got) != 1 {
		t.Fatalf("v4half.test = %v, %v; want its A", got, err)
	}
	asked = queries.Load()
	*now = now.Add(partialAnswerTTL + time.Second)
	r.Lookup(ctx, "v4half.test")
	if n := queries.Load(); n != asked {
		t.Errorf("an A answer was kept only %v because the AAAA query failed: %d queries, want %d", partialAnswerTTL, n, asked)
	}
}

// TestResolverKeepsRecentAnswers: every answer is remembered for its own
// TTL, not only the latest; expired ones are forgotten; the list is
// bounded.
func TestResolverKeepsRecentAnswers(t *testing.T) {
	r, now := clockedResolver(t)
	a1, a2 := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	if !r.store("cdn.test", []netip.Addr{a1}, 60*time.Second, false) {
		t.Error("first answer: added = false")
	}
	*now = now.Add(30 * time.Second)
	if !r.store("cdn.test", []netip.Addr{a2}, 60*time.Second, false) {
		t.Error("new address: added = false")
	}
	if r.store("cdn.test", []netip.Addr{a2}, 60*time.Second, false) {
		t.Error("same address again: added = true")
	}
	for _, a := range []netip.Addr{a1, a2} {
		if !r.Knows("cdn.test", a) {
			t.Errorf("%s forgotten within its TTL", a)
		}
	}
	if got, ok := r.cached("cdn.test"); !ok || len(got) != 1 || got[0] != a2 {
		t.Errorf("Lookup cache = %v %v, want only the latest answer", got, ok)
	}
	*now = now.Add(31 * time.Second) // a1's TTL is over, a2's is not
	if r.Knows("cdn.test", a1) {
		t.Error("expired address still known")
	}
	if !r.Knows("cdn.test", a2) {
		t.Error("unexpired address forgotten")
	}
	// A Verify within minVerifyRefresh of the last query does not query
	// (the server at 127.0.0.1:1 would fail the test with an error); later
	// it does.
	r.mu.Lock()
	r.noteAskedLocked("cdn.test", *now)
	r.mu.Unlock()
	*now = now.Add(minVerifyRefresh - time.Second)
	if ok, err := r.Verify(context.Background(), "cdn.test", netip.MustParseAddr("127.0.0.4")); ok || err != nil {
		t.Errorf("Verify of an unknown address = %v, %v; want false without a query", ok, err)
	}
	*now = now.Add(2 * time.Second)
	if _, err := r.Verify(context.Background(), "cdn.test", netip.MustParseAddr("127.0.0.4")); err == nil {
		t.Error("Verify after minVerifyRefresh did not query")
	}
	for i := range maxKnownPerName + 10 {
		*now = now.Add(time.Millisecond)
		r.store("many.test", []netip.Addr{netip.MustParseAddr(fmt.Sprintf("10.0.%d.%d", i/256, i%256))}, time.Minute, false)
	}
	r.mu.Lock()
	n := len(r.cache["many.test"].known)
	r.mu.Unlock()
	if n != maxKnownPerName {
		t.Errorf("remembered %d addresses, want the bound %d", n, maxKnownPerName)
	}
	last := netip.MustParseAddr(fmt.Sprintf("10.0.%d.%d", (maxKnownPerName+9)/256, (maxKnownPerName+9)%256))
	if !r.Knows("many.test", last) {
		t.Error("the newest address was evicted")
	}
}

// TestJoinAddrs: IPv6 first, at most maxAddrsPerName, and never so many
// IPv6 addresses that the IPv4 ones are all dropped.
func TestJoinAddrs(t *testing.T) {
	addrs := func(prefix string, n int) []netip.Addr {
		var out []netip.Addr
		for i := range n {
			out = append(out, netip.MustParseAddr(fmt.Sprintf(prefix, i+1)))
		}
		return out
	}
	for _, tc := range []struct {
		n6, n4, want6, want4 int
	}{
		{2, 3, 2, 3},
		{32, 0, 32, 0},
		{0, 40, 0, 32},
		{32, 1, 31, 1},
		{40, 40, 16, 16},
		{10, 40, 10, 22},
		{40, 10, 22, 10},
	} {
		got := joinAddrs(addrs("2001:db8::%x", tc.n6), addrs("192.0.2.%d", tc.n4))
		var n6, n4 int
		for i, a := range got {
			if a.Is4() {
				n4++
			} else if n6++; n4 > 0 {
				t.Errorf("%d+%d: IPv6 address at %d after an IPv4 one", tc.n6, tc.n4, i)
			}
		}
		if n6 != tc.want6 || n4 != tc.want4 {
			t.Errorf("%d IPv6 + %d IPv4: kept %d + %d, want %d + %d", tc.n6, tc.n4, n6, n4, tc.want6, tc.want4)
		}
	}
}

// TestVerifyRateLimitUncached: Verify asks the servers at most once per
// minVerifyRefresh for a name whose answer is not cached: TTL 0, or
// NXDOMAIN. Before, each Verify asked again.
func TestVerifyRateLimitUncached(t *testing.T) {
	r, queries, now := countingResolver(t)
	spoofed := netip.MustParseAddr("203.0.113.9")
	for _, name := range []string{"ttl0.test", "nx.test"} {
		queries.Store(0)
		for range 50 {
			r.Verify(context.Background(), name, spoofed)
		}
		// One lookup: an A and an AAAA query.
		if n := queries.Load(); n != 2 {
			t.Errorf("%s: 50 Verify calls within minVerifyRefresh sent %d queries, want the 2 of one lookup", name, n)
		}
	}
	*now = now.Add(minVerifyRefresh)
	queries.Store(0)
	r.Verify(context.Background(), "ttl0.test", spoofed)
	if n := queries.Load(); n != 2 {
		t.Errorf("a Verify minVerifyRefresh later sent %d queries, want 2", n)
	}
}

// TestResolverCacheEviction: a full cache is cut down to cacheEvictTo at
// once, so the whole-cache scan runs once per maxCacheEntries-cacheEvictTo
// new names. Before, it dropped one entry per new name and rescanned all
// of them every time, under the lock the transparent front loop takes.
func TestResolverCacheEviction(t *testing.T) {
	for _, tc := range []struct {
		path string
		add  func(r *Resolver, name string)
	}{
		{"store", func(r *Resolver, name string) {
			r.store(name, []netip.Addr{netip.MustParseAddr("127.0.0.2")}, time.Minute, false)
		}},
		{"Remember", func(r *Resolver, name string) {
			m := new(dns.Msg)
			m.SetQuestion(dns.Fqdn(name), dns.TypeA)
			rr, _ := dns.NewRR(dns.Fqdn(name) + " 60 IN A 127.0.0.2")
			m.Answer = append(m.Answer, rr)
			r.Remember(name, m)
		}},
	} {
		t.Run(tc.path, func(t *testing.T) {
			r, _ := clockedResolver(t)
			size := func() int {
				r.mu.Lock()
				defer r.mu.Unlock()
				return len(r.cache)
			}
			for i := range maxCacheEntries {
				tc.add(r, fmt.Sprintf("n%d.test", i))
			}
			if n := size(); n != maxCacheEntries {
				t.Fatalf("%d entries after filling, want %d", n, maxCacheEntries)
			}
			tc.add(r, "overflow.test")
			if n := size(); n != cacheEvictTo+1 {
				t.Errorf("%d entries after one over the limit, want %d (cut to cacheEvictTo, plus the new one)", n, cacheEvictTo+1)
			}
			if !r.Knows("overflow.test", netip.MustParseAddr("127.0.0.2")) {
				t.Error("the name added on overflow is not cached")
			}
			// An eviction is a drop in size; count them over as many new
			// names again as the cache holds.
			const names = maxCacheEntries
			limit := names/(maxCacheEntries-cacheEvictTo) + 1
			evictions, last := 0, size()
			for i := range names {
				tc.add(r, fmt.Sprintf("more%d.test", i))
				n := size()
				if n <= last {
					if evictions++; evictions > limit {
						t.Fatalf("%d evictions (whole-cache scans) after %d new names in a full cache, want at most %d for %d", evictions, i+1, limit, names)
					}
				}
				if n > maxCacheEntries {
					t.Fatalf("%d entries, over the bound %d", n, maxCacheEntries)
				}
				last = n
			}
		})
	}
}

// TestTrimAnswer: an answer keeps the first maxAddrsPerName addresses of
// each name, but all of a signed address set (its RRSIG must still
// verify for a validating client); a signed CNAME in front does not keep
// an unsigned set whole.
func TestTrimAnswer(t *testing.T) {
	rrs := func(ss ...string) []dns.RR {
		var out []dns.RR
		for _, s := range ss {
			rr, err := dns.NewRR(s)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, rr)
		}
		return out
	}
	var many []string
	for i := range maxAddrsPerName + 8 {
		many = append(many, fmt.Sprintf("many.egress.test. 60 IN A 127.0.9.%d", i+1))
	}
	const sig = " 60 IN RRSIG %s 13 3 60 20270101000000 20260101000000 12345 egress.test. AAAA"
	for _, tc := range []struct {
		name   string
		answer []dns.RR
		want   int
	}{
		{"unsigned", rrs(many...), maxAddrsPerName},
		{"signed", rrs(append(many, "many.egress.test."+fmt.Sprintf(sig, "A"))...), maxAddrsPerName + 8 + 1},
		{"signed CNAME, unsigned addresses", rrs(append([]string{"www.egress.test. 60 IN CNAME many.egress.test.",
			"www.egress.test." + fmt.Sprintf(sig, "CNAME")}, many...)...), 2 + maxAddrsPerName},
	} {
		m := &dns.Msg{Answer: tc.answer}
		trimAnswer(m)
		if len(m.Answer) != tc.want {
			t.Errorf("%s: %d records left, want %d", tc.name, len(m.Answer), tc.want)
		}
	}
}

// gatedDNS answers A queries for every name at once with 192.0.2.1, and
// AAAA queries with 2001:db8::1 (each with TTL 3600) only once release is
// called. It counts the queries of each type.
func gatedDNS(t *testing.T) (r *Resolver, release func(), a, aaaa *atomic.Int64) {
	t.Helper()
	gate := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	a, aaaa = new(atomic.Int64), new(atomic.Int64)
	addr := serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		name := q.Question[0].Name
		if q.Question[0].Qtype == dns.TypeAAAA {
			aaaa.Add(1)
			<-gate
			rr, _ := dns.NewRR(name + " 3600 IN AAAA 2001:db8::1")
			m.Answer = append(m.Answer, rr)
		} else {
			a.Add(1)
			rr, _ := dns.NewRR(name + " 3600 IN A 192.0.2.1")
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	t.Cleanup(release) // before the server's Shutdown (cleanups run last first)
	r, err := NewResolver([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	return r, release, a, aaaa
}

// waiting reports how many callers wait for the lookup of name in
// progress.
func (r *Resolver) waiting(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f := r.flights[name]; f != nil {
		return f.waiters
	}
	return 0
}

// TestResolverCoalesces: callers looking up a name while its lookup is in
// progress wait for it rather than asking the servers again; a caller that
// goes away does not end the lookup for the others; when every caller has
// gone, the queries are cancelled and the next caller asks anew.
func TestResolverCoalesces(t *testing.T) {
	r, release, aQueries, aaaaQueries := gatedDNS(t)
	const callers = 16
	gone, cancelGone := context.WithCancel(context.Background())
	errs := make(chan error, callers)
	lookup := func(ctx context.Context) {
		addrs, err := r.Lookup(ctx, "burst.test")
		if err == nil && len(addrs) != 2 {
			err = fmt.Errorf("addrs %v, want the AAAA and the A record", addrs)
		}
		errs <- err
	}
	go lookup(gone)
	waitFor(t, "the first lookup's queries", func() bool { return aaaaQueries.Load() == 1 })
	for range callers - 1 {
		go lookup(context.Background())
	}
	waitFor(t, "every caller waiting", func() bool { return r.waiting("burst.test") == callers })
	cancelGone()
	if err := <-errs; !errors.Is(err, context.Canceled) {
		t.Fatalf("the cancelled caller got %v, want context.Canceled at once", err)
	}
	release()
	for range callers - 1 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if a, aaaa := aQueries.Load(), aaaaQueries.Load(); a != 1 || aaaa != 1 {
		t.Errorf("%d concurrent lookups sent %d A and %d AAAA queries, want 1 and 1", callers, a, aaaa)
	}
}

// TestResolverCancelledLookupNotStored: a lookup every caller left before
// its answer stores nothing: its A records alone (the AAAA query cut
// short) would have hidden the name's IPv6 addresses for the A records'
// TTL. The next caller asks anew rather than joining the cancelled lookup.
func TestResolverCancelledLookupNotStored(t *testing.T) {
	r, release, aQueries, aaaaQueries := gatedDNS(t)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		waitFor(t, "both queries", func() bool { return aQueries.Load() == 1 && aaaaQueries.Load() == 1 })
		time.Sleep(20 * time.Millisecond) // the A answer is read
		cancel()
	}()
	if _, err := r.Lookup(ctx, "cut.test"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lookup = %v, want context.Canceled", err)
	}
	r.flying.Wait()
	if got, ok := r.cached("cut.test"); ok {
		t.Fatalf("a cancelled lookup cached %v", got)
	}
	release()
	if got, err := r.Lookup(context.Background(), "cut.test"); err != nil || len(got) != 2 {
		t.Errorf("Lookup after the cancelled one = %v, %v; want the AAAA and the A record", got, err)
	}
	if a := aQueries.Load(); a != 2 {
		t.Errorf("%d A queries, want 2: the lookup after the cancelled one must ask anew", a)
	}
}

// slowAAAAResolver is a Resolver asking a server that answers A queries
// at once with 192.0.2.1 and AAAA queries with 2001:db8::1 after
// aaaaDelay, both with TTL 3600.
func slowAAAAResolver(t *testing.T, aaaaDelay time.Duration) *Resolver {
	t.Helper()
	addr := serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		name := q.Question[0].Name
		rr, _ := dns.NewRR(name + " 3600 IN A 192.0.2.1")
		if q.Question[0].Qtype == dns.TypeAAAA {
			time.Sleep(aaaaDelay)
			rr, _ = dns.NewRR(name + " 3600 IN AAAA 2001:db8::1")
		}
		m.Answer = append(m.Answer, rr)
		w.WriteMsg(m)
	})
	r, err := NewResolver([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestResolverCancelledLookupsStress: callers whose deadline lands
// anywhere around the answers never leave the A records alone in the
// cache (from a helper's review, which found an earlier design caching
// them in 167 of 1,382 cancelled lookups).
func TestResolverCancelledLookupsStress(t *testing.T) {
	r := slowAAAAResolver(t, 2*time.Millisecond)
	rng := rand.New(rand.NewPCG(1, 2))
	cancelled := 0
	for i := range 500 {
		name := fmt.Sprintf("s%d.test", i)
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(3000))*time.Microsecond)
		if _, err := r.Lookup(ctx, name); err != nil {
			cancelled++
		}
		cancel()
	}
	r.flying.Wait()
	for i := range 500 {
		if got, ok := r.cached(fmt.Sprintf("s%d.test", i)); ok && len(got) != 2 {
			t.Errorf("s%d.test cached as %v, want both records or nothing", i, got)
		}
	}
	t.Logf("%d of 500 lookups cancelled", cancelled)
}

// TestVerifyJoinsLookupInProgress: connections to a name not yet known
// arriving together (a workload opening several at once) are verified by
// the first one's lookup: the rate limit on queries (minVerifyRefresh)
// must not refuse the others while its answer is on its way.
func TestVerifyJoinsLookupInProgress(t *testing.T) {
	r, release, _, aaaaQueries := gatedDNS(t)
	v6 := netip.MustParseAddr("2001:db8::1")
	const conns = 4
	oks := make(chan bool, conns)
	verify := func() {
		ok, err := r.Verify(context.Background(), "burst.test", v6)
		if err != nil {
			t.Error(err)
		}
		oks <- ok
	}
	go verify()
	waitFor(t, "the first Verify's lookup", func() bool { return aaaaQueries.Load() == 1 })
	for range conns - 1 {
		go verify()
	}
	// Old: the others answered false at once.
	time.Sleep(100 * time.Millisecond)
	if n := len(oks); n > 0 {
		t.Fatalf("%d Verifies returned before the lookup in progress answered", n)
	}
	release()
	for i := range conns {
		if !<-oks {
			t.Errorf("Verify %d of %d refused an address of the lookup in progress", i+1, conns)
		}
	}
	if n := aaaaQueries.Load(); n != 1 {
		t.Errorf("%d AAAA queries, want 1", n)
	}
}

// rotatingDNS answers the n-th A query for any name (n from 1) with
// 127.0.0.<base+n>, TTL 60, after delay; AAAA queries get an empty
// NOERROR at once. (From a helper's review, as are the tests using it.)
func rotatingDNS(t *testing.T, base int, delay time.Duration) (string, *atomic.Int32) {
	return rotatingTTLDNS(t, base, delay, 60)
}

// rotatingTTLDNS is rotatingDNS with the answers' TTL.
func rotatingTTLDNS(t *testing.T, base int, delay time.Duration, ttl int) (string, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	addr := serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if q.Question[0].Qtype == dns.TypeA {
			i := n.Add(1)
			time.Sleep(delay)
			rr, _ := dns.NewRR(fmt.Sprintf("%s %d IN A 127.0.0.%d", q.Question[0].Name, ttl, base+int(i)))
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	return addr, &n
}

// TestVerifyBurstRotatingPool: a rotating pool whose first answer does
// not hold the workload's address. The asking Verify asks again; one
// arriving during its first query waits for its whole verification, not
// only that query, and accepts too.
func TestVerifyBurstRotatingPool(t *testing.T) {
	addr, n := rotatingDNS(t, 10, 200*time.Millisecond)
	r, err := NewResolver([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	want := netip.MustParseAddr("127.0.0.12") // in the second answer
	oks := make(chan bool, 2)
	verify := func() {
		ok, err := r.Verify(context.Background(), "rot.test", want)
		if err != nil {
			t.Error(err)
		}
		oks <- ok
	}
	go verify()
	waitFor(t, "the first query", func() bool { return n.Load() == 1 })
	go verify()
	for i := range 2 {
		if !<-oks {
			t.Errorf("Verify %d refused %s, an address of the rotating pool", i+1, want)
		}
	}
	if q := n.Load(); q != 2 {
		t.Errorf("%d A queries, want 2", q)
	}
}

// TestVerifySpoofBurstQueries: many spoofed destinations for one name at
// once, the DNS bringing a new address with every answer, cost at most
// one Verify's few queries (maxVerifyQueries) per minVerifyRefresh.
func TestVerifySpoofBurstQueries(t *testing.T) {
	addr, n := rotatingDNS(t, 10, 20*time.Millisecond)
	r, err := NewResolver([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	spoof := netip.MustParseAddr("127.0.0.200")
	for round := range 5 {
		name := fmt.Sprintf("spoof%d.test", round)
		before := n.Load()
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 64 {
			wg.Go(func() {
				<-start
				if ok, _ := r.Verify(context.Background(), name, spoof); ok {
					t.Error("spoofed destination accepted")
				}
			})
		}
		close(start)
		wg.Wait()
		if q := n.Load() - before; q > maxVerifyQueries {
			t.Errorf("%s: 64 spoofed Verifies at once sent %d A queries, want at most %d", name, q, maxVerifyQueries)
		}
	}
}

// dropAAAA answers A queries for every name at once with 127.0.0.5 (TTL
// 60) and never answers AAAA queries (a middlebox dropping them).
func dropAAAA(w dns.ResponseWriter, q *dns.Msg) {
	if q.Question[0].Qtype == dns.TypeAAAA {
		return
	}
	m := new(dns.Msg)
	m.SetReply(q)
	rr, _ := dns.NewRR(q.Question[0].Name + " 60 IN A 127.0.0.5")
	m.Answer = append(m.Answer, rr)
	w.WriteMsg(m)
}

// TestVerifyDeadlineKeepsAnswer: when Verify's deadline cuts the AAAA
// query short (dropped by a middlebox), the A answer that came at once
// verifies, and is remembered for the Verifies after it.
func TestVerifyDeadlineKeepsAnswer(t *testing.T) {
	addr := serveTestDNS(t, "127.0.0.1:0", dropAAAA)
	r, err := NewResolver([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	a := netip.MustParseAddr("127.0.0.5")
	if ok, err := r.Verify(ctx, "v4only.test", a); !ok {
		t.Errorf("Verify = %v, %v; want true: the A answer came at once", ok, err)
	}
	if !r.Knows("v4only.test", a) {
		t.Error("the A answer was not remembered")
	}
}

// TestVerifyEndedContextAsksNothing: a Verify whose ctx has already ended
// (verifyDst's time used up) sends no query, and does not mark the name
// asked: a Verify with time to spare right after it still asks.
func TestVerifyEndedContextAsksNothing(t *testing.T) {
	r, release, aQueries, _ := gatedDNS(t)
	release()
	a := netip.MustParseAddr("192.0.2.1")
	dead, cancel := context.WithCancel(context.Background())
	cancel()
	if ok, err := r.Verify(dead, "late.test", a); ok || err == nil {
		t.Fatalf("Verify with an ended ctx = %v, %v; want false and an error", ok, err)
	}
	if ok, err := r.Verify(context.Background(), "late.test", a); !ok {
		t.Errorf("Verify = %v, %v after a Verify that asked nothing (%d A queries); want true", ok, err, aQueries.Load())
	}
}

// pairServer answers A queries for names starting with slowPrefix with
// 127.0.0.6 after slowDelay, counting them, and for the others with
// 127.0.0.5 at once (TTL 60); AAAA queries get an empty answer. (From a
// helper's review, as are the tests using it.)
func pairServer(t *testing.T, slowPrefix string, slowDelay time.Duration) (addr string, slowQ *atomic.Int64) {
	t.Helper()
	slowQ = new(atomic.Int64)
	addr = serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		name := q.Question[0].Name
		if q.Question[0].Qtype == dns.TypeA {
			ip := "127.0.0.5"
			if strings.HasPrefix(name, slowPrefix) {
				slowQ.Add(1)
				ip = "127.0.0.6"
				time.Sleep(slowDelay)
			}
			rr, _ := dns.NewRR(name + " 60 IN A " + ip)
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	return addr, slowQ
}

// pairDNS is a Resolver asking pairServer(t, "slow", slowDelay).
func pairDNS(t *testing.T, slowDelay time.Duration) (*Resolver, *atomic.Int64) {
	t.Helper()
	addr, slowQ := pairServer(t, "slow", slowDelay)
	r, err := NewResolver([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	return r, slowQ
}

// TestVerifyNamesRateLimit: connections verified by their first name (a
// fresh SNI under a wildcard, say) do not look the rule's other hosts up:
// a version that looked all names up side by side and un-marked the cut
// ones sent a query for the other host with every connection.
func TestVerifyNamesRateLimit(t *testing.T) {
	r, slowQ := pairDNS(t, 200*time.Millisecond)
	a := netip.MustParseAddr("127.0.0.5")
	for i := range 20 {
		if ok, err := verifyNames(context.Background(), r, []string{fmt.Sprintf("fast%d.test", i), "slow.test"}, a); !ok {
			t.Fatalf("connection %d refused: %v", i, err)
		}
	}
	if q := slowQ.Load(); q > 1 {
		t.Errorf("20 connections sent %d A queries for slow.test, want at most 1 per %v", q, minVerifyRefresh)
	}
}

// TestVerifyDeadlineCutNotForLookup: a Verify whose deadline cuts a slow
// (not dropped) AAAA answer remembers the A records for verification but
// does not hand them to Lookup as the name's answer: the dial would go
// without the name's IPv6 addresses for the A records' TTL.
func TestVerifyDeadlineCutNotForLookup(t *testing.T) {
	r := slowAAAAResolver(t, 300*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond) // a Verify with little time left
	defer cancel()
	if ok, err := r.Verify(ctx, "late.test", netip.MustParseAddr("192.0.2.1")); !ok {
		t.Fatalf("Verify = %v, %v; want true", ok, err)
	}
	got, err := r.Lookup(context.Background(), "late.test")
	if err != nil || len(got) != 2 {
		t.Errorf("Lookup after a deadline-cut Verify = %v, %v; want the AAAA and the A record (the AAAA answer is only slow)", got, err)
	}
}

// TestVerifyAfterCancelledLookup: a Lookup whose callers all went away (a
// plain-HTTP client) is cancelled and stores nothing; a Verify that waited
// for it asks the servers itself, and so does one right after it, rather
// than refusing for minVerifyRefresh. (From a helper's review.)
func TestVerifyAfterCancelledLookup(t *testing.T) {
	r, release, _, aaaaQueries := gatedDNS(t)
	ctx, cancel := context.WithCancel(context.Background())
	go r.Lookup(ctx, "lk.test")
	waitFor(t, "the Lookup's queries", func() bool { return aaaaQueries.Load() == 1 })
	a := netip.MustParseAddr("192.0.2.1")
	res := make(chan bool, 1)
	go func() {
		ok, _ := r.Verify(context.Background(), "lk.test", a)
		res <- ok
	}()
	time.Sleep(50 * time.Millisecond) // Verify waits for the Lookup
	cancel()
	release()
	if !<-res {
		t.Error("a Verify waiting for a cancelled Lookup refused 192.0.2.1, an address the DNS gives")
	}
	if ok, _ := r.Verify(context.Background(), "lk.test", a); !ok {
		t.Error("a Verify after a cancelled Lookup refused 192.0.2.1")
	}
}
