package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// blackholeDialer is a DialContext for Server.DialContext: addresses in
// 2001:db8::/32 and 192.0.2.0/24 (documentation space, never dialed for
// real) swallow the
// connect until its context ends, as a path that drops SYNs does; the
// rest are dialed on loopback. late, when set, is an address that
// connects, to lateTo, after lateBy whatever its context says, and conns
// records every connection made and whether it was closed.
type blackholeDialer struct {
	late, lateTo netip.AddrPort
	lateBy       time.Duration

	mu                      sync.Mutex
	conns                   []*recordedConn
	attempts, pending, peak int
}

type recordedConn struct {
	net.Conn
	dst    string
	mu     sync.Mutex
	closed bool
}

func (c *recordedConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return c.Conn.Close()
}

func (c *recordedConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

var docNets = []netip.Prefix{netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("192.0.2.0/24")}

func (b *blackholeDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	dst := netip.MustParseAddrPort(addr)
	b.mu.Lock()
	b.attempts++
	b.pending++
	b.peak = max(b.peak, b.pending)
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.pending--
		b.mu.Unlock()
	}()
	if docNets[0].Contains(dst.Addr()) || docNets[1].Contains(dst.Addr()) {
		<-ctx.Done()
		return nil, fmt.Errorf("dial %s: %w", addr, ctx.Err())
	}
	if dst == b.late {
		time.Sleep(b.lateBy) // ignores ctx: connects after the race is won
		ctx, addr = context.Background(), b.lateTo.String()
	}
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	rc := &recordedConn{Conn: c, dst: dst.String()}
	b.mu.Lock()
	b.conns = append(b.conns, rc)
	b.mu.Unlock()
	return rc, nil
}

// install makes s dial through b. Its checkDial hook lets the
// documentation addresses through to b, which never dials them, and
// refuses everything else off loopback, as guardLoopbackDials does.
func (b *blackholeDialer) install(t *testing.T) func(*Server) {
	return func(s *Server) {
		s.DialContext = b.dial
		s.checkDial = func(_ string, dst netip.AddrPort) error {
			if dst.Addr().IsLoopback() || docNets[0].Contains(dst.Addr()) || docNets[1].Contains(dst.Addr()) {
				return nil
			}
			t.Errorf("egressd dialed %s", dst)
			return fmt.Errorf("test: refusing to dial %s", dst)
		}
	}
}

func (b *blackholeDialer) recorded() []*recordedConn {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.conns)
}

// answerDNS serves fixed records: AAAA and A lists for every name.
func answerDNS(t *testing.T, aaaa, a []string) string {
	return serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		list, typ := a, "A"
		if q.Question[0].Qtype == dns.TypeAAAA {
			list, typ = aaaa, "AAAA"
		}
		for _, addr := range list {
			rr, _ := dns.NewRR(q.Question[0].Name + " 300 IN " + typ + " " + addr)
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
}

const dialPolicy = `
server { dial_timeout = "DIAL_TIMEOUT" }
resolver { servers = ["DNS_ADDR"] }
policy "p" {
  allow "dual" {
    hosts       = ["dual.egress.test"]
    cidrs       = ["127.0.0.0/8"]
    ports       = [ECHO_PORT]
    require_tls = false
  }
}`

// TestDialHappyEyeballs: the addresses of a name are raced (RFC 8305): an
// address that swallows the connect (IPv6 broken on the path) delays the
// connection by happyEyeballsDelay per attempt, not by dial_timeout per
// address, and the whole dial fails within dial_timeout.
func TestDialHappyEyeballs(t *testing.T) {
	blackholed := []string{"2001:db8::1", "2001:db8::2", "2001:db8::3"}
	for _, tc := range []struct {
		name        string
		aaaa, a     []string
		timeout     time.Duration
		wantDst     string // "" for a dial_error
		maxDuration time.Duration
	}{
		// Old: 3 x 2 s before 127.0.0.1 was tried.
		{"IPv6 blackholed, IPv4 works", blackholed, []string{"127.0.0.1"}, 2 * time.Second, "127.0.0.1", 1200 * time.Millisecond},
		// Old: 2 s.
		{"first IPv4 address blackholed", nil, []string{"192.0.2.1", "127.0.0.1"}, 2 * time.Second, "127.0.0.1", 1200 * time.Millisecond},
		// Old: 3 x 1 s.
		{"every address blackholed", blackholed, nil, time.Second, "", 1800 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.dnsAddr = answerDNS(t, tc.aaaa, tc.a)
			var bd blackholeDialer
			e.configure = bd.install(t)
			e.start(t, strings.Replace(dialPolicy, "DIAL_TIMEOUT", tc.timeout.String(), 1))
			c, br, resp := e.connect(t, fmt.Sprintf("dual.egress.test:%d", e.echoPort))
			if resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %s", resp.Status)
			}
			t0 := time.Now()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte("ping"))
			got := make([]byte, 4)
			n, _ := io.ReadFull(br, got)
			took := time.Since(t0)
			d := e.clientDecision(t, c, nil)
			if tc.wantDst == "" {
				if n != 0 || d["reason"] != "dial_error" {
					t.Errorf("echoed %q, decision %v; want dial_error", got[:n], d)
				}
			} else if string(got[:n]) != "ping" || !strings.HasPrefix(fmt.Sprint(d["dst"]), tc.wantDst+":") {
				t.Errorf("echoed %q, dst %v; want ping through %s", got[:n], d["dst"], tc.wantDst)
			}
			if took > tc.maxDuration {
				t.Errorf("the dial took %v (dial_timeout %v), want under %v", took.Round(time.Millisecond), tc.timeout, tc.maxDuration)
			}
		})
	}
}

// TestDialAttemptsBounded: a name whose many addresses all swallow the
// connect costs at most maxDialAttempts sockets at once, and no attempt
// starts after dial_timeout.
func TestDialAttemptsBounded(t *testing.T) {
	var aaaa, a []string
	for i := 1; i <= 8; i++ {
		aaaa = append(aaaa, fmt.Sprintf("2001:db8::%d", i))
		a = append(a, fmt.Sprintf("192.0.2.%d", i))
	}
	e := newEnv(t)
	e.dnsAddr = answerDNS(t, aaaa, a)
	var bd blackholeDialer
	e.configure = bd.install(t)
	e.start(t, strings.Replace(dialPolicy, "DIAL_TIMEOUT", "1s", 1))
	c, br, _ := e.connect(t, fmt.Sprintf("dual.egress.test:%d", e.echoPort))
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("ping"))
	io.ReadAll(br)
	e.clientDecision(t, c, map[string]any{"reason": "dial_error"})
	time.Sleep(300 * time.Millisecond) // an attempt started late would show now
	bd.mu.Lock()
	defer bd.mu.Unlock()
	if bd.peak > maxDialAttempts || bd.attempts > 1000/250+1 {
		t.Errorf("%d attempts, %d at once; want at most %d at once, none after dial_timeout", bd.attempts, bd.peak, maxDialAttempts)
	}
}

// TestDialLosersClosed: an attempt that connects after another won the
// race is closed, not leaked.
func TestDialLosersClosed(t *testing.T) {
	e := newEnv(t)
	e.dnsAddr = answerDNS(t, nil, []string{"127.0.0.2", "127.0.0.1"})
	bd := blackholeDialer{lateBy: 600 * time.Millisecond}
	e.configure = bd.install(t)
	bd.late = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), uint16(e.echoPort))
	bd.lateTo = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(e.echoPort))
	e.start(t, strings.Replace(dialPolicy, "DIAL_TIMEOUT", "5s", 1))
	c, br, _ := e.connect(t, fmt.Sprintf("dual.egress.test:%d", e.echoPort))
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("ping"))
	got := make([]byte, 4)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo %q, %v", got, err)
	}
	if d := e.clientDecision(t, c, nil); !strings.HasPrefix(fmt.Sprint(d["dst"]), "127.0.0.1:") {
		t.Errorf("dst %v, want the address that connected first (127.0.0.1)", d["dst"])
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var late *recordedConn
		for _, rc := range bd.recorded() {
			if strings.HasPrefix(rc.dst, "127.0.0.2:") {
				late = rc
			}
		}
		if late != nil && late.isClosed() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the losing attempt's connection (%v) was not closed within 5 s", late != nil)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestInterleaveFamilies(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"1", "1"},
		{"1 a", "1 a"},
		{"a b c 1 2", "a 1 b 2 c"},
		{"1 2 3 a", "1 a 2 3"},
		{"a 1 2 3", "a 1 2 3"},
		{"a b", "a b"},
	} {
		// Letters are IPv6 addresses, digits IPv4 ones.
		addr := func(s string) netip.AddrPort {
			if s[0] >= '0' && s[0] <= '9' {
				return netip.MustParseAddrPort("192.0.2." + s + ":443")
			}
			return netip.MustParseAddrPort("[2001:db8::" + s + "]:443")
		}
		name := func(d netip.AddrPort) string {
			if d.Addr().Is4() {
				return strings.TrimPrefix(d.Addr().String(), "192.0.2.")
			}
			return strings.TrimPrefix(d.Addr().String(), "2001:db8::")
		}
		var in []netip.AddrPort
		for _, f := range strings.Fields(c.in) {
			in = append(in, addr(f))
		}
		var got []string
		for _, d := range interleaveFamilies(in) {
			got = append(got, name(d))
		}
		if g := strings.Join(got, " "); g != c.want {
			t.Errorf("interleaveFamilies(%s) = %s, want %s", c.in, g, c.want)
		}
	}
}
