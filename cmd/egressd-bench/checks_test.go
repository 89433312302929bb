package main

import (
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// metCell renders rows and returns the "met" cell of the row named name.
func metCell(t *testing.T, rows []*row, name string) string {
	t.Helper()
	b := &bench{opt: options{runs: 1}}
	for _, l := range strings.Split(b.render(rows), "\n") {
		if strings.Contains(l, "| "+name) {
			cells := strings.Split(strings.Trim(l, "| "), " | ")
			return cells[len(cells)-1]
		}
	}
	t.Fatalf("no row %q", name)
	return ""
}

// TestTargetNotMetOnBadValues: a target is not met by a value that
// is no measurement: zero or negative RSS growth or CPU (a /proc read that
// failed, a relay that exited), NaN (0 bytes / 0 CPU) hidden among good
// runs by the median.
func TestTargetNotMetOnBadValues(t *testing.T) {
	for _, tc := range []struct {
		row  int
		via  []float64
		want string
	}{
		{rowRSS, []float64{0}, "NOT MET"},
		{rowRSS, []float64{-1.5}, "NOT MET"},
		{rowCPU1, []float64{-0.2}, "NOT MET"},
		{rowCPU1, []float64{math.NaN(), 0.2, 0.3}, "NOT MET"},
		{rowCPU1, []float64{0.2, 0.25, 0.3}, "met"},
	} {
		rows := newRows("CONNECT", true)
		for _, v := range tc.via {
			add(rows[tc.row], 0, v, 0)
		}
		if got := metCell(t, rows, rows[tc.row].name); got != tc.want {
			t.Errorf("%s with %v: %q, want %q", rows[tc.row].name, tc.via, got, tc.want)
		}
	}
	rows := newRows("CONNECT", true)
	for _, r := range []float64{math.NaN(), 0.6, 0.7} {
		add(rows[rowBulk1], 100, 100*r, r)
	}
	if got := metCell(t, rows, rows[rowBulk1].name); got != "NOT MET" {
		t.Errorf("bulk ratios NaN, 0.6, 0.7: %q, want NOT MET", got)
	}
}

// TestPercentileNearestRank: p50 and p99 are nearest-rank percentiles: of 100
// latencies 1..100 ms, p99 is 99 ms (not the maximum) and p50 50 ms.
func TestPercentileNearestRank(t *testing.T) {
	var acc connTurns
	for i := 100; i >= 1; i-- {
		acc.lat = append(acc.lat, time.Duration(i)*time.Millisecond)
	}
	acc.elapsed = time.Second
	st, err := acc.stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.p99 != 99 || st.p50 != 50 {
		t.Errorf("p50 %v p99 %v, want 50 and 99", st.p50, st.p99)
	}
	acc = connTurns{lat: []time.Duration{7 * time.Millisecond}, elapsed: time.Second}
	if st, _ := acc.stats(); st.p50 != 7 || st.p99 != 7 {
		t.Errorf("one latency: p50 %v p99 %v, want 7 and 7", st.p50, st.p99)
	}
}

// TestConnFailuresNotMet: connections that failed are not in the
// latency percentiles nor the rate; a target over them is not met.
func TestConnFailuresNotMet(t *testing.T) {
	rows := newRows("CONNECT", true)
	add(rows[rowCPS64], 1000, 950, 0.95)
	add(rows[rowP9964], 50, 55, 1.1)
	for _, r := range rows[rowCPS64 : rowCPS64+3] {
		r.failed += 5
	}
	for _, i := range []int{rowCPS64, rowP9964} {
		if got := metCell(t, rows, rows[i].name); got != "NOT MET" {
			t.Errorf("%s with 5 failed connections: %q, want NOT MET", rows[i].name, got)
		}
	}
}

// TestLogLinesPerConnection: the check is per connection (the conn
// field) and per run: a duplicated close line for one connection and a
// missing one for another do not add up to "1 + 1".
func TestLogLinesPerConnection(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	lines := []string{
		`{"level":"info","conn":1,"message":"decision"}`,
		`{"level":"info","conn":1,"message":"close"}`,
		`{"level":"info","conn":1,"message":"close"}`,
		`{"level":"info","conn":2,"message":"decision"}`,
		`{"level":"info","message":"shutdown"}`,
	}
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	lc := logCounts(p)
	if lc.decisions != 2 || lc.closes != 2 || lc.odd != 2 {
		t.Errorf("logCounts = %+v, want 2 decisions, 2 closes, 2 connections not 1 + 1", lc)
	}
	r := &row{}
	var one logTally
	one.add(2, 2, lc)
	logRow(r, one)
	if r.met == nil || *r.met {
		t.Errorf("one connection with two closes and one with none: met (%s)", r.text)
	}
	// Counts summed over runs: run 1 one close short, run 2 one close
	// over (another connection's duplicate) still is not 1 + 1.
	s := &connectSeries{rows: newRows("CONNECT", true)}
	s.add(1, 1, logLines{decisions: 1, closes: 0, odd: 1})
	s.add(1, 1, logLines{decisions: 1, closes: 2, odd: 1})
	rows := s.result()
	if m := rows[rowLog].met; m == nil || *m {
		t.Errorf("runs off by -1 and +1: met (%s)", rows[rowLog].text)
	}
}

// TestBulkTunnelEndingEarlyFails: a tunnel that ends before the measurement does
// (the relay closed or reset it) is an error, not a short read counted as
// throughput.
func TestBulkTunnelEndingEarlyFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if readRecord(c) != nil {
					return
				}
				c.Write(make([]byte, 64<<10)) // then goes away
			}()
		}
	}()
	b := &bench{hello: clientHello(benchHost)}
	mbs, _, err := b.bulkRun(path{bulk: ln.Addr().String()}, 2, 300*time.Millisecond, 0)
	if err == nil {
		t.Errorf("tunnels that ended after 64 KiB: %.1f MB/s and no error", mbs)
	}
}

// TestCleanupWaitsForRunningCleanup: a second cleanup (run's deferred one) returns
// only when the first (the signal handler's) has finished, so that the
// process does not exit with namespaces, children or files left.
func TestCleanupWaitsForRunningCleanup(t *testing.T) {
	b := &bench{}
	release, finished := make(chan struct{}), make(chan struct{})
	b.onCleanup(func() { <-release; close(finished) })
	var started atomic.Bool
	b.onCleanup(func() { started.Store(true) })
	go b.cleanup() // the signal handler's
	for !started.Load() {
		time.Sleep(time.Millisecond)
	}
	returned := make(chan struct{})
	go func() { b.cleanup(); close(returned) }() // run's deferred one
	select {
	case <-returned:
		t.Error("the second cleanup returned while the first still ran")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	<-returned
	select {
	case <-finished:
	default:
		t.Error("cleanup returned before the cleanups finished")
	}
}

// TestBulkTurns: bulk is measured in turns, direct, via, via, direct,
// each for half of d; both rates come from their own upstream, and the
// relay's CPU per GB is a number (here the test's own process stands in
// for it).
func TestBulkTurns(t *testing.T) {
	var mu sync.Mutex
	var order []string // which upstream each tunnel reached, in order
	upstream := func(name string) path {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go (&bulkServer{}).serve(turnListener{ln, func() {
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
		}})
		return path{bulk: ln.Addr().String()}
	}
	direct, via := upstream("direct"), upstream("via")
	b := &bench{hello: clientHello(benchHost)}
	b.clkTck, _ = clockTicks()
	dm, vm, cpu, err := b.bulkTurns(direct, via, 2, 400*time.Millisecond, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if dm <= 0 || vm <= 0 || math.IsNaN(cpu) || cpu < 0 {
		t.Errorf("direct %.1f MB/s, via %.1f MB/s, CPU %.3f s/GB: want two rates and a CPU figure", dm, vm, cpu)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"direct", "direct", "via", "via", "via", "via", "direct", "direct"}
	if !slices.Equal(order, want) {
		t.Errorf("tunnels reached %v, want %v (2 in each of the turns direct, via, via, direct)", order, want)
	}
}

// turnListener calls accepted for each connection it accepts.
type turnListener struct {
	net.Listener
	accepted func()
}

func (l turnListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted()
	}
	return c, err
}
