package proxy

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// TestListenFamilies: a listener on 0.0.0.0 takes IPv4 only (Go's
// net.Listen would take IPv6 on it too), one on [::] takes both. Every
// TCP listener egressd opens is checked by connecting over both loopbacks;
// the DNS server's UDP socket by its address family.
func TestListenFamilies(t *testing.T) {
	tcp := []struct {
		name   string
		listen func(addr string) (net.Listener, []func(), error)
	}{
		{"http_listen (Listen)", func(a string) (net.Listener, []func(), error) {
			ln, err := Listen(a)
			return ln, nil, err
		}},
		{"transparent_listen (redirect)", func(a string) (net.Listener, []func(), error) {
			ln, err := ListenTransparent(a, false)
			return ln, nil, err
		}},
		{"dns_listen (tcp)", func(a string) (net.Listener, []func(), error) {
			pc, ln, err := listenDNS(a)
			if err != nil {
				return nil, nil, err
			}
			return ln, []func(){func() { pc.Close() }}, nil
		}},
		{"admin_listen", func(a string) (net.Listener, []func(), error) {
			ln, err := listenTCP(a)
			return ln, nil, err
		}},
	}
	for _, l := range tcp {
		for _, c := range []struct {
			addr       string
			v4, v6     bool // reached over 127.0.0.1, over ::1
			needsIPv6  bool
			wantFamily string // of ln.Addr()
		}{
			{"0.0.0.0:0", true, false, false, "IPv4"},
			{"[::]:0", true, true, true, "IPv6"},
		} {
			t.Run(l.name+" "+c.addr, func(t *testing.T) {
				ln, closers, err := l.listen(c.addr)
				if err != nil {
					if c.needsIPv6 {
						needIPv6(t, err)
					}
					t.Fatal(err)
				}
				defer ln.Close()
				for _, f := range closers {
					defer f()
				}
				ap := netip.MustParseAddrPort(ln.Addr().String())
				if got := family(ap.Addr()); got != c.wantFamily {
					t.Errorf("listening on %v (%s), want an %s socket", ap, got, c.wantFamily)
				}
				port := strconv.Itoa(int(ap.Port()))
				for _, d := range []struct {
					host string
					want bool
				}{{"127.0.0.1", c.v4}, {"::1", c.v6}} {
					conn, err := net.DialTimeout("tcp", net.JoinHostPort(d.host, port), 2*time.Second)
					if err == nil {
						conn.Close()
					} else if d.host == "::1" && !c.v6 {
						if _, err6 := net.Listen("tcp", "[::1]:0"); err6 != nil {
							needIPv6(t, err6) // refused for want of ::1, not by the listener
						}
					}
					if got := err == nil; got != d.want {
						t.Errorf("connecting to %s on a listener on %s: connected %v (%v), want %v", d.host, c.addr, got, err, d.want)
					}
				}
			})
		}
	}
	t.Run("dns_listen (udp)", func(t *testing.T) {
		udpFamilies(t, "dns_listen", func(addr string) (net.PacketConn, func(), error) {
			pc, ln, err := listenDNS(addr)
			if err != nil {
				return nil, nil, err
			}
			return pc, func() { pc.Close(); ln.Close() }, nil
		})
	})
}

// udpFamilies checks the family of the UDP socket listen opens on 0.0.0.0
// (IPv4) and on [::] (IPv6, dual-stack); closeAll closes what it opened.
func udpFamilies(t *testing.T, what string, listen func(addr string) (pc net.PacketConn, closeAll func(), err error)) {
	t.Helper()
	for addr, want := range map[string]string{"0.0.0.0:0": "IPv4", "[::]:0": "IPv6"} {
		pc, closeAll, err := listen(addr)
		if err != nil {
			if want == "IPv6" {
				needIPv6(t, err)
			}
			t.Fatal(err)
		}
		got := family(netip.MustParseAddrPort(pc.LocalAddr().String()).Addr())
		closeAll()
		if got != want {
			t.Errorf("%s %s: an %s socket, want %s", what, addr, got, want)
		}
	}
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func TestListenNetwork(t *testing.T) {
	for _, c := range []struct{ network, addr, want string }{
		{"tcp", "0.0.0.0:3128", "tcp4"},
		{"tcp", "127.0.0.1:3128", "tcp4"},
		{"udp", "0.0.0.0:15002", "udp4"},
		{"tcp", "[::]:3128", "tcp"},
		{"tcp", "[::1]:3128", "tcp"},
		{"tcp", ":3128", "tcp"},
		{"tcp", "localhost:3128", "tcp"},
		{"tcp", "[::ffff:0.0.0.0]:3128", "tcp"},
		{"tcp", "no port", "tcp"},
	} {
		if got := listenNetwork(c.network, c.addr); got != c.want {
			t.Errorf("listenNetwork(%q, %q) = %q, want %q", c.network, c.addr, got, c.want)
		}
	}
}
