//go:build !linux

package main

import (
	"errors"
	"syscall"
)

func setns(uintptr) error { return errors.New("network namespaces need Linux") }

func childAttr() *syscall.SysProcAttr { return nil }
