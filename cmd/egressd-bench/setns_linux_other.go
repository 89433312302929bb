//go:build linux && !amd64 && !386

package main

import "syscall"

const sysSetns = syscall.SYS_SETNS
