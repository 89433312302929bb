package proxy

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"maps"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/egressd/egressd/policy"
)

// Proxy users: HTTP proxy clients authenticate with Proxy-Authorization:
// Basic (RFC 7617) against the users the configuration declares.

const (
	// authCacheTTL is how long a verified user:password pair is accepted
	// without hashing it again: bcrypt costs tens of milliseconds per
	// check, which every CONNECT would otherwise pay.
	authCacheTTL = 5 * time.Minute
	// authCacheMax bounds the cache. When it is full, the entries of the
	// user being added go first (a user's many accepted spellings of one
	// password, which bcrypt allows, flush only that user's), then the
	// expired ones, then all: never unbounded memory, at worst one hash
	// again per user.
	authCacheMax = 4096
	// maxAuthHeader bounds the Proxy-Authorization value decoded.
	maxAuthHeader = 1024
	// proxyRealm is the Basic realm egressd challenges with.
	proxyRealm = `Basic realm="egressd", charset="UTF-8"`
	// authWait bounds how long a request waits for its turn to have its
	// password checked (authGate) before it is refused.
	authWait = 10 * time.Second
	// authSamples is how many recent timings of the decoy check (an
	// unknown user's) authTiming keeps: a failed check is answered no
	// sooner than the slowest of them took, and a slow one is forgotten
	// after this many more.
	authSamples = 8
	// authSampleRise bounds one timing to this many times the fastest kept,
	// so that one check slowed by load raises every failure's wait by at
	// most that much, and only until it is forgotten; sustained load still
	// raises it, a little more with each check.
	authSampleRise = 2
	// maxAuthPad bounds the wait added to one failed check.
	maxAuthPad = authWait
)

// authGate bounds password checks, which bcrypt and argon2id make
// expensive on purpose (tens of milliseconds of CPU; argon2id also up to
// its m of memory): at most half the CPUs' worth at once, so that wrong
// passwords sent by the thousand cannot take every CPU from the tunnels
// or multiply argon2id's memory, and one at a time per client address, so
// that one client's checks queue behind each other and not ahead of
// every other client's. Credentials already verified skip it (authCache).
type authGate struct {
	sem chan struct{}

	mu      sync.Mutex
	clients map[netip.Addr]*authTurn // clients with a check running or waiting
}

// authTurn is one client's turn: a token and how many of its checks hold
// or wait for it.
type authTurn struct {
	token chan struct{}
	n     int
}

// checkPassword verifies a proxy user's password, and checkDecoy does an
// unknown user's hash work; tests replace them to watch how many checks
// run at once, or to fake their cost.
var (
	checkPassword = (*policy.Policy).Authenticate
	checkDecoy    = (*policy.Policy).CheckDecoy
)

func newAuthGate() *authGate {
	return &authGate{sem: make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2)), clients: make(map[netip.Addr]*authTurn)}
}

// enter waits for client's turn and a free check, until ctx ends or
// authWait passes; then it returns nil. Otherwise pass the turn to leave.
func (g *authGate) enter(ctx context.Context, client netip.Addr) *authTurn {
	g.mu.Lock()
	t := g.clients[client]
	if t == nil {
		t = &authTurn{token: make(chan struct{}, 1)}
		g.clients[client] = t
	}
	t.n++
	g.mu.Unlock()
	timer := time.NewTimer(authWait)
	defer timer.Stop()
	select {
	case t.token <- struct{}{}:
	case <-ctx.Done():
		g.done(client, t)
		return nil
	case <-timer.C:
		g.done(client, t)
		return nil
	}
	select {
	case g.sem <- struct{}{}:
		return t
	case <-ctx.Done():
	case <-timer.C:
	}
	<-t.token
	g.done(client, t)
	return nil
}

// leave ends client's check that enter let in with turn t.
func (g *authGate) leave(client netip.Addr, t *authTurn) {
	<-g.sem
	<-t.token
	g.done(client, t)
}

// done drops one hold of t, and client's entry with its last.
func (g *authGate) done(client netip.Addr, t *authTurn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if t.n--; t.n == 0 {
		delete(g.clients, client)
	}
}

// authCache remembers credentials verified against one policy by their
// SHA-256 (never the clear text) until authCacheTTL. Entries belong to the
// policy that verified them: after a reload nothing verified before it is
// accepted, even from a check that was still hashing when the policy
// changed.
type authCache struct {
	mu  sync.Mutex
	pol *policy.Policy
	ok  map[[32]byte]authEntry
}

type authEntry struct {
	user    string
	expires time.Time
}

func (a *authCache) get(p *policy.Policy, k [32]byte) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.ok[k]
	return a.pol == p && ok && time.Now().Before(e.expires)
}

func (a *authCache) put(p *policy.Policy, k [32]byte, user string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pol != p || a.ok == nil {
		a.pol, a.ok = p, make(map[[32]byte]authEntry)
	}
	if len(a.ok) >= authCacheMax {
		now := time.Now()
		for _, drop := range []func(authEntry) bool{
			func(e authEntry) bool { return e.user == user },
			func(e authEntry) bool { return !now.Before(e.expires) },
			func(authEntry) bool { return true },
		} {
			maps.DeleteFunc(a.ok, func(_ [32]byte, e authEntry) bool { return drop(e) })
			if len(a.ok) < authCacheMax {
				break
			}
		}
	}
	a.ok[k] = authEntry{user: user, expires: time.Now().Add(authCacheTTL)}
}

// authTiming makes every failed password check take as long as an
// unknown user's. policy checks an unknown user against decoy hashes at
// least as costly as every declared user's (CheckDecoy), but a wrong
// password of a user with a cheaper hash (lower bcrypt cost, or the other
// kind) costs less: answered at once, its speed would tell that the user
// exists. authTiming times the decoy checks, one at each load of a policy
// and then every unknown user's, and a failed check waits, in its authGate
// turn, until it has taken as long as the slowest of the recent ones.
// A successful check never waits.
type authTiming struct {
	mu  sync.Mutex
	pol *policy.Policy // the policy the samples are of
	// samples are the last authSamples decoy check timings (n of them),
	// next the one to replace.
	samples [authSamples]time.Duration
	n, next int
	// now and sleep are time.Now and sleepCtx; a test replaces them.
	now   func() time.Time
	sleep func(context.Context, time.Duration)
}

func newAuthTiming() *authTiming {
	return &authTiming{now: time.Now, sleep: sleepCtx}
}

// calibrate times one decoy check of p and makes it the only sample, so
// that a failed check has a time to wait for from p's first request on;
// the previous policy's samples go. It runs as p is loaded, before p
// serves (with no users a decoy check costs nothing).
func (a *authTiming) calibrate(p *policy.Policy) {
	start := a.now()
	checkDecoy(p, "egressd calibration")
	d := a.now().Sub(start)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pol, a.n, a.next = p, 0, 0
	a.add(d)
}

// add records one sample; a.mu is held.
func (a *authTiming) add(d time.Duration) {
	if a.n > 0 {
		fastest := a.samples[0]
		for _, s := range a.samples[1:a.n] {
			fastest = min(fastest, s)
		}
		d = min(d, authSampleRise*fastest)
	}
	a.samples[a.next] = d
	a.next = (a.next + 1) % authSamples
	a.n = min(a.n+1, authSamples)
}

// target is how long a failed check should take: the slowest sample.
func (a *authTiming) target() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	var t time.Duration
	for _, s := range a.samples[:a.n] {
		t = max(t, s)
	}
	return min(t, maxAuthPad)
}

// failed is called after a failed check of p that took took (hashing
// only, not waiting for authGate), of a declared user or not (known): an
// unknown user's check is a decoy check, and a sample; then it waits out
// what is left of the target, or until ctx ends (the client went away).
func (a *authTiming) failed(ctx context.Context, p *policy.Policy, known bool, took time.Duration) {
	if !known {
		a.mu.Lock()
		if a.pol == p {
			a.add(took)
		}
		a.mu.Unlock()
	}
	if d := a.target() - took; d > 0 {
		a.sleep(ctx, d)
	}
}

// sleepCtx waits d, or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// proxyUser checks req's Proxy-Authorization. It returns the user and
// ok = true for valid credentials, "" and true when there are none, and
// ok = false for wrong or malformed ones (whether or not the user exists),
// and for credentials that could not be checked in time (authGate). Wrong
// credentials are answered no sooner than an unknown user's (authTiming);
// malformed ones, which cost no hashing whoever they name, at once. The
// credentials are checked against p, the policy the request is decided by;
// the waits end with ctx. cut reports a check that did not run because ctx
// ended while it waited for its turn (Shutdown, or the client went away):
// not a failed login.
func (s *Server) proxyUser(ctx context.Context, req *http.Request, p *policy.Policy) (user string, ok, cut bool) {
	h := req.Header.Get("Proxy-Authorization")
	if h == "" {
		return "", true, false
	}
	scheme, cred, found := strings.Cut(h, " ")
	if !found || !strings.EqualFold(scheme, "Basic") || len(cred) > maxAuthHeader {
		return "", false, false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", false, false
	}
	name, password, found := strings.Cut(string(raw), ":")
	if !found || name == "" {
		return "", false, false
	}
	k := s.authKey(raw)
	if s.auth.get(p, k) {
		return name, true, false
	}
	ap, _ := netip.ParseAddrPort(req.RemoteAddr)
	client := ap.Addr().Unmap()
	turn := s.authGate.enter(ctx, client)
	if turn == nil {
		return "", false, ctx.Err() != nil
	}
	defer s.authGate.leave(client, turn)
	start := s.authTiming.now()
	if !checkPassword(p, name, password) {
		// The wait holds the client's turn and the check's slot: released
		// earlier, a batch of wrong passwords sent at once would come back
		// at the pace of the real hash work, telling a user that exists.
		s.authTiming.failed(ctx, p, p.HasUser(name), s.authTiming.now().Sub(start))
		return "", false, false
	}
	s.auth.put(p, k, name)
	return name, true, false
}

// authKey is the credential cache's key for the decoded "user:password":
// a salted hash, so the cache holds no password.
func (s *Server) authKey(raw []byte) [sha256.Size]byte {
	return sha256.Sum256([]byte(s.authSalt + "\x00" + string(raw)))
}

// randomSalt keys one server's credential cache.
func randomSalt() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return string(b[:])
}
