package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sni"
)

// The transparent front loop. A redirected connection is accepted, read,
// decided, dialed and handed to the relay by one goroutine, on raw
// non-blocking descriptors in an epoll set of its own that sits in Go's
// netpoller like the relay's: accept4, SO_ORIGINAL_DST, the ClientHello's
// reads, the decision (the same decide and dstKnown as the goroutine
// path), a non-blocking connect and the hello's write. The descriptors
// then go to the relay as they are, without a dup.
//
// Per connection that saves a goroutine, two *net.TCPConn with their
// poll descriptors, and the wake-ups of other threads that goroutines
// blocking in reads and connects cause. With the decision log's raw
// writes (logfile_linux.go), which keep the loop's P while it logs, the
// gateway's connection rate at concurrency 64 on 2 CPUs rose from 82-89 %
// of direct to 87-93 %, its CPU per connection fell from 374-439 µs to
// 276-315 µs and its thread switches from 9.6-10.2 to 5.8-6.1 per
// connection; either change alone measured no gain (README, Performance).
//
// What would block the loop goes to a goroutine with the connection as a
// net.Conn: verifying an original destination the resolver has not
// remembered (a DNS query), and a redirect to the SNI name. The loop runs
// when the server dials with its own dialer (DialContext unset).

const (
	// frontEvents is how many epoll events one epoll_wait collects.
	frontEvents = 128
	// frontAcceptBatch is how many connections one pass under the
	// listener's Control accepts before the loop handles them.
	frontAcceptBatch = 32
	// maxAcceptBackoff bounds the pause after a failed accept (EMFILE,
	// ENFILE, ENOBUFS): the same 1 s as the goroutine path's backoff.
	maxAcceptBackoff = time.Second
)

// front is one transparent listener's loop. Everything but stopping,
// aborting and the wake descriptor is touched only by the loop goroutine.
type front struct {
	s      *Server
	ln     net.Listener // the caller's; Close stops the loop
	tproxy bool         // the original destination is the local address
	upOpts []sockopt    // s.upstreamOpts()
	v6     bool         // an IPv6 (or dual-stack) listener: try IP6T_SO_ORIGINAL_DST first

	file *os.File        // keeps epfd open
	epfd int             // not file.Fd(), which would make it blocking
	rc   syscall.RawConn // epfd, in Go's netpoller
	// lrc is the listener's descriptor, used only inside its Control, so
	// that a Close meanwhile cannot give its number to another socket;
	// lfd is that number, to match events, and -1 once stopped.
	lrc      syscall.RawConn
	lfd      int
	acceptFn func(uintptr) // f.acceptAll, made once
	// batch holds what one pass of acceptAll accepted; more says the
	// batch filled up, so the loop accepts again after the events at
	// hand (the listener is edge-triggered: no new edge says so).
	batch  [frontAcceptBatch]acceptedSock
	nbatch int
	more   bool

	wakeMu sync.Mutex
	efd    int // eventfd that wakes the loop (timer, stop, abort); -1 once closed

	conns   map[int32]*frontConn // by descriptor, client's and upstream's
	gen     uint32               // last generation given to a frontConn
	hello   frontQueue           // waiting for their ClientHello, by deadline
	dialing frontQueue           // connecting or writing the hello, by deadline

	// Deadlines are nanoseconds since epoch on the monotonic clock (as
	// the timer's are): a step of the wall clock must neither expire
	// every connection at once nor leave the timer set for a time that
	// never comes.
	timer      *time.Timer
	timerAt    int64 // when the timer is set for; 0: not set
	acceptAt   int64 // when to accept again after an error; 0: not waiting
	acceptWait time.Duration

	stopping, aborting atomic.Bool
	tr                 *tracked // the loop's entry for Shutdown
}

// acceptedSock is a descriptor accept4 returned, with its peer address.
type acceptedSock struct {
	fd   int
	peer [syscall.SizeofSockaddrInet6 + 4]byte
	n    uint32
}

// frontConn is a connection in the front loop.
type frontConn struct {
	cfd, ufd int // ufd is -1 until the dial
	gen      uint32
	c        *conn
	sl       *slot
	dst      netip.AddrPort // original destination, unmapped
	f        firstBytes
	start    time.Time // of the hello phase, then of the dial
	written  int       // bytes of f written upstream
	up       bool      // connected

	deadline   int64 // front.at
	q          *frontQueue
	prev, next *frontConn
}

// frontQueue lists connections in the order their deadlines fall: each
// queue has one timeout, so appending keeps it sorted.
type frontQueue struct{ head, tail *frontConn }

func (q *frontQueue) push(p *frontConn, deadline int64) {
	p.deadline, p.q, p.prev, p.next = deadline, q, q.tail, nil
	if q.tail != nil {
		q.tail.next = p
	} else {
		q.head = p
	}
	q.tail = p
}

func (q *frontQueue) remove(p *frontConn) {
	if p.q != q {
		return
	}
	if p.prev != nil {
		p.prev.next = p.next
	} else {
		q.head = p.next
	}
	if p.next != nil {
		p.next.prev = p.prev
	} else {
		q.tail = p.prev
	}
	p.q, p.prev, p.next = nil, nil, nil
}

// frontListener is the transparent listener as Shutdown sees it: closing
// it stops the loop's accepting as well.
type frontListener struct {
	net.Listener
	f *front
}

func (l frontListener) Close() error {
	err := l.Listener.Close()
	l.f.stopping.Store(true)
	l.f.wake()
	return err
}

// newFront sets up the front loop for ln and returns the listener for
// Shutdown to close and the loop to run, or nils when the goroutine path
// must serve ln: a listener that is not TCP, an embedder's DialContext,
// no epoll relay, or a system call that failed. s.mu is held; on success
// the loop is registered as one of s's tunnels, so that Shutdown waits for
// the connections in it.
func (s *Server) newFront(ln net.Listener, tproxy bool) (net.Listener, func()) {
	if s.noFront || s.DialContext != nil || getRelay() == nil {
		return nil, nil
	}
	inner := ln
	if tl, ok := ln.(tproxyListener); ok {
		inner = tl.Listener
	}
	tl, ok := inner.(*net.TCPListener)
	if !ok {
		return nil, nil
	}
	f := &front{s: s, ln: ln, tproxy: tproxy, upOpts: s.upstreamOpts(), lfd: -1, efd: -1, conns: make(map[int32]*frontConn)}
	if a, ok := tl.Addr().(*net.TCPAddr); ok && a.IP.To4() == nil {
		f.v6 = true
	}
	if err := f.open(tl); err != nil {
		f.closeFds()
		return nil, nil
	}
	f.timer = time.AfterFunc(time.Hour, f.wake)
	f.timer.Stop()
	s.wg.Add(1)
	f.tr = newTracked(nil, f.abort)
	s.tunnels[f.tr] = struct{}{}
	return frontListener{ln, f}, f.run
}

// open creates the loop's epoll set, its eventfd and its duplicate of the
// listener's descriptor, and registers both.
func (f *front) open(tl *net.TCPListener) error {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		return err
	}
	f.epfd = epfd
	f.file = os.NewFile(uintptr(epfd), "egressd-front-epoll")
	if f.rc, err = f.file.SyscallConn(); err != nil {
		return err
	}
	r, _, e := syscall.RawSyscall(syscall.SYS_EVENTFD2, 0, syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if e != 0 {
		return e
	}
	f.efd = int(r)
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(f.efd)}
	if err := epollCtl(epfd, syscall.EPOLL_CTL_ADD, f.efd, &ev); err != nil {
		return err
	}
	if f.lrc, err = tl.SyscallConn(); err != nil {
		return err
	}
	f.acceptFn = f.acceptAll
	var addErr error
	if err := f.lrc.Control(func(fd uintptr) {
		// Edge-triggered: accept drains the queue; after an error it
		// retries on the timer, not in a busy loop.
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | epollET, Fd: int32(fd)}
		if addErr = epollCtl(epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev); addErr == nil {
			f.lfd = int(fd)
		}
	}); err != nil {
		return err
	}
	return addErr
}

func (f *front) closeFds() {
	f.lfd = -1 // the listener is the caller's to close
	f.wakeMu.Lock()
	if f.efd >= 0 {
		closeFd(f.efd)
		f.efd = -1
	}
	f.wakeMu.Unlock()
	if f.file != nil {
		f.file.Close()
	}
}

// wake makes the loop look at its deadlines and flags.
func (f *front) wake() {
	one := uint64(1)
	f.wakeMu.Lock()
	if f.efd >= 0 {
		_, _, _ = syscall.RawSyscall(syscall.SYS_WRITE, uintptr(f.efd), uintptr(unsafe.Pointer(&one)), 8)
	}
	f.wakeMu.Unlock()
}

// abort is Shutdown's, when its grace ran out: the loop closes every
// connection it holds and ends.
func (f *front) abort() {
	f.aborting.Store(true)
	f.wake()
}

// run serves until the listener is closed and the connections in the
// loop are gone, or until abort.
func (f *front) run() {
	defer func() {
		f.timer.Stop()
		f.closeFds()
		f.s.untrack(f.tr)
	}()
	var evs [frontEvents]syscall.EpollEvent
	wait := func(uintptr) bool {
		for {
			n, err := epollWait(f.epfd, evs[:])
			if err == syscall.EINTR {
				continue
			}
			n = max(n, 0)
			for i := range evs[:n] {
				f.event(&evs[i])
			}
			if f.more {
				f.accept() // the next batch, after the events at hand
			}
			if f.finished() {
				return true
			}
			if n < len(evs) && !f.more {
				return false // drained: park until the epoll fd is readable
			}
		}
	}
	for !f.finished() {
		if err := f.rc.Read(wait); err != nil {
			f.aborting.Store(true)
			f.woken()
			return
		}
	}
}

func (f *front) finished() bool {
	return f.lfd < 0 && len(f.conns) == 0
}

func (f *front) event(ev *syscall.EpollEvent) {
	fd := ev.Fd
	if ev.Pad == 0 {
		switch int(fd) {
		case f.efd:
			f.woken()
		case f.lfd:
			f.accept()
		}
		return
	}
	p := f.conns[fd]
	if p == nil || p.gen != uint32(ev.Pad) {
		return // a closed connection's event
	}
	if int(fd) == p.cfd {
		f.readHello(p)
	} else {
		f.upstreamReady(p, ev.Events)
	}
}

// woken handles a wake: Shutdown's stop or abort, and deadlines.
func (f *front) woken() {
	var v uint64
	_, _, _ = syscall.RawSyscall(syscall.SYS_READ, uintptr(f.efd), uintptr(unsafe.Pointer(&v)), 8)
	if f.aborting.Load() {
		f.stopAccepting()
		for _, p := range f.conns {
			if p.up {
				f.closeRelaying(p)
			} else {
				p.c.refuse(policy.ReasonClientClosed, "closed by shutdown")
				f.fail(p)
			}
		}
		return
	}
	if f.stopping.Load() {
		f.stopAccepting()
	}
	// Whatever woke the loop, the timer is set anew below for the
	// earliest deadline left.
	f.timerAt = 0
	now := f.at(time.Now())
	for p := f.hello.head; p != nil && p.deadline <= now; p = f.hello.head {
		p.c.refuse(policy.ReasonHelloTimeout, fmt.Sprintf("no complete ClientHello within hello_timeout (%s)", f.s.cfg.HelloTimeout))
		f.fail(p)
	}
	for p := f.dialing.head; p != nil && p.deadline <= now; p = f.dialing.head {
		if p.up {
			f.closeRelaying(p) // the hello's write stalled
			continue
		}
		p.c.refuse(policy.ReasonDialError, fmt.Sprintf("dial tcp %s: i/o timeout", p.dst))
		f.fail(p)
	}
	if f.acceptAt != 0 && now >= f.acceptAt {
		f.acceptAt = 0
		f.accept()
	}
	f.armTimer()
}

func (f *front) stopAccepting() {
	if f.lfd >= 0 {
		// Closing the listener took it out of the epoll set already,
		// unless someone else still holds it open.
		_ = f.lrc.Control(func(fd uintptr) { _ = epollCtl(f.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil) })
		f.lfd = -1
	}
	f.acceptAt = 0
}

// at is t as a deadline of the loop: nanoseconds since epoch, on the
// monotonic clock.
func (f *front) at(t time.Time) int64 { return int64(t.Sub(epoch)) }

// armTimer sets the timer for the earliest deadline, unless it is set
// for an earlier one already.
func (f *front) armTimer() {
	next := f.acceptAt
	for _, q := range [2]*frontQueue{&f.hello, &f.dialing} {
		if q.head != nil && (next == 0 || q.head.deadline < next) {
			next = q.head.deadline
		}
	}
	if next == 0 || f.timerAt != 0 && f.timerAt <= next {
		return
	}
	f.timerAt = next
	f.timer.Reset(time.Duration(next - f.at(time.Now())))
}

// accept takes one batch of queued connections, or stops accepting once
// the listener was closed. When the batch filled up (f.more) the loop
// calls it again after the events at hand, so that a flood of new
// connections cannot starve the hellos, connects and deadlines of those
// already in the loop. The connections are handled outside the
// listener's Control: Shutdown closes the listener holding s.mu, Close
// waits for every Control to return, and handling a connection takes
// s.mu.
func (f *front) accept() {
	f.more = false
	if f.lfd < 0 || f.acceptAt != 0 {
		return
	}
	f.nbatch = 0
	err := f.lrc.Control(f.acceptFn)
	for i := range f.batch[:f.nbatch] {
		a := &f.batch[i]
		f.accepted(a.fd, a.peer[:min(int(a.n), len(a.peer))])
	}
	if err != nil {
		f.stopAccepting()
	}
}

// acceptAll accepts into f.batch until the queue is empty, the batch is
// full, or accept fails (then it sets the backoff).
func (f *front) acceptAll(lfd uintptr) {
	for f.nbatch < len(f.batch) {
		a := &f.batch[f.nbatch]
		a.n = uint32(len(a.peer))
		r, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, lfd, uintptr(unsafe.Pointer(&a.peer[0])), uintptr(unsafe.Pointer(&a.n)),
			syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
			f.acceptWait = 0
			a.fd = int(r)
			f.nbatch++
			continue
		case syscall.EAGAIN:
			return
		case syscall.EINTR, syscall.ECONNABORTED:
			continue
		}
		// Out of descriptors or memory: try again later, as the goroutine
		// path's backoff does, without spinning on the queued connections.
		frontAcceptFails.Add(1)
		f.acceptWait = min(max(2*f.acceptWait, 5*time.Millisecond), maxAcceptBackoff)
		f.acceptAt = f.at(time.Now().Add(f.acceptWait))
		f.armTimer()
		return
	}
	f.more = true
}

// accepted starts the hello phase of a new connection, or refuses it.
func (f *front) accepted(cfd int, peer []byte) {
	s := f.s
	frontAccepted.Add(1)
	client, _ := parseRawSockaddr(peer)
	c := s.newConnFrom(ModeTransparent, client)
	setIntOpt(cfd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1) // as Go's net does
	dst, err := f.origDst(cfd, c.client)
	if err == nil && (!dst.Addr().IsValid() || dst.Port() == 0) {
		err = fmt.Errorf("invalid original destination %s", dst)
	}
	if err != nil {
		c.refuse(policy.ReasonBadRequest, "original destination: "+err.Error())
		s.logDecision(c)
		closeFd(cfd)
		return
	}
	a := dst.Addr().Unmap().WithZone("")
	dst = netip.AddrPortFrom(a, dst.Port())
	c.host, c.port = a.String(), dst.Port()
	sl := s.acquireSlot(c)
	if sl == nil {
		s.logDecision(c)
		closeFd(cfd)
		return
	}
	if s.isSelf(dst) {
		c.refuse(policy.ReasonBadRequest, selfDetail)
		s.logDecision(c)
		closeFd(cfd)
		sl.free()
		return
	}
	f.gen = max(f.gen+1, 1) // 0 marks the loop's own descriptors
	p := &frontConn{cfd: cfd, ufd: -1, gen: f.gen, c: c, sl: sl, dst: dst, start: c.start}
	p.f.buf = helloBufs.Get().(*[]byte)
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | epollET, Fd: int32(cfd), Pad: int32(p.gen)}
	if err := epollCtl(f.epfd, syscall.EPOLL_CTL_ADD, cfd, &ev); err != nil {
		c.refuse(policy.ReasonClientClosed, "epoll: "+err.Error())
		f.fail(p)
		return
	}
	f.conns[int32(cfd)] = p
	f.hello.push(p, f.at(c.start.Add(s.cfg.HelloTimeout)))
	f.armTimer() // this deadline may come before the one the timer is set for
	// Clients send the hello as soon as they are connected, so it is often
	// here already: reading now saves a round through the netpoller for
	// the event that the registration queued.
	f.readHello(p)
}

// origDst is the connection's original destination: the test hook's, the
// local address on a TPROXY listener, else the conntrack entry's.
func (f *front) origDst(fd int, peer netip.AddrPort) (netip.AddrPort, error) {
	if f.s.origDst != nil || f.tproxy {
		local, err := rawSockaddr(fd, syscall.SYS_GETSOCKNAME, 0, 0)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("getsockname: %w", err)
		}
		if f.s.origDst != nil {
			return f.s.origDst(local, peer)
		}
		return local, nil
	}
	if f.v6 {
		if ap, err := rawSockaddr(fd, syscall.SYS_GETSOCKOPT, syscall.SOL_IPV6, ip6tSoOriginalDst); err == nil {
			return ap, nil
		}
	}
	ap, err := rawSockaddr(fd, syscall.SYS_GETSOCKOPT, syscall.SOL_IP, soOriginalDst)
	if err != nil {
		return ap, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w (was the connection redirected by iptables/nft REDIRECT or DNAT?)", err)
	}
	return ap, nil
}

// readHello reads what the client sent until it is a complete ClientHello,
// recognisably not TLS, or over a limit (as readHello does for a
// net.Conn), then decides.
func (f *front) readHello(p *frontConn) {
	buf := *p.f.buf
	for {
		if p.f.n == len(buf) {
			p.c.refuse(policy.ReasonHelloTooLarge, sni.ErrTooLarge.Error())
			f.fail(p)
			return
		}
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(p.cfd), uintptr(unsafe.Pointer(&buf[p.f.n])), uintptr(len(buf)-p.f.n))
		switch {
		case e == syscall.EAGAIN:
			return
		case e == syscall.EINTR:
			continue
		case e != 0:
			p.c.refuse(policy.ReasonClientClosed, "read: "+e.Error())
			f.fail(p)
			return
		case r == 0:
			p.c.refuse(policy.ReasonClientClosed, "EOF")
			f.fail(p)
			return
		}
		p.f.n += int(r)
		_, perr := sni.ParseRecords(buf[:p.f.n], &p.f.hello)
		switch {
		case perr == nil:
			p.f.tls = true
		case errors.Is(perr, sni.ErrNotTLS):
		case errors.Is(perr, sni.ErrTooLarge):
			p.c.refuse(policy.ReasonHelloTooLarge, perr.Error())
			f.fail(p)
			return
		case errors.Is(perr, sni.ErrNeedMore):
			continue
		default:
			p.c.refuse(policy.ReasonHelloMalformed, perr.Error())
			f.fail(p)
			return
		}
		break
	}
	f.hello.remove(p)
	// The client's next bytes wait for the relay.
	_ = epollCtl(f.epfd, syscall.EPOLL_CTL_DEL, p.cfd, nil)
	f.decide(p)
}

// decide decides a connection whose first bytes were read, then dials,
// or hands it to a goroutine when its destination needs the DNS.
func (f *front) decide(p *frontConn) {
	s, c, a := f.s, p.c, p.dst.Addr()
	r := policy.Request{Addr: a, Port: p.dst.Port(), Transparent: true, Client: c.client.Addr(), Hello: policy.HelloNotTLS}
	var h *sni.Hello
	if p.f.tls {
		c.helloWait = max(time.Since(p.start), time.Nanosecond)
		h = &p.f.hello
	}
	if !s.decide(c, &r, h, false) {
		f.fail(p)
		return
	}
	name := helloName(&r)
	if !s.dstKnown(c.decision, a, name) {
		f.handOff(p, name)
		return
	}
	f.connect(p)
}

// connect starts a non-blocking connect to the original destination, after
// the checks dial makes.
func (f *front) connect(p *frontConn) {
	s, c, dst := f.s, p.c, p.dst
	switch {
	case !c.decision.AddrAllowed(dst.Addr()):
		c.refuse(policy.ReasonPrivateDestination, privateDetail(Target{Addr: dst.Addr(), Port: dst.Port()}, []netip.Addr{dst.Addr()}))
		f.fail(p)
		return
	case s.isOwnListener(dst):
		c.refuse(policy.ReasonBadRequest, ownListenerDetail(dst))
		f.fail(p)
		return
	}
	if s.checkDial != nil {
		if err := s.checkDial("tcp", dst); err != nil {
			c.refuse(policy.ReasonDialError, err.Error())
			f.fail(p)
			return
		}
	}
	family := syscall.AF_INET
	if dst.Addr().Is6() {
		family = syscall.AF_INET6
	}
	r, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, uintptr(family), syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if e != 0 {
		c.refuse(policy.ReasonDialError, "socket: "+e.Error())
		f.fail(p)
		return
	}
	p.ufd = int(r)
	for _, o := range f.upOpts {
		if e := setIntOpt(p.ufd, o.level, o.name, o.v); e != 0 {
			c.refuse(policy.ReasonDialError, fmt.Sprintf("setting %s: %s", o.what, e))
			f.fail(p)
			return
		}
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLOUT | epollET, Fd: int32(p.ufd), Pad: int32(p.gen)}
	if err := epollCtl(f.epfd, syscall.EPOLL_CTL_ADD, p.ufd, &ev); err != nil {
		c.refuse(policy.ReasonDialError, "epoll: "+err.Error())
		f.fail(p)
		return
	}
	f.conns[int32(p.ufd)] = p
	p.start = time.Now()
	f.dialing.push(p, f.at(p.start.Add(s.cfg.DialTimeout)))
	f.armTimer() // this deadline may come before the one the timer is set for
	var sa [syscall.SizeofSockaddrInet6]byte
	n := putRawSockaddr(sa[:], dst)
	for {
		_, _, e = syscall.RawSyscall(syscall.SYS_CONNECT, uintptr(p.ufd), uintptr(unsafe.Pointer(&sa[0])), uintptr(n))
		if e != syscall.EINTR {
			break
		}
	}
	if e != 0 && e != syscall.EINPROGRESS {
		c.refuse(policy.ReasonDialError, fmt.Sprintf("dial tcp %s: connect: %s", dst, e))
		f.fail(p)
	}
	// Connected or not, the registration's EPOLLOUT edge says when.
}

// upstreamOpts are what egressd's dialer gives an upstream socket:
// TCP_NODELAY, the tunnels' keepalive and upstream_mark (and the test
// hook's SO_SNDBUF). The loop sets them on every upstream socket.
func (s *Server) upstreamOpts() []sockopt {
	opts := append([]sockopt{{syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1, "TCP_NODELAY"}}, keepAliveOpts[:]...)
	if s.frontSndBuf != 0 {
		opts = append(opts, sockopt{syscall.SOL_SOCKET, syscall.SO_SNDBUF, s.frontSndBuf, "SO_SNDBUF"})
	}
	if m := s.cfg.UpstreamMark; m != 0 {
		opts = append(opts, markOpt(m))
	}
	return opts
}

// upstreamReady handles an upstream event: the connect's outcome, then the
// room to write the rest of the hello.
func (f *front) upstreamReady(p *frontConn, events uint32) {
	s, c := f.s, p.c
	if !p.up {
		soerr, e := getIntOpt(p.ufd, syscall.SOL_SOCKET, syscall.SO_ERROR)
		if e == 0 && soerr != 0 {
			e = syscall.Errno(soerr)
		}
		if e == 0 && events&syscall.EPOLLOUT == 0 {
			e = syscall.ECONNRESET
		}
		if e != 0 {
			c.refuse(policy.ReasonDialError, fmt.Sprintf("dial tcp %s: connect: %s", p.dst, e))
			f.fail(p)
			return
		}
		p.up = true
		s.metrics.dialed(c.mode, time.Since(p.start))
		c.dst = p.dst
		s.logDecision(c)
	}
	b := p.f.bytes()
	for p.written < len(b) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(p.ufd), uintptr(unsafe.Pointer(&b[p.written])), uintptr(len(b)-p.written))
		switch e {
		case 0:
			p.written += int(r)
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			frontShortWrites.Add(1)
			return // the next EPOLLOUT edge, before the dial deadline
		}
		f.closeRelaying(p)
		return
	}
	f.relay(p)
}

// relay hands an established connection to the relay.
func (f *front) relay(p *frontConn) {
	s, c, sl := f.s, p.c, p.sl
	f.dialing.remove(p)
	_ = epollCtl(f.epfd, syscall.EPOLL_CTL_DEL, p.ufd, nil)
	delete(f.conns, int32(p.cfd))
	delete(f.conns, int32(p.ufd))
	sent := int64(p.f.n)
	p.f.release()
	c.dropHello()
	tr := s.adopt(nil)
	if tr == nil { // Shutdown gave up waiting
		closeFd(p.cfd)
		closeFd(p.ufd)
		s.logClose(c, sent, 0)
		sl.free()
		return
	}
	done := s.relayDone(c, sent, func() {
		s.untrack(tr)
		sl.free()
	})
	abort, err := getRelay().start(p.cfd, p.ufd, s.cfg.IdleTimeout, done)
	if err != nil {
		abort = relayGoroutines(p.cfd, p.ufd, s.cfg.IdleTimeout, done)
	}
	s.relaying(tr, abort)
}

// relayGoroutines relays the two descriptors with net.Conns, when the
// epoll relay could not take them (no watch left in its epoll set).
func relayGoroutines(cfd, ufd int, idle time.Duration, done func(up, down int64)) func() {
	cc, err1 := fdConn(cfd)
	uc, err2 := fdConn(ufd)
	if err1 != nil || err2 != nil {
		if cc != nil {
			cc.Close()
		}
		if uc != nil {
			uc.Close()
		}
		done(0, 0)
		return func() {}
	}
	return startRelay(cc, uc, idle, done)
}

// fdConn turns a socket descriptor into a net.Conn; fd is closed either
// way (the conn holds a duplicate).
func fdConn(fd int) (net.Conn, error) {
	file := os.NewFile(uintptr(fd), "")
	defer file.Close()
	return net.FileConn(file)
}

// handOff finishes a connection on a goroutine: verifying its destination
// needs a DNS query, and a redirect a dial by name.
func (f *front) handOff(p *frontConn, name string) {
	s, c, sl := f.s, p.c, p.sl
	frontHandOffs.Add(1)
	delete(f.conns, int32(p.cfd))
	client, err := fdConn(p.cfd)
	p.cfd = -1
	if err != nil {
		c.refuse(policy.ReasonClientClosed, "taking over the connection: "+err.Error())
		f.fail(p)
		return
	}
	tr := s.adopt(client)
	if tr == nil {
		client.Close()
		c.refuse(policy.ReasonClientClosed, "closed by shutdown")
		f.fail(p)
		return
	}
	fb := &p.f
	t := Target{Addr: p.dst.Addr(), Port: p.dst.Port()}
	go func() {
		end := func() {
			s.untrack(tr)
			sl.free()
		}
		t, ok := s.verifyDst(tr.ctx, c, t, name)
		if !ok {
			s.logDecision(c)
			fb.release()
			client.Close()
			end()
			return
		}
		if !s.dialAndRelay(c, client, fb, t, tr, end) {
			client.Close()
			end()
		}
	}()
}

// fail logs the connection's refusal and closes it.
func (f *front) fail(p *frontConn) {
	f.s.logDecision(p.c)
	f.drop(p)
}

// closeRelaying closes a connection whose decision line was written
// (allowed and connected) before it could relay.
func (f *front) closeRelaying(p *frontConn) {
	f.s.logClose(p.c, int64(p.written), 0)
	f.drop(p)
}

// drop closes the connection's descriptors (which takes them out of the
// epoll set) and frees what it holds.
func (f *front) drop(p *frontConn) {
	f.hello.remove(p)
	f.dialing.remove(p)
	for _, fd := range [2]int{p.cfd, p.ufd} {
		if fd >= 0 {
			delete(f.conns, int32(fd))
			closeFd(fd)
		}
	}
	p.cfd, p.ufd = -1, -1
	p.f.release()
	p.sl.free()
}
