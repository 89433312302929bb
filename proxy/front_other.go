//go:build !linux

package proxy

import "net"

// newFront: the front loop is Linux's (front_linux.go); elsewhere the
// goroutine path serves every transparent listener.
func (s *Server) newFront(net.Listener, bool) (net.Listener, func()) { return nil, nil }
