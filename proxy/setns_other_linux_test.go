//go:build linux && !amd64 && !386

package proxy

import "syscall"

const sysSetns = syscall.SYS_SETNS
