//go:build unix

package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/egressd/egressd/policy"
)

// Resource-exhaustion tests (issue 7): thousands of half-open connections,
// file-descriptor exhaustion in a child process, a client that opens
// tunnels as fast as it can. The QUIC Initial flood is in
// TestFloodQUICInitials. Everything runs on loopback.

// exhaustConfig is baseConfig with a one-second hello timeout.
var exhaustConfig = strings.Replace(baseConfig, `hello_timeout = "2s"`, `hello_timeout = "1s"`, 1)

// raiseNofile raises RLIMIT_NOFILE's soft limit towards need (at most to
// the hard limit) and returns the soft limit in force.
func raiseNofile(t *testing.T, need uint64) uint64 {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if uint64(rl.Cur) < need {
		setLimit(&rl.Cur, min(need, uint64(rl.Max)))
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			t.Fatal(err)
		}
	}
	return uint64(rl.Cur)
}

// setLimit sets an Rlimit field, which is int64 on the BSDs.
func setLimit[T int64 | uint64](f *T, v uint64) { *f = T(v) }

// waitCount waits until exactly want lines match, and fails if more do.
func (e *env) waitCount(t *testing.T, msg string, match map[string]any, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := e.countLines(t, msg, match)
		if n == want {
			return
		}
		if n > want || time.Now().After(deadline) {
			t.Fatalf("%d %q lines with %v, want %d", n, msg, match, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// countedEcho replaces the env's echo upstream with one that counts the
// connections it accepts (egressd's dials); call before start.
func (e *env) countedEcho(t *testing.T) *atomic.Int32 {
	ln := listen(t)
	e.echoPort = port(ln)
	return serveEcho(ln)
}

// halfOpen is a client connection that never sends its first bytes. A
// goroutine waits, from the moment it is open, for egressd to close it.
type halfOpen struct {
	c      net.Conn
	opened time.Time     // when egressd started waiting for the hello
	held   time.Duration // until egressd closed it
	bad    bool          // not closed within 15 s, or got data
	done   chan struct{}
}

func watchHalfOpen(c net.Conn) *halfOpen {
	h := &halfOpen{c: c, opened: time.Now(), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		var b [1]byte
		n, err := c.Read(b[:])
		h.held = time.Since(h.opened)
		h.bad = n != 0 || errors.Is(err, os.ErrDeadlineExceeded)
	}()
	return h
}

// openHalf opens n connections with open(i) on 16 goroutines and returns
// them.
func openHalf(t *testing.T, n int, open func(i int) (net.Conn, error)) []*halfOpen {
	t.Helper()
	out := make([]*halfOpen, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, err := open(i)
				if err != nil {
					errs <- fmt.Errorf("half-open connection %d: %w", i, err)
					return
				}
				out[i] = watchHalfOpen(c)
			}
		})
	}
	wg.Wait()
	close(errs)
	t.Cleanup(func() {
		for _, h := range out {
			if h != nil {
				h.c.Close()
			}
		}
	})
	for err := range errs {
		t.Fatal(err)
	}
	return out
}

// awaitClosed waits until egressd closes every half-open connection and
// returns the shortest and longest time it held one.
func awaitClosed(t *testing.T, hs []*halfOpen) (minHeld, maxHeld time.Duration) {
	t.Helper()
	bad := 0
	minHeld = time.Hour
	for _, h := range hs {
		<-h.done
		if h.bad {
			bad++
		}
		minHeld, maxHeld = min(minHeld, h.held), max(maxHeld, h.held)
	}
	if bad > 0 {
		t.Fatalf("%d of %d half-open connections were not closed by egressd (or got data)", bad, len(hs))
	}
	return minHeld, maxHeld
}

// probeWhile runs probe every 50 ms until stop closes and returns how
// many probes ran and the slowest.
func probeWhile(t *testing.T, stop <-chan struct{}, probe func() error) (int, time.Duration, error) {
	n, slowest := 0, time.Duration(0)
	for {
		select {
		case <-stop:
			return n, slowest, nil
		case <-time.After(50 * time.Millisecond):
		}
		t0 := time.Now()
		if err := probe(); err != nil {
			return n, slowest, err
		}
		n++
		slowest = max(slowest, time.Since(t0))
	}
}

// echoOnce sends msg on c and wants it back within 5 s, then closes c.
func echoOnce(c net.Conn, r io.Reader, msg string) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(r, got); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	if string(got) != msg {
		return fmt.Errorf("echo: got %q", got)
	}
	return nil
}

// connectEcho makes one CONNECT tunnel to the echo upstream through addr
// from local address from ("" for any) and checks that it carries msg.
func connectEcho(addr, from string, echoPort int, msg string) (int, error) {
	c, br, resp, err := dialConnect(addr, from, "127.0.0.1:"+strconv.Itoa(echoPort))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return resp.StatusCode, nil
	}
	return resp.StatusCode, echoOnce(c, br, msg)
}

// transparentEcho sends msg through the transparent listener at addr (whose
// original destination is the echo upstream) and wants it back.
func transparentEcho(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	return echoOnce(c, c, msg)
}

// TestExhaustHalfOpenConnect: 2,000 CONNECT tunnels that get their 200
// and never send a hello are each closed at hello_timeout (1 s) with a
// hello_timeout decision and nothing dialed, while a normal client keeps
// getting tunnels promptly.
func TestExhaustHalfOpenConnect(t *testing.T) {
	testHalfOpen(t, "connect")
}

// TestExhaustHalfOpenTransparent: the same for 2,000 redirected
// connections that send nothing.
func TestExhaustHalfOpenTransparent(t *testing.T) {
	testHalfOpen(t, "transparent")
}

func testHalfOpen(t *testing.T, mode string) {
	const want = 2000
	limit := raiseNofile(t, 2*want+1024)
	n := min(want, int(limit-512)/2) // each connection is two descriptors here
	if n < want {
		t.Logf("RLIMIT_NOFILE %d: %d half-open connections instead of %d", limit, n, want)
	}
	e := newEnv(t)
	dials := e.countedEcho(t)
	e.start(t, exhaustConfig)
	echoDst := netip.MustParseAddrPort("127.0.0.1:" + strconv.Itoa(e.echoPort))
	// The half-open connections come from four client addresses
	// (127.0.0.10-13), each below the default max_connections_per_client
	// (1024); the normal client is 127.0.0.1.
	dialFrom := func(i int, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(10+i%4))}}
		return d.Dial("tcp", addr)
	}
	var open func(int) (net.Conn, error)
	var probe func() error
	switch mode {
	case "connect":
		authority := echoDst.String()
		open = func(i int) (net.Conn, error) {
			c, err := dialFrom(i, e.proxyAddr)
			if err != nil {
				return nil, err
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", authority, authority)
			// Read exactly the 200's header block byte by byte: nothing of
			// the tunnel may be buffered away.
			var hdr []byte
			var b [1]byte
			for !strings.HasSuffix(string(hdr), "\r\n\r\n") {
				if _, err := c.Read(b[:]); err != nil {
					c.Close()
					return nil, err
				}
				hdr = append(hdr, b[0])
			}
			if !strings.HasPrefix(string(hdr), "HTTP/1.1 200") {
				c.Close()
				return nil, fmt.Errorf("CONNECT: %q", hdr)
			}
			return c, nil
		}
		probe = func() error {
			code, err := connectEcho(e.proxyAddr, "", e.echoPort, "ping")
			if err == nil && code != http.StatusOK {
				err = fmt.Errorf("CONNECT: %d", code)
			}
			return err
		}
	case "transparent":
		addr := e.fixedTransparent(t, echoDst)
		open = func(i int) (net.Conn, error) { return dialFrom(i, addr) }
		probe = func() error { return transparentEcho(addr, "ping") }
	}

	stop := make(chan struct{})
	type result struct {
		n       int
		slowest time.Duration
		err     error
	}
	probed := make(chan result, 1)
	go func() {
		n, slowest, err := probeWhile(t, stop, probe)
		probed <- result{n, slowest, err}
	}()
	t0 := time.Now()
	hs := openHalf(t, n, open)
	opened := time.Since(t0)
	minHeld, maxHeld := awaitClosed(t, hs)
	close(stop)
	r := <-probed
	t.Logf("%s: %d half-open connections opened in %v; egressd held each %v to %v (hello_timeout 1s); meanwhile %d probe tunnels, slowest %v",
		mode, n, opened.Round(time.Millisecond), minHeld.Round(time.Millisecond), maxHeld.Round(time.Millisecond), r.n, r.slowest.Round(time.Millisecond))
	if r.err != nil {
		t.Fatalf("a normal client was not served during the flood (after %d tunnels): %v", r.n, r.err)
	}
	if r.n == 0 {
		t.Error("no probe tunnel ran during the flood")
	}
	if r.slowest > time.Second {
		t.Errorf("slowest normal tunnel during the flood took %v, want < 1s", r.slowest)
	}
	// Connections are closed at hello_timeout, not much after. egressd's
	// timer starts a little before the client sees the 200 (or its dial
	// returns), so the client measures a little less; the lower bound only
	// rules out closing early.
	if minHeld < 500*time.Millisecond || maxHeld > 4*time.Second {
		t.Errorf("half-open connections held %v to %v, want about hello_timeout (1s)", minHeld, maxHeld)
	}
	e.waitCount(t, "decision", map[string]any{"mode": mode, "decision": "deny", "reason": "hello_timeout"}, n)
	for _, l := range e.log.lines(t) {
		if l["reason"] == "hello_timeout" && l["dst"] != nil {
			t.Fatalf("a timed-out connection was dialed: %v", l)
		}
	}
	if got := int(dials.Load()); got != r.n {
		t.Errorf("the upstream accepted %d connections, want only the %d probes'", got, r.n)
	}
}

// TestExhaustPerClientFlood: one client (127.0.0.2) opens tunnels as fast
// as it can with max_connections_per_client = 20 and holds them: exactly 20
// are established, the rest get 503 with connection_limit at once, and
// another client (127.0.0.3) keeps getting tunnels meanwhile.
func TestExhaustPerClientFlood(t *testing.T) {
	const perClient, attempts = 20, 400
	e := newEnv(t)
	e.start(t, limitConfig("max_connections_per_client = 20"))
	authority := "127.0.0.1:" + strconv.Itoa(e.echoPort)
	var ok, refused atomic.Int32
	var mu sync.Mutex
	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	var next atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	t0 := time.Now()
	for range 8 {
		wg.Go(func() {
			for next.Add(1) <= attempts {
				c, br, resp, err := dialConnect(e.proxyAddr, "127.0.0.2", authority)
				if err != nil {
					errs <- err
					return
				}
				switch resp.StatusCode {
				case http.StatusOK:
					if _, err := c.Write([]byte("x")); err != nil {
						errs <- err
						return
					}
					if b, err := br.ReadByte(); err != nil || b != 'x' {
						errs <- fmt.Errorf("held tunnel: %q %v", b, err)
						return
					}
					ok.Add(1)
					mu.Lock()
					held = append(held, c)
					mu.Unlock()
				case http.StatusServiceUnavailable:
					body, _ := io.ReadAll(resp.Body)
					c.Close()
					if !strings.Contains(string(body), "connection_limit") {
						errs <- fmt.Errorf("503 body %q", body)
						return
					}
					refused.Add(1)
				default:
					c.Close()
					errs <- fmt.Errorf("CONNECT: %s", resp.Status)
					return
				}
			}
		})
	}
	// The other client, meanwhile.
	var other int
	var slowest time.Duration
	for other < 20 {
		t1 := time.Now()
		code, err := connectEcho(e.proxyAddr, "127.0.0.3", e.echoPort, "other")
		if err != nil || code != http.StatusOK {
			t.Fatalf("client 127.0.0.3 during the flood: %d %v", code, err)
		}
		slowest = max(slowest, time.Since(t1))
		other++
	}
	wg.Wait()
	flood := time.Since(t0)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("127.0.0.2: %d CONNECTs in %v: %d established, %d refused 503; 127.0.0.3: %d tunnels, slowest %v",
		attempts, flood.Round(time.Millisecond), ok.Load(), refused.Load(), other, slowest.Round(time.Millisecond))
	if ok.Load() != perClient || refused.Load() != attempts-perClient {
		t.Errorf("%d established and %d refused, want %d and %d", ok.Load(), refused.Load(), perClient, attempts-perClient)
	}
	if slowest > time.Second {
		t.Errorf("the other client's slowest tunnel took %v", slowest)
	}
	e.waitCount(t, "decision", map[string]any{"mode": "proxy", "reason": "connection_limit"}, attempts-perClient)
	for _, l := range e.log.lines(t) {
		if l["reason"] == "connection_limit" && !strings.HasPrefix(fmt.Sprint(l["client"]), "127.0.0.2:") {
			t.Fatalf("a connection of another client was refused: %v", l)
		}
	}
	// The held tunnels still work, and closing them frees the slots.
	mu.Lock()
	for i, c := range held {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		if _, err := c.Write([]byte("y")); err != nil {
			t.Errorf("held tunnel %d after the flood: %v", i, err)
		} else if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'y' {
			t.Errorf("held tunnel %d after the flood: echoed %q, %v", i, b[:], err)
		}
		c.Close()
	}
	held = nil
	mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, err := connectEcho(e.proxyAddr, "127.0.0.2", e.echoPort, "again")
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after closing its tunnels, 127.0.0.2 still gets %d %v", code, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fdChildEnv carries the echo upstream's address to the child of
// TestExhaustFileDescriptors.
const fdChildEnv = "EGRESSD_FD_CHILD"

// fdChildLimit is the child's RLIMIT_NOFILE.
const fdChildLimit = 64

// countingListener counts Accept calls and EMFILE failures.
type countingListener struct {
	net.Listener
	calls, emfile atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	l.calls.Add(1)
	c, err := l.Listener.Accept()
	if errors.Is(err, syscall.EMFILE) {
		l.emfile.Add(1)
	}
	return c, err
}

// TestExhaustFDChild is the child process of TestExhaustFileDescriptors: an
// egressd server (CONNECT and transparent listeners) with RLIMIT_NOFILE at
// 64. It prints its addresses, answers "stats" lines on stdin with its
// accept counters, and stops at the end of stdin.
func TestExhaustFDChild(t *testing.T) {
	echo := os.Getenv(fdChildEnv)
	if echo == "" {
		t.Skip("child process of TestExhaustFileDescriptors")
	}
	rl := syscall.Rlimit{Cur: fdChildLimit, Max: fdChildLimit}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	dst := netip.MustParseAddrPort(echo)
	src := fmt.Sprintf(`
server {
  allow_private_destinations = true
  hello_timeout = "30s"
}
resolver { servers = ["127.0.0.1:1"] }
policy "fd" {
  allow "echo" {
    cidrs       = ["127.0.0.1/32"]
    ports       = [%d]
    require_tls = false
  }
}
`, dst.Port())
	cfg, diags := policy.Parse([]policy.File{{Name: "fd.hcl", Src: []byte(src)}})
	if diags.HasErrors() {
		t.Fatal(policy.FormatDiagnostics(diags))
	}
	srv, err := New(cfg, zerolog.New(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	srv.origDst = func(_, _ netip.AddrPort) (netip.AddrPort, error) { return dst, nil }
	cl, tl := &countingListener{Listener: listen(t)}, &countingListener{Listener: listen(t)}
	fl := listen(t) // a *net.TCPListener: served by the front loop
	dl := &countingListener{Listener: listen(t)}
	go srv.Serve(cl)
	go srv.ServeTransparent(tl)
	go srv.ServeTransparent(fl)
	go srv.ServeDNS(nil, dl)
	if runtime.GOOS == "linux" {
		// The front loop must run before the parent fills the table: one
		// whose goroutine starts after cannot make its epoll set, and fl
		// goes to the goroutine path, whose failures are not counted.
		before := frontAccepted.Load()
		c, err := net.Dial("tcp", fl.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); frontAccepted.Load() == before; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the front loop accepted nothing within 10s")
			}
		}
		c.Close()
	}
	fmt.Printf("ADDRS %s %s %s %s\n", cl.Addr(), tl.Addr(), fl.Addr(), dl.Addr())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		fmt.Printf("STATS %d %d %d %d %d %d %d\n", cl.calls.Load(), cl.emfile.Load(), tl.calls.Load(), tl.emfile.Load(), frontAcceptFails.Load(),
			dl.calls.Load(), dl.emfile.Load())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}

// cpuTicks is a process's utime+stime in clock ticks (/proc/PID/stat).
func cpuTicks(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name may hold spaces: the fields start after its ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return utime + stime
}

// TestExhaustFileDescriptors runs an egressd server in a child process
// whose RLIMIT_NOFILE is 64, opens connections to its CONNECT and
// transparent listeners until both accept loops fail with EMFILE, and
// checks that while saturated the child does not busy-loop (its CPU time
// and Accept calls over 2 s stay low: both loops back off, up to 1 s) and
// that it serves again once the connections close.
func TestExhaustFileDescriptors(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		unavailable(t, "no /proc: %v", err)
	}
	echoLn := listen(t)
	dials := serveEcho(echoLn)
	cmd := exec.Command(os.Args[0], "-test.run=^TestExhaustFDChild$", "-test.count=1", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), fdChildEnv+"="+echoLn.Addr().String())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := bufio.NewScanner(stdout)
	next := func(prefix string) []string {
		for lines.Scan() {
			if f := strings.Fields(lines.Text()); len(f) > 0 && f[0] == prefix {
				return f[1:]
			}
		}
		t.Fatalf("child: no %s line (%v)", prefix, lines.Err())
		return nil
	}
	addrs := next("ADDRS")
	connectAddr, transparentAddr, frontAddr, dnsAddr := addrs[0], addrs[1], addrs[2], addrs[3]
	frontLoop := runtime.GOOS == "linux" // elsewhere the goroutine path serves frontAddr
	// CONNECT's and the goroutine path's Accept calls and EMFILE failures,
	// the front loop's failed accepts, and the DNS server's (TCP) Accept
	// calls and EMFILE failures.
	stats := func() (cc, ce, tc, te, fe, dc, de int64) {
		fmt.Fprintln(stdin, "stats")
		f := next("STATS")
		v := make([]int64, 7)
		for i := range v {
			v[i], _ = strconv.ParseInt(f[i], 10, 64)
		}
		return v[0], v[1], v[2], v[3], v[4], v[5], v[6]
	}

	// Fill the child's descriptor table: CONNECT tunnels that wait for a
	// hello (hello_timeout is 30 s in the child) and transparent
	// connections that send nothing. Those egressd cannot accept wait in
	// the listen backlog.
	authority := echoLn.Addr().String()
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := range 2 * fdChildLimit {
		for _, addr := range []string{connectAddr, transparentAddr, frontAddr, dnsAddr} {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatalf("connection %d to %s: %v", i, addr, err)
			}
			if addr == connectAddr {
				fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", authority, authority)
			}
			conns = append(conns, c)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, ce, _, te, fe, _, de := stats()
		if ce > 0 && te > 0 && (fe > 0 || !frontLoop) && de > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child's accepts did not fail with EMFILE (%d, %d, %d EMFILE failures, %d failed front-loop accepts)", ce, te, de, fe)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Saturated: measure 2 s.
	time.Sleep(1500 * time.Millisecond) // past the first backoff steps
	pid := cmd.Process.Pid
	cc0, ce0, tc0, te0, fe0, dc0, de0 := stats()
	cpu0 := cpuTicks(t, pid)
	time.Sleep(2 * time.Second)
	cpu1 := cpuTicks(t, pid)
	cc1, ce1, tc1, te1, fe1, dc1, de1 := stats()
	t.Logf("saturated for 2s: child CPU %d ticks (1/100 s); Accept calls: CONNECT %d (%d EMFILE), transparent %d (%d EMFILE), DNS %d (%d EMFILE); front loop: %d failed accepts",
		cpu1-cpu0, cc1-cc0, ce1-ce0, tc1-tc0, te1-te0, dc1-dc0, de1-de0, fe1-fe0)
	if ce1 == ce0 || te1 == te0 || fe1 == fe0 && frontLoop {
		t.Errorf("no EMFILE failures during the measurement: the child was not saturated")
	}
	// A busy loop would be 200 ticks (a whole CPU); backing off at up to
	// 1 s costs next to nothing.
	if d := cpu1 - cpu0; d > 40 {
		t.Errorf("the child used %d ticks of CPU in 2 s while out of descriptors, want <= 40", d)
	}
	if d := max(cc1-cc0, tc1-tc0, fe1-fe0); d > 20 {
		t.Errorf("%d Accept calls in 2 s while out of descriptors, want <= 20 (backoff)", d)
	}
	// The DNS server closes its idle TCP connections after 5 s, and the
	// descriptors that frees are taken again, so its accepts succeed now
	// and then and its backoff starts over; a spin is 100,000s.
	if d := dc1 - dc0; d > 60 {
		t.Errorf("%d DNS Accept calls in 2 s while out of descriptors, want <= 60 (backoff)", d)
	}

	// Release everything: service resumes.
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	t0 := time.Now()
	deadline = time.Now().Add(10 * time.Second)
	// resumed retries serve until it succeeds and returns how long after
	// the release that was.
	resumed := func(what string, serve func() error) time.Duration {
		for {
			err := serve()
			if err == nil {
				return time.Since(t0)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s after the connections closed: %v", what, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	connectBack := resumed("CONNECT", func() error {
		code, err := connectEcho(connectAddr, "", echoLn.Addr().(*net.TCPAddr).Port, "back")
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("status %d", code)
		}
		return err
	})
	transparentBack := resumed("transparent", func() error { return transparentEcho(transparentAddr, "back") })
	frontBack := resumed("transparent (front loop)", func() error { return transparentEcho(frontAddr, "back") })
	dnsBack := resumed("DNS over TCP", func() error {
		m := new(dns.Msg)
		m.SetQuestion("not-allowed.example.", dns.TypeA)
		in, _, err := (&dns.Client{Net: "tcp", Timeout: time.Second}).Exchange(m, dnsAddr)
		if err == nil && in.Rcode != dns.RcodeRefused {
			err = fmt.Errorf("answer %s, want REFUSED", dns.RcodeToString[in.Rcode])
		}
		return err
	})
	t.Logf("service resumed: CONNECT after %v, transparent after %v, front loop after %v, DNS after %v; upstream dials %d",
		connectBack.Round(time.Millisecond), transparentBack.Round(time.Millisecond), frontBack.Round(time.Millisecond), dnsBack.Round(time.Millisecond), dials.Load())
	if dials.Load() != 3 {
		t.Errorf("the upstream accepted %d connections, want the 3 after the release", dials.Load())
	}
	stdin.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("child: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("the child did not exit")
	}
}

// heapAlloc is the live heap after a full collection.
func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// randomClient is a client address and port no flow has yet (almost
// surely): 127.x.y.z, as a spoofing flood would send from.
func randomClient() netip.AddrPort {
	var b [6]byte
	rand.Read(b[:])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, b[0], b[1], b[2] | 1}), 1024+uint16(b[3])<<8|uint16(b[4]))
}

// fakeInitial fills b with what looks like a QUIC v1 Initial packet (long
// header, version 1, a random DCID and SCID, no token, a length covering
// the rest) with a random payload: it fails decryption.
func fakeInitial(b []byte) {
	rand.Read(b)
	b[0] = 0xc0 | b[0]&0x0f
	binary.BigEndian.PutUint32(b[1:5], 1)
	dcid := 8 + int(b[5])%13
	b[5] = byte(dcid)
	i := 6 + dcid
	scid := int(b[i]) % 21
	b[i] = byte(scid)
	i += 1 + scid
	b[i] = 0 // token length
	i++
	binary.BigEndian.PutUint16(b[i:], 0x4000|uint16(len(b)-i-2))
}

// quicFloodTLS is the legitimate client's configuration: a hello of two
// Initials.
func quicFloodTLS(e *env) *tls.Config {
	return &tls.Config{ServerName: "quic.cftunnel.com", RootCAs: e.ca.pool, NextProtos: longALPN()}
}

// TestFloodQUICInitials: 12,288 Initials that fail decryption, from random
// client addresses and ports (each a new flow, denied hello_malformed and
// held), do not grow the flow table past maxQUICFlows nor the heap past a
// few megabytes, reach no destination, and a legitimate QUIC client is
// served at once after the flood: a full table makes room by evicting a
// held flow.
func TestFloodQUICInitials(t *testing.T) {
	e := newEnv(t)
	up, accepted := quicUpstream(t, e)
	q := e.startQUIC(t, quicTestPolicy, up.Port())
	g := q.g.Load()
	sink, sunk := udpSink(t)
	const flood = 3 * maxQUICFlows
	heap0 := heapAlloc()
	maxFlows := 0
	buf := make([]byte, 1200)
	t0 := time.Now()
	for i := range flood {
		fakeInitial(buf)
		dst := up
		if i%2 == 1 {
			dst = sink
		}
		g.handle(randomClient(), dst, true, buf)
		if i%256 == 0 {
			maxFlows = max(maxFlows, q.flows())
		}
	}
	took := time.Since(t0)
	maxFlows = max(maxFlows, q.flows())
	heap1 := heapAlloc()
	g.mu.Lock()
	evicted, dropped := g.evicted, g.dropped
	g.mu.Unlock()
	t1 := time.Now()
	c, err := q.dial(t, up, quicFloodTLS(e))
	if err != nil {
		t.Fatalf("a legitimate client after the flood: %v", err)
	}
	if err := quicEcho(c, []byte("after the flood")); err != nil {
		t.Fatal(err)
	}
	served := time.Since(t1)
	growth := int64(heap1) - int64(heap0)
	t.Logf("%d fake Initials in %v: flow table at most %d (limit %d), %d held flows evicted, %d datagrams dropped; heap %+.1f MiB; legitimate client served in %v",
		flood, took.Round(time.Millisecond), maxFlows, maxQUICFlows, evicted, dropped, float64(growth)/(1<<20), served.Round(time.Millisecond))
	if maxFlows > maxQUICFlows {
		t.Errorf("the flow table reached %d flows, limit %d", maxFlows, maxQUICFlows)
	}
	if evicted == 0 {
		t.Errorf("no held flow was evicted by %d new flows against a table of %d", flood, maxQUICFlows)
	}
	if growth > 48<<20 {
		t.Errorf("the heap grew by %d bytes during the flood, want < 48 MiB", growth)
	}
	if served > 3*time.Second {
		t.Errorf("the legitimate client took %v", served)
	}
	e.waitLog(t, "decision", map[string]any{"mode": "quic", "decision": "allow", "rule": "tunnel-quic", "dst": up.String()})
	if n := accepted.Load(); n != 1 {
		t.Errorf("the upstream accepted %d connections, want the legitimate one", n)
	}
	if n := sunk.Load(); n != 0 {
		t.Errorf("%d flood datagrams reached a destination", n)
	}
	// Every flood datagram was decided (denied) and logged, none allowed.
	reasons := map[string]int{}
	for _, l := range e.log.lines(t) {
		if l["message"] == "decision" && l["decision"] == "deny" {
			reasons[fmt.Sprint(l["reason"])]++
		}
	}
	t.Logf("flood decisions: %v", reasons)
	if reasons["hello_malformed"]+reasons["no_rule"] != flood-int(dropped) {
		t.Errorf("deny lines %v, want one per flood datagram not dropped (%d)", reasons, flood-int(dropped))
	}
}

// TestFloodQUICPendingInitials: a flood replaying the first Initial of a
// two-packet hello from random client ports leaves every flow pending
// until hello_timeout. It fills the table (bounded: maxQUICFlows, each
// holding one reassembly buffer) and new flows, a legitimate client's too,
// are dropped until those flows time out; then they are denied and held,
// which makes them evictable, and the legitimate client gets through. A
// user should expect a new QUIC flow to wait up to hello_timeout (plus the
// 0.5 s sweep) after such a flood stops; flows already relaying are not
// affected.
func TestFloodQUICPendingInitials(t *testing.T) {
	e := newEnv(t)
	up, accepted := quicUpstream(t, e)
	const helloTimeout = 2 * time.Second
	q := e.startQUIC(t, strings.Replace(quicTestPolicy, `hello_timeout = "1s"`, `hello_timeout = "2s"`, 1), up.Port())
	g := q.g.Load()
	// A tunnel established before the flood keeps working through it.
	before, err := q.dial(t, up, quicFloodTLS(e))
	if err != nil {
		t.Fatal(err)
	}
	first := firstInitial(t, quicFloodTLS(e))
	heap0 := heapAlloc()
	const flood = maxQUICFlows + 2000
	t0 := time.Now()
	maxFlows := 0
	for i := range flood {
		g.handle(randomClient(), up, true, first)
		if i%256 == 0 {
			maxFlows = max(maxFlows, q.flows())
		}
	}
	took := time.Since(t0)
	maxFlows = max(maxFlows, q.flows())
	heap1 := heapAlloc()
	if err := quicEcho(before, []byte("during the flood")); err != nil {
		t.Errorf("a tunnel established before the flood: %v", err)
	}
	var served time.Duration
	attempts := 0
	for {
		attempts++
		c, err := q.dial(t, up, quicFloodTLS(e))
		if err == nil {
			if err = quicEcho(c, []byte("after the flood")); err == nil {
				served = time.Since(t0)
				break
			}
		}
		// Bounded in time and count: each attempt keeps its socket until
		// the test ends.
		if time.Since(t0) > took+helloTimeout+6*time.Second || attempts == 100 {
			t.Fatalf("no legitimate QUIC connection %v after the flood began (%d dials): %v", time.Since(t0), attempts, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	growth := int64(heap1) - int64(heap0)
	t.Logf("%d pending Initials in %v: flow table at most %d (limit %d); heap %+.1f MiB (%.1f KiB per flow); legitimate client served %v after the flood began (%d dials)",
		flood, took.Round(time.Millisecond), maxFlows, maxQUICFlows, float64(growth)/(1<<20), float64(growth)/1024/float64(maxQUICFlows), served.Round(time.Millisecond), attempts)
	if maxFlows > maxQUICFlows {
		t.Errorf("the flow table reached %d flows, limit %d", maxFlows, maxQUICFlows)
	}
	if maxFlows < maxQUICFlows {
		t.Errorf("the flood filled the flow table only to %d of %d: the test proves nothing", maxFlows, maxQUICFlows)
	}
	// Nothing is evictable until the first flood flows time out, so the
	// legitimate client cannot be served before hello_timeout.
	if served < helloTimeout {
		t.Errorf("the legitimate client was served %v after the flood began, before the flood's flows could time out (%v)", served, helloTimeout)
	}
	if growth > 160<<20 {
		t.Errorf("the heap grew by %d bytes, want < 160 MiB (a reassembly buffer per pending flow)", growth)
	}
	if served > took+helloTimeout+4*time.Second {
		t.Errorf("the legitimate client was served %v after the flood began, want within hello_timeout and the sweep of its end", served)
	}
	if n := accepted.Load(); n != 2 {
		t.Errorf("the upstream accepted %d connections, want the 2 legitimate ones", n)
	}
}
