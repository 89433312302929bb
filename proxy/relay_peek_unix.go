//go:build unix

package proxy

import "syscall"

// readable peeks with MSG_PEEK|MSG_DONTWAIT, so bytes already queued
// (which the edge-triggered poller will not announce again) are never
// waited for.
func (d *direction) readable(fd uintptr) bool {
	_, _, err := syscall.Recvfrom(int(fd), d.peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	switch err {
	case syscall.EAGAIN:
		return false
	case nil, syscall.EINTR:
	default:
		d.err = err
	}
	return true
}
