package proxy

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
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
	// authCacheMax bounds the cache; when full it is emptied (a burst of
	// distinct credentials costs one hash each, never unbounded memory).
	authCacheMax = 4096
	// maxAuthHeader bounds the Proxy-Authorization value decoded.
	maxAuthHeader = 1024
	// proxyRealm is the Basic realm egressd challenges with.
	proxyRealm = `Basic realm="egressd", charset="UTF-8"`
)

// authCache remembers credentials verified against one policy by their
// SHA-256 (never the clear text) until authCacheTTL. Entries belong to the
// policy that verified them: after a reload nothing verified before it is
// accepted, even from a check that was still hashing when the policy
// changed.
type authCache struct {
	mu  sync.Mutex
	pol *policy.Policy
	ok  map[[32]byte]time.Time
}

func (a *authCache) get(p *policy.Policy, k [32]byte) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	exp, ok := a.ok[k]
	return a.pol == p && ok && time.Now().Before(exp)
}

func (a *authCache) put(p *policy.Policy, k [32]byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pol != p || a.ok == nil || len(a.ok) >= authCacheMax {
		a.pol, a.ok = p, make(map[[32]byte]time.Time)
	}
	a.ok[k] = time.Now().Add(authCacheTTL)
}

// proxyUser checks req's Proxy-Authorization. It returns the user and
// ok = true for valid credentials, "" and true when there are none, and
// ok = false for wrong or malformed ones (whether or not the user exists).
func (s *Server) proxyUser(req *http.Request) (user string, ok bool) {
	h := req.Header.Get("Proxy-Authorization")
	if h == "" {
		return "", true
	}
	scheme, cred, found := strings.Cut(h, " ")
	if !found || !strings.EqualFold(scheme, "Basic") || len(cred) > maxAuthHeader {
		return "", false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", false
	}
	name, password, found := strings.Cut(string(raw), ":")
	if !found || name == "" {
		return "", false
	}
	p := s.policy()
	k := s.authKey(raw)
	if s.auth.get(p, k) {
		return name, true
	}
	if !p.Authenticate(name, password) {
		return "", false
	}
	s.auth.put(p, k)
	return name, true
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
