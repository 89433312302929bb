package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Peers are the relays egressd's users would run instead, measured with
// --peers beside egressd on the same machine in the same run, each against
// a direct run next to it and with logging of every connection on, as the
// issue's figures were taken. They run from the machine's packages
// (Debian: haproxy, nginx-light + libnginx-mod-stream, squid, tinyproxy)
// with configurations generated here. CONNECT peers are asked for the
// upstreams by address (they have no way to use the bench's DNS), which
// spares them the lookup egressd makes.
type peerSpec struct {
	name string // also the executable, looked up on PATH; -v prints its version
	// connect: an HTTP CONNECT proxy on one port. Otherwise it routes on
	// the ClientHello's SNI, with one port per upstream (bulk, TLS, idle).
	connect bool
	// user is the account the peer switches to when started as root, which
	// must be able to write its logs ("": it writes them as root).
	user string
	// config returns the command line and the files to write into dir,
	// given the directory for what the peer writes (logs, pid), the
	// listen addresses and the upstream ports (bulk, TLS, idle).
	config func(dir, logs string, listen []string, up [3]int) (args []string, files map[string]string)
}

// maxPeerConns is the connection limit set in each peer's configuration:
// the RSS figure's 2,000 idle tunnels (two sockets each) must fit, and
// HAProxy refuses to start when maxconn needs more descriptors than the
// hard RLIMIT_NOFILE (20,000 on the machine the README table comes from).
const maxPeerConns = 8000

var peerSpecs = []peerSpec{
	{name: "haproxy", config: haproxyConfig},
	{name: "nginx", config: nginxConfig}, // the master (root) opens the logs
	{name: "squid", connect: true, user: "proxy", config: squidConfig},
	{name: "tinyproxy", connect: true, user: tinyproxyUser, config: tinyproxyConfig},
}

// haproxyConfig: TCP mode, one frontend per upstream that waits for the
// ClientHello and routes on req.ssl_sni, tcplog to stdout.
func haproxyConfig(dir, _ string, listen []string, up [3]int) ([]string, map[string]string) {
	var s strings.Builder
	fmt.Fprintf(&s, "global\n  maxconn %d\n  log stdout format raw local0\n", maxPeerConns)
	s.WriteString("defaults\n  mode tcp\n  log global\n  option tcplog\n  timeout connect 10s\n  timeout client 10m\n  timeout server 10m\n")
	for i, name := range []string{"bulk", "tls", "idle"} {
		fmt.Fprintf(&s, "frontend %s\n  bind %s\n  tcp-request inspect-delay 10s\n  tcp-request content accept if { req.ssl_hello_type 1 }\n  use_backend %s if { req.ssl_sni -i %s }\n", name, listen[i], name, benchHost)
		fmt.Fprintf(&s, "backend %s\n  server up 127.0.0.1:%d\n", name, up[i])
	}
	conf := filepath.Join(dir, "haproxy.cfg")
	return []string{"-db", "-f", conf}, map[string]string{conf: s.String()}
}

// nginxConfig: the stream module with ssl_preread, routing on
// $ssl_preread_server_name, one access-log line per session.
func nginxConfig(dir, logs string, listen []string, up [3]int) ([]string, map[string]string) {
	var s strings.Builder
	// Debian builds the stream module as a dynamic module.
	if mod := "/usr/lib/nginx/modules/ngx_stream_module.so"; fileExists(mod) {
		fmt.Fprintf(&s, "load_module %s;\n", mod)
	}
	fmt.Fprintf(&s, "daemon off;\nworker_processes auto;\npid %s;\nerror_log %s warn;\n", filepath.Join(logs, "nginx.pid"), filepath.Join(logs, "error.log"))
	fmt.Fprintf(&s, "events { worker_connections %d; }\nstream {\n", maxPeerConns)
	s.WriteString("  log_format relay '$remote_addr [$time_local] $status $bytes_sent $bytes_received $session_time \"$ssl_preread_server_name\" \"$upstream_addr\"';\n")
	fmt.Fprintf(&s, "  access_log %s relay;\n", filepath.Join(logs, "access.log"))
	s.WriteString("  map \"$ssl_preread_server_name $server_port\" $up {\n")
	for i, l := range listen {
		_, p, _ := net.SplitHostPort(l)
		fmt.Fprintf(&s, "    \"%s %s\" 127.0.0.1:%d;\n", benchHost, p, up[i])
	}
	s.WriteString("  }\n")
	for _, l := range listen {
		fmt.Fprintf(&s, "  server {\n    listen %s;\n    ssl_preread on;\n    preread_timeout 10s;\n    proxy_pass $up;\n    proxy_timeout 10m;\n  }\n", l)
	}
	s.WriteString("}\n")
	conf := filepath.Join(dir, "nginx.conf")
	return []string{"-c", conf, "-e", filepath.Join(logs, "error.log")}, map[string]string{conf: s.String()}
}

// squidConfig: a CONNECT proxy with no cache, an access log line per
// tunnel, in the foreground (-N).
func squidConfig(dir, logs string, listen []string, _ [3]int) ([]string, map[string]string) {
	var s strings.Builder
	fmt.Fprintf(&s, "http_port %s\nhttp_access allow all\ncache deny all\ncache_mem 0 MB\ncache_store_log none\npinger_enable off\n", listen[0])
	fmt.Fprintf(&s, "access_log stdio:%s\ncache_log %s\npid_filename %s\ncoredump_dir %s\n",
		filepath.Join(logs, "access.log"), filepath.Join(logs, "cache.log"), filepath.Join(logs, "squid.pid"), logs)
	fmt.Fprintf(&s, "visible_hostname egressd-bench\nmax_filedescriptors %d\nshutdown_lifetime 1 seconds\n", 2*maxPeerConns+100)
	conf := filepath.Join(dir, "squid.conf")
	return []string{"-N", "-f", conf}, map[string]string{conf: s.String()}
}

// tinyproxyUser and tinyproxyGroup are the account tinyproxy switches to
// when started as root (Debian's; the peer's logs directory is given to
// the user).
const tinyproxyUser, tinyproxyGroup = "nobody", "nogroup"

// tinyproxyConfig: a CONNECT proxy logging each connection, in the
// foreground (-d).
func tinyproxyConfig(dir, logs string, listen []string, _ [3]int) ([]string, map[string]string) {
	host, port, _ := net.SplitHostPort(listen[0])
	var s strings.Builder
	if os.Geteuid() == 0 {
		fmt.Fprintf(&s, "User %s\nGroup %s\n", tinyproxyUser, tinyproxyGroup)
	}
	fmt.Fprintf(&s, "Port %s\nListen %s\nTimeout 600\nMaxClients %d\nAllow 127.0.0.1\nLogLevel Connect\nDisableViaHeader Yes\n", port, host, maxPeerConns)
	fmt.Fprintf(&s, "LogFile %q\n", filepath.Join(logs, "tinyproxy.log"))
	conf := filepath.Join(dir, "tinyproxy.conf")
	return []string{"-d", "-c", conf}, map[string]string{conf: s.String()}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// parsePeers resolves --peers: a comma-separated list of names, or "all"
// for every peer whose binary is on PATH; missing says which "all" left
// out and how to install them.
func parsePeers(list string) (out []peerSpec, missing []string, err error) {
	for _, name := range strings.FieldsFunc(list, func(r rune) bool { return r == ',' || r == ' ' }) {
		if name == "all" {
			for _, p := range peerSpecs {
				if _, err := exec.LookPath(p.name); err == nil {
					out = append(out, p)
				} else {
					missing = append(missing, notInstalled(p.name))
				}
			}
			continue
		}
		found := false
		for _, p := range peerSpecs {
			if p.name == name {
				out, found = append(out, p), true
			}
		}
		if !found {
			return nil, nil, fmt.Errorf("unknown peer %q; want some of %s, or all", name, peerNames())
		}
	}
	// A peer named twice ("all,nginx") is measured once.
	seen := map[string]bool{}
	out = slices.DeleteFunc(out, func(p peerSpec) bool {
		dup := seen[p.name]
		seen[p.name] = true
		return dup
	})
	return out, missing, nil
}

func peerNames() string {
	var n []string
	for _, p := range peerSpecs {
		n = append(n, p.name)
	}
	return strings.Join(n, ", ")
}

// startPeer writes p's configuration into its own directory under the
// bench's, starts it and waits until its first port accepts.
func (b *bench) startPeer(p peerSpec, name string, listen []string) (*child, error) {
	bin, err := exec.LookPath(p.name)
	if err != nil {
		return nil, errors.New(notInstalled(p.name))
	}
	// The configuration is writable by the bench's user only; what the
	// peer writes goes to logs/, owned by the account it switches to.
	// The bench's directory lets that account through without listing it.
	dir := filepath.Join(b.dir, name)
	logs := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chmod(b.dir, 0o711); err != nil {
		return nil, err
	}
	if p.user != "" && os.Geteuid() == 0 {
		u, err := user.Lookup(p.user)
		if err != nil {
			return nil, fmt.Errorf("%s runs as %s: %v", p.name, p.user, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(logs, uid, gid); err != nil {
			return nil, err
		}
	}
	args, files := p.config(dir, logs, listen, b.loopPorts)
	for f, text := range files {
		if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
			return nil, err
		}
	}
	return b.startChild(bin+" "+strings.Join(args, " "), exec.Command(bin, args...), "", listening(listen[0]))
}

// notInstalled says that the peer name is missing and how to install it.
func notInstalled(name string) string {
	pkgs := name
	if name == "nginx" {
		pkgs = "nginx-light libnginx-mod-stream"
	}
	return name + " is not installed (Debian: apt-get install " + pkgs + ")"
}

// peerVersion is the first line the peer prints for its version flag.
func peerVersion(p peerSpec) string {
	out, _ := exec.Command(p.name, "-v").CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(line)
}

// newPeerResults has a result per peer to measure. Each run of a peer
// (peerRun) measures bulk through 1 and 8 tunnels, conn/s at concurrency
// 64 and RSS per idle tunnel, with the peer's CPU (its whole process
// tree).
func (b *bench) newPeerResults() []*peerResult {
	var res []*peerResult
	for _, p := range b.opt.peers {
		res = append(res, &peerResult{spec: p, version: peerVersion(p), rows: newRows(p.name, true)})
	}
	return res
}

type peerResult struct {
	spec    peerSpec
	version string
	rows    []*row
	err     error
}

// peerRun is run r of one peer: the peer started afresh, its figures
// each beside a direct run.
func (b *bench) peerRun(pr *peerResult, r int) error {
	direct := b.loopPath("127.0.0.1", "", false)
	n := 1
	if !pr.spec.connect {
		n = 3
	}
	listen := make([]string, n)
	for i := range listen {
		a, err := freePort()
		if err != nil {
			return err
		}
		listen[i] = a
	}
	pp, err := b.startPeer(pr.spec, fmt.Sprintf("%s-%d", pr.spec.name, r), listen)
	if err != nil {
		return err
	}
	defer pp.stop()
	via := b.loopPath("127.0.0.1", listen[0], false)
	if !pr.spec.connect {
		via = path{bulk: listen[0], tls: listen[1], idle: listen[2]}
	}
	if err := b.relayFigures(pr.rows, direct, via, pp, pr.spec.name, true, 64); err != nil {
		return err
	}
	select {
	case <-pp.exited:
		return errors.New(pr.spec.name + " exited during the measurement: " + pp.out.String())
	default:
	}
	return nil
}

// peerFigures are the rows the peer table compares, and whether more is
// better: ratios to direct for throughput, via values for the rest.
var peerFigures = []struct {
	row    int
	higher bool
}{
	{rowBulk1, true}, {rowBulk8, true}, {rowCPU1, false}, {rowCPU8, false},
	{rowCPS64, true}, {rowP9964, false}, {rowCPUConn, false}, {rowCSConn, false}, {rowRSS, false},
}

// renderPeers prints egressd's CONNECT figures beside each peer's, and
// whether egressd is better than every peer on each: "yes" only when
// every peer has a comparable value and egressd's is strictly better.
func (b *bench) renderPeers(egressd []*row, peers []*peerResult) string {
	if len(peers) == 0 {
		return ""
	}
	if len(egressd) <= rowRSS {
		return "Peers not compared: egressd's CONNECT measurement failed.\n"
	}
	var s strings.Builder
	s.WriteString("Peers, measured in this run, each against a direct run next to it:\n\n| measurement | target | egressd (CONNECT)")
	for _, p := range peers {
		kind := "SNI"
		if p.spec.connect {
			kind = "CONNECT"
		}
		fmt.Fprintf(&s, " | %s (%s)", p.spec.name, kind)
	}
	s.WriteString(" | egressd better than every peer |\n|---|---|---")
	for range peers {
		s.WriteString("|---")
	}
	s.WriteString("|---|\n")
	for _, f := range peerFigures {
		er := egressd[f.row]
		ev, eok := figure(er)
		fmt.Fprintf(&s, "| %s | %s | %s", strings.TrimPrefix(er.name, "egressd "), er.target, b.figureText(er))
		var ahead, unknown []string // peers as good as egressd or better; peers with no comparable value
		for _, p := range peers {
			if p.err != nil {
				s.WriteString(" | FAILED")
				unknown = append(unknown, p.spec.name)
				continue
			}
			pr := p.rows[f.row]
			fmt.Fprintf(&s, " | %s", b.figureText(pr))
			pv, ok := figure(pr)
			switch {
			case !ok:
				unknown = append(unknown, p.spec.name)
			case f.higher && pv >= ev || !f.higher && pv <= ev:
				if pr.lowerBound && !f.higher {
					// At least pv: it may still be worse than egressd's.
					unknown = append(unknown, p.spec.name)
				} else {
					ahead = append(ahead, p.spec.name)
				}
			case er.lowerBound && !f.higher:
				// egressd's is at least ev: it may still be worse than pv.
				unknown = append(unknown, p.spec.name)
			}
		}
		switch {
		case !eok:
			s.WriteString(" | — |\n")
		case len(ahead) > 0:
			fmt.Fprintf(&s, " | no: %s |\n", strings.Join(ahead, ", "))
		case len(unknown) > 0:
			fmt.Fprintf(&s, " | unknown: %s |\n", strings.Join(unknown, ", "))
		default:
			s.WriteString(" | yes |\n")
		}
	}
	s.WriteString("\n")
	for _, p := range peers {
		if p.err != nil {
			fmt.Fprintf(&s, "%s FAILED: %s\n", p.spec.name, strings.ReplaceAll(strings.TrimSpace(p.err.Error()), "\n", " "))
		} else {
			fmt.Fprintf(&s, "%s: %s\n", p.spec.name, p.version)
		}
	}
	s.WriteString("Peers' CPU and RSS are those of their whole process tree; CONNECT peers are asked for upstreams by address, egressd by name.\n")
	s.WriteString("≥: a lower bound (threads of the relay exited during the run, taking their switch counts with them).\n")
	return s.String()
}

// figure is the value the peer table compares: the median ratio to direct
// for rows that have one, the median via value otherwise.
func figure(r *row) (float64, bool) {
	if len(r.ratio) > 0 && r.ratio[0] != 0 {
		m, _, _ := stats(r.ratio)
		return m, true
	}
	if len(r.via) > 0 {
		m, _, _ := stats(r.via)
		return m, true
	}
	return 0, false
}

func (b *bench) figureText(r *row) string {
	switch {
	case len(r.ratio) > 0 && r.ratio[0] != 0 && strings.Contains(r.name, "latency"):
		return b.fmtVals("%.2f", r.ratio, 1) + "×"
	case len(r.ratio) > 0 && r.ratio[0] != 0:
		return b.fmtVals("%.0f", r.ratio, 100) + " %"
	case r.lowerBound:
		return "≥ " + b.fmtVals(r.format, r.via, 1)
	default:
		return b.fmtVals(r.format, r.via, 1)
	}
}
