package proxy

import (
	"io"
	"os"
	"syscall"
	"unsafe"
)

// fileWriter is how the decision log writes to f: with raw write(2) when f
// is a regular file, else f itself.
//
// A write to a regular file returns once the line is in the page cache,
// but through os.File it is a system call the runtime books as blocking:
// the monitor thread hands the writing goroutine's P to another thread
// when other goroutines wait to run, which is most of the time on a busy
// gateway. On the transparent front loop, which writes a decision line per
// connection, that cost 3-4 thread switches per connection, about 90 µs of
// CPU and 5-10 points of the connection rate on 2 CPUs (README,
// Performance). A raw write keeps the P. It is not used for a pipe or a
// terminal, whose reader decides how long a write blocks.
func fileWriter(f *os.File) io.Writer {
	rc, err := f.SyscallConn() // not f.Fd(), which would make a pipe blocking
	if err != nil {
		return f
	}
	var w *rawFile
	_ = rc.Control(func(fd uintptr) {
		var st syscall.Stat_t
		if syscall.Fstat(int(fd), &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFREG {
			w = &rawFile{f: f, fd: fd}
		}
	})
	if w == nil {
		return f
	}
	return w
}

// rawFile writes to a regular file with raw write(2). It holds f so that
// the descriptor stays open as long as the writer is in use.
type rawFile struct {
	f  *os.File
	fd uintptr
}

func (w *rawFile) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, w.fd, uintptr(unsafe.Pointer(&b[n])), uintptr(len(b)-n))
		switch {
		case e == syscall.EINTR:
			continue
		case e != 0:
			return n, &os.PathError{Op: "write", Path: w.f.Name(), Err: e}
		case r == 0:
			return n, io.ErrShortWrite
		}
		n += int(r)
	}
	return n, nil
}
