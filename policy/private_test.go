package policy

import (
	"net/netip"
	"testing"
)

func TestIsPrivate(t *testing.T) {
	tests := []struct {
		addr string
		want bool
	}{
		// IPv4.
		{"0.0.0.0", true},
		{"0.1.2.3", true},
		{"10.0.0.1", true},
		{"10.255.255.255", true},
		{"172.16.0.1", true},
		{"172.31.255.255", true},
		{"172.32.0.1", false},
		{"172.15.255.255", false},
		{"192.168.1.1", true},
		{"192.169.1.1", false},
		{"100.64.0.1", true},
		{"100.127.255.255", true},
		{"100.128.0.1", false},
		{"100.63.255.255", false},
		{"100.100.100.200", true}, // Alibaba metadata, CGNAT
		{"127.0.0.1", true},
		{"127.255.0.1", true},
		{"169.254.169.254", true},
		{"169.254.0.1", true},
		{"169.255.0.1", false},
		{"224.0.0.1", true},
		{"239.255.255.250", true},
		{"240.0.0.1", true},
		{"255.255.255.255", true},
		{"8.8.8.8", false},
		{"1.1.1.1", false},
		{"198.41.192.7", false},
		{"223.255.255.255", false},

		// IPv6.
		{"::", true},
		{"::1", true},
		{"::10.0.0.1", true}, // deprecated IPv4-compatible
		{"fc00::1", true},
		{"fd00:ec2::254", true}, // AWS metadata
		{"fe80::1", true},
		{"fe80::1%eth0", true},
		{"febf::1", true},
		{"fec0::1", true},
		{"ff02::1", true},
		{"::ffff:10.0.0.1", true},
		{"::ffff:169.254.169.254", true},
		{"::ffff:8.8.8.8", false},
		{"64:ff9b::a9fe:a9fe", true}, // NAT64 of 169.254.169.254
		{"64:ff9b::7f00:1", true},
		{"64:ff9b::808:808", false}, // NAT64 of 8.8.8.8
		{"64:ff9b:1::1", true},      // local-use NAT64
		{"64:ff9b:1:ffff::808:808", true},
		{"2002:a9fe:a9fe::1", true}, // 6to4 of 169.254.169.254
		{"2002:0a00:0001::1", true},
		{"2002:0808:0808::1", false},
		{"2606:4700::1", false},
		{"2001:4860:4860::8888", false},
		{"2001:db8::1", false},
	}
	for _, tt := range tests {
		a := netip.MustParseAddr(tt.addr)
		if got := IsPrivate(a); got != tt.want {
			t.Errorf("IsPrivate(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
	if !IsPrivate(netip.Addr{}) {
		t.Error("IsPrivate(invalid) = false, want true (fail closed)")
	}
}

func TestWholePrivate(t *testing.T) {
	tests := []struct {
		prefix string
		want   bool
	}{
		{"10.0.0.0/8", true},
		{"10.1.0.0/16", true},
		{"10.1.2.3/32", true},
		{"10.0.0.0/7", false},
		{"0.0.0.0/0", false},
		{"0.0.0.0/8", true},
		{"172.16.0.0/12", true},
		{"172.16.0.0/11", false},
		{"224.0.0.0/3", true},
		{"192.0.0.0/2", false},
		{"169.254.169.254/32", true},
		{"8.8.8.0/24", false},
		{"::/0", false},
		{"fc00::/7", true},
		{"fd00::/8", true},
		{"fc00::/6", false},
		{"64:ff9b::a00:0/104", true},
		{"64:ff9b::/96", false},
		{"2002:a00::/24", true},
		{"2002::/16", false},
		{"2606:4700::/32", false},
	}
	for _, tt := range tests {
		if got := wholePrivate(netip.MustParsePrefix(tt.prefix)); got != tt.want {
			t.Errorf("wholePrivate(%s) = %v, want %v", tt.prefix, got, tt.want)
		}
	}
}

func TestEmbeddedIPv4(t *testing.T) {
	for _, c := range []struct{ addr, want string }{
		{"64:ff9b::cb00:7105", "203.0.113.5"},
		{"64:ff9b::a9fe:a9fe", "169.254.169.254"},
		{"2002:cb00:7105::1", "203.0.113.5"},
		{"2002:a00:1:ff::5", "10.0.0.1"},
		{"64:ff9b:1::cb00:7105", ""}, // local-use NAT64: the operator places it
		{"64:ff9b::1:cb00:7105", ""}, // not the /96 form
		{"::ffff:203.0.113.5", ""},   // mapped: unmapped before, not translated
		{"203.0.113.5", ""},
		{"2001:db8::1", ""},
		{"", ""},
	} {
		var a netip.Addr
		if c.addr != "" {
			a = netip.MustParseAddr(c.addr)
		}
		got, ok := EmbeddedIPv4(a)
		if want := c.want != ""; ok != want || ok && got.String() != c.want {
			t.Errorf("EmbeddedIPv4(%s) = %v, %v; want %q", c.addr, got, ok, c.want)
		}
	}
}
