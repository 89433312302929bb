//go:build !linux

package proxy

import (
	"io"
	"os"
)

// fileWriter: the raw write for regular files is Linux's (logfile_linux.go).
func fileWriter(f *os.File) io.Writer { return f }
