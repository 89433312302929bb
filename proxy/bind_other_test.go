//go:build !linux

package proxy

import (
	"errors"
	"net/netip"
	"syscall"
)

// bindLoopback: the transparent tests run on Linux (bind_linux_test.go).
func bindLoopback(netip.Addr, func(netip.AddrPort)) func(string, string, syscall.RawConn) error {
	return func(string, string, syscall.RawConn) error {
		return errors.New("test: transparent gateway tests need Linux")
	}
}
