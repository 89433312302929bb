package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// shutdownGraceTest is the shutdown_grace of the shutdown tests.
const shutdownGraceTest = 3 * time.Second

// startEchoServer echoes on loopback and returns its port.
func startEchoServer(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// startShutdownServe runs serve (with extra flags) with shutdown_grace =
// "3s" and a rule for an echo upstream, and returns the process, the proxy
// address and an open CONNECT tunnel to the echo upstream.
func startShutdownServe(t *testing.T, flags ...string) (*serveProc, string, net.Conn, *bufio.Reader) {
	t.Helper()
	echo := startEchoServer(t)
	cfg := writeFile(t, t.TempDir(), "shutdown.hcl", fmt.Sprintf(`
server {
  http_listen                = "127.0.0.1:0"
  shutdown_grace             = "%s"
  allow_private_destinations = true
}
policy "t" {
  allow "echo" {
    cidrs       = ["127.0.0.1/32"]
    ports       = [%d]
    require_tls = false
  }
}
`, shutdownGraceTest, echo))
	// Under -race the child would sleep 1 s at exit (atexit_sleep_ms);
	// the tests time the exit.
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	p := startServe(t, append([]string{"serve", "--config", cfg}, flags...)...)
	addr := p.await(t, "HTTP proxy listening on ")
	target := fmt.Sprintf("127.0.0.1:%d", echo)
	c, br, code := connectTo(t, addr, target)
	t.Cleanup(func() { c.Close() })
	if code != http.StatusOK {
		t.Fatalf("CONNECT %s: %d", target, code)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	echoLine(t, c, br, "before")
	return p, addr, c, br
}

func echoLine(t *testing.T, c net.Conn, br *bufio.Reader, msg string) {
	t.Helper()
	if _, err := fmt.Fprintln(c, msg); err != nil {
		t.Fatalf("tunnel write %q: %v", msg, err)
	}
	got, err := br.ReadString('\n')
	if err != nil || got != msg+"\n" {
		t.Fatalf("tunnel echo: %q %v, want %q", got, err, msg)
	}
}

// terminate sends SIGTERM and returns a channel with the exit error and
// the time from the signal to the exit.
func (p *serveProc) terminate(t *testing.T) <-chan exitResult {
	t.Helper()
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan exitResult, 1)
	go func() {
		err := p.cmd.Wait()
		done <- exitResult{err, time.Since(start)}
	}()
	return done
}

type exitResult struct {
	err     error
	elapsed time.Duration
}

// refusesConnections waits until the HTTP listener refuses connections.
func refusesConnections(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the HTTP listener still accepts connections a second after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServeShutdownForcesAfterGrace: after SIGTERM the listener stops
// accepting, an open tunnel keeps working during the grace, is closed when
// the grace ends, and the process exits 0.
func TestServeShutdownForcesAfterGrace(t *testing.T) {
	p, addr, c, br := startShutdownServe(t)
	done := p.terminate(t)
	refusesConnections(t, addr)
	time.Sleep(500 * time.Millisecond)
	echoLine(t, c, br, "during the drain")
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("exit after the forced close: %v, want 0", r.err)
		}
		if r.elapsed < shutdownGraceTest-500*time.Millisecond {
			t.Errorf("exited %v after SIGTERM with a tunnel open, want about the %v grace", r.elapsed, shutdownGraceTest)
		}
	case <-time.After(shutdownGraceTest + 2*time.Second):
		t.Fatalf("egressd still running %v after SIGTERM (grace %v)", shutdownGraceTest+2*time.Second, shutdownGraceTest)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("the tunnel is still open after the process exited")
	}
	// open and drained also count refusesConnections' probes that the
	// listener accepted before it closed; closed is the tunnel alone.
	out := p.stdout.String()
	if !shutdownLine.MatchString(out) || !strings.Contains(out, `"message":"shutdown started"`) || !strings.Contains(out, `"closed":1,`) {
		t.Errorf("no shutdown lines with open >= 1 and closed 1: %q", out)
	}
	// The grace as configured, not as the milliseconds left of it a
	// moment after it started (2999).
	if !strings.Contains(out, `"grace_ms":3000,`) {
		t.Errorf("no grace_ms 3000 (--shutdown-grace %v) in the shutdown started line: %q", shutdownGraceTest, out)
	}
}

// shutdownLine matches a "shutdown started" line's open count of 1 or more.
var shutdownLine = regexp.MustCompile(`"open":[1-9]`)

// TestServeShutdownDrains: a tunnel the client closes during the grace
// lets the process exit at once, with exit 0; also when a SIGHUP (a reload
// signal sent by habit) comes during the drain: it neither ends the
// process nor the drain.
func TestServeShutdownDrains(t *testing.T) {
	for _, hup := range []bool{false, true} {
		t.Run(fmt.Sprintf("SIGHUP during the drain %v", hup), func(t *testing.T) {
			p, addr, c, br := startShutdownServe(t)
			done := p.terminate(t)
			refusesConnections(t, addr)
			if hup {
				if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
					t.Fatal(err)
				}
				time.Sleep(200 * time.Millisecond) // a SIGHUP that ended the process would have by now
			}
			echoLine(t, c, br, "during the drain")
			c.Close()
			select {
			case r := <-done:
				if r.err != nil {
					t.Fatalf("exit after the drain: %v, want 0", r.err)
				}
				t.Logf("exited %v after SIGTERM", r.elapsed)
				if r.elapsed > shutdownGraceTest/2 {
					t.Errorf("exited %v after SIGTERM, want well before the %v grace", r.elapsed, shutdownGraceTest)
				}
			case <-time.After(shutdownGraceTest + 2*time.Second):
				t.Fatal("egressd did not exit after its last tunnel closed")
			}
			t.Logf("decision log:\n%s", p.stdout.String())
			if out := p.stdout.String(); !regexp.MustCompile(`"drained":[1-9][0-9]*,"closed":0,`).MatchString(out) {
				t.Errorf("no shutdown end line with drained >= 1 (the tunnel; probes too) and closed 0: %q", out)
			}
		})
	}
}

// TestServeShutdownGraceFlag: --shutdown-grace overrides the
// configuration's shutdown_grace (3 s here).
func TestServeShutdownGraceFlag(t *testing.T) {
	const grace = 500 * time.Millisecond
	p, _, c, br := startShutdownServe(t, "--shutdown-grace", grace.String())
	done := p.terminate(t)
	echoLine(t, c, br, "during the drain")
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("exit after the forced close: %v, want 0", r.err)
		}
		if r.elapsed < grace-100*time.Millisecond || r.elapsed > shutdownGraceTest-time.Second {
			t.Errorf("exited %v after SIGTERM with a tunnel open, want about the flag's %v, not the configuration's %v", r.elapsed, grace, shutdownGraceTest)
		}
	case <-time.After(shutdownGraceTest + 2*time.Second):
		t.Fatal("egressd did not exit")
	}
}
