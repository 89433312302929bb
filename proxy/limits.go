package proxy

import (
	"fmt"
	"net/netip"
	"sync"

	"github.com/egressd/egressd/policy"
)

// limiter counts the connections egressd holds open (CONNECT tunnels,
// plain-HTTP requests, transparent connections, QUIC flows), in total and
// per client address, against server.max_connections and
// server.max_connections_per_client. A client's entry is deleted when its
// count drops to zero, so the map never holds more entries than there are
// open connections.
type limiter struct {
	max, perClient int // 0: no limit

	mu      sync.Mutex
	total   int
	clients map[netip.Addr]int
}

func newLimiter(max, perClient int) *limiter {
	return &limiter{max: max, perClient: perClient, clients: make(map[netip.Addr]int)}
}

// acquire takes a slot for a connection from client. When a limit is
// reached it takes nothing and returns a detail naming the limit; otherwise
// the caller must call release(client) exactly once.
func (l *limiter) acquire(client netip.Addr) (detail string, ok bool) {
	client = client.Unmap().WithZone("")
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max > 0 && l.total >= l.max {
		return fmt.Sprintf("max_connections: %d connections open in total", l.max), false
	}
	if n := l.clients[client]; l.perClient > 0 && n >= l.perClient {
		return fmt.Sprintf("max_connections_per_client: %d connections open from %s", l.perClient, client), false
	}
	l.total++
	l.clients[client]++
	return "", true
}

// release returns a slot taken by acquire.
func (l *limiter) release(client netip.Addr) {
	client = client.Unmap().WithZone("")
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if n := l.clients[client] - 1; n > 0 {
		l.clients[client] = n
	} else {
		delete(l.clients, client)
	}
}

// open returns the number of slots taken.
func (l *limiter) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// slot is a connection's hold on the limiter, released at most once.
type slot struct {
	once   sync.Once
	l      *limiter
	client netip.Addr
}

// acquireSlot takes a slot for c's client. On refusal it turns c's
// decision into a deny with connection_limit and returns nil; the caller
// logs it. A nil *slot's free is a no-op.
func (s *Server) acquireSlot(c *conn) *slot {
	a := c.client.Addr()
	detail, ok := s.limits.acquire(a)
	if !ok {
		c.refuse(policy.ReasonConnectionLimit, detail)
		return nil
	}
	return &slot{l: s.limits, client: a}
}

// free releases the slot; later calls do nothing.
func (sl *slot) free() {
	if sl == nil {
		return
	}
	sl.once.Do(func() { sl.l.release(sl.client) })
}
