//go:build !linux

package main

import (
	"errors"
	"os"
	"syscall"
)

func setns(uintptr) error { return errors.New("network namespaces need Linux") }

func childAttr() *syscall.SysProcAttr { return nil }

// signalGroup signals the child itself: there is no process group of its
// own here.
func signalGroup(pid int, sig syscall.Signal) {
	if p, err := os.FindProcess(pid); err == nil {
		if sig == syscall.SIGKILL {
			p.Kill()
		} else {
			p.Signal(sig)
		}
	}
}
