package main

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// setns moves the calling thread into the network namespace open as fd.
func setns(fd uintptr) error { return unix.Setns(int(fd), unix.CLONE_NEWNET) }

// childAttr kills egressd if the thread that started it goes away.
func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
