package proxy

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egressd/egressd/policy"
)

// shutdownWith runs Shutdown with a grace of 3 s while release is closed
// 300 ms in, and returns the decision log as it was when Shutdown
// returned.
func (e *env) shutdownWith(t *testing.T, release chan struct{}) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	go func() {
		time.Sleep(300 * time.Millisecond)
		close(release)
	}()
	e.srv.Shutdown(ctx)
	return e.log.String()
}

// decidedBeforeShutdown fails unless log, as Shutdown left it, has one
// decision line of mode, written before the "shutdown" line.
func decidedBeforeShutdown(t *testing.T, log, mode string) {
	t.Helper()
	d := strings.Index(log, `"mode":"`+mode+`"`)
	end := strings.Index(log, `"message":"shutdown"`)
	if d < 0 || end < 0 || d > end {
		t.Errorf("Shutdown returned without waiting for the %s decision in flight when it began:\n%s", mode, log)
	}
}

// TestShutdownWaitsForPasswordCheck: a CONNECT whose credentials are being
// checked when Shutdown begins is waited for: its decision line comes
// before Shutdown's last line (under serve, the log is closed after it).
func TestShutdownWaitsForPasswordCheck(t *testing.T) {
	e := newEnv(t)
	e.start(t, authPolicy(t, "p", "pw"))
	real := checkPassword
	t.Cleanup(func() { checkPassword = real })
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	checkPassword = func(p *policy.Policy, user, password string) bool {
		once.Do(func() { close(entered) })
		<-release
		return real(p, user, password)
	}
	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	authority := fmt.Sprintf("allowed.egress.test:%d", e.tlsPort)
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n", authority, authority, proxyBasic("ci", "pw"))
	awaitSignal(t, entered, "the password check")
	decidedBeforeShutdown(t, e.shutdownWith(t, release), "connect")
}

// TestShutdownWaitsForQUICDecision: a QUIC flow whose destination
// verification waits for DNS when Shutdown begins is waited for too.
func TestShutdownWaitsForQUICDecision(t *testing.T) {
	e := newEnv(t)
	var asked, release chan struct{}
	e.dnsAddr, asked, release = heldDNS(t)
	up, _ := udpSink(t)
	q := e.startQUIC(t, `
server { allow_private_destinations = true }
resolver { servers = ["DNS_ADDR"] }
policy "p" {
  allow "slow" {
    hosts = ["slow.egress.test"]
    ports = [QUIC_PORT]
  }
}
`, up.Port())
	c := q.socket(t, up)
	h := quicClientHello(t, "slow.egress.test")
	if _, err := c.WriteTo(sealQUICInitial(t, quicInitialSpec{dcid: []byte{1, 2, 3, 4, 5, 6, 7, 8}, frames: quicCrypto(0, h), padTo: 1200}), q.addr); err != nil {
		t.Fatal(err)
	}
	awaitSignal(t, asked, "the verification lookup")
	decidedBeforeShutdown(t, e.shutdownWith(t, release), "quic")
}
