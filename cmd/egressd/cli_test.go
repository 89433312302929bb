package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestMain lets the test binary run as egressd itself (EGRESSD_MAIN=1), so
// serve is tested as a real process with real signals.
func TestMain(m *testing.M) {
	if os.Getenv("EGRESSD_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func writeFile(t *testing.T, dir, name, src string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const validConfig = `
policy "p" {
  allow "api" {
    hosts = ["api.example.com", "*.cdn.example.com"]
    ports = [443, "8443-8444"]
  }
  allow "fingerprinted" {
    hosts = ["fp.example.com"]
    ja3   = ["3fed133de60c35724739b913924b6c24"]
  }
  allow "tunnel" {
    cidrs = ["198.41.192.0/24"]
    sni   = ["h2.cftunnel.com"]
    ports = [7844]
  }
  allow "internal" {
    hosts = ["db.internal.example.com"]
    cidrs = ["10.1.0.0/16"]
    ports = [5432]
    require_tls = false
  }
  deny "legacy" { hosts = ["legacy.cdn.example.com"] }
}
`

// and joins regexps that must all match, in any order.
const and = "\x00"

func TestCLI(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good.hcl", validConfig)
	bad := writeFile(t, dir, "bad.hcl", `policy "p" {
  allow "r" {
    hosts = ["ok.example.com", "a.*.example.com"]
    ports = [443, "9-3"]
    colour = "blue"
  }
}
`)
	scoped := writeFile(t, dir, "scoped.hcl", `policy "ci" {
  clients {
    cidrs = ["10.9.0.0/16"]
    users = ["ci"]
  }
  allow "npm" { hosts = ["registry.npmjs.org"] }
}
policy "audited" {
  mode = "audit"
  clients { cidrs = ["10.8.0.0/16"] }
  allow "none" { hosts = ["nothing.example"] }
}
user "ci" { password_hash = "$2a$10$CGnmuZ1eox82qTJQvO5/w.Hy0JwSLJooh6et.KZ.oWGiC5lDnpHrm" }
`)
	tests := []struct {
		name     string
		args     []string
		code     int
		stdout   string // regexp the output must match
		noStdout bool
	}{
		{"no args", nil, exitUsage, "", true},
		{"unknown command", []string{"frobnicate"}, exitUsage, "", true},
		{"help", []string{"--help"}, exitOK, `egressd serve`, false},
		{"version", []string{"version"}, exitOK, `^egressd \S+\n$`, false},
		{"--version", []string{"--version"}, exitOK, `^egressd \S+\n$`, false},
		{"version --help", []string{"version", "--help"}, exitOK, "", true},
		{"version with an argument", []string{"version", "now"}, exitUsage, "", true},
		{"validate good", []string{"validate", "--config", good}, exitOK, `good.hcl: valid`, false},
		{"validate bad shows every error with file:line:col", []string{"validate", "--config", bad}, exitFail,
			`(?m)^.*bad\.hcl:3:32: error: ` + and + `(?m)^.*bad\.hcl:4:19: error: ` + and + `(?m)^.*bad\.hcl:5:5: error: `, false},
		{"validate needs --config", []string{"validate"}, exitUsage, "", true},
		{"serve with a zero grace", []string{"serve", "--shutdown-grace", "0s"}, exitUsage, "", true},
		{"serve with a negative grace", []string{"serve", "--shutdown-grace=-5s"}, exitUsage, "", true},
		{"validate --help", []string{"validate", "--help"}, exitOK, "", true},
		{"check allow", []string{"check", "--config", good, "api.example.com:443"}, exitOK, `^allow api.example.com:443 policy=p rule=api reason=allowed\n$`, false},
		{"check range", []string{"check", "--config", good, "x.cdn.example.com:8444"}, exitOK, `rule=api`, false},
		{"check deny rule", []string{"check", "--config", good, "legacy.cdn.example.com:443"}, exitFail, `^deny .* rule=legacy reason=denied_by_rule`, false},
		{"check no rule", []string{"check", "--config", good, "example.org:443"}, exitFail, `^deny example.org:443 reason=no_rule\n$`, false},
		{"check sni mismatch", []string{"check", "--config", good, "--sni", "other.example.com", "api.example.com:443"}, exitFail, `reason=sni_mismatch`, false},
		{"check flags after target", []string{"check", "--config", good, "fp.example.com:443", "--ja3", "3FED133DE60C35724739B913924B6C24"}, exitOK, `rule=fingerprinted`, false},
		{"check ja3 mismatch", []string{"check", "--config", good, "--ja3", "00000000000000000000000000000000", "fp.example.com:443"}, exitFail, `reason=ja3_mismatch`, false},
		{"check tunnel ip with sni", []string{"check", "--config", good, "--sni", "h2.cftunnel.com", "198.41.192.7:7844"}, exitOK, `rule=tunnel`, false},
		{"check private ip opened by cidr", []string{"check", "--config", good, "--plain", "10.1.2.3:5432"}, exitOK, `rule=internal`, false},
		{"check metadata refused", []string{"check", "--config", good, "--plain", "169.254.169.254:80"}, exitFail, `reason=no_rule`, false},
		{"check non-canonical ip", []string{"check", "--config", good, "127.1:443"}, exitUsage, "", true},
		{"check missing port", []string{"check", "--config", good, "api.example.com"}, exitUsage, "", true},
		{"check bad config", []string{"check", "--config", bad, "api.example.com:443"}, exitUsage, "", true},
		{"check embedded default", []string{"check", "cgr.dev:443"}, exitOK, `policy=chainguard-images`, false},
		{"check quic tunnel", []string{"check", "--quic", "--sni", "quic.cftunnel.com", "198.41.192.7:7844"}, exitOK, `rule=tunnel-quic`, false},
		{"check quic, target between flags", []string{"check", "--quic", "198.41.192.7:7844", "--sni", "quic.cftunnel.com"}, exitOK, `rule=tunnel-quic`, false},
		{"check quic after the target", []string{"check", "198.41.192.7:7844", "--quic", "--sni", "quic.cftunnel.com"}, exitOK, `rule=tunnel-quic`, false},
		{"check quic sni over tcp", []string{"check", "--sni", "quic.cftunnel.com", "198.41.192.7:7844"}, exitFail, `reason=sni_mismatch`, false},
		{"check h2 sni over quic", []string{"check", "--quic", "--sni", "h2.cftunnel.com", "198.41.192.7:7844"}, exitFail, `rule=tunnel-quic reason=sni_mismatch`, false},
		{"check quic raw udp", []string{"check", "--quic", "--plain", "198.41.192.7:7844"}, exitFail, `reason=not_tls`, false},
		{"check quic with http", []string{"check", "--quic", "--http", "198.41.192.7:7844"}, exitUsage, "", true},
		{"check embedded default deny", []string{"check", "example.com:443"}, exitFail, `reason=no_rule`, false},
		{"check without a client, scoped", []string{"check", "--config", scoped, "registry.npmjs.org:443"}, exitFail, `reason=no_policy_for_client`, false},
		{"check with a client address", []string{"check", "--config", scoped, "--client", "10.9.1.2", "registry.npmjs.org:443"}, exitOK, `^allow .* policy=ci rule=npm reason=allowed\n$`, false},
		{"check with a user", []string{"check", "--config", scoped, "registry.npmjs.org:443", "--user", "ci"}, exitOK, `policy=ci rule=npm`, false},
		{"check an audited client", []string{"check", "--config", scoped, "--client", "10.8.0.1", "example.com:443"}, exitOK, `^allow example\.com:443 reason=no_rule would_deny\n$`, false},
		{"check an audited client, private address", []string{"check", "--config", scoped, "--client", "10.8.0.1", "127.0.0.1:443"}, exitFail, `^deny 127\.0\.0\.1:443 reason=private_destination\n$`, false},
		{"check with a bad client", []string{"check", "--config", scoped, "--client", "10.9.1", "registry.npmjs.org:443"}, exitUsage, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, strings.NewReader(""), &stdout, &stderr)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout.String(), stderr.String())
			}
			// Whatever the exit code: help ("validate --help", exit 0) goes
			// to stderr as errors do.
			if tc.noStdout && stdout.Len() > 0 {
				t.Errorf("stdout %q, want nothing on stdout (errors and flag help go to stderr)", stdout.String())
			}
			for _, re := range strings.Split(tc.stdout, and) {
				if re != "" && !regexp.MustCompile(re).MatchString(stdout.String()) {
					t.Errorf("stdout %q does not match %s\nstderr: %s", stdout.String(), re, stderr.String())
				}
			}
		})
	}
}

// TestCheckArgumentErrors: check's refusals of its arguments say what is
// wrong (exit 2), not only its usage.
func TestCheckArgumentErrors(t *testing.T) {
	scoped := writeFile(t, t.TempDir(), "scoped.hcl", `policy "ci" {
  clients { users = ["ci"] }
  allow "npm" { hosts = ["registry.npmjs.org"] }
}
user "ci" { password_hash = "$2a$10$CGnmuZ1eox82qTJQvO5/w.Hy0JwSLJooh6et.KZ.oWGiC5lDnpHrm" }
`)
	for _, tc := range []struct {
		name   string
		args   []string
		stderr string
	}{
		{"plain with http", []string{"check", "--plain", "--http", "cgr.dev:443"}, `--http .* excludes --plain and --quic`},
		{"quic with http", []string{"check", "--quic", "--http", "198.41.192.7:7844"}, `--http .* excludes --plain and --quic`},
		{"sni with plain", []string{"check", "--plain", "--sni", "cgr.dev", "cgr.dev:443"}, `--sni, --ja3 and --ja4 describe a TLS ClientHello`},
		{"ja3 with http", []string{"check", "--http", "--ja3", "3fed133de60c35724739b913924b6c24", "cgr.dev:80"}, `--sni, --ja3 and --ja4 describe a TLS ClientHello`},
		{"ja4 with plain quic", []string{"check", "--quic", "--plain", "--ja4", "q13d0310h3_55b375c5d22e_cd85d2d88918", "198.41.192.7:7844"}, `--sni, --ja3 and --ja4 describe a TLS ClientHello`},
		{"undeclared user", []string{"check", "--config", scoped, "--user", "nobody", "registry.npmjs.org:443"}, `--user "nobody" is not declared`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tc.args, strings.NewReader(""), &stdout, &stderr); code != exitUsage || stdout.Len() > 0 {
				t.Errorf("exit %d, stdout %q; want exit %d and nothing on stdout", code, stdout.String(), exitUsage)
			}
			if !regexp.MustCompile(tc.stderr).MatchString(stderr.String()) {
				t.Errorf("stderr %q does not match %s", stderr.String(), tc.stderr)
			}
		})
	}
}

// TestHelpFlagsSection: a command's --help lists its flags under
// "Flags:", and a command without flags prints no empty section.
func TestHelpFlagsSection(t *testing.T) {
	for cmd, want := range map[string]bool{"validate": true, "check": true, "suggest": false, "passwd": false} {
		var stdout, stderr bytes.Buffer
		if code := run([]string{cmd, "--help"}, strings.NewReader(""), &stdout, &stderr); code != exitOK {
			t.Errorf("%s --help: exit %d, want 0", cmd, code)
		}
		if got := strings.Contains(stderr.String(), "Flags:"); got != want || !strings.HasPrefix(stderr.String(), "Usage: egressd "+cmd) {
			t.Errorf("%s --help printed %q; want its usage, with a Flags: section %v", cmd, stderr.String(), want)
		}
	}
}

// TestServeEmbeddedDefault runs "egressd serve" as a process on the
// embedded presets: a CONNECT no preset allows gets 403 with its reason, and
// SIGTERM stops the process with exit 0.
func TestServeEmbeddedDefault(t *testing.T) {
	p := startServe(t, "serve", "--http-listen", "127.0.0.1:0")
	proxyAddr := p.await(t, "listening on ")
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	c.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "no_rule") {
		t.Fatalf("CONNECT example.com:443: %s %q, want 403 naming no_rule", resp.Status, body)
	}
	p.stop(t)
	if !strings.Contains(p.stdout.String(), `"reason":"no_rule"`) || !strings.Contains(p.stdout.String(), `"host":"example.com"`) {
		t.Errorf("decision log on stdout lacks the denial: %q", p.stdout.String())
	}
}

// TestServeTransparentListen: --transparent-listen starts the transparent
// gateway next to the HTTP proxy; a connection that was not redirected is
// refused (no original destination) and logged with mode transparent.
func TestServeTransparentListen(t *testing.T) {
	p := startServe(t, "serve", "--http-listen", "127.0.0.1:0", "--transparent-listen", "127.0.0.1:0")
	gw := p.await(t, "transparent gateway (redirect) listening on ")
	c, err := net.Dial("tcp", gw)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(c); len(b) != 0 {
		t.Fatalf("got %q from an unredirected connection", b)
	}
	c.Close()
	p.stop(t)
	if !strings.Contains(p.stdout.String(), `"mode":"transparent"`) || !strings.Contains(p.stdout.String(), `"reason":"bad_request"`) {
		t.Errorf("decision log lacks the transparent refusal: %q", p.stdout.String())
	}
}

// TestServeDNSListen: --dns-listen starts the gateway DNS server on UDP
// and TCP; a query for a name no policy allows is refused and logged with
// mode dns.
func TestServeDNSListen(t *testing.T) {
	p := startServe(t, "serve", "--http-listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0")
	da := p.await(t, "DNS server (udp, tcp) listening on ")
	for _, network := range []string{"udp", "tcp"} {
		m := new(dns.Msg)
		m.SetQuestion("exfil-"+network+".attacker.test.", dns.TypeA)
		in, _, err := (&dns.Client{Net: network, Timeout: 5 * time.Second}).Exchange(m, da)
		if err != nil {
			t.Fatalf("%s query: %v", network, err)
		}
		if in.Rcode != dns.RcodeRefused {
			t.Errorf("%s: %s for a name no policy allows, want REFUSED", network, dns.RcodeToString[in.Rcode])
		}
	}
	p.stop(t)
	for _, network := range []string{"udp", "tcp"} {
		want := `"host":"exfil-` + network + `.attacker.test"`
		if out := p.stdout.String(); !strings.Contains(out, want) || !strings.Contains(out, `"mode":"dns"`) || !strings.Contains(out, `"qtype":"A"`) {
			t.Errorf("decision log lacks the %s refusal: %q", network, out)
		}
	}
}

// TestServeQUICListen: --quic-listen starts the QUIC gateway (root: its
// socket needs IP_TRANSPARENT); a datagram that was not steered by TPROXY
// has no original destination and is refused with mode quic. Without the
// privilege, serve fails at once with a message naming the setting.
func TestServeQUICListen(t *testing.T) {
	if os.Geteuid() != 0 {
		var stdout, stderr bytes.Buffer
		if code := run([]string{"serve", "--http-listen", "127.0.0.1:0", "--quic-listen", "127.0.0.1:0"}, strings.NewReader(""), &stdout, &stderr); code != exitFail ||
			!strings.Contains(stderr.String(), "server.quic_listen or --quic-listen") || !strings.Contains(stderr.String(), "CAP_NET_ADMIN") {
			t.Fatalf("unprivileged serve --quic-listen: exit %d, stderr %q", code, stderr.String())
		}
		return
	}
	p := startServe(t, "serve", "--http-listen", "127.0.0.1:0", "--quic-listen", "127.0.0.1:0")
	qa := p.await(t, "QUIC gateway (tproxy, udp) listening on ")
	c, err := net.Dial("udp", qa)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.stdout.String(), `"mode":"quic"`) && time.Now().Before(deadline) {
		c.Write([]byte("not steered by TPROXY"))
		time.Sleep(50 * time.Millisecond)
	}
	p.stop(t)
	if out := p.stdout.String(); !strings.Contains(out, `"mode":"quic"`) || !strings.Contains(out, `"reason":"bad_request"`) {
		t.Errorf("decision log lacks the QUIC refusal: %q", out)
	}
}

// syncBuf is a bytes.Buffer safe for the child's stdout copier and the test.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// serveProc is "egressd serve" running as a child process (the test binary
// with EGRESSD_MAIN=1).
type serveProc struct {
	cmd    *exec.Cmd
	stdout *syncBuf
	stderr chan string
}

func startServe(t *testing.T, args ...string) *serveProc {
	t.Helper()
	p := &serveProc{cmd: exec.Command(os.Args[0], args...), stdout: &syncBuf{}, stderr: make(chan string, 64)}
	p.cmd.Env = append(os.Environ(), "EGRESSD_MAIN=1")
	p.cmd.Stdout = p.stdout
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill() })
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			select {
			case p.stderr <- sc.Text():
			default: // nobody is waiting for more lines
			}
		}
	}()
	return p
}

// await returns what follows mark on the first stderr line containing it
// (a listen address).
func (p *serveProc) await(t *testing.T, mark string) string {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case line := <-p.stderr:
			if i := strings.Index(line, mark); i >= 0 {
				return strings.TrimSpace(line[i+len(mark):])
			}
		case <-timeout:
			t.Fatalf("egressd serve printed no line with %q", mark)
		}
	}
}

// stop sends SIGTERM and wants exit status 0 within 15 s.
func (p *serveProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("egressd after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("egressd did not exit after SIGTERM")
	}
}

// TestServeAdminListen: --admin-listen serves /healthz, /readyz (200 once
// every listener is served) and /metrics, where a denied CONNECT shows up
// in egressd_decisions_total.
func TestServeAdminListen(t *testing.T) {
	p := startServe(t, "serve", "--http-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0")
	proxyAddr := p.await(t, "HTTP proxy listening on ")
	admin := "http://" + p.await(t, "admin (metrics, health) listening on ")
	hc := &http.Client{Timeout: 5 * time.Second}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := hc.Get(admin + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, _ := get("/readyz")
		if code == http.StatusOK {
			break
		}
		if code != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("/readyz: %d, want 200 once listening", code)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := get("/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz: %d %q", code, body)
	}

	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("CONNECT example.com:443: %s, want 403", resp.Status)
	}
	code, body := get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`egressd_decisions_total{decision="deny",mode="connect",policy="",reason="no_rule",rule="",would_deny="false"} 1`,
		`egressd_build_info{version="dev"} 1`,
		`go_goroutines `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
	p.stop(t)
}

// TestServeAdminListenBusy: an admin address that cannot be bound fails
// the start with a message naming the setting.
func TestServeAdminListenBusy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var stdout, stderr bytes.Buffer
	code := run([]string{"serve", "--http-listen", "127.0.0.1:0", "--admin-listen", ln.Addr().String()}, strings.NewReader(""), &stdout, &stderr)
	if code != exitFail || !strings.Contains(stderr.String(), "admin listen on "+ln.Addr().String()) ||
		!strings.Contains(stderr.String(), "change server.admin_listen or --admin-listen") {
		t.Fatalf("serve with a busy admin address: exit %d, stderr %q", code, stderr.String())
	}
}

// TestTestCommand runs "egressd test": the embedded presets' tests pass, a
// failing test is reported with its file:line:col and exit 1, an invalid
// configuration exits 1 and bad arguments 2.
func TestTestCommand(t *testing.T) {
	dir := t.TempDir()
	passing := writeFile(t, dir, "pass.hcl", validConfig+`
test "api allowed" {
  target      = "api.example.com:443"
  expect      = "allow"
  expect_rule = "p/api"
}
`)
	failDir := filepath.Join(dir, "fail")
	if err := os.Mkdir(failDir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, failDir, "policy.hcl", validConfig)
	failing := writeFile(t, failDir, "policy.tests.hcl", `test "tunnel ok" {
  target = "198.41.192.7:7844"
  mode   = "transparent"
  sni    = "h2.cftunnel.com"
  expect = "allow"
}

test "example.org allowed" {
  target = "example.org:443"
  expect = "allow"
}
test "legacy allowed" {
  target = "legacy.cdn.example.com:443"
  expect = "allow"
}
`)
	invalid := writeFile(t, dir, "invalid.hcl", validConfig+`
test "bad" {
  target = "api.example.com"
  expect = "allow"
}
`)
	none := writeFile(t, dir, "none.hcl", validConfig)
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
	}{
		{"embedded presets pass", []string{"test"}, exitOK, `(?m)^\d{2,} tests, 0 failed\n$`},
		{"passing", []string{"test", "--config", passing}, exitOK, `^1 tests, 0 failed\n$`},
		{"verbose", []string{"test", "-v", "--config", passing}, exitOK, `pass\.hcl:\d+:1: test "api allowed": ok: allow \(policy p rule api\)`},
		{"failing with file:line:col", []string{"test", "--config", failDir}, exitFail,
			`^` + regexp.QuoteMeta(failing) + `:8:1: test "example\.org allowed": expected allow, got deny \(no_rule\)\n` +
				regexp.QuoteMeta(failing) + `:12:1: test "legacy allowed": expected allow, got deny \(denied_by_rule, policy p rule legacy\)\n` +
				`3 tests, 2 failed\n$`},
		{"invalid configuration", []string{"test", "--config", invalid}, exitFail, `^$`},
		{"no tests", []string{"test", "--config", none}, exitOK, `^0 tests: no test blocks in .*none\.hcl\n$`},
		{"unexpected argument", []string{"test", "x"}, exitUsage, `^$`},
		{"bad flag", []string{"test", "--nope"}, exitUsage, `^$`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, strings.NewReader(""), &stdout, &stderr)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout.String(), stderr.String())
			}
			if !regexp.MustCompile(tc.stdout).MatchString(stdout.String()) {
				t.Errorf("stdout %q does not match %s\nstderr: %s", stdout.String(), tc.stdout, stderr.String())
			}
		})
	}
}
