//go:build linux

package proxy

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// smallRcvbuf dials with a 4 KiB receive buffer, so that answers the
// client does not read fill the path quickly.
var smallRcvbuf = net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
	return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
}}

// blockedIn counts the goroutines whose stacks contain both fn and at.
func blockedIn(fn, at string) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, fn) && strings.Contains(g, at) {
			n++
		}
	}
	return n
}

// TestDNSTCPUnreadAnswers: a DNS-over-TCP client that pipelines queries
// with large answers and never reads them: the answer that cannot be
// written ends its connection after dnsWriteTimeout (miekg/dns applies no
// write deadline of its own).
func TestDNSTCPUnreadAnswers(t *testing.T) {
	e := newEnv(t)
	_, tl := e.startBigDNS(t, 200) // about 51 KB: an answer near the TCP message limit
	c, err := smallRcvbuf.Dial("tcp", tl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range dnsMaxTCPQueries {
		q := new(dns.Msg)
		q.SetQuestion("big.egress.test.", dns.TypeTXT)
		q.Id = uint16(i + 1)
		w, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(w))), w...)); err != nil {
			break // egressd stopped reading
		}
	}
	if !eventuallyWithin(dnsWriteTimeout+5*time.Second, func() bool {
		return e.srv.limits.open() == 0 && blockedIn("dnsHandler).ServeDNS", "poll.(*FD).Write") == 0
	}) {
		t.Fatalf("%v after the client stopped reading: %d slots taken, %d DNS handlers blocked in a write",
			dnsWriteTimeout+5*time.Second, e.srv.limits.open(), blockedIn("dnsHandler).ServeDNS", "poll.(*FD).Write"))
	}
}

// TestShutdownWhileDNSDrains: Shutdown stops the proxy port at once, not
// only after the DNS server's in-flight queries are answered.
func TestShutdownWhileDNSDrains(t *testing.T) {
	e := newEnv(t)
	asked := make(chan struct{}, 1)
	e.dnsAddr = serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		select {
		case asked <- struct{}{}:
		default:
		}
		time.Sleep(2 * time.Second)
		m := new(dns.Msg)
		m.SetReply(q)
		w.WriteMsg(m)
	})
	e.start(t, `
resolver { servers = ["DNS_ADDR"] }
policy "gw" {
  allow "slow" { hosts = ["slow.egress.test"] }
}
`)
	tl := listen(t)
	go e.srv.ServeDNS(nil, tl)
	go func() {
		c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
		q := new(dns.Msg)
		q.SetQuestion("slow.egress.test.", dns.TypeA)
		c.Exchange(q, tl.Addr().String())
	}()
	select {
	case <-asked:
	case <-time.After(5 * time.Second):
		t.Fatal("the query did not reach the upstream")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { e.srv.Shutdown(ctx); close(done) }()
	if !eventuallyWithin(time.Second, func() bool {
		c, err := net.DialTimeout("tcp", e.proxyAddr, 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err != nil
	}) {
		t.Error("the proxy port still accepts 1 s into Shutdown, while a DNS query is in flight")
	}
	<-done
}

// TestDNSInFlightPerClient: one client whose queries the upstream is slow
// to answer takes at most its share of the forwarding slots: another
// client's query is still forwarded and answered.
func TestDNSInFlightPerClient(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	var held atomic.Int32
	e.dnsAddr = serveTestDNS(t, "127.0.0.1:0", func(w dns.ResponseWriter, q *dns.Msg) {
		if strings.HasPrefix(q.Question[0].Name, "slow") {
			held.Add(1)
			select {
			case <-release:
			case <-time.After(10 * time.Second):
			}
		}
		m := new(dns.Msg)
		m.SetReply(q)
		rr, _ := dns.NewRR(q.Question[0].Name + " 60 IN A 127.0.0.1")
		m.Answer = append(m.Answer, rr)
		w.WriteMsg(m)
	})
	defer close(release)
	e.start(t, `
resolver { servers = ["DNS_ADDR"] }
policy "gw" {
  allow "zone" { hosts = ["*.egress.test"] }
}
`)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.ServeDNS(pc, nil)
	addr := pc.LocalAddr().String()
	// 127.0.0.2 asks for more slow names than its share, without waiting.
	a, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ask := dnsMaxInFlightPerClient + 20
	for i := range ask {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("slow%d.egress.test.", i), dns.TypeA)
		b, _ := m.Pack()
		a.Write(b)
		if i%16 == 15 {
			time.Sleep(2 * time.Millisecond) // no drops in the sockets' buffers
		}
	}
	waitFor(t, "the client's share of queries held at the upstream", func() bool { return held.Load() >= dnsMaxInFlightPerClient })
	time.Sleep(100 * time.Millisecond)
	if n := held.Load(); n != dnsMaxInFlightPerClient {
		t.Errorf("%d of one client's queries forwarded at once, want its share %d", n, dnsMaxInFlightPerClient)
	}
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3)}}}
	m := new(dns.Msg)
	m.SetQuestion("fast.egress.test.", dns.TypeA)
	in, _, err := c.Exchange(m, addr)
	if err != nil || in.Rcode != dns.RcodeSuccess {
		t.Errorf("another client's query while the first holds its share: %v %v, want an answer", in, err)
	}
}
