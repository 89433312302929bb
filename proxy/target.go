package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/egressd/egressd/policy"
)

// Target is a destination as a client named it: a host name or an IP
// literal, and a port.
type Target struct {
	Host string     // normalized host name; "" when the client gave an IP
	Addr netip.Addr // the IP literal; invalid when the client gave a name
	Port uint16
}

// String is the host:port form for logs (the name, or the IP literal).
func (t Target) String() string {
	return net.JoinHostPort(t.Name(), strconv.Itoa(int(t.Port)))
}

// Name is the host name, or the IP literal when there is no name.
func (t Target) Name() string {
	if t.Host != "" {
		return t.Host
	}
	if t.Addr.IsValid() {
		return t.Addr.String()
	}
	return ""
}

// ParseTarget parses a CONNECT authority or a URL's host:port. The port is
// required (defaultPort 0) or defaulted. IP literals must be canonical:
// "127.1", octal and hex IPv4 spellings are refused, never reinterpreted.
func ParseTarget(hostport string, defaultPort uint16) (Target, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		if defaultPort == 0 {
			return Target{}, fmt.Errorf("target %q: want host:port", hostport)
		}
		host, portStr = hostport, strconv.Itoa(int(defaultPort))
		if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
			host = host[1 : len(host)-1]
		}
	}
	name, addr, port, err := policy.ParseDestination(host, portStr)
	if err != nil {
		return Target{}, fmt.Errorf("target %q: %w", hostport, err)
	}
	return Target{Host: name, Addr: addr, Port: port}, nil
}
