package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/argon2"

	"github.com/egressd/egressd/policy"
)

// authPolicy is a configuration whose proxy user "ci" has password's hash
// and whose policy name lets ci (only) reach allowed.egress.test and the
// plain upstream.
func authPolicy(t *testing.T, name, password string) string {
	t.Helper()
	h, err := policy.HashPassword(password)
	if err != nil {
		t.Fatal(err)
	}
	return `
resolver { servers = ["DNS_ADDR"] }
server { allow_private_destinations = true }
user "ci" {
  password_hash = "` + h + `"
}
policy "` + name + `" {
  clients { users = ["ci"] }
  allow "web" {
    hosts = ["allowed.egress.test"]
    ports = [TLS_PORT]
  }
  allow "plain" {
    hosts       = ["plain.egress.test"]
    ports       = [HTTP_PORT]
    require_tls = false
  }
}
`
}

// authConfig: the proxy user "ci" (password s3cret) may reach
// allowed.egress.test and the plain upstream; loopback clients without
// credentials fall under the audited "loopback" policy, which allows
// echo.egress.test only and audits the rest.
func authConfig(t *testing.T) string {
	t.Helper()
	return authPolicy(t, "ci", "s3cret") + `
policy "loopback" {
  mode = "audit"
  clients { cidrs = ["127.0.0.0/8"] }
  allow "echo" {
    hosts = ["echo.egress.test"]
    ports = [TLS_PORT]
  }
}
`
}

// TestProxyUsers: credentials with curl --proxy-user, over CONNECT and
// plain HTTP; wrong passwords and unknown users get the same 407; the log
// names the identity and never the password.
func TestProxyUsers(t *testing.T) {
	curl := needTool(t, "curl")
	e := newEnv(t)
	// A plain upstream that reports whether a Proxy-Authorization header
	// reached it.
	var mu sync.Mutex
	var leaked []string
	ln := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if v := r.Header.Get("Proxy-Authorization"); v != "" {
			leaked = append(leaked, v)
		}
		mu.Unlock()
		fmt.Fprintf(w, "plain %s", r.Host)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	e.httpPort = port(ln)
	e.start(t, authConfig(t))
	tp := strconv.Itoa(e.tlsPort)

	run := func(user, url string) (string, error) {
		args := []string{"-sS", "--max-time", "10", "--cacert", e.ca.pemPath, "--proxy", "http://" + e.proxyAddr, "-w", " %{http_connect} %{http_code}"}
		if user != "" {
			args = append(args, "--proxy-user", user)
		}
		out, err := exec.Command(curl, append(args, url)...).CombinedOutput()
		return string(out), err
	}
	connectAllow := map[string]any{"mode": "connect", "decision": "allow", "identity": "ci", "policy": "ci", "rule": "web", "sni": "allowed.egress.test"}
	httpAllow := map[string]any{"mode": "http", "decision": "allow", "identity": "ci", "rule": "plain"}
	connectFailed := map[string]any{"mode": "connect", "decision": "deny", "reason": "auth_failed"}
	httpFailed := map[string]any{"mode": "http", "decision": "deny", "reason": "auth_failed"}
	tests := []struct {
		name, user, url string
		want            string         // suffix of curl's output: " CONNECT-code HTTP-code"
		line            map[string]any // the row's decision line
	}{
		{"user over CONNECT", "ci:s3cret", "https://allowed.egress.test:" + tp + "/", "hello allowed.egress.test 200 200", connectAllow},
		{"user over plain http", "ci:s3cret", "http://plain.egress.test:" + strconv.Itoa(e.httpPort) + "/", "plain plain.egress.test:" + strconv.Itoa(e.httpPort) + " 000 200", httpAllow},
		{"wrong password", "ci:guess", "https://allowed.egress.test:" + tp + "/", " 407 000", connectFailed},
		{"unknown user", "mallory:s3cret", "https://allowed.egress.test:" + tp + "/", " 407 000", connectFailed},
		{"wrong password, plain http", "ci:guess", "http://plain.egress.test:" + strconv.Itoa(e.httpPort) + "/", " 000 407", httpFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// curl's client address is unknown here: the row's line is the
			// one decision line written while it ran (the rows run one at
			// a time, and each curl makes one request), so that another
			// row's line cannot stand in for it.
			before := e.countLines(t, "decision", nil)
			out, _ := run(tt.user, tt.url)
			if !strings.HasSuffix(out, tt.want) {
				t.Errorf("curl output %q, want suffix %q", out, tt.want)
			}
			if !eventually(func() bool { return e.countLines(t, "decision", nil) > before }) {
				t.Fatalf("no decision line for this request in:\n%s", e.log.String())
			}
			var lines []map[string]any
			for _, l := range e.log.lines(t) {
				if l["message"] == "decision" {
					lines = append(lines, l)
				}
			}
			if got := lines[before:]; len(got) != 1 || !matches(got[0], tt.line) {
				t.Errorf("decision lines of this request %v, want one with %v", got, tt.line)
			}
		})
	}
	log := e.log.String()
	for _, secret := range []string{"s3cret", "guess", "mallory"} {
		if strings.Contains(log, secret) {
			t.Errorf("the decision log contains %q:\n%s", secret, log)
		}
	}
	mu.Lock()
	if len(leaked) != 0 {
		t.Errorf("Proxy-Authorization reached the upstream: %q", leaked)
	}
	mu.Unlock()

	// Wrong password and unknown user: byte-identical answers.
	raw := func(cred string) string {
		c, err := net.Dial("tcp", e.proxyAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "CONNECT allowed.egress.test:%s HTTP/1.1\r\nHost: allowed.egress.test:%s\r\n", tp, tp)
		if cred != "" {
			fmt.Fprintf(c, "Proxy-Authorization: Basic %s\r\n", cred)
		}
		fmt.Fprint(c, "\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %q %s", resp.StatusCode, resp.Header.Get("Proxy-Authenticate"), body)
	}
	wrong := raw("Y2k6Z3Vlc3M=")           // ci:guess
	unknown := raw("bWFsbG9yeTpndWVzcw==") // mallory:guess
	if wrong != unknown || !strings.HasPrefix(wrong, `407 "Basic realm=\"egressd\"`) {
		t.Errorf("wrong password %s, unknown user %s: want the same 407 with a challenge", wrong, unknown)
	}
	if garbage := raw("!!!"); !strings.HasPrefix(garbage, "407 ") {
		t.Errorf("malformed credentials: %s", garbage)
	}
}

// TestClientPoliciesAndAudit: a loopback client without credentials falls
// under the audited loopback policy: its allowed host passes, a host no rule
// allows passes too but is logged as would_deny with the reason, and a
// policy it is not a client of (ci) does not apply to it.
func TestClientPoliciesAndAudit(t *testing.T) {
	e := newEnv(t)
	e.start(t, authConfig(t))
	client := e.client()
	for _, host := range []string{"echo.egress.test", "other.egress.test", "allowed.egress.test"} {
		resp, err := client.Get("https://" + host + ":" + strconv.Itoa(e.tlsPort) + "/")
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "hello "+host {
			t.Errorf("%s: %q", host, body)
		}
	}
	e.waitLog(t, "decision", map[string]any{"host": "echo.egress.test", "decision": "allow", "identity": "cidr:loopback", "rule": "echo", "reason": "allowed"})
	d := e.waitLog(t, "decision", map[string]any{"host": "other.egress.test", "decision": "allow", "would_deny": true, "reason": "no_rule", "identity": "cidr:loopback"})
	if d["dst"] == nil {
		t.Errorf("audited connection was not dialed: %v", d)
	}
	// allowed.egress.test is allowed by policy ci only, which this client
	// is not covered by: audited as no_rule, not allowed by rule web.
	e.waitLog(t, "decision", map[string]any{"host": "allowed.egress.test", "decision": "allow", "would_deny": true, "reason": "no_rule"})
}

// TestAuditRefusalIsADeny: audit mode does not open a private
// destination; that refusal is real, so its line is a deny without
// would_deny (which only an allow carries).
func TestAuditRefusalIsADeny(t *testing.T) {
	e := newEnv(t)
	e.start(t, `
resolver { servers = ["DNS_ADDR"] }
policy "audited" {
  mode = "audit"
  allow "echo" {
    hosts = ["echo.egress.test"]
    ports = [TLS_PORT]
  }
}
`)
	if resp, err := e.client().Get("https://127.0.0.1:" + strconv.Itoa(e.tlsPort) + "/"); err == nil {
		resp.Body.Close()
		t.Fatal("a private destination was reached in audit mode")
	}
	d := e.waitLog(t, "decision", map[string]any{"host": "127.0.0.1", "decision": "deny", "reason": "private_destination"})
	if d["would_deny"] != nil {
		t.Errorf("refused in audit mode, logged with would_deny: %v", d)
	}
}

// TestNoPolicyForClient: when every policy names its clients, a client none
// names is refused: 407 (asking for credentials) when some policy admits
// proxy users, 403 otherwise; transparent connections get no_policy_for_client.
func TestNoPolicyForClient(t *testing.T) {
	e := newEnv(t)
	e.start(t, strings.Replace(authConfig(t), `cidrs = ["127.0.0.0/8"]`, `cidrs = ["10.9.0.0/16"]`, 1))
	c, _, resp := e.connect(t, "allowed.egress.test:"+strconv.Itoa(e.tlsPort))
	c.Close()
	if resp.StatusCode != http.StatusProxyAuthRequired || resp.Header.Get("Proxy-Authenticate") == "" {
		t.Errorf("CONNECT without credentials: %s %v", resp.Status, resp.Header)
	}
	e.waitLog(t, "decision", map[string]any{"decision": "deny", "reason": "no_policy_for_client"})

	// No policy admits proxy users: credentials would not help, 403.
	e3 := newEnv(t)
	e3.start(t, `
resolver { servers = ["DNS_ADDR"] }
server { allow_private_destinations = true }
policy "office" {
  clients { cidrs = ["10.9.0.0/16"] }
  allow "all" { hosts = ["allowed.egress.test", "plain.egress.test"] }
}`)
	c, _, resp = e3.connect(t, "allowed.egress.test:"+strconv.Itoa(e3.tlsPort))
	c.Close()
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get("Proxy-Authenticate") != "" {
		t.Errorf("CONNECT from a client no policy names, no users: %s %v, want 403 without a challenge", resp.Status, resp.Header)
	}
	hr, err := e3.client().Get("http://plain.egress.test:" + strconv.Itoa(e3.httpPort) + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(hr.Body)
	hr.Body.Close()
	if hr.StatusCode != http.StatusForbidden || string(body) != "egressd: denied plain.egress.test: no_policy_for_client\n" {
		t.Errorf("plain request from a client no policy names: %s %q, want 403 with the refusal line", hr.Status, body)
	}

	e2 := newEnv(t)
	g := e2.startTransparent(t, `
server { allow_private_destinations = true }
policy "office" {
  clients { cidrs = ["10.9.0.0/16"] }
  allow "all" { cidrs = ["127.0.0.0/8"] }
}`)
	conn := g.dial(t, "127.0.0.1:"+strconv.Itoa(e2.echoPort))
	conn.Write(clientHelloBytes("x.test"))
	io.ReadAll(conn)
	e2.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "deny", "reason": "no_policy_for_client"})
}

// TestAuthCacheAcrossReload: a password verified (and cached) under one
// policy is refused once a reload changed it, including when the check
// that cached it was still hashing against the old policy as the reload
// happened.
func TestAuthCacheAcrossReload(t *testing.T) {
	load := func(password string) *policy.Config {
		t.Helper()
		h, err := policy.HashPassword(password)
		if err != nil {
			t.Fatal(err)
		}
		cfg, diags := policy.Parse([]policy.File{{Name: "auth.hcl", Src: []byte(`
user "ci" {
  password_hash = "` + h + `"
}
policy "ci" {
  clients { users = ["ci"] }
  allow "a" { hosts = ["a.example.com"] }
}
`)}})
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		return cfg
	}
	s, err := New(load("old-password"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	check := func(password string) bool {
		req := &http.Request{Header: http.Header{}}
		req.SetBasicAuth("ci", password)
		req.Header.Set("Proxy-Authorization", req.Header.Get("Authorization"))
		_, ok, _ := s.proxyUser(req.Context(), req, s.policy())
		return ok
	}
	if !check("old-password") || !check("old-password") {
		t.Fatal("the configured password is refused")
	}
	old := s.policy()
	if err := s.Reload(load("new-password"), nil); err != nil {
		t.Fatal(err)
	}
	if check("old-password") {
		t.Error("the old password is accepted from the cache after a reload changed it")
	}
	if !check("new-password") {
		t.Error("the new password is refused after the reload")
	}
	// A check that read the old policy before the reload and finishes
	// after it caches under the old policy: that entry must not count.
	k := s.authKey([]byte("ci:old-password"))
	s.auth.put(old, k, "ci")
	if check("old-password") {
		t.Error("an entry cached under the old policy after the reload is accepted")
	}
}

// TestAuthGate: password checks run one at a time per client and at most
// cap(sem) at once; a check that cannot start before its context ends is
// refused and leaves nothing behind.
func TestAuthGate(t *testing.T) {
	g := newAuthGate()
	g.sem = make(chan struct{}, 2) // two checks at once, whatever GOMAXPROCS
	a, b, c := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("::1")
	ctx := context.Background()
	ta := g.enter(ctx, a)
	if ta == nil {
		t.Fatal("the first check did not start")
	}
	second := make(chan *authTurn, 1)
	go func() { second <- g.enter(ctx, a) }()
	select {
	case <-second:
		t.Fatal("a second check from the same client ran beside the first")
	case <-time.After(100 * time.Millisecond):
	}
	tb := g.enter(ctx, b)
	if tb == nil {
		t.Fatal("another client's check did not start")
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	if g.enter(short, c) != nil {
		t.Error("a third check ran beside two, over the bound of 2")
	}
	cancel()
	g.leave(a, ta)
	ta2 := <-second
	if ta2 == nil {
		t.Fatal("the client's second check did not start after its first ended")
	}
	g.leave(a, ta2)
	g.leave(b, tb)
	if len(g.clients) != 0 || len(g.sem) != 0 {
		t.Errorf("after every check ended: %d clients, %d checks held", len(g.clients), len(g.sem))
	}
}

// TestAuthChecksPerClient: wrong passwords sent at once by one client are
// checked one at a time, over CONNECT and plain HTTP alike, so that a
// client cannot take every CPU with bcrypt work; each is refused with
// 407.
func TestAuthChecksPerClient(t *testing.T) {
	e := newEnv(t)
	e.start(t, authConfig(t))
	var running, most atomic.Int32
	orig := checkPassword
	checkPassword = func(p *policy.Policy, user, password string) bool {
		n := running.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		defer running.Add(-1)
		time.Sleep(20 * time.Millisecond)
		return orig(p, user, password)
	}
	t.Cleanup(func() { checkPassword = orig })
	auth := "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("ci:guess")) + "\r\n"
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			c, err := net.Dial("tcp", e.proxyAddr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			req := "CONNECT allowed.egress.test:443 HTTP/1.1\r\nHost: allowed.egress.test:443\r\n" + auth + "\r\n"
			method := http.MethodConnect
			if i%2 == 1 {
				req = "GET http://plain.egress.test/ HTTP/1.1\r\nHost: plain.egress.test\r\n" + auth + "\r\n"
				method = http.MethodGet
			}
			io.WriteString(c, req)
			resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
			if err != nil {
				t.Errorf("request %d: %v", i, err)
				return
			}
			if resp.StatusCode != http.StatusProxyAuthRequired {
				t.Errorf("request %d with a wrong password: status %s, want 407", i, resp.Status)
			}
		})
	}
	wg.Wait()
	if m := most.Load(); m != 1 {
		t.Errorf("%d password checks of one client ran at once, want 1", m)
	}
}

// TestAuthCacheFull: a full credential cache makes room with the adding
// user's own entries first, so that one user's many accepted spellings of
// a password (bcrypt ignores what follows a NUL or the 72nd byte) cannot
// flush every other user's; then with expired entries, then all.
func TestAuthCacheFull(t *testing.T) {
	var a authCache
	p := new(policy.Policy)
	key := func(s string) [32]byte { return sha256.Sum256([]byte(s)) }
	a.put(p, key("bob"), "bob")
	for i := range 3 * authCacheMax {
		a.put(p, key(fmt.Sprint("mallory", i)), "mallory")
	}
	if !a.get(p, key("bob")) {
		t.Error("another user's flood of entries flushed bob's")
	}
	if n := len(a.ok); n > authCacheMax {
		t.Errorf("%d entries, over the bound %d", n, authCacheMax)
	}
	// Full of other users' entries: the expired go, else all.
	a.ok = make(map[[32]byte]authEntry)
	for i := range authCacheMax {
		a.ok[key(fmt.Sprint("u", i))] = authEntry{user: fmt.Sprint("u", i), expires: time.Now().Add(time.Duration(i%2) * time.Hour)}
	}
	a.put(p, key("carol"), "carol")
	if !a.get(p, key("carol")) || !a.get(p, key("u1")) || len(a.ok) != authCacheMax/2+1 {
		t.Errorf("a full cache with half of it expired: %d entries, carol %v, u1 %v; want the expired gone, carol and u1 kept",
			len(a.ok), a.get(p, key("carol")), a.get(p, key("u1")))
	}
}

// fakeAuthClock is a clock that password checks faked by a test advance.
type fakeAuthClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeAuthClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeAuthClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// authUsersConfig declares alice and carol with password "s3cret", as
// argon2id hashes (cheap to check also under the race detector) of which
// carol's costs four times alice's, and lets them reach a.example.com.
func authUsersConfig(t *testing.T) *policy.Config {
	t.Helper()
	hash := func(m, passes uint32) string {
		salt := []byte("saltsaltsalt")
		key := argon2.IDKey([]byte("s3cret"), salt, passes, m, 1, 32)
		return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=1$%s$%s", m, passes,
			base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
	}
	cfg, diags := policy.Parse([]policy.File{{Name: "auth.hcl", Src: []byte(`
user "alice" {
  password_hash = "` + hash(7168, 5) + `"
}
user "carol" {
  password_hash = "` + hash(14336, 10) + `"
}
policy "p" {
  clients { users = ["alice", "carol"] }
  allow "a" { hosts = ["a.example.com"] }
}
`)}})
	if diags.HasErrors() {
		t.Fatal(policy.FormatDiagnostics(diags))
	}
	return cfg
}

// basicAuthRequest is a request from client with Proxy-Authorization:
// Basic user:password, under ctx.
func basicAuthRequest(ctx context.Context, client, user, password string) *http.Request {
	req := (&http.Request{Header: http.Header{}, RemoteAddr: client + ":40000"}).WithContext(ctx)
	req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+password)))
	return req
}

// TestAuthFailuresWaitForDecoy: with faked check costs and clock, a wrong
// password of a user whose hash is cheaper than the decoy is answered
// only after waiting out the difference, in its authGate turn; an unknown
// user's and a successful check do not wait; a check slowed by load
// raises the wait by at most authSampleRise and is forgotten after
// authSamples newer ones; a reload times its own decoy check; a client
// that goes away ends the wait.
func TestAuthFailuresWaitForDecoy(t *testing.T) {
	clock := &fakeAuthClock{t: time.Unix(1e9, 0)}
	decoy := 200 * time.Millisecond // what an unknown user's check costs
	origCheck, origDecoy := checkPassword, checkDecoy
	t.Cleanup(func() { checkPassword, checkDecoy = origCheck, origDecoy })
	checkDecoy = func(*policy.Policy, string) { clock.advance(decoy) }
	checkPassword = func(p *policy.Policy, user, password string) bool {
		if !p.HasUser(user) {
			clock.advance(decoy)
			return false
		}
		clock.advance(map[string]time.Duration{"alice": 50 * time.Millisecond, "carol": 200 * time.Millisecond}[user])
		return password == "s3cret"
	}
	s, err := New(authUsersConfig(t), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	var slept []time.Duration
	s.authTiming.now = clock.now
	s.authTiming.sleep = func(ctx context.Context, d time.Duration) {
		if n := len(s.authGate.sem); n != 1 {
			t.Errorf("a failed check waits holding %d authGate slots, want its own", n)
		}
		slept = append(slept, d)
	}
	s.authTiming.calibrate(s.policy()) // on the fake clock
	check := func(user, password string, wantOK bool, wantSlept ...time.Duration) {
		t.Helper()
		slept = nil
		_, ok, _ := s.proxyUser(context.Background(), basicAuthRequest(context.Background(), "192.0.2.1", user, password), s.policy())
		if ok != wantOK || fmt.Sprint(slept) != fmt.Sprint(wantSlept) {
			t.Errorf("%s:%s: ok %v, waited %v; want ok %v, waited %v", user, password, ok, slept, wantOK, wantSlept)
		}
	}
	check("alice", "guess", false, 150*time.Millisecond)
	check("carol", "guess", false)
	check("nobody", "guess", false)
	check("alice", "s3cret", true)
	check("alice", "s3cret", true) // cached
	check("carol", "s3cret", true)

	// One unknown user's check slowed by load to 5 s counts as 400 ms.
	decoy = 5 * time.Second
	check("nobody", "guess", false)
	decoy = 200 * time.Millisecond
	check("alice", "guess", false, 350*time.Millisecond)
	check("nobody", "guess", false, 200*time.Millisecond)
	for range authSamples - 2 {
		check("nobody", "guess", false, 200*time.Millisecond)
	}
	check("nobody", "guess", false) // the slow one is forgotten
	check("alice", "guess", false, 150*time.Millisecond)

	// A reload times the new policy's decoy check; checks still running
	// against the old policy add no samples.
	old := s.policy()
	decoy = 300 * time.Millisecond
	if err := s.Reload(authUsersConfig(t), nil); err != nil {
		t.Fatal(err)
	}
	check("alice", "guess", false, 250*time.Millisecond)
	s.authTiming.failed(context.Background(), old, false, time.Second)
	check("alice", "guess", false, 250*time.Millisecond)

	// The real wait ends with the request's context.
	s.authTiming.sleep = sleepCtx
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	s.authTiming.failed(ctx, s.policy(), true, -time.Hour)
	if d := time.Since(start); d > time.Second {
		t.Errorf("a wait for a client that went away lasted %v", d)
	}
}

// TestAuthFailureTiming times real checks: alice's hash costs a quarter
// of carol's, so without the wait a wrong password of alice's was refused
// about four times as fast as one of a user that does not exist (checked
// against a decoy as costly as carol's). It must take at least 70 % as
// long; a right password of alice's still takes well under that.
func TestAuthFailureTiming(t *testing.T) {
	s, err := New(authUsersConfig(t), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	timeCheck := func(user, password string, wantOK bool) time.Duration {
		t.Helper()
		s.auth.mu.Lock()
		s.auth.ok = nil // no cached success
		s.auth.mu.Unlock()
		start := time.Now()
		_, ok, _ := s.proxyUser(context.Background(), basicAuthRequest(context.Background(), "192.0.2.1", user, password), s.policy())
		d := time.Since(start)
		if ok != wantOK {
			t.Fatalf("%s:%s: ok %v, want %v", user, password, ok, wantOK)
		}
		return d
	}
	// The fastest of three of each: load on a shared host only slows.
	unknown, wrong, right := time.Hour, time.Hour, time.Hour
	for range 3 {
		unknown = min(unknown, timeCheck("nobody", "guess", false))
		wrong = min(wrong, timeCheck("alice", "guess", false))
		right = min(right, timeCheck("alice", "s3cret", true))
	}
	t.Logf("unknown user %v, wrong password %v, right password %v", unknown, wrong, right)
	if wrong < unknown*7/10 {
		t.Errorf("a wrong password of a known user is refused in %v, an unknown user in %v: the timing tells that the user exists", wrong, unknown)
	}
	if right > unknown*7/10 {
		t.Errorf("a right password takes %v, an unknown user %v: the successful check waits", right, unknown)
	}
}
