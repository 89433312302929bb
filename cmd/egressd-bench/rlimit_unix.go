//go:build unix

package main

import "syscall"

// raiseNofile lifts the soft limit on open files to the hard limit: the
// RSS figure holds 2,000 tunnels, two sockets each on both sides.
func raiseNofile() {
	var r syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r) == nil && r.Cur < r.Max {
		r.Cur = r.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	}
}
