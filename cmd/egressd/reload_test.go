package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/proxy"
)

// connectTo opens a CONNECT tunnel through proxy and returns the status.
func connectTo(t *testing.T, proxy, target string) (net.Conn, *bufio.Reader, int) {
	t.Helper()
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	return c, br, resp.StatusCode
}

// configMapDir lays a configuration out the way a Kubernetes ConfigMap
// volume does: DIR/egressd.hcl -> ..data/egressd.hcl, ..data -> a
// timestamped directory. update swaps ..data atomically, as the kubelet does.
type configMapDir struct {
	dir string
	gen int
}

func (d *configMapDir) update(t *testing.T, src string) {
	t.Helper()
	d.gen++
	ts := fmt.Sprintf("..2026_11_23_%02d", d.gen)
	if err := os.Mkdir(filepath.Join(d.dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, ts, "egressd.hcl"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(d.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(d.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(d.dir, "egressd.hcl")
	if _, err := os.Lstat(link); err != nil {
		if err := os.Symlink(filepath.Join("..data", "egressd.hcl"), link); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReloadUnderLoad: a tunnel keeps carrying data while the policy is
// reloaded (a ConfigMap-style symlink swap, an invalid file, SIGHUP, a
// listener change); new connections follow the policy in force; refused
// reloads change nothing and are logged with their diagnostics.
func TestReloadUnderLoad(t *testing.T) {
	open := startEchoServer(t)
	other := startEchoServer(t)
	cfgFor := func(port int) string {
		return fmt.Sprintf(`
server {
  allow_private_destinations = true
}
policy "lab" {
  allow "echo" {
    cidrs       = ["127.0.0.1/32"]
    ports       = [%d]
    require_tls = false
  }
}
`, port)
	}
	d := &configMapDir{dir: t.TempDir()}
	d.update(t, cfgFor(open))
	p := startServe(t, "serve", "--config", d.dir, "--http-listen", "127.0.0.1:0")
	proxyAddr := p.await(t, "HTTP proxy listening on ")

	// The load: one tunnel echoing continuously through every reload.
	c, br, code := connectTo(t, proxyAddr, fmt.Sprintf("127.0.0.1:%d", open))
	if code != http.StatusOK {
		t.Fatalf("CONNECT before any reload: %d", code)
	}
	defer c.Close()
	c.SetDeadline(time.Time{})
	var rounds, failures atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		msg := bytes.Repeat([]byte("x"), 1024)
		buf := make([]byte, len(msg))
		for {
			select {
			case <-stop:
				return
			default:
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(msg); err != nil {
				failures.Add(1)
				return
			}
			if _, err := io.ReadFull(br, buf); err != nil || !bytes.Equal(buf, msg) {
				failures.Add(1)
				return
			}
			rounds.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	}()

	reloads := func(outcome string) int {
		return strings.Count(p.stdout.String(), `"outcome":"`+outcome+`"`)
	}
	waitReloads := func(outcome string, n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for reloads(outcome) < n {
			if time.Now().After(deadline) {
				t.Fatalf("no %d reload lines with outcome %s in:\n%s", n, outcome, p.stdout.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	status := func(port int) int {
		c, _, code := connectTo(t, proxyAddr, fmt.Sprintf("127.0.0.1:%d", port))
		c.Close()
		return code
	}

	// 1. The ConfigMap changes: now only the other port is open.
	d.update(t, cfgFor(other))
	waitReloads("ok", 1)
	if got := status(open); got != http.StatusForbidden {
		t.Errorf("after the reload, CONNECT to the closed port: %d, want 403", got)
	}
	if got := status(other); got != http.StatusOK {
		t.Errorf("after the reload, CONNECT to the opened port: %d, want 200", got)
	}

	// 2. An invalid file: refused with its diagnostics, nothing changes.
	d.update(t, "policy \"lab\" {\n  allow \"echo\" {\n    cidrs = [\"not-a-cidr\"]\n  }\n}\n")
	waitReloads("error", 1)
	if out := p.stdout.String(); !strings.Contains(out, "egressd.hcl:3:") || !strings.Contains(out, "Invalid CIDR") {
		t.Errorf("the refused reload does not carry its diagnostics:\n%s", out)
	}
	if out := p.stdout.String(); strings.Contains(out, `\n"`) {
		t.Errorf("a reload line's detail ends in a line break:\n%s", out)
	}
	if got := status(other); got != http.StatusOK {
		t.Errorf("after a refused reload: %d, want the previous policy's 200", got)
	}

	// 3. A listener change is refused as a whole.
	d.update(t, strings.Replace(cfgFor(open), "server {", "server {\n  transparent_listen = \"127.0.0.1:0\"\n", 1))
	waitReloads("error", 2)
	if !strings.Contains(p.stdout.String(), "only on a restart") {
		t.Errorf("the listener change was not refused with its reason:\n%s", p.stdout.String())
	}
	if got := status(open); got != http.StatusForbidden {
		t.Errorf("after a refused listener change: %d, want 403", got)
	}

	// 4. SIGHUP reloads the current files.
	d.update(t, cfgFor(open))
	waitReloads("ok", 2)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitReloads("ok", 3)
	if got := status(open); got != http.StatusOK {
		t.Errorf("after SIGHUP: %d, want 200", got)
	}

	close(stop)
	<-done
	if failures.Load() != 0 || rounds.Load() < 10 {
		t.Errorf("the tunnel through the reloads: %d failures, %d rounds", failures.Load(), rounds.Load())
	}
	c.Close()
	p.stop(t)
}

// TestReloadOnlyOnConfigChanges: files written beside the configuration
// (a decision log, an editor's swap file) do not reload it; the
// configuration file itself does.
func TestReloadOnlyOnConfigChanges(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "egressd.hcl")
	src := "policy \"lab\" {\n  allow \"a\" { hosts = [\"a.example.com\"] }\n}\n"
	if err := os.WriteFile(cfg, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, "serve", "--config", cfg, "--http-listen", "127.0.0.1:0")
	p.await(t, "HTTP proxy listening on ")
	reloads := func() int { return strings.Count(p.stdout.String(), `"message":"reload"`) }

	for i := range 10 {
		for _, name := range []string{"egressd.log", ".egressd.hcl.swp", "other.txt"} {
			f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(f, "line %d\n", i)
			f.Close()
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(3 * proxy.ReloadDebounce)
	if n := reloads(); n != 0 {
		t.Fatalf("writes to other files in the configuration's directory reloaded it %d times:\n%s", n, p.stdout.String())
	}

	if err := os.WriteFile(cfg, []byte(src+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for reloads() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("writing the configuration file did not reload it:\n%s", p.stdout.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.stop(t)
}
