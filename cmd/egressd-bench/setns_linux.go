package main

import (
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// setns moves the calling thread into the network namespace open as fd.
func setns(fd uintptr) error { return unix.Setns(int(fd), unix.CLONE_NEWNET) }

// childAttr puts a child in a process group of its own, so that stop
// reaches the workers of a peer too (nginx's, HAProxy's), and kills it if
// the thread that started it goes away. With CAP_SYS_ADMIN (root, outside
// a container that drops it) the child is also the init of a PID
// namespace of its own: when the bench is killed (SIGKILL runs no
// cleanup) Pdeathsig kills only the child, and the kernel then kills
// whatever is left in its namespace, the workers a master leaves behind.
// Such an init takes no signal it has no handler for: egressd, the
// reference relay and the peers all handle SIGTERM.
func childAttr() *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if haveCapSysAdmin() {
		a.Cloneflags = syscall.CLONE_NEWPID
	}
	return a
}

// haveCapSysAdmin reports whether this process has CAP_SYS_ADMIN in its
// effective set.
func haveCapSysAdmin() bool {
	b, err := os.ReadFile("/proc/self/status")
	return err == nil && hasCap(string(b), capSysAdmin)
}

// capSysAdmin is CAP_SYS_ADMIN's bit (linux/capability.h), which
// CLONE_NEWPID needs.
const capSysAdmin = 21

// hasCap reports whether the CapEff line of a /proc/PID/status text has
// capability bit c.
func hasCap(status string, c uint) bool {
	for line := range strings.Lines(status) {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			v, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err == nil && v&(1<<c) != 0
		}
	}
	return false
}

// signalGroup sends sig to the process group of a child from childAttr.
func signalGroup(pid int, sig syscall.Signal) { syscall.Kill(-pid, sig) }
