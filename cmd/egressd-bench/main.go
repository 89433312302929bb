// Command egressd-bench measures egressd beside a direct connection to the
// same upstream, in the same run: bulk throughput, CPU per GB relayed, new
// TLS connections per second with their latency, resident memory per idle
// tunnel and decision-log lines per connection. It talks only to loopback
// and to network namespaces it creates (and deletes) itself.
//
// Run it from the module root:
//
//	go run ./cmd/egressd-bench [flags]
package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/miekg/dns"
)

const benchHost = "bench.egress.test"

const usageText = `egressd-bench: measure egressd beside a direct connection to the same upstream.

Usage (from the module root, where ./cmd/egressd and deploy/ are):
  go run ./cmd/egressd-bench [flags]

It starts its own upstreams on loopback (a bulk server that reads a real TLS
ClientHello record and then streams raw bytes, a TLS server answering
"ping" with "pong", an idle server, and a DNS server answering
bench.egress.test with 127.0.0.1), runs egressd as a child process with a
generated configuration (1,000 policy rules, JSON decision log to a file),
and measures each figure directly and through egressd (CONNECT by name,
then the ClientHello, then raw bytes):

  bulk        download MB/s through 1 tunnel and 8 tunnels in parallel
  CPU         egressd's utime+stime (/proc/PID/stat) per GB relayed in bulk
  conn/s      full TLS handshake + ping/pong per connection, at concurrency
              16 and 64, with p50 and p99 latency
  RSS         (VmRSS after - before) / N for N idle established tunnels
  log lines   "decision" and "close" lines per tunnel in egressd's log
  reference   bulk through 8 tunnels and conn/s at concurrency 64 through a
              reference relay: this program as a child process doing the
              least a CONNECT proxy can (read the request head, answer 200,
              dial, io.Copy both ways; no policy, hello parsing or log), to
              show what any relay costs on this machine
  peers       with --peers, bulk, CPU, conn/s at concurrency 64 and RSS
              through the relays users would run instead, from this
              machine's packages: HAProxy (req.ssl_sni) and nginx
              (ssl_preread) routing on SNI, Squid and tinyproxy as CONNECT
              proxies, each with a generated configuration that logs every
              connection; a second table puts them beside egressd and says
              on which figures egressd is ahead of all of them

Each figure is the median of --runs runs (min-max in brackets), printed as a
markdown table with the issue's targets and a met / NOT MET column. With
--transparent (default when root) it also builds client, gateway and
upstream network namespaces (10.78.0.0/16), installs the REDIRECT rules of
deploy/gateway/egressd-gateway.sh in the gateway, runs egressd there with
transparent_listen, and repeats bulk and conn/s: direct = to upstream ports
the rules do not redirect (routed through the gateway), via egressd = to
the redirected ports. Namespaces, children and temp files are removed on
exit, on error and on SIGINT/SIGTERM.

Flags:
`

type options struct {
	runs        int
	duration    time.Duration
	tunnels     int
	transparent bool
	egressd     string
	egressdEnv  []string // KEY=VALUE added to egressd's environment (--egressd-env)
	quick       bool
	out         string
	verbose     bool
	only        map[string]bool // figures to measure; empty: all
	peers       []peerSpec      // other relays to measure beside egressd
}

// figures are the names --only accepts.
var figures = []string{"bulk", "conn", "rss"}

// measures reports whether the figure named f is to be measured.
func (o options) measures(f string) bool { return len(o.only) == 0 || o.only[f] }

func main() {
	if addr := os.Getenv(referenceEnv); addr != "" {
		os.Exit(referenceRelay(addr))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run parses args, runs the benchmark and prints the table to stdout.
func run(args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("egressd-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.runs, "runs", 3, "runs per figure; the table shows the median and min-max")
	fs.DurationVar(&o.duration, "duration", 2*time.Second, "duration of each bulk and conn/s measurement")
	fs.IntVar(&o.tunnels, "tunnels", 2000, "idle tunnels opened for the RSS-per-tunnel figure")
	fs.BoolVar(&o.transparent, "transparent", os.Geteuid() == 0, "also measure the transparent gateway in network namespaces (needs root, ip, nft or iptables)")
	fs.StringVar(&o.egressd, "egressd", "", "egressd binary to measure; empty: go build ./cmd/egressd into a temp dir (run from the module root)")
	fs.Func("egressd-env", "`KEY=VALUE` added to egressd's environment, repeatable (e.g. GOMAXPROCS=1, to measure a runtime setting); the table's footer lists them", func(kv string) error {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("want KEY=VALUE, got %q", kv)
		}
		o.egressdEnv = append(o.egressdEnv, kv)
		return nil
	})
	fs.BoolVar(&o.quick, "quick", false, "CI mode: 1 run, 300ms measurements, 200 tunnels (explicit flags still win)")
	fs.StringVar(&o.out, "o", "", "also write the markdown table to this file")
	fs.BoolVar(&o.verbose, "v", false, "print progress to stderr")
	peers := fs.String("peers", "", "also measure these relays beside egressd, comma-separated: "+peerNames()+", or all (those installed)")
	only := fs.String("only", "", "measure only these figures, comma-separated: bulk, conn, rss (for profiling one at a time); empty: all")
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if o.quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["runs"] {
			o.runs = 1
		}
		if !set["duration"] {
			o.duration = 300 * time.Millisecond
		}
		if !set["tunnels"] {
			o.tunnels = 200
		}
	}
	for _, f := range strings.FieldsFunc(*only, func(r rune) bool { return r == ',' || r == ' ' }) {
		if !slices.Contains(figures, f) {
			fmt.Fprintf(stderr, "egressd-bench: --only %q: unknown figure %q; want some of %s\n", *only, f, strings.Join(figures, ", "))
			return 2
		}
		if o.only == nil {
			o.only = map[string]bool{}
		}
		o.only[f] = true
	}
	peerList, missing, err := parsePeers(*peers)
	if err != nil {
		fmt.Fprintf(stderr, "egressd-bench: --peers %q: %v\n", *peers, err)
		return 2
	}
	o.peers = peerList
	for _, m := range missing {
		fmt.Fprintf(stderr, "egressd-bench: --peers all: not measured: %s\n", m)
	}
	if o.runs < 1 || o.duration <= 0 || o.tunnels < 1 || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "egressd-bench: --runs, --duration and --tunnels must be positive; no arguments")
		return 2
	}
	b := &bench{opt: o, stderr: stderr}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	// In this order at the end: the handler below stops, the cleanup runs
	// with SIGINT and SIGTERM still caught (and now ignored, so that a
	// second Ctrl-C does not cut it short), then they are released.
	defer signal.Stop(sigs)
	defer b.cleanup()
	done := make(chan struct{})
	defer close(done)
	var interrupted atomic.Bool
	go func() {
		select {
		case s := <-sigs:
			interrupted.Store(true)
			fmt.Fprintf(stderr, "egressd-bench: %v: cleaning up\n", s)
			b.cleanup()
			os.Exit(130)
		case <-done:
		}
	}()
	table, err := b.run()
	if interrupted.Load() {
		// The handler's cleanup runs: the deferred one waits for it, and
		// a table of a run cut short is not printed.
		return 130
	}
	if err != nil {
		fmt.Fprintf(stderr, "egressd-bench: %v\n", err)
		return 1
	}
	fmt.Fprint(stdout, table)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(table), 0o644); err != nil {
			fmt.Fprintf(stderr, "egressd-bench: %v\n", err)
			return 1
		}
	}
	return 0
}

type bench struct {
	opt    options
	stderr io.Writer

	mu       sync.Mutex
	cleanups []func()
	stopped  bool // cleanup ran: a later onCleanup runs its function at once
	// cleaning is held while cleanup runs, so that a second caller (run's
	// deferred cleanup while the signal handler's runs) waits for the
	// first instead of returning, and the process exiting, halfway.
	cleaning sync.Mutex

	dir       string
	bin       string
	hello     []byte
	cert      tls.Certificate
	pool      *x509.CertPool
	dnsAddr   string
	bulk      *bulkServer
	tlsUp     *tlsServer
	idle      *idleServer
	loopPorts [3]int // bulk, TLS, idle
	clkTck    float64
	tickNote  string
	notes     []string

	// Connections made through egressd in the current mode, for the
	// log-lines figure: dialed (TCP connections to egressd) and tunnels
	// (CONNECT answered 200, or transparent connections that sent a hello).
	dialed, tunnels atomic.Int64
}

// onCleanup registers f for cleanup; after cleanup began (a signal
// arrived while the run goes on), f runs at once instead.
func (b *bench) onCleanup(f func()) {
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		f()
		return
	}
	b.cleanups = append(b.cleanups, f)
	b.mu.Unlock()
}

// cleanup runs the cleanups in reverse order, once; a call while another
// runs returns when that one has finished.
func (b *bench) cleanup() {
	b.cleaning.Lock()
	defer b.cleaning.Unlock()
	b.mu.Lock()
	cs := b.cleanups
	b.cleanups, b.stopped = nil, true
	b.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
}

func (b *bench) logf(format string, args ...any) {
	if b.opt.verbose {
		fmt.Fprintf(b.stderr, "egressd-bench: "+format+"\n", args...)
	}
}

func (b *bench) run() (string, error) {
	raiseNofile()
	b.clkTck, b.tickNote = clockTicks()
	dir, err := os.MkdirTemp("", "egressd-bench-")
	if err != nil {
		return "", err
	}
	b.dir = dir
	b.onCleanup(func() { os.RemoveAll(dir) })
	if b.bin = b.opt.egressd; b.bin == "" {
		root, err := moduleRoot()
		if err != nil {
			return "", err
		}
		b.bin = filepath.Join(dir, "egressd")
		b.logf("building ./cmd/egressd")
		cmd := exec.Command("go", "build", "-o", b.bin, "./cmd/egressd")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build ./cmd/egressd: %v\n%s", err, out)
		}
	}
	if b.bin, err = filepath.Abs(b.bin); err != nil {
		return "", err
	}
	b.hello = clientHello(benchHost)
	if b.cert, b.pool, err = newCert(); err != nil {
		return "", err
	}
	if err := b.startLoopbackUpstreams(); err != nil {
		return "", err
	}

	// egressd's CONNECT runs and the peers' runs take turns, so that a
	// machine whose speed drifts over minutes (a shared or virtual host)
	// weighs on all of them alike, not on whichever is measured last.
	connect := &connectSeries{rows: newRows("CONNECT", true)}
	peers := b.newPeerResults()
	for r := range b.opt.runs {
		if connect.err = b.connectRun(connect, r); connect.err != nil {
			break // the peers are compared with egressd: without it, not at all
		}
		for _, pr := range peers {
			if pr.err == nil {
				b.logf("%s run %d/%d", pr.spec.name, r+1, b.opt.runs)
				pr.err = b.peerRun(pr, r)
			}
		}
	}
	connectRows := connect.result()
	rows := append(slices.Clip(connectRows), b.transparentRuns()...)
	return b.render(rows) + b.renderPeers(connectRows, peers), nil
}

// ---- upstreams ----

type bulkServer struct{ accepted atomic.Int64 }

// serve reads one TLS record (the ClientHello) from each connection, then
// writes raw bytes until the peer goes away.
func (s *bulkServer) serve(ln net.Listener) {
	buf := make([]byte, 256<<10)
	rand.Read(buf)
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(15 * time.Second))
			if readRecord(c) != nil {
				return
			}
			s.accepted.Add(1)
			c.SetDeadline(time.Now().Add(5 * time.Minute))
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
}

type idleServer struct{ ready, gone atomic.Int64 }

// serve reads the ClientHello record, counts the connection and keeps it
// open, idle, until the peer closes.
func (s *idleServer) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(15 * time.Second))
			if readRecord(c) != nil {
				return
			}
			s.ready.Add(1)
			defer s.gone.Add(1)
			c.SetReadDeadline(time.Now().Add(5 * time.Minute))
			io.Copy(io.Discard, c)
		}()
	}
}

type tlsServer struct{ conf *tls.Config }

// serve does a full TLS handshake per connection and answers "ping" with
// "pong".
func (s *tlsServer) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(15 * time.Second))
			tc := tls.Server(c, s.conf)
			var p [4]byte
			if _, err := io.ReadFull(tc, p[:]); err != nil || string(p[:]) != "ping" {
				return
			}
			tc.Write([]byte("pong"))
			tc.Close()
		}()
	}
}

func readRecord(c net.Conn) error {
	var h [5]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return err
	}
	if h[0] != 0x16 {
		return errors.New("not a TLS handshake record")
	}
	_, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint16(h[3:])))
	return err
}

func (b *bench) startLoopbackUpstreams() error {
	b.bulk, b.idle = &bulkServer{}, &idleServer{}
	b.tlsUp = &tlsServer{conf: &tls.Config{Certificates: []tls.Certificate{b.cert}, SessionTicketsDisabled: true}}
	var lns [3]net.Listener
	for i := range lns {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		b.onCleanup(func() { ln.Close() })
		lns[i] = ln
	}
	go b.bulk.serve(lns[0])
	go b.tlsUp.serve(lns[1])
	go b.idle.serve(lns[2])
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if len(q.Question) == 1 && strings.EqualFold(q.Question[0].Name, benchHost+".") {
			if q.Question[0].Qtype == dns.TypeA {
				rr, _ := dns.NewRR(benchHost + ". 3600 IN A 127.0.0.1")
				m.Answer = append(m.Answer, rr)
			}
		} else {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	b.onCleanup(func() { srv.Shutdown() })
	b.dnsAddr = pc.LocalAddr().String()
	b.loopPorts = [3]int{port(lns[0]), port(lns[1]), port(lns[2])}
	return nil
}

func port(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

// ---- egressd ----

// child is a process the bench runs: egressd, the reference relay or a
// peer.
type child struct {
	cmd    *exec.Cmd
	pid    int
	out    *lockedWriter // its stdout and stderr
	exited chan struct{}
}

// startChild starts cmd (in network namespace ns when set), registers its
// stop as a cleanup, and polls ready every 50 ms until it returns nil, for
// up to 15 s or until the child exits. The starting thread stays locked
// until the child exits: the child inherits its network namespace, and
// Pdeathsig follows that thread, not the process.
func (b *bench) startChild(what string, cmd *exec.Cmd, ns string, ready func() error) (*child, error) {
	c := &child{cmd: cmd, out: &lockedWriter{w: &bytes.Buffer{}}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = c.out, c.out
	cmd.SysProcAttr = childAttr()
	// Wait returns once the child has exited, even while a worker it left
	// behind still holds the output pipe.
	cmd.WaitDelay = 2 * time.Second
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if ns != "" {
			if err := enterNS(ns); err != nil {
				started <- err
				return
			}
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(c.exited)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %v", what, err)
	}
	c.pid = cmd.Process.Pid
	b.onCleanup(c.stop)
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := ready()
		if err == nil {
			return c, nil
		}
		select {
		case <-c.exited:
			return nil, fmt.Errorf("%s exited: %s", what, c.out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.stop()
			return nil, fmt.Errorf("%s not ready after 15s (%v): %s", what, err, c.out.String())
		}
	}
}

// stop sends the child's process group SIGTERM and waits, with SIGKILL
// after 5 s; then it kills what is left of the group (a worker that
// outlived its master). It does nothing once the child has exited.
func (c *child) stop() {
	select {
	case <-c.exited:
		return
	default:
	}
	signalGroup(c.pid, syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(5 * time.Second):
		signalGroup(c.pid, syscall.SIGKILL)
		<-c.exited
	}
	signalGroup(c.pid, syscall.SIGKILL)
}

// listening is a ready probe: addr accepts a TCP connection.
func listening(addr string) func() error {
	return func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
}

// egressd is an egressd child and its decision log.
type egressd struct {
	*child
	logPath string
}

// config returns an egressd configuration with 1,000 rules: 999 fillers
// (exact names, wildcards, CIDRs) and the bench's own rule.
func benchConfig(server, logPath, dnsAddr, benchRule string) string {
	var s strings.Builder
	fmt.Fprintf(&s, "server {\n%s  allow_private_destinations = true\n  hello_timeout = \"10s\"\n  idle_timeout = \"10m\"\n  shutdown_grace = \"2s\"\n  max_connections = 20000\n  max_connections_per_client = 20000\n}\n", server)
	fmt.Fprintf(&s, "resolver { servers = [%q] }\nlog { output = %q }\n", dnsAddr, logPath)
	for p := range 9 {
		fmt.Fprintf(&s, "policy \"filler-%d\" {\n", p)
		for r := range 111 {
			i := p*111 + r
			switch i % 3 {
			case 0:
				fmt.Fprintf(&s, "  allow \"exact-%d\" {\n    hosts = [\"host-%d.filler-%d.example.com\"]\n  }\n", i, i, p)
			case 1:
				fmt.Fprintf(&s, "  allow \"wild-%d\" {\n    hosts = [\"*.w%d.filler.example.net\"]\n    ports = [443, 8443]\n  }\n", i, i)
			default:
				fmt.Fprintf(&s, "  allow \"cidr-%d\" {\n    cidrs = [\"198.18.%d.%d/32\"]\n  }\n", i, i/256, i%256)
			}
		}
		s.WriteString("}\n")
	}
	fmt.Fprintf(&s, "policy \"bench\" {\n%s}\n", benchRule)
	return s.String()
}

// startEgressd runs egressd with cfg, in network namespace ns when set, and
// waits until its admin /readyz answers 200.
func (b *bench) startEgressd(name, cfg, adminAddr, ns string) (*egressd, error) {
	cfgPath := filepath.Join(b.dir, name+".hcl")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	ready := func() (err error) {
		if nserr := inNSDo(ns, func() {
			var code int
			if code, err = httpStatus(adminAddr, "/readyz"); err == nil && code != 200 {
				err = fmt.Errorf("/readyz answered %d", code)
			}
		}); nserr != nil {
			return nserr
		}
		return err
	}
	c, err := b.startChild("egressd", b.egressdCmd(cfgPath), ns, ready)
	if err != nil {
		return nil, err
	}
	return &egressd{child: c, logPath: filepath.Join(b.dir, name+".log")}, nil
}

// egressdCmd is the command that serves cfgPath, with --egressd-env's
// settings added to the bench's environment.
func (b *bench) egressdCmd(cfgPath string) *exec.Cmd {
	cmd := exec.Command(b.bin, "serve", "--config", cfgPath)
	if len(b.opt.egressdEnv) > 0 {
		cmd.Env = append(os.Environ(), b.opt.egressdEnv...)
	}
	return cmd
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

// childOutputKeep is how much of a child's output is kept: its last
// 64 KiB, where the reason it failed is, and not a peer's access log that
// fills the start.
const childOutputKeep = 64 << 10

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.w.Write(p)
	if l.w.Len() > 2*childOutputKeep {
		l.w.Next(l.w.Len() - childOutputKeep)
	}
	return len(p), nil
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// httpStatus does one plain GET on a fresh connection made on the calling
// thread (so in its network namespace) and returns the status code.
func httpStatus(addr, path string) (int, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, err
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	return strconv.Atoi(f[1])
}

// cpuSeconds is utime+stime of pid and its descendants (nginx's workers).
func (b *bench) cpuSeconds(pid int) float64 {
	var ticks float64
	for i, p := range processTree(pid) {
		f := procStat(p)
		if len(f) < 13 {
			if i == 0 {
				return math.NaN() // the relay is gone: no figure, not 0 s
			}
			continue
		}
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		ticks += ut + st
	}
	return ticks / b.clkTck
}

// procStat returns the fields of /proc/PID/stat after the command name
// (state is f[0], ppid f[1], utime f[11], stime f[12]), or nil.
func procStat(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(data)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
}

// processTree returns pid and its descendants.
func processTree(pid int) []int {
	tree := []int{pid}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return tree
	}
	parent := map[int]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := procStat(p); len(f) > 1 {
			parent[p], _ = strconv.Atoi(f[1])
		}
	}
	for i := 0; i < len(tree); i++ {
		for p, pp := range parent {
			if pp == tree[i] {
				tree = append(tree, p)
			}
		}
	}
	return tree
}

// threadSwitches returns, per thread ("pid/tid") of the processes pids,
// how many times it was switched out
// (voluntary_ctxt_switches + nonvoluntary_ctxt_switches). Each switch is
// a trip through the scheduler, which some machines (hypervisor guests)
// charge dearly for.
func threadSwitches(pids []int) map[string]float64 {
	out := map[string]float64{}
	for _, p := range pids {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		for _, t := range tasks {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", p, t.Name()))
			if err != nil {
				continue
			}
			var n float64
			for _, l := range strings.Split(string(data), "\n") {
				if k, v, ok := strings.Cut(l, ":"); ok && strings.HasSuffix(k, "voluntary_ctxt_switches") {
					c, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
					n += c
				}
			}
			out[fmt.Sprintf("%d/%s", p, t.Name())] = n
		}
	}
	return out
}

// switchSampleEvery is how often a switchCounter looks at the threads:
// often enough to see a relay's per-connection threads (tinyproxy starts
// one per connection) at least once during a TLS exchange.
const switchSampleEvery = 10 * time.Millisecond

// switchCounter follows a process tree's thread switches over a
// measurement. Linux keeps an exited thread's counts only for getrusage
// of its own process, so the counter samples the threads while the
// measurement runs and keeps each thread's last count.
// The process tree is looked up once, at the start: scanning every
// process in /proc at each sample would load the CPUs the measurement
// shares.
type switchCounter struct {
	pids       []int
	base, last map[string]float64
	stop, done chan struct{}
}

func startSwitchCounter(pid int) *switchCounter {
	pids := processTree(pid)
	c := &switchCounter{pids: pids, base: threadSwitches(pids), stop: make(chan struct{}), done: make(chan struct{})}
	c.last = maps.Clone(c.base)
	go func() {
		defer close(c.done)
		tick := time.NewTicker(switchSampleEvery)
		defer tick.Stop()
		for {
			select {
			case <-c.stop:
				return
			case <-tick.C:
				maps.Copy(c.last, threadSwitches(pids))
			}
		}
	}()
	return c
}

// finish returns the switches since the start, and whether that is only
// a lower bound: a thread exited after it was last seen, taking the
// switches it made since with it (threads shorter than a sample are
// missed the same way).
func (c *switchCounter) finish() (n float64, lowerBound bool) {
	close(c.stop)
	<-c.done
	now := threadSwitches(c.pids)
	maps.Copy(c.last, now)
	for tid, v := range c.last {
		n += v - c.base[tid]
		if _, alive := now[tid]; !alive {
			lowerBound = true
		}
	}
	return n, lowerBound
}

// rssKiB is VmRSS of pid and its descendants; NaN when pid is gone.
func rssKiB(pid int) float64 {
	var kib float64
	for i, p := range processTree(pid) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			if i == 0 {
				return math.NaN()
			}
			continue
		}
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "VmRSS:") {
				if f := strings.Fields(l); len(f) > 1 {
					v, _ := strconv.ParseFloat(f[1], 64)
					kib += v
				}
			}
		}
	}
	return kib
}

// clockTicks reads AT_CLKTCK from the auxiliary vector (what
// sysconf(_SC_CLK_TCK) returns), or assumes 100 Hz.
func clockTicks() (float64, string) {
	data, err := os.ReadFile("/proc/self/auxv")
	if err == nil {
		w := int(unsafe.Sizeof(uintptr(0)))
		for i := 0; i+2*w <= len(data); i += 2 * w {
			var k, v uint64
			if w == 8 {
				k, v = binary.NativeEndian.Uint64(data[i:]), binary.NativeEndian.Uint64(data[i+8:])
			} else {
				k, v = uint64(binary.NativeEndian.Uint32(data[i:])), uint64(binary.NativeEndian.Uint32(data[i+4:]))
			}
			if k == 17 && v > 0 { // AT_CLKTCK
				return float64(v), fmt.Sprintf("clock ticks: %d Hz (AT_CLKTCK)", v)
			}
		}
	}
	return 100, "clock ticks: AT_CLKTCK unreadable, assumed 100 Hz"
}

// logLines is what a decision log holds: its "decision" and "close"
// lines, and how many connections (the lines' conn field) do not have
// exactly one of each (a line without a conn counts as one such).
type logLines struct{ decisions, closes, odd int64 }

// logCounts counts "decision" and "close" lines in a decision log, and
// checks them per connection: totals alone let a duplicated line of one
// connection make up for a missing line of another.
func logCounts(path string) logLines {
	var lc logLines
	f, err := os.Open(path)
	if err != nil {
		return lc
	}
	defer f.Close()
	per := map[uint64]*[2]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l struct {
			Message string  `json:"message"`
			Conn    *uint64 `json:"conn"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		k := -1
		switch l.Message {
		case "decision":
			lc.decisions++
			k = 0
		case "close":
			lc.closes++
			k = 1
		}
		switch {
		case k < 0:
		case l.Conn == nil:
			lc.odd++
		default:
			if per[*l.Conn] == nil {
				per[*l.Conn] = new([2]int)
			}
			per[*l.Conn][k]++
		}
	}
	for _, n := range per {
		if *n != [2]int{1, 1} {
			lc.odd++
		}
	}
	return lc
}

// settle waits (up to 15 s) until the log has a close line per tunnel.
func settle(path string, tunnels int64) logLines {
	deadline := time.Now().Add(15 * time.Second)
	for {
		lc := logCounts(path)
		if lc.closes >= tunnels || time.Now().After(deadline) {
			return lc
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// logTally sums the log-line check over a mode's runs; runsOff counts the
// runs that were not 1 + 1 on their own, so that runs cannot make up for
// each other either.
type logTally struct {
	dialed, tunnels int64
	lines           logLines
	runsOff         int
}

func (t *logTally) add(dialed, tunnels int64, lc logLines) {
	t.dialed += dialed
	t.tunnels += tunnels
	t.lines.decisions += lc.decisions
	t.lines.closes += lc.closes
	t.lines.odd += lc.odd
	if dialed != tunnels || lc.decisions != tunnels || lc.closes != tunnels || lc.odd != 0 {
		t.runsOff++
	}
}

// ---- clients ----

// path is one way to reach the upstreams: direct, or through egressd.
type path struct {
	ns    string // dial from this network namespace ("": the bench's)
	proxy string // CONNECT through this proxy address ("": none)
	bulk  string // upstream addresses (CONNECT: host:port to ask for)
	tls   string
	idle  string
	// counted: the path goes through egressd, whose log lines per
	// connection are checked; count its connections.
	counted bool
}

// loopPath reaches the loopback upstreams at host (127.0.0.1, or
// benchHost for a proxy to resolve) through proxy ("": direct).
func (b *bench) loopPath(host, proxy string, counted bool) path {
	lp := b.loopPorts
	return path{proxy: proxy, counted: counted,
		bulk: net.JoinHostPort(host, strconv.Itoa(lp[0])),
		tls:  net.JoinHostPort(host, strconv.Itoa(lp[1])),
		idle: net.JoinHostPort(host, strconv.Itoa(lp[2]))}
}

// open dials addr over p and, through a proxy, sends CONNECT and reads the
// 200. It runs on the calling thread (which must be in p.ns).
func (b *bench) open(p path, addr string) (net.Conn, error) {
	if p.proxy == "" {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err == nil && p.counted {
			b.dialed.Add(1)
			b.tunnels.Add(1)
		}
		return c, err
	}
	c, err := net.DialTimeout("tcp", p.proxy, 10*time.Second)
	if err != nil {
		return nil, err
	}
	if !p.counted {
		return c, connectThrough(c, addr)
	}
	b.dialed.Add(1)
	if err := connectThrough(c, addr); err != nil {
		return nil, err
	}
	b.tunnels.Add(1)
	return c, nil
}

// connectThrough sends CONNECT addr on c and reads the 200; c is closed
// on failure.
func connectThrough(c net.Conn, addr string) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", addr, addr)
	br := bufio.NewReaderSize(c, 512)
	status, err := br.ReadString('\n')
	for err == nil {
		var l string
		if l, err = br.ReadString('\n'); l == "\r\n" {
			break
		}
	}
	if err != nil || !strings.Contains(status, " 200 ") {
		c.Close()
		return fmt.Errorf("CONNECT %s: %q %v", addr, strings.TrimSpace(status), err)
	}
	if br.Buffered() > 0 {
		c.Close()
		return errors.New("bytes after the CONNECT response")
	}
	c.SetDeadline(time.Time{})
	return nil
}

// bulkTurns measures bulk through n tunnels direct and via the relay
// whose process is pid, in four turns of d/2 (direct, via, via, direct),
// as measureConns takes turns: the machine's speed drifts within seconds,
// and this way the drift weighs on both. It returns each side's MB/s over
// its turns and the relay's CPU seconds per GB over its turns.
func (b *bench) bulkTurns(direct, via path, n int, d time.Duration, pid int) (dm, vm, cpuPerGB float64, err error) {
	var gb, cpu float64
	for i, p := range []path{direct, via, via, direct} {
		isVia, cpuOf := i == 1 || i == 2, 0
		if isVia {
			cpuOf = pid
		}
		m, c, err := b.bulkRun(p, n, d/2, cpuOf)
		if err != nil {
			side := "direct"
			if isVia {
				side = "via the relay"
			}
			return 0, 0, 0, fmt.Errorf("%s: %v", side, err)
		}
		if !isVia {
			dm += m / 2
			continue
		}
		vm += m / 2
		g := m * (d / 2).Seconds() / 1e3 // MB/s × s → GB
		gb, cpu = gb+g, cpu+c*g
	}
	return dm, vm, cpu / gb, nil
}

// bulkRun opens n tunnels to the bulk upstream, then reads for d from all
// of them; it returns MB/s (10^6 bytes) and egressd's CPU seconds per GB.
func (b *bench) bulkRun(p path, n int, d time.Duration, pid int) (mbs, cpuPerGB float64, err error) {
	var ready, wg sync.WaitGroup
	start := make(chan time.Time)
	var total atomic.Int64
	errs := make(chan error, n)
	ready.Add(n)
	wg.Add(n)
	for range n {
		go func() {
			defer wg.Done()
			if p.ns != "" {
				runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
				if err := enterNS(p.ns); err != nil {
					errs <- err
					ready.Done()
					return
				}
			}
			c, err := b.open(p, p.bulk)
			if err == nil {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err = c.Write(b.hello); err == nil {
					var one [1]byte
					_, err = io.ReadFull(c, one[:])
				}
			}
			if err != nil {
				errs <- err
			}
			ready.Done()
			t0 := <-start
			if err != nil || t0.IsZero() {
				return
			}
			c.SetDeadline(t0.Add(d))
			buf := make([]byte, 256<<10)
			var got int64
			for {
				m, err := c.Read(buf)
				got += int64(m)
				if err != nil {
					// Only the deadline ends a measurement: a tunnel the
					// relay closed or reset early is a failure, not a short
					// (or, from buffered bytes, a huge) rate.
					if !errors.Is(err, os.ErrDeadlineExceeded) {
						errs <- fmt.Errorf("a tunnel ended after %d bytes, before the measurement: %v", got, err)
					}
					break
				}
			}
			total.Add(got)
		}()
	}
	ready.Wait()
	select {
	case err := <-errs:
		close(start)
		wg.Wait()
		return 0, 0, err
	default:
	}
	cpu0 := 0.0
	if pid > 0 {
		cpu0 = b.cpuSeconds(pid)
	}
	t0 := time.Now()
	for range n {
		start <- t0
	}
	wg.Wait()
	el := time.Since(t0).Seconds()
	select {
	case err := <-errs:
		return 0, 0, err
	default:
	}
	if pid > 0 {
		cpuPerGB = (b.cpuSeconds(pid) - cpu0) / (float64(total.Load()) / 1e9)
	}
	return float64(total.Load()) / 1e6 / el, cpuPerGB, nil
}

// connStats is one side of a connection-rate measurement.
type connStats struct {
	cps, p50, p99 float64 // connections per second; latency in ms
	done, failed  int64   // connections completed and failed
}

// connTurns accumulates a connection-rate measurement over its turns.
type connTurns struct {
	lat      []time.Duration
	failed   int64
	elapsed  time.Duration
	firstErr error
}

// connRate runs conc workers, each looping connect (+ CONNECT) -> TLS
// handshake -> ping/pong -> close for d.
func (b *bench) connRate(p path, conc int, d time.Duration) (connStats, error) {
	var acc connTurns
	b.connTurn(p, conc, d, &acc)
	return acc.stats()
}

// connTurn is one turn of conc workers for d, added to acc.
func (b *bench) connTurn(p path, conc int, d time.Duration, acc *connTurns) {
	conf := &tls.Config{ServerName: benchHost, RootCAs: b.pool}
	var wg sync.WaitGroup
	lat := make([][]time.Duration, conc)
	var fails atomic.Int64
	var firstErr atomic.Value
	t0 := time.Now()
	end := t0.Add(d)
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if p.ns != "" {
				runtime.LockOSThread()
				if err := enterNS(p.ns); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
			for i := 0; i < 1_000_000 && time.Now().Before(end); i++ {
				s := time.Now()
				if err := b.pingOnce(p, conf); err != nil {
					fails.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				lat[w] = append(lat[w], time.Since(s))
			}
		}()
	}
	wg.Wait()
	acc.elapsed += time.Since(t0)
	for _, l := range lat {
		acc.lat = append(acc.lat, l...)
	}
	acc.failed += fails.Load()
	if e, ok := firstErr.Load().(error); ok && acc.firstErr == nil {
		acc.firstErr = e
	}
}

// stats is the rate over all turns, and the latency percentiles of all
// their connections.
func (acc *connTurns) stats() (connStats, error) {
	all := acc.lat
	st := connStats{done: int64(len(all)), failed: acc.failed}
	if len(all) == 0 {
		return st, fmt.Errorf("no connection completed: %v", acc.firstErr)
	}
	slices.Sort(all)
	// Nearest rank: the smallest latency that pct % of them do not exceed,
	// all[ceil(pct*n/100) - 1] (in integers: 0.99*n is not exact).
	q := func(pct int) float64 {
		return float64(all[max(0, (pct*len(all)+99)/100-1)]) / 1e6
	}
	st.cps, st.p50, st.p99 = float64(len(all))/acc.elapsed.Seconds(), q(50), q(99)
	return st, nil
}

// connTurnsEach is how many turns direct and the relay each take in one
// connection-rate measurement: direct, relay, relay, direct, ... (each
// side first in every other pair), d/connTurnsEach each. This machine's
// rates drift by ±10 % within seconds; measured in one block each, the
// two sides would see different machines, and their ratio would carry
// the drift.
const connTurnsEach = 4

// isViaTurn reports whether turn i of a connPair is the relay's: direct,
// via, via, direct, direct, via, via, direct, ... so that a steady drift
// favours neither side.
func isViaTurn(i int) bool { return (i+i/2)%2 == 1 }

// connPair is a connection-rate measurement at concurrency conc of direct
// and of via, in alternating turns, with the relay's CPU seconds over its
// turns and, when counted, its thread switches. The switch sampler then
// runs during direct's turns too, so that both rates pay for its CPU.
type connPair struct {
	direct, via     connStats
	cpu, switches   float64
	switchesAtLeast bool // a thread exited between samples (see switchCounter.finish)
}

// measureConns measures a connPair; pid is the relay's process.
func (b *bench) measureConns(direct, via path, conc int, d time.Duration, pid int, counted bool) (connPair, error) {
	var res connPair
	var dAcc, vAcc connTurns
	turn := d / connTurnsEach
	for i := range 2 * connTurnsEach {
		viaTurn := isViaTurn(i)
		var sampler *switchCounter
		if counted {
			sampler = startSwitchCounter(pid)
		}
		if viaTurn {
			cpu0 := b.cpuSeconds(pid)
			b.connTurn(via, conc, turn, &vAcc)
			res.cpu += b.cpuSeconds(pid) - cpu0
		} else {
			b.connTurn(direct, conc, turn, &dAcc)
		}
		if sampler == nil {
			continue
		}
		n, lower := sampler.finish()
		if viaTurn {
			res.switches += n
			res.switchesAtLeast = res.switchesAtLeast || lower
		}
	}
	var err error
	if res.direct, err = dAcc.stats(); err != nil {
		return res, fmt.Errorf("direct: %v", err)
	}
	if res.via, err = vAcc.stats(); err != nil {
		return res, fmt.Errorf("via the relay: %v", err)
	}
	return res, nil
}

// perConn is a counter's growth n per connection st handled, completed
// or failed: all of them cost the relay.
func perConn(n float64, st connStats) float64 {
	return n / float64(st.done+st.failed)
}

func (b *bench) pingOnce(p path, conf *tls.Config) error {
	c, err := b.open(p, p.tls)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, conf)
	if _, err := tc.Write([]byte("ping")); err != nil {
		return err
	}
	var r [4]byte
	if _, err := io.ReadFull(tc, r[:]); err != nil || string(r[:]) != "pong" {
		return fmt.Errorf("ping: %q %v", r, err)
	}
	return nil
}

// idleRSS opens n idle tunnels (CONNECT + hello, upstream accepted) and
// returns egressd's RSS growth per tunnel in KiB.
func (b *bench) idleRSS(p path, n int, pid int) (float64, error) {
	base, goneBase := b.idle.ready.Load(), b.idle.gone.Load()
	before := rssKiB(pid)
	conns := make([]net.Conn, n)
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				c, err := b.open(p, p.idle)
				if err == nil {
					_, err = c.Write(b.hello)
				}
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					if c != nil {
						c.Close()
					}
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if e, _ := firstErr.Load().(error); e != nil {
		return 0, e
	}
	deadline := time.Now().Add(30 * time.Second)
	for b.idle.ready.Load()-base < int64(n) {
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("only %d of %d idle tunnels reached the upstream", b.idle.ready.Load()-base, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(time.Second)
	rss := (rssKiB(pid) - before) / float64(n)
	// Close the tunnels and wait (up to 15 s) until the upstream saw them
	// go: the relay tears n tunnels down (and logs n close lines) after
	// the bench closes them, which would otherwise load the CPUs while
	// the next figure's direct run is measured.
	for i, c := range conns {
		c.Close()
		conns[i] = nil
	}
	for deadline := time.Now().Add(15 * time.Second); b.idle.gone.Load()-goneBase < int64(n) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	return rss, nil
}

// ---- the measurements ----

type check int

const (
	noTarget check = iota
	ratioAtLeast
	multipleAtMost
	viaAtMost
	exact
)

type row struct {
	mode, name string
	format     string // of the values
	direct     []float64
	via        []float64
	ratio      []float64
	check      check
	limit      float64
	target     string
	text       string // for the log-lines row
	met        *bool
	note       string
	// lowerBound: some value is only a lower bound (thread switches of a
	// relay whose threads exited during the run); shown with "≥".
	lowerBound bool
	// failed: connections of the measurement that failed (direct and via,
	// over the runs); they are in neither the rate nor the latencies, so
	// a target over them is not met.
	failed int64
}

// connectSeries is the CONNECT rows over the runs, with the log-line
// counts; err ends the series.
type connectSeries struct {
	rows []*row
	err  error
	logTally
}

// result is the series' rows, with the log-line row filled in, or one
// FAILED row.
func (s *connectSeries) result() []*row {
	if s.err != nil {
		return failRows(s.rows, s.err)
	}
	logRow(s.rows[rowLog], s.logTally)
	return s.rows
}

// connectRun is run r of the CONNECT mode: a fresh egressd, the RSS,
// bulk and conn/s figures through it, and the reference relay.
func (b *bench) connectRun(s *connectSeries, r int) error {
	o := b.opt
	lp := b.loopPorts
	direct := b.loopPath("127.0.0.1", "", false)
	rows := s.rows
	b.logf("CONNECT run %d/%d", r+1, o.runs)
	proxyAddr, err1 := freePort()
	adminAddr, err2 := freePort()
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	rule := fmt.Sprintf("  allow \"bench\" {\n    hosts = [%q]\n    ports = [%d, %d, %d]\n  }\n", benchHost, lp[0], lp[1], lp[2])
	cfg := benchConfig(fmt.Sprintf("  http_listen = %q\n  admin_listen = %q\n", proxyAddr, adminAddr),
		filepath.Join(b.dir, fmt.Sprintf("connect-%d.log", r)), b.dnsAddr, rule)
	e, err := b.startEgressd(fmt.Sprintf("connect-%d", r), cfg, adminAddr, "")
	if err != nil {
		return err
	}
	defer e.stop() // at once on an error: the peers' runs come next
	via := b.loopPath(benchHost, proxyAddr, true)
	b.dialed.Store(0)
	b.tunnels.Store(0)
	if err := b.relayFigures(rows, direct, via, e.child, "egressd", true, 16, 64); err != nil {
		return err
	}
	if err := b.measureReference(rows, direct); err != nil {
		return err
	}
	lc := settle(e.logPath, b.tunnels.Load())
	e.stop()
	s.add(b.dialed.Load(), b.tunnels.Load(), lc)
	return nil
}

// relayFigures warms the relay up (its resolver cache, its first
// goroutines), then measures its RSS per idle tunnel (with idle, when
// --only asks for it) and the figures of measure.
func (b *bench) relayFigures(rows []*row, direct, via path, relay *child, name string, idle bool, concs ...int) error {
	if _, err := b.connRate(via, 4, 100*time.Millisecond); err != nil {
		return fmt.Errorf("warm-up through %s: %v\n%s", name, err, relay.out.String())
	}
	if idle && b.opt.measures("rss") {
		rss, err := b.idleRSS(via, b.opt.tunnels, relay.pid)
		if err != nil {
			return fmt.Errorf("idle tunnels through %s: %v", name, err)
		}
		rows[rowRSS].via = append(rows[rowRSS].via, rss)
	}
	if err := b.measure(rows, direct, via, relay.pid, concs...); err != nil {
		return fmt.Errorf("%s: %v", name, err)
	}
	return nil
}

// measure runs the bulk figures (bulkTurns) and the conn/s figures at the
// given concurrencies (16 and/or 64; measureConns) once, each direct and
// via the relay whose process is pid in alternating turns.
func (b *bench) measure(rows []*row, direct, via path, pid int, concs ...int) error {
	d := b.opt.duration
	if b.opt.measures("bulk") {
		for i, n := range []int{1, 8} {
			dm, vm, cpu, err := b.bulkTurns(direct, via, n, d, pid)
			if err != nil {
				return fmt.Errorf("bulk x%d %v", n, err)
			}
			add(rows[rowBulk1+i], dm, vm, vm/dm)
			add(rows[rowCPU1+i], 0, cpu, 0)
		}
	}
	if !b.opt.measures("conn") {
		return nil
	}
	for _, conc := range concs {
		base := map[int]int{16: rowCPS16, 64: rowCPS64}[conc]
		if base == 0 {
			return fmt.Errorf("conn/s at concurrency %d: the table has rows for 16 and 64", conc)
		}
		// CPU and thread switches are figures at concurrency 64 only: the
		// switch counter's sampling costs CPU of its own, taken from the
		// workers, so it runs only when its count is kept.
		m, err := b.measureConns(direct, via, conc, d, pid, conc == 64)
		if err != nil {
			return fmt.Errorf("conn/s c=%d: %v", conc, err)
		}
		if conc == 64 {
			add(rows[rowCPUConn], 0, perConn(m.cpu, m.via)*1e6, 0)
			add(rows[rowCSConn], 0, perConn(m.switches, m.via), 0)
			rows[rowCSConn].lowerBound = rows[rowCSConn].lowerBound || m.switchesAtLeast
		}
		dst, vst := m.direct, m.via
		add(rows[base], dst.cps, vst.cps, vst.cps/dst.cps)
		add(rows[base+1], dst.p50, vst.p50, vst.p50/dst.p50)
		add(rows[base+2], dst.p99, vst.p99, vst.p99/dst.p99)
		if dst.failed+vst.failed > 0 {
			// Rate and latencies count completed connections only.
			for _, r := range rows[base : base+3] {
				r.note += fmt.Sprintf(" %d+%d failed", dst.failed, vst.failed)
				r.failed += dst.failed + vst.failed
			}
		}
	}
	return nil
}

func add(r *row, direct, via, ratio float64) {
	r.direct = append(r.direct, direct)
	r.via = append(r.via, via)
	r.ratio = append(r.ratio, ratio)
}

const (
	rowBulk1 = iota
	rowBulk8
	rowCPU1
	rowCPU8
	rowCPS16
	rowP5016
	rowP9916
	rowCPS64
	rowP5064
	rowP9964
	rowCPUConn
	rowCSConn
	rowRSS
	rowLog
	rowRefBulk8 // CONNECT only, from here on
	rowRefCPU8
	rowRefCPS
	rowRefCPU
)

func newRows(mode string, withRSS bool) []*row {
	rows := []*row{
		{name: "bulk download, 1 tunnel (MB/s)", format: "%.0f", check: ratioAtLeast, limit: 0.50, target: "≥ 50% of direct"},
		{name: "bulk download, 8 tunnels (MB/s)", format: "%.0f", check: ratioAtLeast, limit: 0.45, target: "≥ 45% of direct"},
		{name: "egressd CPU per GB, 1 tunnel (s/GB)", format: "%.3f", check: viaAtMost, limit: 0.4, target: "≤ 0.4 s/GB"},
		{name: "egressd CPU per GB, 8 tunnels (s/GB)", format: "%.3f", check: viaAtMost, limit: 0.4, target: "≤ 0.4 s/GB"},
		{name: "TLS conn/s, concurrency 16", format: "%.0f", target: "—"},
		{name: "latency p50, concurrency 16 (ms)", format: "%.2f", target: "—"},
		{name: "latency p99, concurrency 16 (ms)", format: "%.2f", target: "—"},
		{name: "TLS conn/s, concurrency 64", format: "%.0f", check: ratioAtLeast, limit: 0.90, target: "≥ 90% of direct"},
		{name: "latency p50, concurrency 64 (ms)", format: "%.2f", target: "—"},
		{name: "latency p99, concurrency 64 (ms)", format: "%.2f", check: multipleAtMost, limit: 1.25, target: "≤ 1.25× direct"},
		{name: "egressd CPU per connection, concurrency 64 (µs)", format: "%.0f", target: "—"},
		{name: "egressd thread switches per connection, concurrency 64", format: "%.1f", target: "—"},
		{name: "RSS per idle tunnel (KiB)", format: "%.1f", check: viaAtMost, limit: 8, target: "≤ 8 KiB"},
		{name: "decision-log lines per connection (decision + close)", check: exact, target: "exactly 1 + 1"},
		{name: "reference relay: bulk download, 8 tunnels (MB/s)", format: "%.0f", target: "—"},
		{name: "reference relay: CPU per GB, 8 tunnels (s/GB)", format: "%.3f", target: "—"},
		{name: "reference relay: TLS conn/s, concurrency 64", format: "%.0f", target: "—"},
		{name: "reference relay: CPU per connection, concurrency 64 (µs)", format: "%.0f", target: "—"},
	}
	if !withRSS { // the transparent mode has no reference relay
		rows = rows[:rowRefBulk8]
	}
	for _, r := range rows {
		r.mode = mode
	}
	if !withRSS {
		rows[rowRSS].note = "not measured in this mode"
		rows[rowRSS].check = noTarget
		rows[rowRSS].target = "—"
	}
	return rows
}

func failRows(rows []*row, err error) []*row {
	return []*row{{mode: rows[0].mode, name: "FAILED: " + strings.ReplaceAll(err.Error(), "\n", " "), check: noTarget}}
}

func logRow(r *row, t logTally) {
	tunnels, lc := t.tunnels, t.lines
	if tunnels == 0 {
		r.text = "no tunnels"
		f := false
		r.met = &f
		return
	}
	r.text = fmt.Sprintf("%.3f + %.3f (%d decision, %d close lines / %d tunnels)", float64(lc.decisions)/float64(tunnels), float64(lc.closes)/float64(tunnels), lc.decisions, lc.closes, tunnels)
	ok := t.runsOff == 0 // each run 1 + 1, and so their sums
	var notes []string
	if t.dialed != tunnels {
		notes = append(notes, fmt.Sprintf("%d connections to egressd got no 200", t.dialed-tunnels))
	}
	if lc.odd != 0 {
		notes = append(notes, fmt.Sprintf("%d connections without exactly one decision and one close line", lc.odd))
	}
	if t.runsOff != 0 {
		notes = append(notes, fmt.Sprintf("%d run(s) not 1 + 1", t.runsOff))
	}
	r.note = strings.Join(notes, "; ")
	r.met = &ok
}

// ---- output ----

// measured reports whether every run gave a figure a target can be held
// to: a finite number above zero. NaN (nothing relayed, a relay gone),
// ±Inf (direct measured 0) and zero or less (CPU or RSS read from a
// process that was gone) are no measurement, and the median would hide
// one of them among good runs.
func measured(v []float64) bool {
	for _, x := range v {
		if math.IsNaN(x) || math.IsInf(x, 0) || x <= 0 {
			return false
		}
	}
	return len(v) > 0
}

func stats(v []float64) (med, lo, hi float64) {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	med = s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return med, s[0], s[n-1]
}

func (b *bench) fmtVals(format string, v []float64, scale float64) string {
	if len(v) == 0 {
		return "—"
	}
	m, lo, hi := stats(v)
	s := fmt.Sprintf(format, m*scale)
	if len(v) > 1 {
		s += fmt.Sprintf(" ("+format+"–"+format+")", lo*scale, hi*scale)
	}
	return s
}

func (b *bench) render(rows []*row) string {
	var s strings.Builder
	fmt.Fprintf(&s, "egressd-bench: %d run(s) of %v per measurement (bulk: direct and via in 2 alternating turns each; conn/s: in %d each), %d idle tunnels; median (min–max)\n\n", b.opt.runs, b.opt.duration, connTurnsEach, b.opt.tunnels)
	s.WriteString("| mode | measurement | direct | via egressd | egressd vs direct | target | met |\n")
	s.WriteString("|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		direct, via, rel, met := "—", "—", "—", "—"
		switch {
		case r.text != "":
			via = r.text
		case strings.HasPrefix(r.name, "FAILED"):
			met = "NOT MET"
		default:
			if r.check != viaAtMost || r.mode == "" {
				if len(r.direct) > 0 && r.direct[0] != 0 {
					direct = b.fmtVals(r.format, r.direct, 1)
				}
			}
			via = b.fmtVals(r.format, r.via, 1)
			if r.lowerBound {
				via = "≥ " + via
			}
			if len(r.ratio) > 0 && r.ratio[0] != 0 {
				if r.check == multipleAtMost || strings.Contains(r.name, "latency") {
					rel = b.fmtVals("%.2f", r.ratio, 1) + "×"
				} else {
					rel = b.fmtVals("%.0f", r.ratio, 100) + " %"
				}
			}
		}
		if len(r.via) > 0 || r.met != nil {
			ok := true
			switch r.check {
			case ratioAtLeast:
				m, _, _ := stats(r.ratio)
				ok = measured(r.ratio) && m >= r.limit
			case multipleAtMost:
				m, _, _ := stats(r.ratio)
				ok = measured(r.ratio) && m <= r.limit
			case viaAtMost:
				m, _, _ := stats(r.via)
				ok = measured(r.via) && m <= r.limit
			case exact:
				ok = r.met != nil && *r.met
			}
			ok = ok && r.failed == 0
			switch {
			case r.check == noTarget:
			case ok:
				met = "met"
			default:
				met = "NOT MET"
			}
		}
		name := r.name
		if r.note != "" {
			name += " (" + strings.TrimSpace(r.note) + ")"
		}
		fmt.Fprintf(&s, "| %s | %s | %s | %s | %s | %s | %s |\n", r.mode, name, direct, via, rel, r.target, met)
	}
	s.WriteString("\n")
	fmt.Fprintf(&s, "CPU: utime+stime of the egressd process from /proc/PID/stat; %s.\n", b.tickNote)
	fmt.Fprintf(&s, "Machine: %s. The bench's clients and upstreams share these CPUs with egressd.\n", machine())
	if len(b.opt.egressdEnv) > 0 {
		fmt.Fprintf(&s, "egressd's environment adds: %s.\n", strings.Join(b.opt.egressdEnv, " "))
	}
	for _, n := range b.notes {
		s.WriteString(n + "\n")
	}
	return s.String()
}

// ---- helpers ----

// freePort returns a loopback address with a port that was free.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// moduleRoot walks up from the working directory to go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "cmd", "egressd")); err != nil {
				return "", fmt.Errorf("%s has no cmd/egressd: run from egressd's module root or pass --egressd", dir)
			}
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory: run from egressd's module root or pass --egressd")
		}
		dir = parent
	}
}

// clientHello returns the first TLS record a crypto/tls client writes for
// serverName.
func clientHello(serverName string) []byte {
	cli, srv := net.Pipe()
	defer srv.Close()
	go func() {
		tc := tls.Client(cli, &tls.Config{ServerName: serverName})
		tc.Handshake()
		cli.Close()
	}()
	buf := make([]byte, 16<<10)
	n, _ := io.ReadAtLeast(srv, buf, 5)
	for n < 5+int(buf[3])<<8+int(buf[4]) {
		m, err := srv.Read(buf[n:])
		if err != nil {
			break
		}
		n += m
	}
	return buf[:n]
}

// newCert makes a CA and an ECDSA leaf for bench.egress.test.
func newCert() (tls.Certificate, *x509.CertPool, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "egressd-bench CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: benchHost},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{benchHost}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool, nil
}

// machine describes the CPUs, kernel and Go version.
func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := runtime.GOOS
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = "Linux " + strings.TrimSpace(string(data))
	}
	return fmt.Sprintf("%d CPUs (%s), %s, %s", runtime.NumCPU(), model, kernel, runtime.Version())
}
