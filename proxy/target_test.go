package proxy

import (
	"net/netip"
	"testing"
)

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in      string
		defPort uint16
		want    Target
		wantErr bool
	}{
		{"cgr.dev:443", 0, Target{Host: "cgr.dev", Port: 443}, false},
		{"CGR.Dev.:443", 0, Target{Host: "cgr.dev", Port: 443}, false},
		{"bücher.example:443", 0, Target{Host: "xn--bcher-kva.example", Port: 443}, false},
		{"[2606:4700::1]:7844", 0, Target{Addr: netip.MustParseAddr("2606:4700::1"), Port: 7844}, false},
		{"[::ffff:198.41.192.7]:7844", 0, Target{Addr: netip.MustParseAddr("198.41.192.7"), Port: 7844}, false},
		{"198.41.192.7:7844", 0, Target{Addr: netip.MustParseAddr("198.41.192.7"), Port: 7844}, false},
		{"example.com", 80, Target{Host: "example.com", Port: 80}, false},
		{"[::1]", 80, Target{Addr: netip.MustParseAddr("::1"), Port: 80}, false},
		{"example.com", 0, Target{}, true}, // CONNECT needs a port
		{"example.com:0", 0, Target{}, true},
		{"example.com:65536", 0, Target{}, true},
		{"example.com:-1", 0, Target{}, true},
		{"example.com:https", 0, Target{}, true},
		{"127.1:443", 0, Target{}, true},
		{"0x7f.0.0.1:443", 0, Target{}, true},
		{"0177.0.0.1:443", 0, Target{}, true},
		{"2130706433:443", 0, Target{}, true},
		{"[fe80::1%eth0]:443", 0, Target{}, true},
		{"user@example.com:443", 0, Target{}, true},
		{"exa mple.com:443", 0, Target{}, true},
		{":443", 0, Target{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseTarget(tc.in, tc.defPort)
			if (err != nil) != tc.wantErr {
				t.Fatalf("ParseTarget(%q) error = %v, want error %v", tc.in, err, tc.wantErr)
			}
			if got != tc.want {
				t.Fatalf("ParseTarget(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

// FuzzParseTarget: never panics; an accepted target has a port, exactly one
// of a name or an address, and parses again to itself from its String form.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"cgr.dev:443", "[::1]:7844", "127.1:443", "a..b:1", "[::ffff:1.2.3.4]:80", "xn--bcher-kva.example:443"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tg, err := ParseTarget(s, 0)
		if err != nil {
			return
		}
		if tg.Port == 0 || (tg.Host == "") == !tg.Addr.IsValid() {
			t.Fatalf("ParseTarget(%q) = %+v: want a port and exactly one of host or addr", s, tg)
		}
		again, err := ParseTarget(tg.String(), 0)
		if err != nil || again != tg {
			t.Fatalf("ParseTarget(%q) = %+v, but its String %q parses to %+v, %v", s, tg, tg.String(), again, err)
		}
	})
}
