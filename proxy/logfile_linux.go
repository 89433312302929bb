package proxy

import (
	"io"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// fileWriter is how the decision log writes to f: with raw write(2) when f
// is a regular file on a local filesystem, else f itself.
//
// A write to a regular file returns once the line is in the page cache,
// but through os.File it is a system call the runtime books as blocking:
// the monitor thread hands the writing goroutine's P to another thread
// when other goroutines wait to run, which is most of the time on a busy
// gateway. On the transparent front loop, which writes a decision line per
// connection, that cost 3-4 thread switches per connection, about 90 µs of
// CPU and 5-10 points of the connection rate on 2 CPUs (README,
// Performance). A raw write keeps the P.
//
// The price: while the kernel holds a raw write (a frozen filesystem,
// heavy writeback), its goroutine keeps its P and a garbage collection
// cannot stop it, so the whole process waits with it, as a synchronous
// access log stalls nginx. So raw writes are used only where the kernel
// answers from the page cache: not for a pipe or a terminal, whose reader
// decides how long a write blocks, and not on a network or FUSE
// filesystem (NFS, SMB, FUSE, ...), whose server does.
func fileWriter(f *os.File) io.Writer {
	rc, err := f.SyscallConn() // not f.Fd(), which would make a pipe blocking
	if err != nil {
		return f
	}
	raw := false
	_ = rc.Control(func(fd uintptr) {
		var st syscall.Stat_t
		var fs syscall.Statfs_t
		raw = syscall.Fstat(int(fd), &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFREG &&
			syscall.Fstatfs(int(fd), &fs) == nil && localFS(fs.Type)
	})
	if !raw {
		return f
	}
	w := &rawFile{f: f, rc: rc}
	w.writeFn = w.write
	return w
}

// localFS reports whether a filesystem of this type (statfs f_type,
// linux/magic.h) keeps written bytes in the page cache of this machine:
// the ones egressd's logs are usually on.
func localFS(typ int64) bool {
	switch uint32(typ) {
	case 0xEF53, // ext2, ext3, ext4
		0x58465342, // xfs
		0x9123683E, // btrfs
		0x01021994, // tmpfs
		0x794C7630: // overlayfs (containers)
		return true
	}
	return false
}

// rawFile writes whole lines to a regular file with raw write(2), one
// writer at a time (so that a line the kernel takes in parts is not torn
// by another), under a reference to f's descriptor: after f is closed a
// write fails instead of reaching whatever file reused the number.
//
// A line a write error cut (ENOSPC: the disk filled up mid-line) is ended
// before the next one, so that it is one bad line of its own and the
// lines after it are whole JSON again.
type rawFile struct {
	f       *os.File
	rc      syscall.RawConn
	writeFn func(fd uintptr) // w.write, made once

	mu   sync.Mutex
	torn bool   // the file ends in part of a line, under mu
	b    []byte // the bytes being written, under mu
	n    int
	err  error
}

func (w *rawFile) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.torn {
		if _, err := w.writeAll([]byte{'\n'}); err != nil {
			return 0, err
		}
		w.torn = false
	}
	n, err := w.writeAll(b)
	w.torn = n > 0 && n < len(b)
	return n, err
}

// writeAll writes b whole, or as much as the file takes before an error.
// w.mu must be held.
func (w *rawFile) writeAll(b []byte) (int, error) {
	w.b, w.n, w.err = b, 0, nil
	if err := w.rc.Control(w.writeFn); err != nil {
		w.err = &os.PathError{Op: "write", Path: w.f.Name(), Err: err}
	}
	w.b = nil
	return w.n, w.err
}

// write runs inside Control, with w.mu held.
func (w *rawFile) write(fd uintptr) {
	b := w.b
	for w.n < len(b) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[w.n])), uintptr(len(b)-w.n))
		switch {
		case e == syscall.EINTR:
			continue
		case e != 0:
			w.err = &os.PathError{Op: "write", Path: w.f.Name(), Err: e}
			return
		case r == 0:
			w.err = io.ErrShortWrite
			return
		}
		w.n += int(r)
	}
}
