//go:build unix

package proxy

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// soakEnv is the duration of TestSoak: EGRESSD_SOAK=3m for the real soak.
const soakEnv = "EGRESSD_SOAK"

// logTally is a decision log that keeps counts instead of lines, so that a
// long soak does not grow the heap with its own log: decision lines per
// mode/decision/reason, close lines, and the allowed connections whose
// close line has not come yet.
type logTally struct {
	mu        sync.Mutex
	decisions map[string]int // "mode decision reason"
	total     int
	closes    int
	open      map[uint64]bool // allowed, not closed yet
	orphans   int             // close lines without an allowed decision
	bad       string          // the first line that is not JSON
}

func newLogTally() *logTally {
	return &logTally{decisions: map[string]int{}, open: map[uint64]bool{}}
}

func (l *logTally) Write(p []byte) (int, error) {
	var m struct {
		Message  string `json:"message"`
		Conn     uint64 `json:"conn"`
		Mode     string `json:"mode"`
		Decision string `json:"decision"`
		Reason   string `json:"reason"`
	}
	err := json.Unmarshal(p, &m)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err != nil:
		if l.bad == "" {
			l.bad = string(p)
		}
	case m.Message == "decision":
		l.total++
		l.decisions[m.Mode+" "+m.Decision+" "+m.Reason]++
		if m.Decision == "allow" {
			l.open[m.Conn] = true
		}
	case m.Message == "close":
		l.closes++
		if l.open[m.Conn] {
			delete(l.open, m.Conn)
		} else {
			l.orphans++
		}
	}
	return len(p), nil
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		unavailable(t, "no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// soakOp is one kind of soak traffic: run makes one connection or request
// and reports an unexpected outcome; allowed says whether its decision is
// an allow (with a close line).
type soakOp struct {
	name    string
	allowed bool
	run     func() error
}

// TestSoak runs mixed allowed and denied traffic (CONNECT with data,
// refused CONNECTs, plain HTTP allowed and refused, transparent allowed and
// refused, CONNECT and transparent connections aborted in the middle of
// their hello) from 6 goroutines for EGRESSD_SOAK (10 s by default), then
// checks that nothing leaked (goroutines, file descriptors, heap back to
// the baseline) and nothing was lost (one decision line per connection or
// request, a close line for every allowed one).
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("soak: skipped with -short")
	}
	dur := 10 * time.Second
	if v := os.Getenv(soakEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a Go duration", soakEnv, v)
		}
		dur = d
	}
	e := newEnv(t)
	tally := newLogTally()
	e.startLogger(t, strings.Replace(baseConfig, `hello_timeout = "2s"`, `hello_timeout = "5s"`, 1), zerolog.New(tally))
	gw := e.serveGateway(t)

	echoDst := netip.MustParseAddrPort("127.0.0.1:" + strconv.Itoa(e.echoPort))
	tlsDst := netip.MustParseAddrPort("127.0.0.1:" + strconv.Itoa(e.tlsPort))
	echoAuthority := echoDst.String()
	client := e.client()
	hello := clientHelloBytes("allowed.egress.test")
	denied := clientHelloBytes("nope.egress.test")

	transparent := func(dst netip.AddrPort, first []byte, wantBack bool) error {
		c, err := gw.connect(dst)
		if err != nil {
			return err
		}
		defer c.Close()
		defer gw.dsts.Delete(c.LocalAddr().String())
		c.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			c.Write(first)
			c.CloseWrite()
		}()
		got, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		if want := len(first) * btoi(wantBack); len(got) != want {
			return fmt.Errorf("transparent to %s: %d bytes back, want %d", dst, len(got), want)
		}
		return nil
	}
	get := func(url string, want int) error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			return fmt.Errorf("GET %s: %s, want %d", url, resp.Status, want)
		}
		return nil
	}
	ops := []soakOp{
		{"connect allowed", true, func() error {
			c, br, resp, err := dialConnect(e.proxyAddr, "", echoAuthority)
			if err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK {
				c.Close()
				return fmt.Errorf("CONNECT echo: %d", resp.StatusCode)
			}
			msg := make([]byte, 4096)
			rand.Read(msg)
			// Plain bytes, never a TLS record header: a random first byte
			// of 0x16 would make this a malformed ClientHello.
			msg[0] = 'x'
			return echoOnce(c, br, string(msg))
		}},
		{"connect denied", false, func() error {
			c, _, resp, err := dialConnect(e.proxyAddr, "", "nope.egress.test:"+strconv.Itoa(e.tlsPort))
			if err != nil {
				return err
			}
			c.Close()
			if resp.StatusCode != http.StatusForbidden {
				return fmt.Errorf("CONNECT nope: %d, want 403", resp.StatusCode)
			}
			return nil
		}},
		{"connect aborted mid-hello", false, func() error {
			c, _, resp, err := dialConnect(e.proxyAddr, "", "allowed.egress.test:"+strconv.Itoa(e.tlsPort))
			if err != nil {
				return err
			}
			defer c.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("CONNECT allowed: %d", resp.StatusCode)
			}
			_, err = c.Write(hello[:len(hello)/2])
			return err
		}},
		{"http allowed", true, func() error {
			return get("http://plain.egress.test:"+strconv.Itoa(e.httpPort)+"/", http.StatusOK)
		}},
		{"http denied", false, func() error {
			return get("http://nope.egress.test:"+strconv.Itoa(e.httpPort)+"/", http.StatusForbidden)
		}},
		{"transparent allowed", true, func() error {
			msg := make([]byte, 4096)
			rand.Read(msg)
			msg[0] = 'x' // never a TLS record header (see connect allowed)
			return transparent(echoDst, msg, true)
		}},
		{"transparent denied", false, func() error { return transparent(tlsDst, denied, false) }},
		{"transparent aborted mid-hello", false, func() error { return transparent(tlsDst, hello[:len(hello)/2], false) }},
	}

	// Warm up (one of each), then the baseline.
	for _, op := range ops {
		if err := op.run(); err != nil {
			t.Fatalf("warm-up %s: %v", op.name, err)
		}
	}
	client.CloseIdleConnections()
	waitTally(t, tally, len(ops))
	time.Sleep(200 * time.Millisecond)
	goroutines0, fds0, heap0 := runtime.NumGoroutine(), openFDs(t), heapAlloc()

	const workers, maxOps = 6, 2_000_000
	counts := make([]atomic.Int64, len(ops))
	var total atomic.Int64
	var firstErr atomic.Value
	stop := time.Now().Add(dur)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; time.Now().Before(stop) && total.Load() < maxOps && firstErr.Load() == nil; i++ {
				k := i % len(ops)
				total.Add(1)
				counts[k].Add(1)
				if err := ops[k].run(); err != nil {
					firstErr.CompareAndSwap(nil, fmt.Errorf("%s: %w", ops[k].name, err))
				}
			}
		})
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		t.Fatal(err)
	}
	client.CloseIdleConnections()
	n := int(total.Load()) + len(ops)
	allowed := 0
	for k, op := range ops {
		if op.allowed {
			allowed += int(counts[k].Load()) + 1
		}
	}
	waitTally(t, tally, n)

	// Everything is closed: resources return to the baseline.
	var goroutines, fds int
	var heap uint64
	deadline := time.Now().Add(10 * time.Second)
	for {
		goroutines, fds, heap = runtime.NumGoroutine(), openFDs(t), heapAlloc()
		if goroutines <= goroutines0+5 && fds <= fds0+2 && heap <= heap0+16<<20 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("after the soak: %d goroutines (baseline %d), %d fds (baseline %d), heap %d (baseline %d)\n%s",
				goroutines, goroutines0, fds, fds0, heap, heap0, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(100 * time.Millisecond)
	}
	tally.mu.Lock()
	defer tally.mu.Unlock()
	perOp := make([]string, len(ops))
	for k, op := range ops {
		perOp[k] = fmt.Sprintf("%s %d", op.name, counts[k].Load())
	}
	t.Logf("soak %v: %d connections/requests (%.0f/s): %s", dur, n-len(ops), float64(n-len(ops))/dur.Seconds(), strings.Join(perOp, ", "))
	t.Logf("log: %d decision lines, %d close lines; decisions %v", tally.total, tally.closes, tally.decisions)
	t.Logf("after: goroutines %d (baseline %d), fds %d (baseline %d), heap %.1f MiB (baseline %.1f MiB)",
		goroutines, goroutines0, fds, fds0, float64(heap)/(1<<20), float64(heap0)/(1<<20))
	if tally.bad != "" {
		t.Errorf("a log line is not JSON: %q", tally.bad)
	}
	if tally.total != n {
		t.Errorf("%d decision lines for %d connections and requests", tally.total, n)
	}
	allows := 0
	for k, v := range tally.decisions {
		if strings.Contains(k, " allow ") {
			allows += v
		}
	}
	if allows != allowed || tally.closes != allowed || len(tally.open) != 0 || tally.orphans != 0 {
		t.Errorf("%d allow lines and %d close lines (%d allowed without a close, %d closes without an allow), want %d each",
			allows, tally.closes, len(tally.open), tally.orphans, allowed)
	}
	for _, want := range []string{"connect allow allowed", "connect deny no_rule", "connect deny client_closed", "http allow allowed",
		"http deny no_rule", "transparent allow allowed", "transparent deny no_rule", "transparent deny client_closed"} {
		if tally.decisions[want] == 0 {
			t.Errorf("no %q decision in %v", want, tally.decisions)
		}
	}
}

// waitTally waits until the log has n decision lines and every allowed
// connection's close line.
func waitTally(t *testing.T, l *logTally, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		total, open := l.total, len(l.open)
		l.mu.Unlock()
		if total >= n && open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d decision lines (want %d), %d allowed connections without a close line", total, n, open)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
