package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// The transparent part's addresses: 10.78.0.0/16 (the proxy tests use
// 10.77.0.0/16). client 10.78.1.2 -- 10.78.1.1 gateway 10.78.2.1 --
// 10.78.2.2 upstream.
const (
	tClient   = "10.78.1.2"
	tGwIn     = "10.78.1.1"
	tGwOut    = "10.78.2.1"
	tUpstream = "10.78.2.2"
	tPort     = 15001
	tMark     = 7765 // 0x1e55, the gateway script's default exception
)

// Upstream ports: the redirected ones (443 bulk, 7844 TLS) and the same
// servers on ports the rules leave alone (8443, 8844) for the direct pass.
var tPorts = struct{ bulk, tls, bulkDirect, tlsDirect int }{443, 7844, 8443, 8844}

// enterNS switches the calling thread into the named network namespace
// (/var/run/netns/NAME). The caller must have locked the goroutine to its
// thread, and should let the goroutine end without unlocking it, so that
// the switched thread dies with it.
func enterNS(ns string) error {
	f, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := setns(f.Fd()); err != nil {
		return fmt.Errorf("setns %s: %v", ns, err)
	}
	return nil
}

// inNSDo runs f on a thread in network namespace ns ("": here), and waits;
// it fails without running f when the thread cannot enter ns.
func inNSDo(ns string, f func()) error {
	if ns == "" {
		f()
		return nil
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := enterNS(ns); err != nil {
			done <- err
			return
		}
		f()
		done <- nil
	}()
	return <-done
}

func (b *bench) transparentRuns() []*row {
	if !b.opt.transparent {
		return nil
	}
	skip := func(why string) []*row {
		msg := "transparent: skipped: " + why
		fmt.Fprintln(b.stderr, "egressd-bench: "+msg)
		b.notes = append(b.notes, msg)
		return nil
	}
	if os.Geteuid() != 0 {
		return skip("needs root (network namespaces, REDIRECT rules)")
	}
	if runtime.GOOS != "linux" {
		return skip("needs Linux")
	}
	ipTool, err := exec.LookPath("ip")
	if err != nil {
		return skip("ip is not installed")
	}
	backend := "--nft"
	if _, err := exec.LookPath("nft"); err != nil {
		if _, err := exec.LookPath("iptables"); err != nil {
			return skip("neither nft nor iptables is installed")
		}
		backend = "--iptables"
	}
	root, err := moduleRoot()
	if err != nil {
		return skip(err.Error())
	}
	script := filepath.Join(root, "deploy", "gateway", "egressd-gateway.sh")
	if _, err := os.Stat(script); err != nil {
		return skip(err.Error())
	}
	rows := newRows("transparent", false)
	cli, gw, err := b.buildNamespaces(ipTool, script, backend)
	if err != nil {
		return failRows(rows, fmt.Errorf("namespaces: %v", err))
	}
	direct := path{ns: cli, bulk: net.JoinHostPort(tUpstream, fmt.Sprint(tPorts.bulkDirect)), tls: net.JoinHostPort(tUpstream, fmt.Sprint(tPorts.tlsDirect))}
	via := path{ns: cli, counted: true, bulk: net.JoinHostPort(tUpstream, fmt.Sprint(tPorts.bulk)), tls: net.JoinHostPort(tUpstream, fmt.Sprint(tPorts.tls))}
	var tally logTally
	for r := range b.opt.runs {
		b.logf("transparent run %d/%d", r+1, b.opt.runs)
		rule := fmt.Sprintf("  allow \"bench-transparent\" {\n    cidrs = [\"10.78.2.0/24\"]\n    ports = [%d, %d]\n  }\n", tPorts.bulk, tPorts.tls)
		admin := "127.0.0.1:9099"
		cfg := benchConfig(fmt.Sprintf("  http_listen = \"127.0.0.1:3128\"\n  admin_listen = %q\n  transparent_listen = \"0.0.0.0:%d\"\n  upstream_mark = %d\n", admin, tPort, tMark),
			filepath.Join(b.dir, fmt.Sprintf("transparent-%d.log", r)), "127.0.0.1:53", rule)
		e, err := b.startEgressd(fmt.Sprintf("transparent-%d", r), cfg, admin, gw)
		if err != nil {
			return failRows(rows, err)
		}
		b.dialed.Store(0)
		b.tunnels.Store(0)
		if err := b.relayFigures(rows, direct, via, e.child, "the gateway", false, 16, 64); err != nil {
			return failRows(rows, err)
		}
		lc := settle(e.logPath, b.tunnels.Load())
		e.stop()
		tally.add(b.tunnels.Load(), b.tunnels.Load(), lc)
	}
	logRow(rows[rowLog], tally)
	return rows
}

// buildNamespaces creates client, gateway and upstream namespaces joined by
// veth pairs, installs the gateway script's REDIRECT rules in the gateway
// and starts the bulk and TLS upstreams in the upstream namespace. The
// namespaces are deleted by the bench's cleanup.
func (b *bench) buildNamespaces(ipTool, script, backend string) (cli, gw string, err error) {
	var r [3]byte
	rand.Read(r[:])
	sfx := hex.EncodeToString(r[:])
	cli, gw, up := "egb-cli-"+sfx, "egb-gw-"+sfx, "egb-up-"+sfx
	sh := func(args ...string) error {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	for _, ns := range []string{cli, gw, up} {
		if err := sh(ipTool, "netns", "add", ns); err != nil {
			return "", "", err
		}
		b.onCleanup(func() { exec.Command(ipTool, "netns", "del", ns).Run() })
	}
	vc, vg1, vg2, vu := "ebc"+sfx, "ebg1"+sfx, "ebg2"+sfx, "ebu"+sfx
	in := func(ns string, args ...string) []string {
		return append([]string{ipTool, "netns", "exec", ns}, args...)
	}
	cmds := [][]string{
		{ipTool, "link", "add", vc, "netns", cli, "type", "veth", "peer", "name", vg1, "netns", gw},
		{ipTool, "link", "add", vg2, "netns", gw, "type", "veth", "peer", "name", vu, "netns", up},
		in(cli, "ip", "addr", "add", tClient+"/24", "dev", vc),
		in(cli, "ip", "link", "set", vc, "up"),
		in(cli, "ip", "link", "set", "lo", "up"),
		in(cli, "ip", "route", "add", "default", "via", tGwIn),
		in(gw, "ip", "addr", "add", tGwIn+"/24", "dev", vg1),
		in(gw, "ip", "addr", "add", tGwOut+"/24", "dev", vg2),
		in(gw, "ip", "link", "set", vg1, "up"),
		in(gw, "ip", "link", "set", vg2, "up"),
		in(gw, "ip", "link", "set", "lo", "up"),
		in(gw, "sysctl", "-qw", "net.ipv4.ip_forward=1"),
		in(up, "ip", "addr", "add", tUpstream+"/24", "dev", vu),
		in(up, "ip", "link", "set", vu, "up"),
		in(up, "ip", "link", "set", "lo", "up"),
		in(up, "ip", "route", "add", "default", "via", tGwOut),
	}
	// Many short connections: reuse TIME_WAIT ports, widen the port range.
	for _, ns := range []string{cli, gw, up} {
		cmds = append(cmds, in(ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"), in(ns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"))
	}
	cmds = append(cmds, in(gw, "env", fmt.Sprintf("EGRESSD_PORT=%d", tPort), fmt.Sprintf("EGRESSD_MARK=0x%x", tMark),
		fmt.Sprintf("EGRESSD_PORTS=%d,%d", tPorts.bulk, tPorts.tls), "EGRESSD_QUIC_PORT=0", "EGRESSD_IPV6=0",
		"bash", script, "install", backend))
	for _, c := range cmds {
		if err := sh(c...); err != nil {
			return "", "", err
		}
	}
	var lerr error
	nserr := inNSDo(up, func() {
		var lns []net.Listener
		for _, p := range []int{tPorts.bulk, tPorts.bulkDirect, tPorts.tls, tPorts.tlsDirect} {
			ln, err := net.Listen("tcp", net.JoinHostPort(tUpstream, fmt.Sprint(p)))
			if err != nil {
				lerr = err
				return
			}
			b.onCleanup(func() { ln.Close() })
			lns = append(lns, ln)
		}
		go b.bulk.serve(lns[0])
		go b.bulk.serve(lns[1])
		go b.tlsUp.serve(lns[2])
		go b.tlsUp.serve(lns[3])
	})
	if nserr != nil {
		return "", "", fmt.Errorf("upstream namespace: %v", nserr)
	}
	return cli, gw, lerr
}
