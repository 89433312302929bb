package proxy

import (
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// The event-driven relay. An established tunnel between two *net.TCPConn
// holds no goroutine: both sockets are registered, edge-triggered, in one
// process-wide epoll instance, which itself sits in Go's netpoller, so the
// loop goroutine parks like any network read. When a socket becomes
// readable or writable its tunnel runs once, on the loop's goroutine or a
// short-lived one, and splices each ready direction (socket → pipe →
// socket, no user-space copy) until the kernel says EAGAIN. An idle tunnel costs
// its two sockets, a timer and a few hundred bytes of state; a pipe is
// held only while bytes are in flight.

const (
	// relayPipeSize is the capacity asked of each relay pipe
	// (F_SETPIPE_SZ): 1 MiB, as Go's own splice uses, so that a bulk
	// transfer moves up to 1 MiB per pair of splice calls. The kernel
	// allocates pages only for bytes in flight.
	relayPipeSize = 1 << 20

	// relayEvents is how many epoll events one epoll_wait collects.
	relayEvents = 128

	// relayEvMask: readable, writable (edges follow only a write that
	// found the socket full), peer half-close, urgent data, hang-up and
	// errors.
	relayEvMask = syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP | syscall.EPOLLPRI | epollET

	epollET     = 1 << 31 // EPOLLET (the syscall package's constant is a negative int)
	fSetPipeSz  = 1031    // F_SETPIPE_SZ (linux/fcntl.h)
	spliceMove  = 0x1     // SPLICE_F_MOVE
	spliceNonbl = 0x2     // SPLICE_F_NONBLOCK

	// Events that mean a direction may have work: its source readable (or
	// ended, or failed), its destination writable (or failed).
	srcEvents = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLPRI | syscall.EPOLLHUP | syscall.EPOLLERR
	dstEvents = syscall.EPOLLOUT | syscall.EPOLLHUP | syscall.EPOLLERR
)

// relayTunnels counts tunnels the epoll relay took on, for tests that
// check that relaying really goes through it.
var relayTunnels atomic.Int64

var (
	relayOnce sync.Once
	relay     *epollRelay // nil when epoll could not be set up
)

type epollRelay struct {
	file *os.File        // keeps epfd open
	epfd int             // not file.Fd(), which would make it blocking
	rc   syscall.RawConn // epfd, in Go's netpoller

	mu    sync.Mutex
	slots []*etunnel // index = the event's Fd field
	gens  []uint32   // generation of each slot = the event's Pad field
	free  []int32
}

func getRelay() *epollRelay {
	relayOnce.Do(func() {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			return
		}
		if err := syscall.SetNonblock(epfd, true); err != nil {
			syscall.Close(epfd)
			return
		}
		// A non-blocking descriptor given to os.NewFile goes into Go's
		// netpoller: an epoll fd is readable when it has events.
		f := os.NewFile(uintptr(epfd), "egressd-relay-epoll")
		rc, err := f.SyscallConn()
		if err != nil {
			f.Close()
			return
		}
		relay = &epollRelay{file: f, epfd: epfd, rc: rc}
		go relay.loop()
	})
	return relay
}

func (r *epollRelay) loop() {
	var evs [relayEvents]syscall.EpollEvent
	var woke []*etunnel
	wait := func(uintptr) bool {
		for {
			n, err := epollWait(r.epfd, evs[:])
			if err == syscall.EINTR {
				continue
			}
			if n <= 0 {
				return false // drained: park until the epoll fd is readable
			}
			woke = r.dispatch(evs[:n], woke[:0])
			// The first tunnel to run takes one step on this goroutine (a
			// new goroutine per event would cost a wake-up of another
			// thread); the others, and a first one with more to do, get
			// their own goroutine, so busy tunnels spread over the CPUs.
			for i, t := range woke {
				if i == 0 {
					t.runOnce()
				} else {
					go t.runFn()
				}
				woke[i] = nil
			}
			if n < len(evs) {
				// The ready list was empty after this batch: park without
				// asking again. An event that came since poked the outer
				// poller (every event does), so the park returns at once.
				return false
			}
		}
	}
	for {
		if err := r.rc.Read(wait); err != nil {
			return // the epoll file was closed: never, in a running egressd
		}
	}
}

// dispatch records the events on their tunnels and appends to woke the
// tunnels that were idle and are now the caller's to run.
func (r *epollRelay) dispatch(evs []syscall.EpollEvent, woke []*etunnel) []*etunnel {
	r.mu.Lock()
	for i := range evs {
		slot, gen := evs[i].Fd, uint32(evs[i].Pad)
		side := gen & 1
		gen >>= 1
		if slot < 0 || int(slot) >= len(r.slots) || r.gens[slot] != gen {
			continue // a torn-down tunnel's event
		}
		if t := r.slots[slot]; t != nil {
			t.ready.Or(evs[i].Events << (16 * side))
			if t.claim() {
				woke = append(woke, t)
			}
		}
	}
	r.mu.Unlock()
	return woke
}

func (r *epollRelay) add(t *etunnel) {
	r.mu.Lock()
	if n := len(r.free); n > 0 {
		t.slot = r.free[n-1]
		r.free = r.free[:n-1]
	} else {
		t.slot = int32(len(r.slots))
		r.slots = append(r.slots, nil)
		r.gens = append(r.gens, 0)
	}
	r.slots[t.slot] = t
	t.gen = r.gens[t.slot]
	r.mu.Unlock()
}

func (r *epollRelay) remove(t *etunnel) {
	r.mu.Lock()
	r.slots[t.slot] = nil
	r.gens[t.slot] = (r.gens[t.slot] + 1) & (1<<31 - 1)
	r.free = append(r.free, t.slot)
	r.mu.Unlock()
}

// etunnel is an established tunnel in the epoll relay. Everything but
// ready, state, expired and aborted is touched only by the goroutine
// running the tunnel, and run never runs twice at once.
type etunnel struct {
	fds      [2]int // client, upstream: the relay's own descriptors, closed by teardown
	slot     int32
	gen      uint32
	ready    atomic.Uint32 // epoll events not yet looked at: client's in the low 16 bits
	state    atomic.Int32  // tunnelIdle, tunnelRunning, tunnelAgain
	expired  atomic.Bool   // the idle timer fired
	aborted  atomic.Bool
	dirs     [2]edir // client→upstream, upstream→client
	last     int64   // monoNow of the last byte moved
	idle     time.Duration
	timer    *time.Timer
	finished bool
	onLoop   bool  // running on the relay loop's goroutine
	err      error // why the tunnel is being torn down
	done     func(up, down int64)
	runFn    func()
}

const (
	tunnelIdle int32 = iota
	tunnelRunning
	tunnelAgain
)

// edir is one direction: bytes spliced from src into p wait there until
// dst takes them.
type edir struct {
	p      *relayPipe
	inPipe int
	n      int64 // bytes delivered to dst
	eof    bool  // src ended
	shut   bool  // dst's write side was shut down after the EOF
	urg    bool  // src reported urgent data (EPOLLPRI) not yet stepped over
}

// epollRelayStart relays client and upstream with the epoll relay and
// returns its abort function, or nil when it cannot (no epoll, not TCP, no
// descriptor left), leaving both connections as they were.
//
// The relay takes the sockets over: it duplicates their descriptors and
// closes the two *net.TCPConn, so that an idle tunnel holds neither Go's
// poll descriptors (about 650 bytes each, outside the heap and never
// returned to the system) nor the conns' heap objects, only its own
// descriptors and state. Closing a conn whose descriptor has a duplicate
// leaves the socket open; teardown closes the duplicates, which ends the
// connections (done's Close calls on the conns are then no-ops).
func epollRelayStart(client, upstream net.Conn, idle time.Duration, done func(up, down int64)) func() {
	cc, ok1 := client.(*net.TCPConn)
	uc, ok2 := upstream.(*net.TCPConn)
	if !ok1 || !ok2 {
		return nil
	}
	r := getRelay()
	if r == nil {
		return nil
	}
	cfd, err := dupConn(cc)
	if err != nil {
		return nil
	}
	ufd, err := dupConn(uc)
	if err != nil {
		closeFd(cfd)
		return nil
	}
	abort, err := r.start(cfd, ufd, idle, done)
	if err != nil {
		// The caller relays the untouched conns with goroutines instead.
		closeFd(cfd)
		closeFd(ufd)
		return nil
	}
	cc.Close()
	uc.Close()
	return abort
}

// start relays the sockets cfd and ufd, which the relay then owns, and
// returns the abort function. When it cannot register them it returns the
// error and leaves both open, for the caller to close or relay otherwise.
func (r *epollRelay) start(cfd, ufd int, idle time.Duration, done func(up, down int64)) (func(), error) {
	t := &etunnel{fds: [2]int{cfd, ufd}, idle: idle, done: done, last: monoNow()}
	t.runFn = t.run
	r.add(t)
	t.state.Store(tunnelRunning) // no run until registered
	for side, fd := range t.fds {
		ev := syscall.EpollEvent{Events: relayEvMask, Fd: t.slot, Pad: int32(t.gen<<1 | uint32(side))}
		if err := epollAdd(r.epfd, fd, &ev); err != nil {
			// Undo. A registration outlives the close of a duplicate while
			// the original descriptor is open, so remove it first.
			_ = epollCtl(r.epfd, syscall.EPOLL_CTL_DEL, t.fds[0], nil)
			r.remove(t)
			return nil, err
		}
	}
	relayTunnels.Add(1)
	t.timer = time.AfterFunc(idle, func() {
		t.expired.Store(true)
		t.kick()
	})
	// Bytes that arrived before the registration need no look now:
	// EPOLL_CTL_ADD queues an event for a socket that is already ready.
	// Events dispatched meanwhile found the tunnel claimed and marked it
	// to run again.
	if !t.state.CompareAndSwap(tunnelRunning, tunnelIdle) {
		t.state.Store(tunnelRunning)
		go t.run()
	}
	return func() {
		t.aborted.Store(true)
		t.kick()
	}, nil
}

// dupConn duplicates c's descriptor (close-on-exec). The duplicate shares
// the socket and its non-blocking mode.
func dupConn(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) {
		r, _, e := syscall.RawSyscall(syscall.SYS_FCNTL, s, syscall.F_DUPFD_CLOEXEC, 0)
		if e != 0 {
			derr = e
			return
		}
		fd = int(r)
	}); err != nil {
		return -1, err
	}
	return fd, derr
}

// kick makes sure the tunnel runs after this call.
func (t *etunnel) kick() {
	if t.claim() {
		go t.runFn()
	}
}

// claim reports whether the caller must run the tunnel: it was idle. A
// running tunnel is marked to run again instead.
func (t *etunnel) claim() bool {
	for {
		switch t.state.Load() {
		case tunnelIdle:
			if t.state.CompareAndSwap(tunnelIdle, tunnelRunning) {
				return true
			}
		case tunnelRunning:
			if t.state.CompareAndSwap(tunnelRunning, tunnelAgain) {
				return false
			}
		default:
			return false
		}
	}
}

// run steps a claimed tunnel until it has nothing more to do.
func (t *etunnel) run() {
	for !t.stepDone(false) {
		t.state.Store(tunnelRunning) // it was tunnelAgain: run again
	}
}

// runOnce steps a claimed tunnel once, on the relay loop's goroutine, and
// leaves the rest, if any, to a goroutine of its own.
func (t *etunnel) runOnce() {
	if !t.stepDone(true) {
		t.state.Store(tunnelRunning)
		go t.runFn()
	}
}

// stepDone steps the tunnel and reports whether it is done for now (idle
// again, or finished) rather than marked to run again. Once it is idle
// again another goroutine may claim it: nothing of t is touched after.
func (t *etunnel) stepDone(onLoop bool) bool {
	t.onLoop = onLoop
	t.step()
	t.onLoop = false
	if t.finished {
		return true // state stays running: later kicks start nothing
	}
	return t.state.CompareAndSwap(tunnelRunning, tunnelIdle)
}

// step looks at the tunnel once: aborts, the idle timer, then the bytes.
func (t *etunnel) step() {
	if t.aborted.Load() {
		t.teardown()
		return
	}
	if t.expired.Swap(false) {
		quiet := time.Duration(monoNow() - t.last)
		if quiet >= t.idle {
			t.teardown()
			return
		}
		t.timer.Reset(t.idle - quiet)
	}
	t.err = nil
	t.pump()
	if t.err != nil || (t.dirs[0].shut && t.dirs[1].shut) {
		t.teardown()
	}
}

// pump moves each direction that has something to do until the kernel
// says EAGAIN. An error on either socket ends the whole tunnel (t.err). A
// hang-up is not an error: a socket whose peer closed after our
// half-close reports EPOLLHUP with bytes still to read, and reading them
// tells the rest.
func (t *etunnel) pump() {
	ev := t.ready.Swap(0)
	before := t.dirs[0].n + t.dirs[1].n
	for i := range t.dirs {
		d := &t.dirs[i]
		srcEv, dstEv := ev>>(16*i)&0xffff, ev>>(16*(1-i))&0xffff
		if srcEv&srcEvents == 0 && (d.inPipe == 0 || dstEv&dstEvents == 0) {
			continue
		}
		if srcEv&syscall.EPOLLPRI != 0 {
			d.urg = true
		}
		more, err := d.move(t.fds[i], t.fds[1-i])
		if err != nil {
			t.err = err
			break
		}
		if more {
			// Not finished: look at this direction again on the next step.
			t.ready.Or(srcEvents << (16 * i))
			t.state.CompareAndSwap(tunnelRunning, tunnelAgain)
		}
	}
	if t.dirs[0].n+t.dirs[1].n != before {
		t.last = monoNow()
	}
	if t.err == nil && ev&(syscall.EPOLLERR|syscall.EPOLLERR<<16) != 0 {
		t.err = t.sockErr(ev)
	}
}

// sockErr returns the pending error of a socket that reported EPOLLERR in
// ev, when the moves above did not meet it: a reset after that side's FIN
// (its direction is over, so nothing reads it any more) or while the other
// way has nothing to write to it. Without this the tunnel would wait for
// its idle timeout, holding a slot, with the other peer still connected.
func (t *etunnel) sockErr(ev uint32) error {
	for i, fd := range t.fds {
		if ev>>(16*i)&syscall.EPOLLERR == 0 {
			continue
		}
		if soerr, e := getIntOpt(fd, syscall.SOL_SOCKET, syscall.SO_ERROR); e != 0 {
			return e
		} else if soerr != 0 {
			return syscall.Errno(soerr)
		}
	}
	return nil
}

// move splices src → pipe → dst until src has nothing more (false, nil),
// relayChunk bytes have moved (true, nil: call again, so that a busy
// download cannot starve the upload), or an error.
func (d *edir) move(src, dst int) (more bool, err error) {
	if d.shut {
		return false, nil
	}
	moved := 0
	for {
		if d.inPipe > 0 {
			n, err := splice(d.p.r, dst, d.inPipe)
			switch {
			case n > 0:
				d.inPipe -= n
				d.n += int64(n)
				moved += n
				continue
			case err == syscall.EAGAIN:
				return false, nil // dst is full: wait for EPOLLOUT
			case err == syscall.EINTR:
				continue
			default:
				return false, spliceOutErr(err)
			}
		}
		if d.eof {
			d.putPipe()
			d.shut = true
			if err := shutdownWrite(dst); err != nil && err != syscall.ENOTCONN {
				return false, err
			}
			return false, nil
		}
		if moved >= relayChunk {
			return true, nil
		}
		if d.p == nil {
			if d.p, err = getPipe(); err != nil {
				return false, err
			}
		}
		n, err := splice(src, d.p.w, relayPipeSize)
		if n == 0 && (err == nil || d.urg && err == syscall.EAGAIN) {
			// splice reads nothing at TCP urgent data, for good: EAGAIN,
			// or 0 as at the end of the stream once the peer's FIN is in.
			// At the mark, step over it with recv, then splice again. A 0
			// is looked at even before EPOLLPRI was seen: the urgent byte
			// and the FIN may have come after this round's events, and
			// taking the 0 for the end would drop the rest for good.
			stepped, m, err := stepUrgent(src, d.p.w)
			if err != nil {
				return false, err
			}
			if stepped {
				d.urg, d.inPipe = false, m
				continue
			}
		}
		switch {
		case n > 0:
			d.inPipe = n
		case err == nil: // n == 0: end of stream
			d.eof = true
		case err == syscall.EAGAIN:
			d.putPipe()
			return false, nil
		case err == syscall.EINTR:
		default:
			return false, err
		}
	}
}

// stepUrgent moves src's bytes at its TCP urgent mark (MSG_OOB data:
// telnet's and FTP's interrupts) into the empty pipe pw with recv and
// write. splice reads nothing at the mark, so without this a tunnel that
// carries urgent data stalls until its idle timeout, or ends there when
// the peer's FIN is in. The urgent byte goes on inline (SO_OOBINLINE), as
// a byte of the stream: the urgency itself is not relayed. When src is
// not at the mark (the urgent byte has not arrived yet) it does nothing
// and reports stepped false; otherwise m is the bytes now in the pipe.
//
//go:noinline
func stepUrgent(src, pw int) (stepped bool, m int, err error) {
	var atMark int32
	if _, _, e := syscall.RawSyscall(syscall.SYS_IOCTL, uintptr(src), syscall.SIOCATMARK, uintptr(unsafe.Pointer(&atMark))); e != 0 || atMark == 0 {
		return false, 0, nil
	}
	if e := setIntOpt(src, syscall.SOL_SOCKET, syscall.SO_OOBINLINE, 1); e != 0 {
		return false, 0, e
	}
	var buf [512]byte // less than PIPE_BUF: the empty pipe takes it whole
	n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(src), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), syscall.MSG_DONTWAIT, 0, 0)
	switch {
	case e == syscall.EAGAIN || e == syscall.EINTR:
		return true, 0, nil // the next splice tells
	case e != 0:
		return false, 0, e
	case n == 0:
		return true, 0, nil
	}
	w, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(pw), uintptr(unsafe.Pointer(&buf[0])), n)
	if e != 0 || w != n {
		return false, 0, spliceOutErr(e)
	}
	return true, int(n), nil
}

// inlineUrgent sets SO_OOBINLINE on c's socket, when it has one, so that
// read(2) returns TCP urgent data as a byte of the stream rather than skip
// it (accepted sockets have it from their listener).
func inlineUrgent(c net.Conn) {
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { setIntOpt(int(fd), syscall.SOL_SOCKET, syscall.SO_OOBINLINE, 1) })
		}
	}
}

// waitReset waits, after c's peer sent its FIN, until c has a pending
// error (a reset after the FIN), which it returns, or until c is closed
// (nil). The wait holds no read deadline: the tunnel's watchdog, an abort
// or the end of the other direction closes c.
func waitReset(c net.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	_ = c.SetReadDeadline(time.Time{})
	var soerr int
	_ = rc.Read(func(fd uintptr) bool {
		v, e := getIntOpt(int(fd), syscall.SOL_SOCKET, syscall.SO_ERROR)
		if e != 0 {
			soerr = int(e)
		} else {
			soerr = v
		}
		return soerr != 0
	})
	if soerr != 0 {
		return syscall.Errno(soerr)
	}
	return nil
}

// spliceOutErr is the error of a splice into dst that moved nothing: a
// socket that takes no bytes without saying why is treated as a broken
// pipe, so that the relay does not spin on it.
func spliceOutErr(err error) error {
	if err == nil {
		return syscall.EPIPE
	}
	return err
}

// The relay's system calls cannot block: its descriptors are non-blocking
// and its epoll_wait has a zero timeout. So they go through RawSyscall,
// without the runtime's entersyscall/exitsyscall: the scheduler's monitor
// then never hands this goroutine's P to another thread during a call,
// and never has to be woken for one. Each such hand-off or wake-up is a
// thread switch, which costs more than the call itself where switches
// are expensive (under a hypervisor, every one re-enables interrupts
// with a hypercall). The price: a splice that the kernel makes wait
// for memory (reclaim under pressure) holds its P meanwhile, and a
// stop-the-world waits for it, as it would for a long loop without
// preemption points.

func splice(in, out, n int) (int, error) {
	m, _, e := syscall.RawSyscall6(syscall.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), spliceMove|spliceNonbl)
	if e != 0 {
		return 0, e
	}
	return int(m), nil
}

// epollWait collects ready events without waiting (epoll_pwait, which
// every Linux architecture has, with no signal mask).
func epollWait(epfd int, evs []syscall.EpollEvent) (int, error) {
	n, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&evs[0])), uintptr(len(evs)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// shutdownWrite sends a FIN on a non-blocking socket.
func shutdownWrite(fd int) error {
	if _, _, e := syscall.RawSyscall(syscall.SYS_SHUTDOWN, uintptr(fd), syscall.SHUT_WR, 0); e != 0 {
		return e
	}
	return nil
}

// closeFd closes a relay socket's descriptor. No socket of the relay has
// a non-zero SO_LINGER, so the close does not wait for unsent bytes.
func closeFd(fd int) {
	_, _, _ = syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(fd), 0, 0)
}

// resetOnClose has the close of fd send a reset (SO_LINGER on, 0 s): a
// tunnel that ends on an error (a peer's reset, a broken connection) ends
// with a reset for the other peer too, as a direct connection would. A
// clean end (FIN) would pass a cut stream off as complete to a peer that
// reads until the end (a close-delimited response, a workload behind the
// gateway that believes it talks to the server).
func resetOnClose(fd int) {
	l := syscall.Linger{Onoff: 1, Linger: 0}
	_, _, _ = syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, uintptr(fd), syscall.SOL_SOCKET, syscall.SO_LINGER, uintptr(unsafe.Pointer(&l)), unsafe.Sizeof(l), 0)
}

// epollAdd registers a tunnel's socket. It can fail (ENOSPC past
// fs.epoll.max_user_watches, ENOMEM); a test replaces it to take the undo
// path.
var epollAdd = func(epfd, fd int, ev *syscall.EpollEvent) error {
	return epollCtl(epfd, syscall.EPOLL_CTL_ADD, fd, ev)
}

func epollCtl(epfd, op, fd int, ev *syscall.EpollEvent) error {
	_, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// putPipe returns the direction's pipe to the pool once it is empty.
func (d *edir) putPipe() {
	if d.p == nil {
		return
	}
	if d.inPipe == 0 {
		pipePool.Put(d.p)
	} else {
		d.p.close()
	}
	d.p, d.inPipe = nil, 0
}

// teardown ends the tunnel once: no more runs, the slot is freed, pipes are
// released, the sockets are closed and done gets the byte counts.
func (t *etunnel) teardown() {
	if t.finished {
		return
	}
	t.finished = true
	t.timer.Stop()
	relay.remove(t)
	for i := range t.dirs {
		t.dirs[i].putPipe()
	}
	for _, fd := range t.fds {
		if t.err != nil {
			resetOnClose(fd)
		}
		closeFd(fd) // the last descriptor of the socket: it leaves the epoll set
	}
	if t.onLoop {
		// done writes the close line: a decision log that blocks (a full
		// pipe on stdout) must not stall every other tunnel with the loop.
		go t.done(t.dirs[0].n, t.dirs[1].n)
		return
	}
	t.done(t.dirs[0].n, t.dirs[1].n)
}

type relayPipe struct {
	r, w    int
	cleanup runtime.Cleanup
}

// close closes a pipe that still holds bytes (a torn-down tunnel's).
func (p *relayPipe) close() {
	p.cleanup.Stop()
	syscall.Close(p.r)
	syscall.Close(p.w)
}

// pipePool holds empty pipes; the pool drops them at garbage collection
// and a cleanup closes their descriptors. Until then it keeps up to the
// peak number of pipes in flight, two descriptors each; an unprivileged
// egressd past /proc/sys/fs/pipe-user-pages-soft gets the kernel's
// default pipe size instead of 1 MiB (F_SETPIPE_SZ fails; the relay
// still works, with smaller splices), as Go's own splice pool does.
var pipePool sync.Pool

func getPipe() (*relayPipe, error) {
	if p, ok := pipePool.Get().(*relayPipe); ok {
		return p, nil
	}
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		return nil, err
	}
	// Best effort: an unprivileged user over its pipe-user-pages quota
	// keeps the default 64 KiB.
	_, _, _ = syscall.Syscall(syscall.SYS_FCNTL, uintptr(fds[1]), fSetPipeSz, relayPipeSize)
	p := &relayPipe{r: fds[0], w: fds[1]}
	p.cleanup = runtime.AddCleanup(p, func(fds [2]int) {
		syscall.Close(fds[0])
		syscall.Close(fds[1])
	}, fds)
	return p, nil
}
