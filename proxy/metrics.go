package proxy

import (
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/egressd/egressd/policy"
)

// Metrics. Every label value is bounded: modes and reasons are constants,
// policy and rule names come from the configuration. Host names, SNI and
// client addresses are never labels (the decision log has them).
const (
	metricDecisions  = "egressd_decisions_total"
	metricBytes      = "egressd_bytes_total"
	metricCloses     = "egressd_close_total"
	metricActive     = "egressd_active_connections"
	metricHelloWait  = "egressd_hello_wait_seconds"
	metricDial       = "egressd_dial_seconds"
	metricDNSCache   = "egressd_dns_cache_total"
	metricReloads    = "egressd_reloads_total"
	metricBuildInfo  = "egressd_build_info"
	directionUp      = "up"
	directionDown    = "down"
	decisionAllow    = "allow"
	decisionDeny     = "deny"
	reloadOK         = "ok"
	reloadError      = "error"
	cacheResultHit   = "hit"
	cacheResultMiss  = "miss"
	labelMode        = "mode"
	labelPolicy      = "policy"
	labelRule        = "rule"
	labelDecision    = "decision"
	labelReason      = "reason"
	labelWouldDeny   = "would_deny"
	labelDirection   = "direction"
	labelOutcome     = "outcome"
	labelCacheResult = "result"
	labelVersion     = "version"
)

// allModes are the modes metrics are pre-registered for.
var allModes = []string{ModeConnect, ModeHTTP, ModeTransparent, ModeQUIC, ModeDNS, ModeProxy}

// latencyBuckets (seconds) suit both the hello wait and the dial: from a
// millisecond on loopback to the 10 s default timeouts.
var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// decisionKey is one egressd_decisions_total series. A struct of strings
// as a map key: looking it up does not allocate.
type decisionKey struct {
	mode, policy, rule string
	reason             policy.Reason
	allow, wouldDeny   bool
}

// modeMetrics are the children of the per-mode metrics, resolved once.
type modeMetrics struct {
	up, down  prometheus.Counter
	closes    prometheus.Counter
	active    prometheus.Gauge
	helloWait prometheus.Observer
	dial      prometheus.Observer
}

// metrics is a Server's Prometheus registry and the instruments recorded
// on the connection paths. Recording a decision looks its counter up in a
// map under a read lock: no allocation once a series exists.
type metrics struct {
	reg *prometheus.Registry

	decisions *prometheus.CounterVec
	bytes     *prometheus.CounterVec
	closes    *prometheus.CounterVec
	active    *prometheus.GaugeVec
	helloWait *prometheus.HistogramVec
	dial      *prometheus.HistogramVec
	reloads   *prometheus.CounterVec
	buildInfo *prometheus.GaugeVec

	byMode map[string]*modeMetrics // read-only after newMetrics

	mu  sync.RWMutex
	dec map[decisionKey]prometheus.Counter
}

func newMetrics(res *Resolver) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricDecisions,
			Help: "Decisions logged, by mode, deciding policy and rule (empty when none), decision (allow, deny), reason and would_deny (audit mode: allowed although enforcement would deny for reason).",
		}, []string{labelMode, labelPolicy, labelRule, labelDecision, labelReason, labelWouldDeny}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricBytes,
			Help: "Bytes relayed by ended connections and flows: up is client to upstream, down upstream to client.",
		}, []string{labelMode, labelDirection}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricCloses,
			Help: "Allowed connections and flows that ended (close log lines).",
		}, []string{labelMode}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: metricActive,
			Help: "Tunnels (connect, transparent) and QUIC flows relaying now.",
		}, []string{labelMode}),
		helloWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    metricHelloWait,
			Help:    "Seconds from the start of the hello phase (the 200 for CONNECT, accept for transparent, the first datagram for QUIC) until the ClientHello was complete.",
			Buckets: latencyBuckets,
		}, []string{labelMode}),
		dial: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    metricDial,
			Help:    "Seconds taken by successful upstream dials.",
			Buckets: latencyBuckets,
		}, []string{labelMode}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricReloads,
			Help: "Configuration reloads by outcome (ok, error).",
		}, []string{labelOutcome}),
		buildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: metricBuildInfo,
			Help: "Always 1; the version label is egressd's version.",
		}, []string{labelVersion}),
		byMode: make(map[string]*modeMetrics, len(allModes)),
		dec:    make(map[decisionKey]prometheus.Counter),
	}
	m.reg.MustRegister(m.decisions, m.bytes, m.closes, m.active, m.helloWait, m.dial, m.reloads, m.buildInfo,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if res != nil {
		m.reg.MustRegister(
			cacheCounter(cacheResultHit, func() float64 { return float64(res.cacheHits.Load()) }),
			cacheCounter(cacheResultMiss, func() float64 { return float64(res.cacheMisses.Load()) }))
	}
	for _, mode := range allModes {
		m.byMode[mode] = m.newModeMetrics(mode)
		// Denials without a deciding rule (no_rule, hello and dial
		// failures, ...) are the series alerts are written on: present
		// at 0 from the start.
		for _, r := range policy.Reasons() {
			if r != policy.ReasonAllowed {
				m.decisionCounter(decisionKey{mode: mode, reason: r})
			}
		}
	}
	m.reloads.WithLabelValues(reloadOK)
	m.reloads.WithLabelValues(reloadError)
	return m
}

func cacheCounter(result string, f func() float64) prometheus.CounterFunc {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name:        metricDNSCache,
		Help:        "Resolver cache lookups for dials, by result (hit, miss).",
		ConstLabels: prometheus.Labels{labelCacheResult: result},
	}, f)
}

func (m *metrics) newModeMetrics(mode string) *modeMetrics {
	return &modeMetrics{
		up:        m.bytes.WithLabelValues(mode, directionUp),
		down:      m.bytes.WithLabelValues(mode, directionDown),
		closes:    m.closes.WithLabelValues(mode),
		active:    m.active.WithLabelValues(mode),
		helloWait: m.helloWait.WithLabelValues(mode),
		dial:      m.dial.WithLabelValues(mode),
	}
}

// mode returns the instruments of a mode; all modes are pre-built.
func (m *metrics) mode(mode string) *modeMetrics {
	if mm, ok := m.byMode[mode]; ok {
		return mm
	}
	return m.newModeMetrics(mode) // not reached: every mode is in allModes
}

func (m *metrics) decisionCounter(k decisionKey) prometheus.Counter {
	m.mu.RLock()
	ctr, ok := m.dec[k]
	m.mu.RUnlock()
	if ok {
		return ctr
	}
	verdict := decisionDeny
	if k.allow {
		verdict = decisionAllow
	}
	wouldDeny := "false"
	if k.wouldDeny {
		wouldDeny = "true"
	}
	// Under the lock, so that a prune cannot delete the series between
	// its creation and its entry (the entry would then count into a
	// series /metrics no longer has).
	m.mu.Lock()
	defer m.mu.Unlock()
	if ctr, ok := m.dec[k]; ok {
		return ctr
	}
	ctr = m.decisions.WithLabelValues(k.mode, k.policy, k.rule, verdict, string(k.reason), wouldDeny)
	m.dec[k] = ctr
	return ctr
}

// prune deletes the egressd_decisions_total series of rules that pol
// does not have (removed or renamed by a reload), so that the series stay
// bounded by the configuration a long-running egressd has now, not by
// every configuration it ever had. A connection decided on the old policy
// and logged after this brings its series back until the next reload; one
// logged while this runs may be counted before its series goes, as if it
// had come just before the reload.
func (m *metrics) prune(pol *policy.Policy) {
	type ruleID struct{ policy, rule string }
	m.mu.Lock()
	defer m.mu.Unlock()
	gone := make(map[ruleID]bool)
	for k := range m.dec {
		if k.rule != "" {
			gone[ruleID{k.policy, k.rule}] = true
		}
	}
	for p, r := range pol.RuleNames {
		delete(gone, ruleID{p, r})
	}
	if len(gone) == 0 {
		return
	}
	for k := range m.dec {
		if gone[ruleID{k.policy, k.rule}] {
			m.decisions.DeletePartialMatch(prometheus.Labels{labelPolicy: k.policy, labelRule: k.rule})
			delete(m.dec, k)
		}
	}
}

// decision records c's decision (the one logDecision logs) and, when a
// ClientHello was read, how long it took to arrive.
func (m *metrics) decision(c *conn) {
	d := &c.decision
	m.decisionCounter(decisionKey{mode: c.mode, policy: d.Policy, rule: d.Rule, reason: d.Reason, allow: d.Allow, wouldDeny: d.WouldDeny}).Inc()
	if c.helloWait > 0 {
		m.mode(c.mode).helloWait.Observe(c.helloWait.Seconds())
	}
}

// closed records an ended connection's bytes.
func (m *metrics) closed(c *conn, up, down int64) {
	mm := m.mode(c.mode)
	mm.closes.Inc()
	if up > 0 {
		mm.up.Add(float64(up))
	}
	if down > 0 {
		mm.down.Add(float64(down))
	}
}

func (m *metrics) dialed(mode string, d time.Duration) {
	m.mode(mode).dial.Observe(d.Seconds())
}

func (m *metrics) relaying(mode string, delta float64) {
	m.mode(mode).active.Add(delta)
}

// recordReload counts a configuration reload: ok false for one that was
// refused (the running configuration stays).
func (s *Server) recordReload(ok bool) {
	outcome := reloadOK
	if !ok {
		outcome = reloadError
	}
	s.metrics.reloads.WithLabelValues(outcome).Inc()
}

// SetVersion sets egressd_build_info's version label.
func (s *Server) SetVersion(version string) {
	s.metrics.buildInfo.Reset()
	s.metrics.buildInfo.WithLabelValues(version).Set(1)
}

// SetReady sets what /readyz answers: true once the configuration is
// loaded and every listener is bound and served. Shutdown sets it false.
func (s *Server) SetReady(ready bool) { s.ready.Store(ready) }

// Ready reports what SetReady (or Shutdown) last set.
func (s *Server) Ready() bool { return s.ready.Load() }

// AdminHandler serves the admin endpoints: GET /metrics (Prometheus text
// format, from this Server's own registry), /healthz (200 while the
// process runs) and /readyz (200 when ready, else 503).
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{
		Registry:      s.metrics.reg, // egressd's own promhttp_* counters
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !s.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	// Profiles for performance work (go tool pprof
	// http://ADMIN/debug/pprof/profile), for loopback clients only: the
	// manifests open the admin listener on every address for Prometheus,
	// and a profile or trace costs CPU while it runs. kubectl port-forward
	// reaches them (it connects over the pod's loopback).
	mux.Handle("GET /debug/pprof/", loopbackOnly(http.HandlerFunc(pprof.Index)))
	mux.Handle("GET /debug/pprof/profile", loopbackOnly(http.HandlerFunc(pprof.Profile)))
	mux.Handle("GET /debug/pprof/trace", loopbackOnly(http.HandlerFunc(pprof.Trace)))
	return mux
}

// adminServer is the http.Server for AdminHandler on ln. ln is recorded as
// one of egressd's own addresses: a tunnel to it is refused like one to
// the proxy port, or any proxy client allowed to reach loopback would
// reach pprof as a loopback client.
func (s *Server) adminServer(ln net.Listener) *http.Server {
	if ap, err := netip.ParseAddrPort(ln.Addr().String()); err == nil {
		s.mu.Lock()
		s.adminAddrs = append(s.adminAddrs, unmapAddrPort(ap))
		s.mu.Unlock()
	}
	return &http.Server{
		Handler:           s.AdminHandler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    8 << 10,
	}
}

// loopbackOnly serves h to clients on a loopback address, and 404 to the
// others.
func loopbackOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err != nil || !ap.Addr().Unmap().IsLoopback() {
			http.NotFound(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}
