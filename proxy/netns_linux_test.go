package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egressd/egressd/policy"
)

// needRoot skips a test that needs root, naming what is missing, except
// under CI=true, where .ci/run runs as root and the test must run.
func needRoot(t *testing.T, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		unavailable(t, "%s needs root (CI runs as root)", what)
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

const netnsChildEnv = "EGRESSD_NETNS_CHILD"

// TestTransparentNetns runs the transparent gateway with real REDIRECT
// rules (iptables and ip6tables) in a network namespace the test creates:
// only its loopback, nothing leaves the machine. The work happens in
// TestTransparentNetnsChild, run inside the namespace with ip netns exec.
func TestTransparentNetns(t *testing.T) {
	needRoot(t, "the network-namespace test")
	ip := needTool(t, "ip")
	needTool(t, "iptables")
	needTool(t, "ip6tables")
	var b [4]byte
	rand.Read(b[:])
	ns := "egressd-test-" + hex.EncodeToString(b[:])
	run(t, ip, "netns", "add", ns)
	t.Cleanup(func() { exec.Command(ip, "netns", "del", ns).Run() })
	cmd := exec.Command(ip, "netns", "exec", ns, os.Args[0], "-test.run", "^TestTransparentNetnsChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), netnsChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestTransparentNetnsChild")) {
		t.Fatalf("inside namespace %s: %v\n%s", ns, err, out)
	}
}

// TestTransparentNetnsChild runs only inside TestTransparentNetns's
// namespace.
func TestTransparentNetnsChild(t *testing.T) {
	if os.Getenv(netnsChildEnv) != "1" {
		t.Skip("runs inside TestTransparentNetns's network namespace")
	}
	run(t, "ip", "link", "set", "lo", "up")
	// Upstreams on port 7844 of 127.0.0.2 and ::1.
	var upPorts []string
	for _, a := range []string{"127.0.0.2:7844", "[::1]:7844"} {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		serveEcho(ln)
		upPorts = append(upPorts, a)
	}
	// The gateway: one dual-stack listener.
	gw, err := ListenTransparent("[::]:15001", false)
	if err != nil {
		t.Fatal(err)
	}
	// Redirect the namespace's outbound TCP 7844 and 443 to the gateway,
	// except egressd's own marked connections (loop prevention).
	for _, tool := range []string{"iptables", "ip6tables"} {
		run(t, tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "mark", "--mark", "1", "-j", "RETURN")
		run(t, tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "multiport", "--dports", "443,7844", "-j", "REDIRECT", "--to-ports", "15001")
	}
	cfg, diags := policy.Parse([]policy.File{{Name: "ns.hcl", Src: []byte(`
server {
  allow_private_destinations = true
  hello_timeout = "2s"
  upstream_mark = 1
}
resolver { servers = ["127.0.0.1:53"] }
policy "cloudflare-tunnel" {
  allow "tunnel-http2" {
    cidrs = ["127.0.0.0/8", "::1/128"]
    sni   = ["h2.cftunnel.com"]
    ports = [7844]
  }
}`)}})
	if diags.HasErrors() {
		t.Fatal(policy.FormatDiagnostics(diags))
	}
	logBuf := &syncBuffer{}
	srv, err := New(cfg, zerolog.New(logBuf))
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTransparent(gw)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	e := &env{log: logBuf}
	for i, dst := range upPorts {
		c, err := net.Dial("tcp", dst)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		first := append(clientHelloBytes("h2.cftunnel.com"), fmt.Sprintf("payload %d", i)...)
		if got := exchange(t, c.(*net.TCPConn), first); !bytes.Equal(got, first) {
			t.Fatalf("%s through the gateway: got %d bytes, want %d; log:\n%s", dst, len(got), len(first), logBuf.buf.String())
		}
		c.Close()
		host, p, _ := net.SplitHostPort(dst)
		e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "allow", "host": host, "port": p, "dst": dst, "sni": "h2.cftunnel.com"})
	}
	// Denied SNI through the real redirect.
	c, err := net.Dial("tcp", "127.0.0.2:7844")
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if got := exchange(t, c.(*net.TCPConn), clientHelloBytes("evil.example")); len(got) != 0 {
		t.Fatalf("denied sni got %q", got)
	}
	e.waitLog(t, "decision", map[string]any{"mode": "transparent", "decision": "deny", "reason": "sni_mismatch", "host": "127.0.0.2", "port": strconv.Itoa(7844)})
	// No connection ever looped back to the gateway.
	if strings.Contains(logBuf.buf.String(), "egressd's own listener") {
		t.Errorf("redirect loop:\n%s", logBuf.buf.String())
	}
}

// TestListenTransparentTProxy: with tproxy the listener socket carries
// IP_TRANSPARENT, and the original destination is the local address.
func TestListenTransparentTProxy(t *testing.T) {
	needRoot(t, "IP_TRANSPARENT")
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		ln, err := ListenTransparent(addr, true)
		if err != nil {
			t.Fatalf("ListenTransparent(%s, true): %v", addr, err)
		}
		defer ln.Close()
		if _, ok := ln.(tproxyListener); !ok {
			t.Fatalf("%s: listener %T is not marked as TPROXY", addr, ln)
		}
		rc, err := ln.(tproxyListener).Listener.(*net.TCPListener).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var gerr error
		rc.Control(func(fd uintptr) {
			if strings.HasPrefix(addr, "[") {
				v, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_IPV6, ipv6Transparent)
			} else {
				v, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_IP, syscall.IP_TRANSPARENT)
			}
		})
		if gerr != nil || v != 1 {
			t.Errorf("%s: transparent option = %d, %v; want 1", addr, v, gerr)
		}
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		got, err := localDst(sc)
		if err != nil || got.String() != ln.Addr().String() {
			t.Errorf("%s: localDst = %v, %v; want %s", addr, got, err, ln.Addr())
		}
	}
	if ln, err := ListenTransparent("127.0.0.1:0", false); err != nil {
		t.Fatal(err)
	} else if _, ok := ln.(tproxyListener); ok {
		ln.Close()
		t.Error("a redirect-mode listener is marked as TPROXY")
	} else {
		ln.Close()
	}
}
