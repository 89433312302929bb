package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/policy"
)

// inNS runs f on a thread switched into the named network namespace, so
// that the sockets f creates live there. It never returns the thread to
// the pool if switching back fails.
func inNS(t *testing.T, ns string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", syscall.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer self.Close()
	target, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer target.Close()
	if err := setns(target.Fd()); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("setns %s: %v", ns, err)
	}
	f()
	if err := setns(self.Fd()); err != nil {
		t.Fatalf("setns back: %v", err) // the thread stays locked and dies with the goroutine
	}
	runtime.UnlockOSThread()
}

func setns(fd uintptr) error { return unix.Setns(int(fd), unix.CLONE_NEWNET) }

const (
	gatewayChildEnv = "EGRESSD_GATEWAY_CHILD" // the decision log file
	gatewayModeEnv  = "EGRESSD_GATEWAY_MODE"  // "redirect" or "tproxy"
)

// TestTransparentGatewayNamespaces builds client, gateway and upstream
// network namespaces joined by veth pairs, with its own 10.77.x and
// fd77:x addresses (nothing leaves the machine): the client's default
// route is the gateway, which REDIRECTs the client's TCP 443 and 7844 to
// egressd (run inside the gateway namespace); the upstream namespace holds
// echo servers and a DNS server.
//
// It runs twice: with the shipped REDIRECT rules (deploy/gateway, the
// original destination from SO_ORIGINAL_DST) and with TPROXY rules and
// policy routing (an IP_TRANSPARENT listener, the original destination is
// the accepted socket's local address).
func TestTransparentGatewayNamespaces(t *testing.T) {
	for _, mode := range []string{"redirect", "tproxy"} {
		t.Run(mode, func(t *testing.T) { gatewayNamespaces(t, mode) })
	}
}

func gatewayNamespaces(t *testing.T, mode string) {
	needRoot(t, "the gateway namespace test")
	ip := needTool(t, "ip")
	needTool(t, "iptables")
	needTool(t, "ip6tables")
	var b [3]byte
	rand.Read(b[:])
	sfx := hex.EncodeToString(b[:])
	cli, gw, up := "egd-cli-"+sfx, "egd-gw-"+sfx, "egd-up-"+sfx
	for _, ns := range []string{cli, gw, up} {
		run(t, ip, "netns", "add", ns)
		t.Cleanup(func() { exec.Command(ip, "netns", "del", ns).Run() })
	}
	vc, vg1, vg2, vu := "vc"+sfx, "vg1"+sfx, "vg2"+sfx, "vu"+sfx
	nsRun := func(ns string, args ...string) { run(t, ip, append([]string{"netns", "exec", ns}, args...)...) }
	run(t, ip, "link", "add", vc, "netns", cli, "type", "veth", "peer", "name", vg1, "netns", gw)
	run(t, ip, "link", "add", vg2, "netns", gw, "type", "veth", "peer", "name", vu, "netns", up)
	for _, c := range [][]string{
		{cli, "ip", "addr", "add", "10.77.1.2/24", "dev", vc},
		{cli, "ip", "-6", "addr", "add", "fd77:1::2/64", "dev", vc, "nodad"},
		{cli, "ip", "link", "set", vc, "up"},
		{cli, "ip", "link", "set", "lo", "up"},
		{cli, "ip", "route", "add", "default", "via", "10.77.1.1"},
		{cli, "ip", "-6", "route", "add", "default", "via", "fd77:1::1"},
		{gw, "ip", "addr", "add", "10.77.1.1/24", "dev", vg1},
		{gw, "ip", "-6", "addr", "add", "fd77:1::1/64", "dev", vg1, "nodad"},
		{gw, "ip", "addr", "add", "10.77.2.1/24", "dev", vg2},
		{gw, "ip", "-6", "addr", "add", "fd77:2::1/64", "dev", vg2, "nodad"},
		{gw, "ip", "link", "set", vg1, "up"},
		{gw, "ip", "link", "set", vg2, "up"},
		{gw, "ip", "link", "set", "lo", "up"},
		{gw, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{gw, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
		{up, "ip", "addr", "add", "10.77.2.2/24", "dev", vu},
		{up, "ip", "addr", "add", "10.77.2.3/24", "dev", vu},
		{up, "ip", "addr", "add", "10.77.2.4/24", "dev", vu},
		{up, "ip", "-6", "addr", "add", "fd77:2::2/64", "dev", vu, "nodad"},
		{up, "ip", "link", "set", vu, "up"},
		{up, "ip", "link", "set", "lo", "up"},
		{up, "ip", "route", "add", "default", "via", "10.77.2.1"},
		{up, "ip", "-6", "route", "add", "default", "via", "fd77:2::1"},
	} {
		nsRun(c[0], c[1:]...)
	}
	if mode == "redirect" {
		// The shipped rules: deploy/gateway's script, nftables backend,
		// with its loop exception for egressd's upstream_mark (0x1e55).
		needTool(t, "nft")
		nsRun(gw, "env", "EGRESSD_PORT=15001", "EGRESSD_MARK=0x1e55", "bash", "../deploy/gateway/egressd-gateway.sh", "install", "--nft")
	} else {
		// TPROXY: mark the client's 443/7844 and deliver them locally to
		// the IP_TRANSPARENT listener, with policy routing for the mark.
		for _, f := range []struct{ tool, ipf, any string }{{"iptables", "-4", "0.0.0.0/0"}, {"ip6tables", "-6", "::/0"}} {
			nsRun(gw, f.tool, "-t", "mangle", "-A", "PREROUTING", "-i", vg1, "-p", "tcp", "-m", "multiport", "--dports", "443,7844",
				"-j", "TPROXY", "--on-port", "15001", "--tproxy-mark", "0x2/0x2")
			nsRun(gw, "ip", f.ipf, "rule", "add", "fwmark", "0x2/0x2", "lookup", "100")
			nsRun(gw, "ip", f.ipf, "route", "add", "local", f.any, "dev", "lo", "table", "100")
		}
	}

	// Upstreams: echo servers on 443 and 7844, an "attacker" on 10.77.2.3,
	// and DNS answering allowed.egress.test with 10.77.2.2. Over UDP: QUIC
	// echo servers on 7844, HTTP/3 on 443, and a QUIC "attacker".
	var attacker, quicAttacker *atomic.Int32
	var queries atomic.Int32
	ca := newTestCA(t)
	inNS(t, up, func() {
		for _, a := range []string{"10.77.2.2:7844", "[fd77:2::2]:7844"} {
			serveQUICEcho(t, listenUDP(t, a), ca.leaf)
		}
		serveHTTP3(t, listenUDP(t, "10.77.2.2:443"), ca.leaf)
		quicAttacker = serveQUICEcho(t, listenUDP(t, "10.77.2.3:443"), ca.leaf)
		for _, a := range []string{"10.77.2.2:443", "10.77.2.4:443", "10.77.2.2:7844", "[fd77:2::2]:7844", "[fd77:2::2]:443"} {
			serveEcho(listenOn(t, a))
		}
		attacker = serveEcho(listenOn(t, "10.77.2.3:443"))
		pc, err := net.ListenPacket("udp", "10.77.2.2:53")
		if err != nil {
			t.Fatal(err)
		}
		srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(q)
			if strings.EqualFold(q.Question[0].Name, "allowed.egress.test.") && q.Question[0].Qtype == dns.TypeA {
				// Rotates on every query, as CDNs do.
				rr, _ := dns.NewRR(fmt.Sprintf("allowed.egress.test. 60 IN A 10.77.2.%d", 2+2*(queries.Add(1)%2)))
				m.Answer = append(m.Answer, rr)
			} else if q.Question[0].Qtype != dns.TypeAAAA {
				m.Rcode = dns.RcodeNameError
			}
			w.WriteMsg(m)
		})}
		go srv.ActivateAndServe()
		t.Cleanup(func() { srv.Shutdown() })
	})

	// egressd in the gateway namespace, as a child process.
	logPath := t.TempDir() + "/decisions.log"
	cmd := exec.Command(ip, "netns", "exec", gw, os.Args[0], "-test.run", "^TestTransparentGatewayChild$", "-test.v", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), gatewayChildEnv+"="+logPath, gatewayModeEnv+"="+mode)
	var childOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &childOut, &childOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	e := &env{log: &syncBuffer{}}
	readLog := func() {
		b, _ := os.ReadFile(logPath)
		e.log.mu.Lock()
		e.log.buf.Reset()
		e.log.buf.Write(b)
		e.log.mu.Unlock()
	}
	dial := func(dst string) *net.TCPConn {
		t.Helper()
		var c net.Conn
		var err error
		deadline := time.Now().Add(10 * time.Second)
		for {
			inNS(t, cli, func() { c, err = net.DialTimeout("tcp", dst, 2*time.Second) })
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond) // egressd still starting
		}
		if err != nil {
			t.Fatalf("dial %s from the client namespace: %v\n%s", dst, err, childOut.String())
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c.(*net.TCPConn)
	}
	waitLog := func(want map[string]any) map[string]any {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			readLog()
			for _, l := range e.log.lines(t) {
				if l["message"] == "decision" && matches(l, want) {
					return l
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no decision with %v in:\n%s\nchild:\n%s", want, e.log.buf.String(), childOut.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// ownDecision waits for the decision line of the connection c, by the
	// client address egressd sees (the gateway does not rewrite sources)
	// and want, and fails unless it is the only one for c's addresses:
	// another connection's line must not stand in for it.
	ownDecision := func(c net.Conn, want map[string]any) map[string]any {
		t.Helper()
		w := map[string]any{"client": c.LocalAddr().String()}
		for k, v := range want {
			w[k] = v
		}
		d := waitLog(w)
		host, port, _ := net.SplitHostPort(c.RemoteAddr().String())
		same := map[string]any{"client": w["client"], "host": host, "port": port}
		if n := e.countLines(t, "decision", same); n != 1 {
			t.Fatalf("%d decision lines with %v, want exactly 1:\n%s", n, same, e.log.String())
		}
		return d
	}

	allowed := []struct{ dst, sni, rule string }{
		{"10.77.2.2:443", "allowed.egress.test", "web"},
		{"10.77.2.2:7844", "h2.cftunnel.com", "tunnel-http2"},
		{"[fd77:2::2]:7844", "h2.cftunnel.com", "tunnel-http2"},
	}
	for _, tc := range allowed {
		payload := make([]byte, 256<<10)
		rand.Read(payload)
		first := append(clientHelloBytes(tc.sni), payload...)
		if got := exchange(t, dial(tc.dst), first); !bytes.Equal(got, first) {
			t.Fatalf("%s sni %s: got %d bytes back, want %d identical", tc.dst, tc.sni, len(got), len(first))
		}
		host, port, _ := net.SplitHostPort(tc.dst)
		waitLog(map[string]any{"mode": "transparent", "decision": "allow", "rule": tc.rule, "host": host, "port": port, "dst": tc.dst, "sni": tc.sni})
	}
	refused := []struct {
		name, dst string
		first     []byte
		want      map[string]any
	}{
		{"denied sni", "10.77.2.2:443", clientHelloBytes("evil.example"), map[string]any{"reason": "no_rule", "host": "10.77.2.2", "sni": "evil.example"}},
		{"no sni", "10.77.2.2:443", clientHelloBytes(""), map[string]any{"reason": "no_rule", "host": "10.77.2.2", "sni": ""}},
		{"sni spoofing", "10.77.2.3:443", clientHelloBytes("allowed.egress.test"), map[string]any{"reason": "dst_mismatch", "host": "10.77.2.3", "sni": "allowed.egress.test"}},
		{"not tls on 443", "[fd77:2::2]:443", []byte("GET / HTTP/1.0\r\n\r\n"), map[string]any{"reason": "no_rule", "host": "fd77:2::2"}},
	}
	for _, tc := range refused {
		c := dial(tc.dst)
		if got := exchange(t, c, tc.first); len(got) != 0 {
			t.Fatalf("%s: got %q", tc.name, got)
		}
		want := map[string]any{"mode": "transparent", "decision": "deny"}
		for k, v := range tc.want {
			want[k] = v
		}
		if d := ownDecision(c, want); d["dst"] != nil {
			t.Errorf("%s: dialed %v", tc.name, d["dst"])
		}
	}
	// Workloads resolve through egressd's dns_listen: every answer it hands
	// out is one egressd will accept, however the upstream rotates them.
	seen := map[string]bool{}
	for i := range 6 {
		var a string
		inNS(t, cli, func() { a = resolveA(t, "10.77.1.1:53", "allowed.egress.test") })
		seen[a] = true
		payload := []byte(fmt.Sprintf("round %d", i))
		first := append(clientHelloBytes("allowed.egress.test"), payload...)
		dst := net.JoinHostPort(a, "443")
		c := dial(dst)
		if got := exchange(t, c, first); !bytes.Equal(got, first) {
			t.Fatalf("round %d to %s (answered by egressd's DNS): got %d bytes back, want %d\n%s", i, a, len(got), len(first), childOut.String())
		}
		// Each round's own line: the first allowed row's line has the
		// same host, dst and sni.
		ownDecision(c, map[string]any{"mode": "transparent", "decision": "allow", "rule": "web", "host": a, "dst": dst, "sni": "allowed.egress.test"})
	}
	if len(seen) != 2 {
		t.Errorf("the upstream DNS did not rotate: answers %v", seen)
	}
	var rcode int
	inNS(t, cli, func() { rcode = queryRcode(t, "10.77.1.1:53", "exfil.evil.example") })
	if rcode != dns.RcodeRefused {
		t.Errorf("query for a name no policy allows: rcode %s, want REFUSED", dns.RcodeToString[rcode])
	}
	waitLog(map[string]any{"mode": "dns", "host": "exfil.evil.example", "decision": "deny"})

	if n := attacker.Load(); n != 0 {
		t.Errorf("the spoofed destination got %d connections", n)
	}
	if mode == "redirect" {
		// The shipped script also steers UDP 443 and 7844 to quic_listen
		// with TPROXY.
		quicThroughGateway(t, cli, ca, waitLog, childOut.String)
		if n := quicAttacker.Load(); n != 0 {
			t.Errorf("the spoofed QUIC destination got %d connections", n)
		}
	}
}

// quicThroughGateway runs QUIC and HTTP/3 clients in the client namespace
// through the gateway's TPROXY rules and QUIC listener.
func quicThroughGateway(t *testing.T, cli string, ca *testCA, waitLog func(map[string]any) map[string]any, childOut func() string) {
	t.Helper()
	dial := func(dst string, tlsConf *tls.Config) (*quic.Conn, error) {
		var pc net.PacketConn
		inNS(t, cli, func() { pc = listenUDP(t, ":0") })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := quic.Dial(ctx, pc, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(dst)), tlsConf, quicTestConfig())
		if err == nil {
			t.Cleanup(func() { c.CloseWithError(0, "") })
		}
		return c, err
	}
	tunnelConf := &tls.Config{ServerName: "quic.cftunnel.com", RootCAs: ca.pool, NextProtos: longALPN()}
	captured, datagrams := captureQUICHello(t, tunnelConf)
	if datagrams < 2 {
		t.Fatalf("the tunnel hello fits in %d datagram; it must span two Initials", datagrams)
	}
	_, wantJA3 := captured.JA3()
	for _, dst := range []string{"10.77.2.2:7844", "[fd77:2::2]:7844"} {
		c, err := dial(dst, tunnelConf)
		if err != nil {
			t.Fatalf("QUIC to %s through the gateway: %v\n%s", dst, err, childOut())
		}
		payload := make([]byte, 64<<10)
		rand.Read(payload)
		if err := quicEcho(c, payload); err != nil {
			t.Fatalf("QUIC echo with %s: %v", dst, err)
		}
		host, port, _ := net.SplitHostPort(dst)
		d := waitLog(map[string]any{"mode": "quic", "decision": "allow", "rule": "tunnel-quic", "host": host, "port": port, "dst": dst, "sni": "quic.cftunnel.com"})
		if d["ja3"] != wantJA3 || d["ja4"] != captured.JA4(true) {
			t.Errorf("logged ja3 %v ja4 %v, want %s %s from the capture", d["ja3"], d["ja4"], wantJA3, captured.JA4(true))
		}
	}

	// Denied: an SNI no rule allows, and an allowed SNI to an address that
	// is not the name's (SNI spoofing, dst_mismatch).
	for _, tc := range []struct{ dst, sni, reason string }{
		{"10.77.2.2:7844", "evil.example", "sni_mismatch"},
		{"10.77.2.3:443", "allowed.egress.test", "dst_mismatch"},
	} {
		if _, err := dial(tc.dst, &tls.Config{ServerName: tc.sni, RootCAs: ca.pool, NextProtos: []string{quicALPN}}); err == nil {
			t.Errorf("QUIC to %s with SNI %s: handshake completed", tc.dst, tc.sni)
		}
		host, _, _ := net.SplitHostPort(tc.dst)
		if d := waitLog(map[string]any{"mode": "quic", "decision": "deny", "host": host, "sni": tc.sni, "reason": tc.reason}); d["dst"] != nil {
			t.Errorf("denied flow dialed %v", d["dst"])
		}
	}

	// HTTP/3 for an allowed host.
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.pool},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			var pc net.PacketConn
			inNS(t, cli, func() { pc = listenUDP(t, ":0") })
			return quic.DialEarly(ctx, pc, net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.77.2.2:443")), tlsCfg, cfg)
		},
	}
	defer tr.Close()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://allowed.egress.test/h3")
	if err != nil {
		t.Fatalf("HTTP/3 through the gateway: %v\n%s", err, childOut())
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "h3 allowed.egress.test /h3" {
		t.Errorf("HTTP/3 body %q", body)
	}
	waitLog(map[string]any{"mode": "quic", "decision": "allow", "rule": "web", "sni": "allowed.egress.test", "dst": "10.77.2.2:443"})
}

// TestTransparentGatewayChild is egressd inside the gateway namespace of
// TestTransparentGatewayNamespaces.
func TestTransparentGatewayChild(t *testing.T) {
	logPath := os.Getenv(gatewayChildEnv)
	if logPath == "" {
		t.Skip("runs inside TestTransparentGatewayNamespaces's gateway namespace")
	}
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, diags := policy.Parse([]policy.File{{Name: "gw.hcl", Src: []byte(`
server {
  allow_private_destinations = true
  hello_timeout = "2s"
  transparent_listen = "[::]:15001"
  upstream_mark      = 7765 # 0x1e55, exempted by the gateway script
  dns_listen         = "10.77.1.1:53"
  quic_listen        = "[::]:15002"
}
resolver { servers = ["10.77.2.2:53"] }
policy "web" {
  allow "web" {
    hosts = ["allowed.egress.test"]
  }
}
policy "cloudflare-tunnel" {
  allow "tunnel-http2" {
    hosts = ["region1.v2.argotunnel.com"]
    cidrs = ["10.77.2.0/24", "fd77:2::/64"]
    sni   = ["h2.cftunnel.com"]
    ports = [7844]
    protocols = ["tcp"]
  }
  allow "tunnel-quic" {
    hosts = ["region1.v2.argotunnel.com"]
    cidrs = ["10.77.2.0/24", "fd77:2::/64"]
    sni   = ["quic.cftunnel.com"]
    ports = [7844]
    protocols = ["quic"]
  }
}`)}})
	if diags.HasErrors() {
		t.Fatal(policy.FormatDiagnostics(diags))
	}
	srv, err := New(cfg, zerolog.New(f))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := ListenTransparent(cfg.Server.TransparentListen, os.Getenv(gatewayModeEnv) == "tproxy")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", cfg.Server.DNSListen)
	if err != nil {
		t.Fatal(err)
	}
	dl, err := net.Listen("tcp", cfg.Server.DNSListen)
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeDNS(pc, dl)
	qpc, err := ListenQUIC(cfg.Server.QUICListen)
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeQUIC(qpc)
	ctx, stop := signalContext()
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.ServeTransparent(ln); err != nil {
		t.Fatal(err)
	}
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
}

// resolveA asks server for name's A record and returns the first address.
func resolveA(t *testing.T, server, name string) string {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	in, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, server)
	if err != nil {
		t.Fatalf("resolve %s via %s: %v", name, server, err)
	}
	for _, rr := range in.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	t.Fatalf("resolve %s via %s: no A record in %v", name, server, in)
	return ""
}

// queryRcode returns the response code server gives for name's A record.
func queryRcode(t *testing.T, server, name string) int {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	in, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, server)
	if err != nil {
		t.Fatalf("query %s via %s: %v", name, server, err)
	}
	return in.Rcode
}
