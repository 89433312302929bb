package main

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// setns moves the calling thread into the network namespace open as fd.
func setns(fd uintptr) error { return unix.Setns(int(fd), unix.CLONE_NEWNET) }

// childAttr puts a child in a process group of its own, so that stop
// reaches the workers of a peer too (nginx's, HAProxy's), and kills it if
// the thread that started it goes away.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}

// signalGroup sends sig to the process group of a child from childAttr.
func signalGroup(pid int, sig syscall.Signal) { syscall.Kill(-pid, sig) }
