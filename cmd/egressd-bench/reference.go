package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"
)

// The reference relay is the least a CONNECT proxy can do: read the
// request head, answer 200, dial, and splice both ways (io.Copy between
// *net.TCPConn) with half-closes; no policy, no ClientHello parsing, no
// resolver, no log. The bench runs it as a child process (itself, with
// referenceEnv set) and measures its connection rate beside egressd's, so
// that the table separates what any relay with two loopback TCP
// connections costs on this machine from what egressd adds.

// referenceEnv holds the listen address when the bench binary runs as the
// reference relay.
const referenceEnv = "EGRESSD_BENCH_REFERENCE_LISTEN"

// maxReferenceHead bounds the CONNECT request head the reference relay
// reads: the bench's own requests are under 100 bytes.
const maxReferenceHead = 4096

func referenceRelay(addr string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		go referenceTunnel(c.(*net.TCPConn))
	}
}

func referenceTunnel(c *net.TCPConn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var buf [maxReferenceHead]byte
	n := 0
	end := -1
	for end < 0 {
		if n == len(buf) {
			return
		}
		m, err := c.Read(buf[n:])
		if err != nil {
			return
		}
		n += m
		end = bytes.Index(buf[:n], []byte("\r\n\r\n"))
	}
	line, _, _ := strings.Cut(string(buf[:end]), "\r\n")
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "CONNECT" {
		return
	}
	// The bench asks for its own upstreams by name; they all listen on
	// 127.0.0.1.
	_, port, err := net.SplitHostPort(f[1])
	if err != nil {
		return
	}
	up, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", port), 10*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	c.SetReadDeadline(time.Time{})
	if _, err := c.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		return
	}
	if rest := buf[end+4 : n]; len(rest) > 0 {
		if _, err := up.Write(rest); err != nil {
			return
		}
	}
	done := make(chan struct{})
	go func() {
		io.Copy(up, c)
		up.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, up)
	c.CloseWrite()
	<-done
}

// startReference runs the reference relay as a child process (this
// program with referenceEnv set) listening on addr.
func (b *bench) startReference(addr string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), referenceEnv+"="+addr)
	return b.startChild("the reference relay ("+self+" with "+referenceEnv+" set)", cmd, "", listening(addr))
}

// measureReference measures the reference relay beside direct: bulk
// through 8 tunnels and the connection rate at concurrency 64, each with
// the relay's CPU.
// Direct is measured again right before the reference relay, not taken
// from egressd's rows: this machine's rates drift by ±10% within minutes,
// and each ratio is only meaningful against a direct run next to it.
func (b *bench) measureReference(rows []*row, direct path) error {
	if !b.opt.measures("bulk") && !b.opt.measures("conn") {
		return nil
	}
	addr, err := freePort()
	if err != nil {
		return err
	}
	ref, err := b.startReference(addr)
	if err != nil {
		return err
	}
	defer ref.stop()
	pid := ref.pid
	d := b.opt.duration
	via := b.loopPath(benchHost, addr, false)
	if b.opt.measures("bulk") {
		dm, vm, cpu, err := b.bulkTurns(direct, via, 8, d, pid)
		if err != nil {
			return fmt.Errorf("bulk x8 (reference relay) %v", err)
		}
		add(rows[rowRefBulk8], dm, vm, vm/dm)
		add(rows[rowRefCPU8], 0, cpu, 0)
	}
	if b.opt.measures("conn") {
		m, err := b.measureConns(direct, via, 64, d, pid, false)
		if err != nil {
			return fmt.Errorf("conn/s (reference): %v", err)
		}
		add(rows[rowRefCPS], m.direct.cps, m.via.cps, m.via.cps/m.direct.cps)
		if m.direct.failed+m.via.failed > 0 {
			rows[rowRefCPS].note += fmt.Sprintf(" %d+%d failed", m.direct.failed, m.via.failed)
		}
		add(rows[rowRefCPU], 0, perConn(m.cpu, m.via)*1e6, 0)
	}
	return nil
}
