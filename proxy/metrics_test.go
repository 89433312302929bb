package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"

	"github.com/egressd/egressd/policy"
)

// serveAdmin serves e.srv's admin endpoints on a loopback port and
// returns their base URL.
func serveAdmin(t *testing.T, s *Server) string {
	t.Helper()
	ln := listen(t)
	hs := s.adminServer(ln)
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return "http://" + ln.Addr().String()
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// scrape fetches /metrics and parses the text format.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := httpGet(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics is not the Prometheus text format: %v\n%s", err, body)
	}
	return mfs
}

// gather is s's metrics as scrape returns them, from its registry.
func gather(t *testing.T, s *Server) map[string]*dto.MetricFamily {
	t.Helper()
	list, err := s.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	mfs := make(map[string]*dto.MetricFamily, len(list))
	for _, mf := range list {
		mfs[mf.GetName()] = mf
	}
	return mfs
}

// sample finds the series of family name whose labels are exactly labels
// ("k=v" pairs); ok is false when there is none.
func sample(mfs map[string]*dto.MetricFamily, name string, labels ...string) (*dto.Metric, bool) {
	mf := mfs[name]
	if mf == nil {
		return nil, false
	}
	want := map[string]string{}
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		want[k] = v
	}
	for _, m := range mf.GetMetric() {
		if len(m.GetLabel()) != len(want) {
			continue
		}
		ok := true
		for _, lp := range m.GetLabel() {
			if v, has := want[lp.GetName()]; !has || v != lp.GetValue() {
				ok = false
				break
			}
		}
		if ok {
			return m, true
		}
	}
	return nil, false
}

// value is a counter's or gauge's value, or a histogram's count.
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	m, ok := sample(mfs, name, labels...)
	if !ok {
		t.Fatalf("no series %s%v in the scrape", name, labels)
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	t.Fatalf("series %s%v has no value", name, labels)
	return 0
}

// waitValue waits until a series has the value want.
func waitValue(t *testing.T, base string, want float64, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := value(t, scrape(t, base), name, labels...)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// countingConn counts the bytes a test client writes into and reads out of
// a tunnel (TLS records included), reading through the CONNECT reader.
type countingConn struct {
	net.Conn
	r       io.Reader
	out, in atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	return n, err
}

// TestMetricsAndHealth makes known traffic through a proxy and checks the
// scrape: decision counters with their exact labels and values, bytes,
// the active gauge, the hello and dial histograms, the DNS cache, reloads,
// the runtime collectors, and /healthz and /readyz through Shutdown.
func TestMetricsAndHealth(t *testing.T) {
	e := newEnv(t)
	e.start(t, baseConfig)
	admin := serveAdmin(t, e.srv)

	if code, body := httpGet(t, admin+"/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz: %d %q, want 200 ok", code, body)
	}
	if code, _ := httpGet(t, admin+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before SetReady: %d, want 503", code)
	}
	e.srv.SetReady(true)
	if code, _ := httpGet(t, admin+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz after SetReady(true): %d, want 200", code)
	}

	// Two allowed tunnels in turn (the second resolves from the cache),
	// each scraped while open and after its close line.
	var sent, received int64
	authority := fmt.Sprintf("allowed.egress.test:%d", e.tlsPort)
	for i := range 2 {
		c, br, resp := e.connect(t, authority)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT %s: %s", authority, resp.Status)
		}
		cc := &countingConn{Conn: c, r: br}
		tc := tls.Client(cc, &tls.Config{ServerName: "allowed.egress.test", RootCAs: e.ca.pool})
		fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: allowed.egress.test\r\nConnection: close\r\n\r\n")
		r, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatalf("tunnel %d: %v", i, err)
		}
		body, _ := io.ReadAll(r.Body)
		if string(body) != "hello allowed.egress.test" {
			t.Fatalf("tunnel %d: body %q", i, body)
		}
		if got := value(t, scrape(t, admin), metricActive, "mode=connect"); got != 1 {
			t.Errorf("tunnel %d open: %s{mode=connect} = %v, want 1", i, metricActive, got)
		}
		tc.Close()
		e.waitLog(t, "close", map[string]any{"conn": i + 1})
		sent += cc.out.Load()
		received += cc.in.Load()
		// The tunnel's goroutine ends just after its close line.
		waitValue(t, admin, 0, metricActive, "mode=connect")
	}
	// One denied CONNECT: 403, nothing dialed.
	if _, _, resp := e.connect(t, "nope.egress.test:443"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("CONNECT nope.egress.test:443: %s, want 403", resp.Status)
	}
	e.waitLog(t, "decision", map[string]any{"host": "nope.egress.test", "reason": "no_rule"})
	e.srv.recordReload(true)
	e.srv.recordReload(false)
	e.srv.recordReload(false)

	mfs := scrape(t, admin)
	exact := []struct {
		name   string
		labels []string
		want   float64
	}{
		{metricDecisions, []string{"mode=connect", "policy=test", "rule=allowed", "decision=allow", "reason=allowed", "would_deny=false"}, 2},
		{metricDecisions, []string{"mode=connect", "policy=", "rule=", "decision=deny", "reason=no_rule", "would_deny=false"}, 1},
		// pre-registered at 0
		{metricDecisions, []string{"mode=quic", "policy=", "rule=", "decision=deny", "reason=hello_timeout", "would_deny=false"}, 0},
		{metricDecisions, []string{"mode=transparent", "policy=", "rule=", "decision=deny", "reason=dst_mismatch", "would_deny=false"}, 0},
		{metricCloses, []string{"mode=connect"}, 2},
		{metricActive, []string{"mode=connect"}, 0},
		{metricActive, []string{"mode=transparent"}, 0},
		{metricActive, []string{"mode=quic"}, 0},
		{metricHelloWait, []string{"mode=connect"}, 2}, // histogram count
		{metricDial, []string{"mode=connect"}, 2},
		{metricDNSCache, []string{"result=miss"}, 1},
		{metricDNSCache, []string{"result=hit"}, 1},
		{metricReloads, []string{"outcome=ok"}, 1},
		{metricReloads, []string{"outcome=error"}, 2},
	}
	for _, tc := range exact {
		if got := value(t, mfs, tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if got := value(t, mfs, metricBytes, "mode=connect", "direction=up"); got < float64(sent) || sent == 0 {
		t.Errorf("%s{connect,up} = %v, want >= %d sent", metricBytes, got, sent)
	}
	if got := value(t, mfs, metricBytes, "mode=connect", "direction=down"); got < float64(received) || received == 0 {
		t.Errorf("%s{connect,down} = %v, want >= %d received", metricBytes, got, received)
	}
	if _, ok := sample(mfs, metricDecisions, "mode=connect", "policy=", "rule=", "decision=deny", "reason=allowed", "would_deny=false"); ok {
		t.Errorf("a deny with reason allowed was pre-registered")
	}
	for _, name := range []string{"go_goroutines", "go_memstats_alloc_bytes"} {
		if mfs[name] == nil {
			t.Errorf("%s missing from the scrape", name)
		}
	}
	// No label may carry a host name or a client address.
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v := lp.GetValue(); strings.Contains(v, "egress.test") || strings.Contains(v, "127.0.0.1") {
					t.Errorf("%s has label %s=%q: unbounded label values", name, lp.GetName(), v)
				}
			}
		}
	}

	// Shutdown makes the proxy unready first; /healthz still answers.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if code, _ := httpGet(t, admin+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz after Shutdown: %d, want 503", code)
	}
	if code, _ := httpGet(t, admin+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz after Shutdown: %d, want 200", code)
	}
}

// TestMetricsRegistriesIndependent: every Server has its own registry, so
// two servers in one process neither collide nor share counts.
func TestMetricsRegistriesIndependent(t *testing.T) {
	e1, e2 := newEnv(t), newEnv(t)
	e1.start(t, baseConfig)
	e2.start(t, baseConfig)
	if _, _, resp := e1.connect(t, "nope.egress.test:443"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("CONNECT: %s, want 403", resp.Status)
	}
	e1.waitLog(t, "decision", map[string]any{"reason": "no_rule"})
	labels := []string{"mode=connect", "policy=", "rule=", "decision=deny", "reason=no_rule", "would_deny=false"}
	if got := value(t, scrape(t, serveAdmin(t, e1.srv)), metricDecisions, labels...); got != 1 {
		t.Errorf("first server: %v, want 1", got)
	}
	if got := value(t, scrape(t, serveAdmin(t, e2.srv)), metricDecisions, labels...); got != 0 {
		t.Errorf("second server: %v, want 0", got)
	}
}

// TestMetricsDecisionNoAlloc: recording a decision whose series exists
// does not allocate.
func TestMetricsDecisionNoAlloc(t *testing.T) {
	m := newMetrics(nil)
	c := &conn{mode: ModeConnect, helloWait: time.Millisecond}
	c.decision.Allow, c.decision.Policy, c.decision.Rule, c.decision.Reason = true, "p", "r", "allowed"
	m.decision(c)
	if n := testing.AllocsPerRun(100, func() { m.decision(c); m.closed(c, 10, 20) }); n != 0 {
		t.Errorf("decision+closed allocate %v times per call, want 0", n)
	}
}

// TestMetricsAuditWouldDeny: in audit mode a connection no rule allows is
// let through and counted with would_deny="true" and its deny reason.
func TestMetricsAuditWouldDeny(t *testing.T) {
	e := newEnv(t)
	e.start(t, strings.Replace(baseConfig, "server {", "server {\n  mode = \"audit\"", 1))
	admin := serveAdmin(t, e.srv)
	c, _, resp := e.connect(t, fmt.Sprintf("nope.egress.test:%d", e.tlsPort))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("audited CONNECT: %s, want 200", resp.Status)
	}
	if _, err := c.Write(clientHelloBytes("nope.egress.test")); err != nil {
		t.Fatal(err)
	}
	e.waitLog(t, "decision", map[string]any{"host": "nope.egress.test", "would_deny": true})
	mfs := scrape(t, admin)
	if got := value(t, mfs, metricDecisions, "mode=connect", "policy=", "rule=", "decision=allow", "reason=no_rule", "would_deny=true"); got != 1 {
		t.Errorf("audited decision counted %v times, want 1", got)
	}
	if got := value(t, mfs, metricDecisions, "mode=connect", "policy=", "rule=", "decision=deny", "reason=no_rule", "would_deny=false"); got != 0 {
		t.Errorf("audited decision also counted as a deny: %v", got)
	}
}

// TestMetricsQUIC: a relaying QUIC flow counts as active until it idles
// out, its hello wait and dial are observed, and its bytes are added when
// it ends.
func TestMetricsQUIC(t *testing.T) {
	e := newEnv(t)
	up, _ := quicUpstream(t, e)
	q := e.startQUIC(t, quicTestPolicy, up.Port())
	admin := serveAdmin(t, e.srv)
	c, err := q.dial(t, up, &tls.Config{ServerName: "quic.cftunnel.com", RootCAs: e.ca.pool, NextProtos: []string{quicALPN}})
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 10<<10)
	if err := quicEcho(c, payload); err != nil {
		t.Fatal(err)
	}
	mfs := scrape(t, admin)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{metricActive, []string{"mode=quic"}, 1},
		{metricDecisions, []string{"mode=quic", "policy=cloudflare-tunnel", "rule=tunnel-quic", "decision=allow", "reason=allowed", "would_deny=false"}, 1},
		{metricHelloWait, []string{"mode=quic"}, 1},
		{metricDial, []string{"mode=quic"}, 1},
	} {
		if got := value(t, mfs, tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	c.CloseWithError(0, "")
	e.waitLog(t, "close", map[string]any{"mode": "quic"}) // after the 1 s idle timeout
	mfs = scrape(t, admin)
	if got := value(t, mfs, metricActive, "mode=quic"); got != 0 {
		t.Errorf("%s{quic} = %v after the close line, want 0", metricActive, got)
	}
	for _, dir := range []string{"up", "down"} {
		if got := value(t, mfs, metricBytes, "mode=quic", "direction="+dir); got < float64(len(payload)) {
			t.Errorf("%s{quic,%s} = %v, want >= %d", metricBytes, dir, got, len(payload))
		}
	}
}

// TestAdminPprofLoopbackOnly: the profiles are served to loopback clients
// only; /metrics and the health endpoints to everyone.
func TestAdminPprofLoopbackOnly(t *testing.T) {
	s := &Server{metrics: newMetrics(nil)}
	h := s.AdminHandler()
	for _, tc := range []struct {
		path, remote string
		want         int
	}{
		{"/debug/pprof/", "127.0.0.1:4000", http.StatusOK},
		{"/debug/pprof/", "[::1]:4000", http.StatusOK},
		{"/debug/pprof/", "[::ffff:127.0.0.1]:4000", http.StatusOK},
		{"/debug/pprof/", "10.1.2.3:4000", http.StatusNotFound},
		{"/debug/pprof/profile?seconds=1", "10.1.2.3:4000", http.StatusNotFound},
		{"/debug/pprof/trace?seconds=1", "[2001:db8::1]:4000", http.StatusNotFound},
		{"/healthz", "10.1.2.3:4000", http.StatusOK},
		{"/metrics", "10.1.2.3:4000", http.StatusOK},
	} {
		r := httptest.NewRequest(http.MethodGet, tc.path, nil)
		r.RemoteAddr = tc.remote
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.want {
			t.Errorf("GET %s from %s: %d, want %d", tc.path, tc.remote, w.Code, tc.want)
		}
	}
}

// TestMetricsPrunedOnReload: a reload deletes the decision series of
// rules the new configuration no longer has, and keeps the others and the
// ones without a rule, so that renaming rules over months of reloads does
// not grow /metrics without bound.
func TestMetricsPrunedOnReload(t *testing.T) {
	parse := func(rules string) *policy.Config {
		t.Helper()
		cfg, diags := policy.Parse([]policy.File{{Name: "m.hcl", Src: []byte("policy \"p\" {\n" + rules + "}\n")}})
		if diags.HasErrors() {
			t.Fatal(policy.FormatDiagnostics(diags))
		}
		return cfg
	}
	keep := `  allow "keep" { hosts = ["keep.egress.test"] }` + "\n"
	gone := `  deny "gone" { hosts = ["gone.egress.test"] }` + "\n"
	s, err := New(parse(keep+gone), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	record := func(rule string, allow bool, reason policy.Reason) {
		c := &conn{mode: ModeConnect}
		c.decision = policy.Decision{Allow: allow, Policy: "p", Rule: rule, Reason: reason}
		if rule == "" {
			c.decision.Policy = ""
		}
		s.metrics.decision(c)
	}
	record("keep", true, policy.ReasonAllowed)
	record("gone", false, policy.ReasonDeniedByRule)
	record("", false, policy.ReasonNoRule)
	series := func() map[string]bool {
		mfs, err := s.metrics.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, mf := range mfs {
			if mf.GetName() != metricDecisions {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == labelRule && m.GetCounter().GetValue() > 0 {
						got[l.GetValue()] = true
					}
				}
			}
		}
		return got
	}
	if got := series(); !got["keep"] || !got["gone"] || !got[""] {
		t.Fatalf("before the reload: series for rules %v, want keep, gone and none", got)
	}
	if err := s.Reload(parse(keep), nil); err != nil {
		t.Fatal(err)
	}
	if got := series(); !got["keep"] || got["gone"] || !got[""] {
		t.Errorf("after a reload without rule gone: series for rules %v, want keep and none", got)
	}
	record("gone", false, policy.ReasonDeniedByRule) // decided on the old policy
	if got := series(); !got["gone"] {
		t.Errorf("a late decision of the old policy is not counted: %v", got)
	}
}

// TestAdminNotThroughTunnel: the admin listener is one of egressd's own
// addresses: a proxy client whose rules open loopback gets a tunnel to
// other loopback ports, but not to the admin port, where it would be a
// loopback client of pprof.
func TestAdminNotThroughTunnel(t *testing.T) {
	e := newEnv(t)
	e.start(t, `
policy "lab" {
  allow "loopback" {
    cidrs       = ["127.0.0.0/8", "0.0.0.0/8"]
    ports       = ["1024-65535"]
    require_tls = false
  }
}`)
	admin := strings.TrimPrefix(serveAdmin(t, e.srv), "http://")
	if _, _, resp := e.connect(t, "127.0.0.1:"+strconv.Itoa(e.echoPort)); resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT to the echo port: %s, want 200", resp.Status)
	}
	// Decided (and refused) at the dial, after the first bytes.
	c, br, _ := e.connect(t, admin)
	io.WriteString(c, "GET /debug/pprof/ HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, _ := io.ReadAll(br); len(got) != 0 {
		t.Errorf("through a tunnel to the admin port %s: %.100q", admin, got)
	}
	e.waitLog(t, "decision", map[string]any{"decision": "deny", "reason": "bad_request", "detail": admin + " is egressd's own listener"})

	// 0.0.0.0 is this host, over loopback.
	unspecified := "0.0.0.0:" + admin[strings.LastIndexByte(admin, ':')+1:]
	c, _, _ = e.connect(t, unspecified)
	io.WriteString(c, "GET /debug/pprof/ HTTP/1.1\r\nHost: x\r\n\r\n")
	e.waitLog(t, "decision", map[string]any{"decision": "deny", "reason": "bad_request", "detail": unspecified + " is egressd's own listener"})
}

// TestAdminOnAnyAddressNotSelf: an admin listener on 0.0.0.0 is not
// where redirected connections come from: a workload's connection to
// another host on the admin port is decided, not refused as a loop.
func TestAdminOnAnyAddressNotSelf(t *testing.T) {
	e := newEnv(t)
	e.start(t, `
policy "p" {
  allow "remote" {
    cidrs       = ["198.51.100.0/24"]
    ports       = ["1024-65535"]
    require_tls = false
  }
}`)
	ln := listen(t)
	port := ln.Addr().(*net.TCPAddr).Port
	e.srv.adminServer(anyAddrListener{ln}) // as if on 0.0.0.0:port
	e.srv.checkDial = func(string, netip.AddrPort) error { return errors.New("test: not dialed") }
	remote := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), uint16(port))
	c, err := net.Dial("tcp", e.fixedTransparent(t, remote))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	e.waitLog(t, "decision", map[string]any{"decision": "deny", "reason": "dial_error", "rule": "remote"})
}

// anyAddrListener is a loopback listener that says it is on 0.0.0.0.
type anyAddrListener struct{ net.Listener }

func (l anyAddrListener) Addr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4zero, Port: l.Listener.Addr().(*net.TCPAddr).Port}
}

// TestMetricsPruneRace: a series created while a reload prunes is either
// pruned with its entry or kept with it, never kept in the entry only
// (counting into a series /metrics no longer has).
func TestMetricsPruneRace(t *testing.T) {
	m := newMetrics(nil)
	pol := (*policy.Policy)(nil) // no rules: every rule's series goes
	deadline := time.Now().Add(2 * time.Second)
	for i := 0; i < 2000 && time.Now().Before(deadline); i++ {
		// A series of the rule exists: prune deletes all of the rule's.
		m.decisionCounter(decisionKey{mode: ModeConnect, policy: "p", rule: fmt.Sprint("r", i), reason: policy.ReasonDialError})
		k := decisionKey{mode: ModeConnect, policy: "p", rule: fmt.Sprint("r", i), reason: policy.ReasonAllowed, allow: true}
		done := make(chan struct{})
		go func() { m.prune(pol); close(done) }()
		ctr := m.decisionCounter(k)
		<-done
		m.mu.RLock()
		stored, ok := m.dec[k]
		m.mu.RUnlock()
		if !ok {
			continue // pruned after it was made: made again on next use
		}
		exported, err := m.decisions.GetMetricWithLabelValues(k.mode, k.policy, k.rule, decisionAllow, string(k.reason), "false")
		if err != nil || exported != stored || stored != ctr {
			t.Fatalf("iteration %d: the stored counter is not the exported one", i)
		}
	}
}
