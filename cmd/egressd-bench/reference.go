package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
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
	fmt.Println("ready")
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

type referenceProc struct {
	cmd  *exec.Cmd
	addr string
}

// startReference runs the reference relay as a child process.
func (b *bench) startReference() (*referenceProc, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), referenceEnv+"="+addr)
	cmd.SysProcAttr = childAttr()
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &referenceProc{cmd: cmd, addr: addr}
	b.onCleanup(p.stop)
	ready := make(chan error, 1)
	go func() {
		line := make([]byte, 6)
		_, err := io.ReadFull(out, line)
		if err == nil && string(line) != "ready\n" {
			err = fmt.Errorf("it printed %q", line)
		}
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-time.After(10 * time.Second):
		err = errors.New("no answer in 10s")
	}
	if err != nil {
		return nil, fmt.Errorf("the reference relay (%s with %s set) did not start: %v", self, referenceEnv, err)
	}
	return p, nil
}

func (p *referenceProc) stop() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
}

// measureReference measures the reference relay beside direct: bulk
// through 8 tunnels and the connection rate at concurrency 64, each with
// the relay's CPU.
// Direct is measured again right before the reference relay, not taken
// from egressd's rows: this machine's rates drift by ±10% within minutes,
// and each ratio is only meaningful against a direct run next to it.
func (b *bench) measureReference(rows []*row, direct path, lp [3]int) error {
	if !b.opt.measures("bulk") && !b.opt.measures("conn") {
		return nil
	}
	ref, err := b.startReference()
	if err != nil {
		return err
	}
	defer ref.stop()
	pid := ref.cmd.Process.Pid
	d := b.opt.duration
	via := path{proxy: ref.addr, other: true,
		bulk: benchHost + ":" + strconv.Itoa(lp[0]), tls: benchHost + ":" + strconv.Itoa(lp[1])}
	if b.opt.measures("bulk") {
		dm, _, err := b.bulkRun(direct, 8, d, 0)
		if err != nil {
			return fmt.Errorf("bulk direct x8 (reference): %v", err)
		}
		vm, cpu, err := b.bulkRun(via, 8, d, pid)
		if err != nil {
			return fmt.Errorf("bulk via the reference relay x8: %v", err)
		}
		add(rows[rowRefBulk8], dm, vm, vm/dm)
		add(rows[rowRefCPU8], 0, cpu, 0)
	}
	if b.opt.measures("conn") {
		dc, _, _, _, err := b.connRate(direct, 64, d)
		if err != nil {
			return fmt.Errorf("conn/s direct (reference): %v", err)
		}
		cpu0 := b.cpuSeconds(pid)
		vc, _, _, _, err := b.connRate(via, 64, d)
		if err != nil {
			return fmt.Errorf("conn/s via the reference relay: %v", err)
		}
		add(rows[rowRefCPS], dc, vc, vc/dc)
		if vc > 0 {
			add(rows[rowRefCPU], 0, (b.cpuSeconds(pid)-cpu0)/(vc*d.Seconds())*1e6, 0)
		}
	}
	return nil
}
