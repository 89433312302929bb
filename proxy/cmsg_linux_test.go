package proxy

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"testing"
	"unsafe"
)

// cmsg builds one control message as the kernel lays it out.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, syscall.CmsgSpace(len(data)))
	h := (*syscall.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(syscall.CmsgLen(len(data)))
	copy(b[syscall.CmsgLen(0):], data)
	return b
}

func sockaddr4(ap netip.AddrPort) []byte {
	b := make([]byte, syscall.SizeofSockaddrInet4)
	*(*uint16)(unsafe.Pointer(&b[0])) = syscall.AF_INET
	binary.BigEndian.PutUint16(b[2:], ap.Port())
	a := ap.Addr().As4()
	copy(b[4:], a[:])
	return b
}

func sockaddr6(ap netip.AddrPort) []byte {
	b := make([]byte, syscall.SizeofSockaddrInet6)
	*(*uint16)(unsafe.Pointer(&b[0])) = syscall.AF_INET6
	binary.BigEndian.PutUint16(b[2:], ap.Port())
	a := ap.Addr().As16()
	copy(b[8:], a[:])
	return b
}

func TestParseOrigDstCmsg(t *testing.T) {
	v4 := netip.MustParseAddrPort("198.41.192.7:7844")
	v6 := netip.MustParseAddrPort("[2606:4700:a0::1]:443")
	other := cmsg(syscall.SOL_SOCKET, syscall.SCM_TIMESTAMP, make([]byte, 16))
	tests := []struct {
		name string
		oob  []byte
		want netip.AddrPort // invalid: not found
	}{
		{"ipv4", cmsg(syscall.SOL_IP, ipRecvOrigDstAddr, sockaddr4(v4)), v4},
		{"ipv6", cmsg(syscall.SOL_IPV6, ipv6RecvOrigDstAddr, sockaddr6(v6)), v6},
		{"after another message", append(other, cmsg(syscall.SOL_IP, ipRecvOrigDstAddr, sockaddr4(v4))...), v4},
		{"empty", nil, netip.AddrPort{}},
		{"other message only", other, netip.AddrPort{}},
		{"short header", []byte{1, 2, 3}, netip.AddrPort{}},
		{"short sockaddr_in", cmsg(syscall.SOL_IP, ipRecvOrigDstAddr, sockaddr4(v4)[:8]), netip.AddrPort{}},
		{"short sockaddr_in6", cmsg(syscall.SOL_IPV6, ipv6RecvOrigDstAddr, sockaddr6(v6)[:20]), netip.AddrPort{}},
		{"truncated buffer", cmsg(syscall.SOL_IP, ipRecvOrigDstAddr, sockaddr4(v4))[:20], netip.AddrPort{}},
		{"wrong family", cmsg(syscall.SOL_IP, ipRecvOrigDstAddr, make([]byte, 16)), netip.AddrPort{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseOrigDstCmsg(tt.oob)
			if ok != tt.want.IsValid() || got != tt.want {
				t.Errorf("parseOrigDstCmsg = %v, %v; want %v", got, ok, tt.want)
			}
		})
	}
	oob := cmsg(syscall.SOL_IP, ipRecvOrigDstAddr, sockaddr4(v4))
	if n := testing.AllocsPerRun(100, func() { parseOrigDstCmsg(oob) }); n != 0 {
		t.Errorf("parseOrigDstCmsg allocates %v times per call", n)
	}
}

// FuzzParseOrigDstCmsg: control messages are kernel output, but the parser
// reads them with unsafe; it must stay in bounds on any bytes.
func FuzzParseOrigDstCmsg(f *testing.F) {
	f.Add(cmsg(syscall.SOL_IP, ipRecvOrigDstAddr, sockaddr4(netip.MustParseAddrPort("192.0.2.1:443"))))
	f.Add(cmsg(syscall.SOL_IPV6, ipv6RecvOrigDstAddr, sockaddr6(netip.MustParseAddrPort("[2001:db8::1]:7844"))))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		// Aligned like the read buffer (make([]byte) is 8-byte aligned).
		oob := make([]byte, len(b))
		copy(oob, b)
		if ap, ok := parseOrigDstCmsg(oob); ok && !ap.Addr().IsValid() {
			t.Fatalf("ok with an invalid address from %x", b)
		}
	})
}
