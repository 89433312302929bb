package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/policy"
)

const (
	// maxCacheEntries bounds the resolver cache. Each entry is a name and a
	// handful of addresses (well under 1 KiB), so the cache stays below a
	// few MiB however many distinct names clients ask for.
	maxCacheEntries = 4096
	// cacheEvictTo is what a full cache is cut down to: a tenth of the
	// entries go at once, so the scan of the whole cache (under r.mu, which
	// the transparent front loop takes through Knows) runs once per ~400
	// new names, not once per name.
	cacheEvictTo = maxCacheEntries * 9 / 10
	// maxCacheTTL caps how long an answer is reused, so a record published
	// with an absurd TTL cannot pin a stale address for days.
	maxCacheTTL = time.Hour
	// maxAddrsPerName bounds how many addresses of one name are kept and
	// tried; CDNs answer with up to a few dozen.
	maxAddrsPerName = 32
	// dnsQueryTimeout bounds one exchange with one server.
	dnsQueryTimeout = 3 * time.Second
	// partialAnswerTTL is how long an answer of AAAA records alone is kept
	// when the A query failed: long enough to spare the servers a query per
	// connection, short enough that a lost datagram or a passing SERVFAIL
	// does not leave an IPv4-only host without the name's A records for the
	// AAAA records' TTL. A failed AAAA query does not shorten an A answer:
	// middleboxes that drop AAAA queries are common, and every lookup of the
	// name would wait out dnsQueryTimeout for it again.
	partialAnswerTTL = 5 * time.Second
	// maxKnownPerName bounds how many addresses of one name are remembered
	// for destination verification (every answer within its TTL, not only
	// the latest). When full, the address closest to expiry is dropped.
	maxKnownPerName = 64
	// minVerifyRefresh is how often Verify may ask the DNS again for a name
	// whose cached answers do not hold an address, so that a client sending
	// many spoofed destinations costs at most one query per name per
	// interval.
	minVerifyRefresh = 5 * time.Second
	// maxVerifyQueries bounds the queries one Verify sends.
	maxVerifyQueries = 4
)

// ErrNoAddress is returned when a name exists but has no A or AAAA records.
var ErrNoAddress = errors.New("no A or AAAA records")

// Resolver looks names up with the configured DNS servers and caches the
// answers for their TTL. Besides the latest answer, which Lookup returns,
// it remembers every address answered for a name until that answer's TTL
// runs out: DNS servers that rotate their answers (CDNs) give each client
// a different address, and Verify must accept all of them. It is safe for
// concurrent use.
type Resolver struct {
	servers []string
	client  *dns.Client
	now     func() time.Time

	mu    sync.Mutex
	cache map[string]cacheEntry
	// asked is when the servers were last asked for a name, whatever they
	// answered: a TTL-0 answer and a failure leave no cache entry, and
	// Verify must not ask again for them more often than for the rest.
	// It holds at most maxCacheEntries names and is emptied when full.
	asked map[string]time.Time
	// flights are the lookups in progress, by name: a caller asking for a
	// name that is being looked up waits for that lookup rather than
	// asking the servers again. A flight is cancelled and dropped when its
	// last caller stops waiting, so the map is bounded by the connections
	// and queries in progress, which the server's limits bound.
	flights map[string]*flight
	// flying counts the flights' goroutines, for tests that must see a
	// flight's end.
	flying sync.WaitGroup
	// verifying holds, by name, the done channel of the Verify that is
	// asking the servers, which the Verifies that may not ask wait for.
	// One entry per Verify in progress, which the server's limits bound.
	verifying map[string]chan struct{}

	// cacheHits and cacheMisses count Lookup's cache lookups (metric
	// egressd_dns_cache_total).
	cacheHits, cacheMisses atomic.Uint64
}

type cacheEntry struct {
	addrs   []netip.Addr // the latest answer
	expires time.Time    // when the latest answer runs out
	known   []knownAddr  // every address answered within its TTL
}

type knownAddr struct {
	addr    netip.Addr
	expires time.Time
}

// keepUntil is when the last remembered address runs out.
func (e *cacheEntry) keepUntil() time.Time {
	t := e.expires
	for _, k := range e.known {
		if k.expires.After(t) {
			t = k.expires
		}
	}
	return t
}

// NewResolver returns a resolver that asks servers (host:port) in order.
// With no servers it uses the nameservers of /etc/resolv.conf.
func NewResolver(servers []string) (*Resolver, error) {
	if len(servers) == 0 {
		cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("resolver: no servers configured and /etc/resolv.conf unreadable (%v); set resolver { servers = [\"host:53\"] }", err)
		}
		for _, s := range cc.Servers {
			servers = append(servers, net.JoinHostPort(s, cc.Port))
		}
		if len(servers) == 0 {
			return nil, errors.New("resolver: /etc/resolv.conf lists no nameserver; set resolver { servers = [\"host:53\"] }")
		}
	}
	return &Resolver{
		servers: servers,
		client:  &dns.Client{Timeout: dnsQueryTimeout},
		now:     time.Now,
		cache:   make(map[string]cacheEntry),
		asked:   make(map[string]time.Time),
		flights: make(map[string]*flight),

		verifying: make(map[string]chan struct{}),
	}, nil
}

// Lookup returns the IPv6 and IPv4 addresses of name (IPv6 first), from the
// cache when a previous answer is still within its TTL.
func (r *Resolver) Lookup(ctx context.Context, name string) ([]netip.Addr, error) {
	if addrs, ok := r.cached(name); ok {
		r.cacheHits.Add(1)
		return addrs, nil
	}
	r.cacheMisses.Add(1)
	res := r.lookup(ctx, name)
	return res.addrs, res.err
}

// Verify reports whether a is an address the DNS gave for name within its
// TTL: remembered from an earlier answer, in the current answer, or, when
// neither holds it and the servers were last asked for name at least
// minVerifyRefresh ago (whatever they answered), in a fresh answer (which
// is remembered too). Asked less long ago, it sends no query of its own
// but waits for the Verify (or Lookup) of name that is asking, its ctx
// allowing, then looks at what that one remembered: connections to a name
// not yet known that arrive together are verified by the first one's
// queries.
//
// Its queries run under ctx, not in a Lookup's shared flight: when ctx's
// deadline cuts one family's query short, the family that answered is
// remembered for verification (not handed to Lookup).
func (r *Resolver) Verify(ctx context.Context, name string, a netip.Addr) (bool, error) {
	// Twice: a Lookup waited for may end cancelled (its plain-HTTP client
	// went away), leaving name to be asked for again.
	for range 2 {
		ok, wait, err := r.verifyOrWait(ctx, name, a)
		if wait == nil {
			return ok, err
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return r.Knows(name, a), nil
		}
	}
	return r.Knows(name, a), nil
}

// verifyOrWait is Verify without the wait: when another Verify (or a
// Lookup) is asking the servers for name, it returns that one's done
// channel, after which Knows has what it remembered.
func (r *Resolver) verifyOrWait(ctx context.Context, name string, a netip.Addr) (ok bool, wait <-chan struct{}, err error) {
	a = a.Unmap()
	if r.Knows(name, a) {
		return true, nil, nil
	}
	if err := ctx.Err(); err != nil {
		return false, nil, fmt.Errorf("resolve %s: %w", name, err) // and name is not marked asked
	}
	v, asking := r.startVerify(name)
	if !asking {
		return false, v, nil // v nil: nobody is asking, and name was asked lately
	}
	defer r.endVerify(name, v)
	// Ask again while the answers keep bringing addresses not seen before:
	// a server rotating through a pool gives each query another part of it.
	for range maxVerifyQueries {
		res := r.resolve(ctx, name)
		if res.err != nil {
			return false, nil, res.err
		}
		if slices.Contains(res.addrs, a) || r.Knows(name, a) {
			return true, nil, nil
		}
		if !res.added {
			break
		}
	}
	return false, nil, nil
}

// Knows reports whether a is remembered for name within its TTL, without
// asking the servers: Verify's answer when it needs no query.
func (r *Resolver) Knows(name string, a netip.Addr) bool {
	a = a.Unmap()
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range r.cache[name].known {
		if k.addr == a && now.Before(k.expires) {
			return true
		}
	}
	return false
}

// startVerify decides whether a Verify of name asks the servers: not when
// they were asked for it less than minVerifyRefresh ago, whoever asked.
// An asking Verify is noted (and must call endVerify); one that may not
// ask gets the done channel of the asking Verify in progress, or else of
// a Lookup of name in progress, if any.
func (r *Resolver) startVerify(name string) (v chan struct{}, asking bool) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if t, ok := r.asked[name]; ok && now.Sub(t) < minVerifyRefresh {
		if v := r.verifying[name]; v != nil {
			return v, false
		}
		if f := r.flights[name]; f != nil {
			return f.done, false // a Lookup's, which stores what it gets
		}
		return nil, false
	}
	r.noteAskedLocked(name, now)
	v = make(chan struct{})
	r.verifying[name] = v
	return v, true
}

// endVerify ends the asking Verify of name that startVerify noted.
func (r *Resolver) endVerify(name string, v chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.verifying[name] == v {
		delete(r.verifying, name)
	}
	close(v)
}

// noteAskedLocked records that the servers are being asked for name.
func (r *Resolver) noteAskedLocked(name string, now time.Time) {
	if _, ok := r.asked[name]; !ok && len(r.asked) >= maxCacheEntries {
		clear(r.asked) // at worst one more query per name
	}
	r.asked[name] = now
}

// flight is a lookup of one name in progress, shared by every caller that
// asks for the name while it runs.
type flight struct {
	cancel  context.CancelFunc
	waiters int           // callers waiting for done; under Resolver.mu
	done    chan struct{} // closed when res is in
	res     lookupResult
	asked   time.Time // when it marked its name asked
	prev    time.Time // the mark it replaced (zero: none)
}

// lookupResult is an answer as the cache stored it; added reports whether
// it held an address not remembered before.
type lookupResult struct {
	addrs []netip.Addr
	added bool
	err   error
}

// lookup asks the servers for name (no cache read) and stores the answer,
// joining the lookup of name in progress if there is one (a flight). A
// caller whose ctx ends stops waiting; the queries are cancelled when no
// caller waits. A caller joining a flight may get an answer received
// shortly before it asked (at most the flight's own time, as with Go's own
// resolver, which shares lookups the same way).
func (r *Resolver) lookup(ctx context.Context, name string) lookupResult {
	if err := ctx.Err(); err != nil {
		return lookupResult{err: fmt.Errorf("resolve %s: %w", name, err)}
	}
	now := r.now()
	r.mu.Lock()
	f := r.flights[name]
	if f == nil {
		// The queries run for every waiter, not for the first caller:
		// they are cancelled when the last waiter goes (leave).
		prev := r.asked[name]
		r.noteAskedLocked(name, now)
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{cancel: cancel, done: make(chan struct{}), asked: now, prev: prev}
		r.flights[name] = f
		r.flying.Go(func() { r.fly(fctx, name, f) })
	}
	f.waiters++
	r.mu.Unlock()
	defer r.leave(name, f)
	select {
	case <-f.done:
		return f.res
	case <-ctx.Done():
		return lookupResult{err: fmt.Errorf("resolve %s: %w", name, ctx.Err())}
	}
}

// leave ends a caller's wait for f. The last caller to leave cancels the
// queries, and the next caller starts anew; when the queries had not
// answered, the name gets back the asked mark it had before f.
func (r *Resolver) leave(name string, f *flight) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f.waiters--
	if f.waiters == 0 {
		f.cancel()
		if r.flights[name] == f {
			delete(r.flights, name)
		}
		select {
		case <-f.done: // it got its answer (closed under mu)
		default:
			r.unmarkLocked(name, f) // now, not once its queries unwound
		}
	}
}

// fly resolves name for f's waiters and hands them the answer. (A flight
// is cancelled only by its last waiter's leave, which also gives its name
// back the asked mark it had.)
func (r *Resolver) fly(ctx context.Context, name string, f *flight) {
	defer f.cancel()
	res := r.resolve(ctx, name)
	r.mu.Lock()
	defer r.mu.Unlock()
	f.res = res
	if r.flights[name] == f {
		delete(r.flights, name)
	}
	close(f.done)
}

// unmarkLocked gives name back the mark f replaced, unless someone asked
// for name since f did.
func (r *Resolver) unmarkLocked(name string, f *flight) {
	if !r.asked[name].Equal(f.asked) {
		return
	}
	if f.prev.IsZero() {
		delete(r.asked, name)
	} else {
		r.asked[name] = f.prev
	}
}

// resolve runs the A and AAAA queries of name under ctx and stores their
// answer. What queries cut short by ctx brought is not a whole answer
// (the A records alone would hide the name's IPv6 addresses from Lookup
// for their TTL): when ctx is cancelled (every caller went away) or its
// deadline passes (Verify's time is up), the family that answered is
// remembered for verification only, and Lookup's answer is left alone.
func (r *Resolver) resolve(ctx context.Context, name string) lookupResult {
	var (
		wg     sync.WaitGroup
		v6     []netip.Addr
		ttl6   uint32
		err6   error
		added6 bool
	)
	// Each family's addresses are remembered for verification as soon as
	// they answer: a Verify waiting for this lookup, whose time runs out
	// before the other family's answer, still finds them.
	wg.Go(func() {
		v6, ttl6, err6 = r.query(ctx, name, dns.TypeAAAA)
		added6 = len(v6) > 0 && r.store(name, v6, time.Duration(ttl6)*time.Second, true)
	})
	v4, ttl4, err4 := r.query(ctx, name, dns.TypeA)
	added4 := len(v4) > 0 && r.store(name, v4, time.Duration(ttl4)*time.Second, true)
	wg.Wait()
	if err := ctx.Err(); errors.Is(err, context.Canceled) {
		return lookupResult{err: fmt.Errorf("resolve %s: %w", name, err)}
	}
	// The sockets' deadlines are ctx's, and may fire before ctx's own
	// timer marks it done: the clock says whether a query was cut.
	dl, ok := ctx.Deadline()
	cut := ok && !time.Now().Before(dl)
	res := r.settle(name, v6, v4, ttl6, ttl4, err6, err4, cut)
	res.added = res.added || added4 || added6
	return res
}

// settle stores the answers of both queries and returns them as Lookup
// does (IPv6 first). With cut, a failed query was cut short by a deadline,
// and the answer is remembered for verification only.
func (r *Resolver) settle(name string, v6, v4 []netip.Addr, ttl6, ttl4 uint32, err6, err4 error, cut bool) lookupResult {
	addrs := joinAddrs(v6, v4)
	if len(addrs) == 0 {
		if err4 != nil {
			return lookupResult{err: err4}
		}
		if err6 != nil {
			return lookupResult{err: err6}
		}
		return lookupResult{err: fmt.Errorf("resolve %s: %w", name, ErrNoAddress)}
	}
	ttl := min(ttl4, ttl6)
	if len(v4) == 0 {
		ttl = ttl6
	} else if len(v6) == 0 {
		ttl = ttl4
	}
	keep := time.Duration(ttl) * time.Second
	knownOnly := cut && (err4 != nil || err6 != nil)
	if err4 != nil && !knownOnly {
		keep = min(keep, partialAnswerTTL)
	}
	return lookupResult{addrs: addrs, added: r.store(name, addrs, keep, knownOnly)}
}

// joinAddrs is a name's addresses as Lookup returns them: IPv6 first,
// at most maxAddrsPerName, but never IPv6 alone when there is IPv4 too:
// half the room stays for the IPv4 addresses, which an IPv4-only host
// needs to dial and a verification of an IPv4 destination to match.
func joinAddrs(v6, v4 []netip.Addr) []netip.Addr {
	if len(v6)+len(v4) > maxAddrsPerName {
		n4 := min(len(v4), max(maxAddrsPerName/2, maxAddrsPerName-len(v6)))
		v6, v4 = v6[:maxAddrsPerName-n4], v4[:n4]
	}
	return append(v6[:len(v6):len(v6)], v4...)
}

func (r *Resolver) cached(name string) ([]netip.Addr, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.cache[name]
	if !ok {
		return nil, false
	}
	now := r.now()
	if !now.Before(e.expires) {
		if !now.Before(e.keepUntil()) {
			delete(r.cache, name)
		}
		return nil, false
	}
	return e.addrs, true
}

// store caches an answer and remembers its addresses; it reports whether
// one of them was not remembered before. With knownOnly, the addresses are
// remembered for verification, and the answer Lookup returns is left as
// it was.
func (r *Resolver) store(name string, addrs []netip.Addr, ttl time.Duration, knownOnly bool) (added bool) {
	if ttl <= 0 {
		// TTL 0: not reused by Lookup, but remembered briefly for the
		// Verifies that waited for this answer.
		ttl, knownOnly = minVerifyRefresh, true
		defer func() { added = false }() // no second query for it
	}
	ttl = min(ttl, maxCacheTTL)
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) >= maxCacheEntries {
		r.evictLocked(now)
	}
	exp := now.Add(ttl)
	old := r.cache[name]
	add := make([]knownAddr, 0, len(addrs))
	for _, a := range addrs {
		if !slices.ContainsFunc(old.known, func(k knownAddr) bool { return k.addr == a && now.Before(k.expires) }) {
			added = true
		}
		add = append(add, knownAddr{addr: a, expires: exp}) // mergeKnown keeps a later expiry
	}
	e := cacheEntry{addrs: addrs, expires: exp, known: mergeKnown(old.known, add, now)}
	if knownOnly {
		e.addrs, e.expires = old.addrs, old.expires // Lookup's answer unchanged
	}
	r.cache[name] = e
	return added
}

// mergeKnown returns the live addresses of old that add does not name,
// then add, one entry per address, each with the latest expiry any live
// entry gives it (an answer never shortens what an earlier one gave).
// Past maxKnownPerName the old addresses closest to expiry go: the answer
// being stored, which a client may be about to dial, always stays (its
// first maxKnownPerName distinct addresses).
func mergeKnown(old, add []knownAddr, now time.Time) []knownAddr {
	adds := make([]knownAddr, 0, min(len(add), maxKnownPerName))
	for _, x := range add {
		if i := slices.IndexFunc(adds, func(y knownAddr) bool { return y.addr == x.addr }); i >= 0 {
			adds[i].expires = later(adds[i].expires, x.expires)
		} else if len(adds) < maxKnownPerName {
			adds = append(adds, x)
		}
	}
	known := make([]knownAddr, 0, len(old)+len(adds))
	for _, k := range old {
		if !now.Before(k.expires) {
			continue
		}
		if i := slices.IndexFunc(adds, func(y knownAddr) bool { return y.addr == k.addr }); i >= 0 {
			adds[i].expires = later(adds[i].expires, k.expires)
		} else if i := slices.IndexFunc(known, func(y knownAddr) bool { return y.addr == k.addr }); i >= 0 {
			known[i].expires = later(known[i].expires, k.expires)
		} else {
			known = append(known, k)
		}
	}
	if drop := len(known) + len(adds) - maxKnownPerName; drop > 0 {
		slices.SortStableFunc(known, func(x, y knownAddr) int { return x.expires.Compare(y.expires) })
		known = known[drop:]
	}
	return append(known, adds...)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// evictLocked drops expired entries, then arbitrary ones until at most
// cacheEvictTo are left, so a flood of names costs a bounded amount of work
// per name.
func (r *Resolver) evictLocked(now time.Time) {
	for k, e := range r.cache {
		if !now.Before(e.keepUntil()) {
			delete(r.cache, k)
		}
	}
	for k := range r.cache {
		if len(r.cache) <= cacheEvictTo {
			break
		}
		delete(r.cache, k)
	}
}

// query asks each server in turn until one answers authoritatively for the
// question, and returns the addresses of the wanted type with their
// smallest TTL. CNAME chains inside the answer are followed.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) ([]netip.Addr, uint32, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = true
	var lastErr error
	for _, server := range r.servers {
		in, err := r.exchangeOne(ctx, m, server)
		if err != nil {
			lastErr = fmt.Errorf("resolve %s: server %s: %w", name, server, err)
			continue
		}
		switch in.Rcode {
		case dns.RcodeSuccess:
			addrs, ttl := answerAddrs(in, dns.Fqdn(name), qtype)
			return addrs, ttl, nil
		case dns.RcodeNameError:
			return nil, 0, fmt.Errorf("resolve %s: no such host (NXDOMAIN)", name)
		default:
			lastErr = fmt.Errorf("resolve %s: server %s answered %s", name, server, dns.RcodeToString[in.Rcode])
		}
	}
	return nil, 0, lastErr
}

func answerAddrs(in *dns.Msg, owner string, qtype uint16) ([]netip.Addr, uint32) {
	var (
		addrs []netip.Addr
		ttl   uint32 = ^uint32(0)
	)
	// Follow the CNAME chain; bounded by the answer's size.
	for range len(in.Answer) + 1 {
		next := ""
		for _, rr := range in.Answer {
			h := rr.Header()
			if !strings.EqualFold(h.Name, owner) {
				continue
			}
			var a netip.Addr
			switch v := rr.(type) {
			case *dns.A:
				if qtype == dns.TypeA {
					a, _ = netip.AddrFromSlice(v.A.To4())
				}
			case *dns.AAAA:
				if qtype == dns.TypeAAAA {
					a, _ = netip.AddrFromSlice(v.AAAA.To16())
				}
			case *dns.CNAME:
				next = v.Target
				ttl = min(ttl, h.Ttl)
			}
			if a.IsValid() && len(addrs) < maxAddrsPerName {
				addrs = append(addrs, a.Unmap())
				ttl = min(ttl, h.Ttl)
			}
		}
		if len(addrs) > 0 || next == "" {
			break
		}
		owner = next
	}
	if len(addrs) == 0 {
		ttl = 0
	}
	return addrs, ttl
}

// minHandedOutTTL is how long an address egressd's DNS server handed to a
// workload is remembered at least, even when its TTL is shorter (or 0):
// the workload connects right after the answer and must not meet a false
// dst_mismatch.
const minHandedOutTTL = 10 * time.Second

// Exchange forwards the query m to the configured servers in order (over
// TCP when a UDP answer is truncated) and returns the first answer that is
// not SERVFAIL or REFUSED. m is not modified; the answer carries m's ID.
func (r *Resolver) Exchange(ctx context.Context, m *dns.Msg) (*dns.Msg, error) {
	q := m.Copy()
	q.Id = dns.Id()
	var lastErr error
	for _, server := range r.servers {
		in, err := r.exchangeOne(ctx, q, server)
		if err != nil {
			lastErr = fmt.Errorf("server %s: %w", server, err)
			continue
		}
		if in.Rcode == dns.RcodeServerFailure || in.Rcode == dns.RcodeRefused {
			lastErr = fmt.Errorf("server %s answered %s", server, dns.RcodeToString[in.Rcode])
			continue
		}
		in.Id = m.Id
		return in, nil
	}
	if lastErr == nil {
		lastErr = errors.New("no DNS servers")
	}
	return nil, lastErr
}

// trimAnswer drops from the answer section of in the A and AAAA records of
// each name after its first maxAddrsPerName, which Remember does not
// record: egressd's DNS server hands a workload only addresses it will
// verify. Like Remember it counts per owner name, A and AAAA together, in
// answer order, so Remember records every address left.
//
// A name whose A or AAAA records are signed (an RRSIG covers them) keeps
// them all: trimmed, the signature would no longer verify for a validating
// client. Its addresses past the first maxAddrsPerName are then not
// remembered.
func trimAnswer(in *dns.Msg) {
	var signed map[string]bool
	for _, rr := range in.Answer {
		if sig, ok := rr.(*dns.RRSIG); ok && (sig.TypeCovered == dns.TypeA || sig.TypeCovered == dns.TypeAAAA || sig.TypeCovered == dns.TypeHTTPS || sig.TypeCovered == dns.TypeSVCB) {
			if signed == nil {
				signed = map[string]bool{}
			}
			signed[strings.ToLower(sig.Header().Name)] = true
		}
	}
	n := map[string]int{}
	kept := in.Answer[:0]
	for _, rr := range in.Answer {
		switch v := rr.(type) {
		case *dns.A, *dns.AAAA:
			owner := strings.ToLower(rr.Header().Name)
			if n[owner] >= maxAddrsPerName && !signed[owner] {
				continue
			}
			n[owner]++
		case *dns.HTTPS:
			if !trimHints(&v.SVCB, n, signed) {
				continue
			}
		case *dns.SVCB:
			if !trimHints(v, n, signed) {
				continue
			}
		}
		kept = append(kept, rr)
	}
	clear(in.Answer[len(kept):])
	in.Answer = kept
}

// trimHints cuts the ipv4hint and ipv6hint addresses of v past its
// owner's first maxAddrsPerName addresses (n counts them, as Remember
// does), unless the owner's records are signed. A hint key left empty is
// dropped: an empty hint list is malformed (RFC 9460 §7.3). It reports
// false when the record must go whole: its mandatory list names a key
// that was dropped, which makes it malformed (§8), and a client rejects
// the whole RRset for it (§2.4.3).
func trimHints(v *dns.SVCB, n map[string]int, signed map[string]bool) bool {
	owner := strings.ToLower(v.Hdr.Name)
	before := n[owner]
	var dropped []dns.SVCBKey
	keep := func(l int) int {
		if signed[owner] {
			return l
		}
		return min(l, max(maxAddrsPerName-n[owner], 0))
	}
	vals := v.Value[:0]
	for _, kv := range v.Value {
		if hint := hintList(kv); hint != nil {
			*hint = (*hint)[:keep(len(*hint))]
			n[owner] += len(*hint)
			if len(*hint) == 0 {
				dropped = append(dropped, kv.Key())
				continue
			}
		}
		vals = append(vals, kv)
	}
	v.Value = vals
	for _, kv := range vals {
		if m, ok := kv.(*dns.SVCBMandatory); ok && slices.ContainsFunc(m.Code, func(k dns.SVCBKey) bool { return slices.Contains(dropped, k) }) {
			n[owner] = before // its hints are not handed out
			return false
		}
	}
	return true
}

// capTTLs lowers the TTLs in in to at most maxCacheTTL, the longest
// Remember keeps an address: a workload that cached an answer for its
// upstream TTL (a day, say) would go on connecting to an address egressd
// has forgotten, refused with dst_mismatch once the upstream rotates. The
// OPT pseudo-record is left alone: its TTL field holds EDNS0 flags.
func capTTLs(in *dns.Msg) {
	limit := uint32(maxCacheTTL / time.Second)
	for _, sec := range [][]dns.RR{in.Answer, in.Ns, in.Extra} {
		for _, rr := range sec {
			if h := rr.Header(); h.Rrtype != dns.TypeOPT && h.Ttl > limit {
				h.Ttl = limit
			}
		}
	}
}

// Remember records the A and AAAA records of an answer to a query for
// name (normalized, without the trailing dot) in the verification cache,
// each with its TTL (the smallest along the CNAME chain that leads to it,
// at least minHandedOutTTL): under name and under every CNAME target on
// the way to it. Lookup's cache is not changed. It returns the number of
// addresses recorded.
func (r *Resolver) Remember(name string, in *dns.Msg) int {
	if in == nil || in.Rcode != dns.RcodeSuccess {
		return 0
	}
	type rec struct {
		names []string // the chain of names the record was reached through
		addr  netip.Addr
		ttl   uint32
	}
	var recs []rec
	chain := []string{name}
	owner := dns.Fqdn(name)
	chainTTL := ^uint32(0)
	seen := map[string]bool{}
	// Follow the CNAME chain; bounded by the answer's size.
	for range len(in.Answer) + 1 {
		key := strings.ToLower(owner)
		if seen[key] {
			break
		}
		seen[key] = true
		next, nextTTL := "", uint32(0)
		n := 0
		for _, rr := range in.Answer {
			h := rr.Header()
			if !strings.EqualFold(h.Name, owner) {
				continue
			}
			var ips []net.IP
			switch v := rr.(type) {
			case *dns.A:
				ips = []net.IP{v.A}
			case *dns.AAAA:
				ips = []net.IP{v.AAAA}
			case *dns.CNAME:
				next, nextTTL = v.Target, h.Ttl
			case *dns.HTTPS:
				ips = svcbHints(&v.SVCB)
			case *dns.SVCB:
				ips = svcbHints(v)
			}
			for _, ip := range ips {
				a, ok := netip.AddrFromSlice(ip)
				if ok && n < maxAddrsPerName {
					n++
					recs = append(recs, rec{names: chain, addr: a.Unmap(), ttl: min(chainTTL, h.Ttl)})
				}
			}
		}
		if next == "" {
			break
		}
		target, err := policy.NormalizeHost(next)
		if err != nil {
			break
		}
		chain = append(chain[:len(chain):len(chain)], target)
		chainTTL = min(chainTTL, nextTTL)
		owner = next
	}
	if len(recs) == 0 {
		return 0
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	byName := map[string][]knownAddr{}
	for _, rc := range recs {
		ttl := max(min(time.Duration(rc.ttl)*time.Second, maxCacheTTL), minHandedOutTTL)
		for _, n := range rc.names {
			byName[n] = append(byName[n], knownAddr{addr: rc.addr, expires: now.Add(ttl)})
		}
	}
	for n, add := range byName {
		if _, ok := r.cache[n]; !ok && len(r.cache) >= maxCacheEntries {
			r.evictLocked(now)
		}
		e := r.cache[n]
		e.known = mergeKnown(e.known, add, now)
		r.cache[n] = e
	}
	return len(recs)
}

// svcbHints returns the ipv4hint and ipv6hint addresses of an SVCB or
// HTTPS record (RFC 9460 §7.3), which a client may connect to before, or
// instead of, asking for A and AAAA records.
func svcbHints(v *dns.SVCB) []net.IP {
	var ips []net.IP
	for _, kv := range v.Value {
		if hint := hintList(kv); hint != nil {
			ips = append(ips, *hint...)
		}
	}
	return ips
}

// hintList is the address list of an ipv4hint or ipv6hint key, nil for
// any other key.
func hintList(kv dns.SVCBKeyValue) *[]net.IP {
	switch h := kv.(type) {
	case *dns.SVCBIPv4Hint:
		return &h.Hint
	case *dns.SVCBIPv6Hint:
		return &h.Hint
	}
	return nil
}

// exchangeOne asks one server over UDP, and again over TCP when the UDP
// answer was truncated.
func (r *Resolver) exchangeOne(ctx context.Context, m *dns.Msg, server string) (*dns.Msg, error) {
	in, err := cancellableExchange(ctx, r.client, m, server)
	if err == nil && in.Truncated {
		in, err = cancellableExchange(ctx, &dns.Client{Net: "tcp", Timeout: dnsQueryTimeout}, m, server)
	}
	return in, err
}

// cancellableExchange is c.ExchangeContext, ended at once when ctx is cancelled:
// miekg/dns applies only ctx's deadline, so a lookup that Shutdown (or a
// client that went away) cancels would otherwise wait out
// dnsQueryTimeout. The socket is closed on cancellation, which ends the
// read however miekg/dns set its deadlines.
func cancellableExchange(ctx context.Context, c *dns.Client, m *dns.Msg, server string) (*dns.Msg, error) {
	conn, err := c.DialContext(ctx, server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	defer context.AfterFunc(ctx, func() { _ = conn.Close() })()
	in, _, err := c.ExchangeWithConnContext(ctx, m, conn)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return in, err
}
