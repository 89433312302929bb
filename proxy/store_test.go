package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestTTL0StoreKeepsLongerKnown: a TTL-0 answer (remembered for
// minVerifyRefresh) does not shorten an address remembered for longer,
// here one egressd's DNS server handed out (minHandedOutTTL). (This test
// and the two below are from a helper's review; this one and the last
// failed on 161df6b, the second on 87ff29d too.)
func TestTTL0StoreKeepsLongerKnown(t *testing.T) {
	addr, _ := rotatingTTLDNS(t, 10, 0, 0) // 127.0.0.11, .12, ... with TTL 0
	r, err := NewResolver([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r.now = func() time.Time { return now }
	const name = "rot0.test"
	x := netip.MustParseAddr("127.0.0.11") // the server's first answer
	in := new(dns.Msg)
	in.SetQuestion(dns.Fqdn(name), dns.TypeA)
	in.Response = true
	rr, _ := dns.NewRR(name + ". 0 IN A 127.0.0.11")
	in.Answer = append(in.Answer, rr)
	if n := r.Remember(name, in); n != 1 { // handed to the workload at t0
		t.Fatalf("Remember = %d", n)
	}
	now = now.Add(time.Second)
	if got, err := r.Lookup(context.Background(), name); err != nil || len(got) != 1 || got[0] != x {
		t.Fatalf("Lookup = %v, %v; want [%s]", got, err, x)
	}
	now = now.Add(6 * time.Second) // t0+7s < t0+minHandedOutTTL
	if !r.Knows(name, x) {
		t.Errorf("a TTL-0 address handed out %v ago forgotten (minHandedOutTTL %v): a TTL-0 Lookup shortened it", 7*time.Second, minHandedOutTTL)
	}
	if ok, err := r.Verify(context.Background(), name, x); !ok {
		t.Errorf("Verify of the handed-out address = %v, %v; want true", ok, err)
	}
}

// TestKnownBoundKeepsNewAnswer: when a name's remembered addresses are at
// maxKnownPerName, the older ones go, not the answer being stored, even
// when it expires first (TTL 0, remembered for minVerifyRefresh).
func TestKnownBoundKeepsNewAnswer(t *testing.T) {
	r, _ := clockedResolver(t)
	for i := range maxKnownPerName {
		r.store("full.test", []netip.Addr{netip.MustParseAddr(fmt.Sprintf("10.0.0.%d", i))}, time.Minute, false)
	}
	y := netip.MustParseAddr("10.1.0.1")
	r.store("full.test", []netip.Addr{y}, 0, false) // the TTL-0 answer a burst waits for
	if !r.Knows("full.test", y) {
		t.Errorf("TTL-0 answer %s not remembered for minVerifyRefresh: dropped by the maxKnownPerName bound", y)
	}
}

// TestRememberBoundKeepsHandedOut: Remember, like store, keeps the answer
// being handed out when a name's remembered addresses are at
// maxKnownPerName, even when it expires before the older ones (a
// recursor counting its cache TTL down): the workload is about to dial
// it. (From a review; it failed on 9e50551.)
func TestRememberBoundKeepsHandedOut(t *testing.T) {
	r, now := clockedResolver(t)
	const name = "pool.test"
	answer := func(ttl int, addrs ...string) *dns.Msg { return aAnswer(t, name, ttl, addrs...) }
	for blk := range maxKnownPerName / maxAddrsPerName { // TTL 300
		var as []string
		for i := range maxAddrsPerName {
			as = append(as, fmt.Sprintf("10.%d.0.%d", blk, i+1))
		}
		r.Remember(name, answer(300, as...))
	}
	*now = now.Add(time.Second)
	x := netip.MustParseAddr("10.9.0.1") // this workload's answer, TTL 60
	if n := r.Remember(name, answer(60, x.String())); n != 1 {
		t.Fatalf("Remember = %d", n)
	}
	*now = now.Add(time.Second)
	if !r.Knows(name, x) {
		t.Errorf("%s was just handed out (TTL 60) but is not remembered: dropped by the maxKnownPerName bound", x)
	}
}

// clockedResolver is a Resolver with no reachable server whose clock
// reads *now (it starts at a fixed time); tests move it on.
func clockedResolver(t *testing.T) (*Resolver, *time.Time) {
	t.Helper()
	r, err := NewResolver([]string{"127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	return r, &now
}

// aAnswer is an answer to an A query for name, with an A record of ttl for
// each of addrs.
func aAnswer(t *testing.T, name string, ttl int, addrs ...string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	m.Response = true
	for _, a := range addrs {
		rr, err := dns.NewRR(fmt.Sprintf("%s. %d IN A %s", name, ttl, a))
		if err != nil {
			t.Fatal(err)
		}
		m.Answer = append(m.Answer, rr)
	}
	return m
}

// TestRememberBoundNeverShortens: at maxKnownPerName, a second answer
// giving an address a shorter TTL (another upstream's cache) does not
// make egressd forget it before the TTL it was first handed out with.
// (From a review; it failed on 6fa648e, as did the next two.)
func TestRememberBoundNeverShortens(t *testing.T) {
	r, now := clockedResolver(t)
	const name = "short.test"
	x := "10.9.0.1"
	r.Remember(name, aAnswer(t, name, 300, x)) // handed out for 300 s
	for blk := range 2 {
		var as []string
		for i := range maxAddrsPerName {
			if blk == 1 && i == maxAddrsPerName-1 {
				break // 63 others: the list is full with x
			}
			as = append(as, fmt.Sprintf("10.%d.0.%d", blk, i+1))
		}
		r.Remember(name, aAnswer(t, name, 3600, as...))
	}
	r.Remember(name, aAnswer(t, name, 60, x)) // the same address, TTL 60
	*now = now.Add(100 * time.Second)
	if !r.Knows(name, netip.MustParseAddr(x)) {
		t.Errorf("%s handed out with TTL 300 forgotten after 100 s: a TTL-60 answer shortened it at the bound", x)
	}
}

// TestRememberDuplicatesDoNotEvict: answers repeating one address with
// falling TTLs do not fill the list with copies of it and push out other
// live addresses.
func TestRememberDuplicatesDoNotEvict(t *testing.T) {
	r, _ := clockedResolver(t)
	const name = "dup.test"
	var as []string
	for i := range 10 {
		as = append(as, fmt.Sprintf("10.0.0.%d", i+1))
	}
	r.Remember(name, aAnswer(t, name, 600, as...))
	for i := range maxKnownPerName {
		r.Remember(name, aAnswer(t, name, 3600-10*i, "10.9.9.9"))
	}
	r.Remember(name, aAnswer(t, name, 3600, "10.8.8.8"))
	if n := len(r.cache[name].known); n != 12 {
		t.Errorf("%d entries remembered for 12 distinct addresses", n)
	}
	for _, a := range as {
		if !r.Knows(name, netip.MustParseAddr(a)) {
			t.Errorf("%s (TTL 600) forgotten: evicted by copies of one address", a)
		}
	}
}

// TestVerifyTrimmedAddress: an address the answer held but joinAddrs
// trimmed from Lookup's list (32 AAAA and 32 A records) is remembered,
// and the Verify that asked accepts it as its waiters do.
func TestVerifyTrimmedAddress(t *testing.T) {
	addr := serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		for i := range maxAddrsPerName {
			var rr dns.RR
			if q.Question[0].Qtype == dns.TypeA {
				rr, _ = dns.NewRR(fmt.Sprintf("%s 60 IN A 127.0.1.%d", q.Question[0].Name, i+1))
			} else {
				rr, _ = dns.NewRR(fmt.Sprintf("%s 60 IN AAAA 2001:db8::%x", q.Question[0].Name, i+1))
			}
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	r, err := NewResolver([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	r.client = &dns.Client{Timeout: dnsQueryTimeout, UDPSize: dns.MaxMsgSize}
	a := netip.MustParseAddr("127.0.1.20")
	ok, err := r.Verify(context.Background(), "big.test", a)
	knows := r.Knows("big.test", a)
	t.Logf("Verify=%v err=%v Knows=%v", ok, err, knows)
	if ok != knows {
		t.Errorf("Verify(%s) = %v, %v but Knows right after = %v", a, ok, err, knows)
	}
}
