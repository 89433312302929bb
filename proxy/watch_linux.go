package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

// On Linux the configuration watcher uses inotify directly, not fsnotify:
// fsnotify always asks for IN_MODIFY, so a decision log written in the
// configuration's directory woke the watcher (a read and two goroutine
// hand-offs) for every line. Asking for IN_CLOSE_WRITE instead sees an
// edit once it is complete and never sees a file that stays open for
// appending.

// inotifyMask: a file written and closed, or created, removed or renamed
// in the directory (an editor's write-rename, a ConfigMap's ..data swap).
const inotifyMask = unix.IN_CLOSE_WRITE | unix.IN_CREATE | unix.IN_DELETE |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_ONLYDIR

// inotifyBufSize is the read buffer: room for 16 events with a maximal
// name (16 bytes of header + NAME_MAX 255 + NUL, rounded up by the
// kernel), more than one edit produces. A burst larger than that is read
// in several calls.
const inotifyBufSize = 16 * (unix.SizeofInotifyEvent + unix.NAME_MAX + 1)

// watchDirs watches dirs and optional (not recursively) and delivers the
// path of every entry that was written and closed, created, removed or
// renamed in them, and "" when the kernel dropped events (its queue
// overflowed), so that the reader assumes anything may have changed. A
// directory of dirs that cannot be watched is named in the error, and the
// others are watched all the same: the watcher is nil only when none can
// be. An optional directory that cannot be watched, or goes away, is
// left out without a word.
func watchDirs(dirs, optional []string) (*dirWatcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	wds := make(map[int32]watchedDir, len(dirs)+len(optional))
	var errs []error
	for i, dir := range slices.Concat(dirs, optional) {
		wd, err := unix.InotifyAddWatch(fd, dir, inotifyMask)
		if err != nil {
			if i < len(dirs) {
				errs = append(errs, fmt.Errorf("watching %s: %w", dir, err))
			}
			continue
		}
		wds[int32(wd)] = watchedDir{dir, i >= len(dirs)}
	}
	if len(wds) == 0 {
		unix.Close(fd)
		return nil, errors.Join(errs...)
	}
	// A non-blocking descriptor given to os.NewFile goes into the
	// netpoller: Read parks the goroutine, and Close wakes it.
	f := os.NewFile(uintptr(fd), "inotify")
	w := newDirWatcher(f.Close)
	go readInotify(w, f, wds)
	return w, errors.Join(errs...)
}

// watchedDir is a watched directory, and whether its watch is optional.
type watchedDir struct {
	path     string
	optional bool
}

func readInotify(w *dirWatcher, f *os.File, wds map[int32]watchedDir) {
	defer close(w.names)
	buf := make([]byte, inotifyBufSize)
	for {
		n, err := f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				w.fail(err)
			}
			return
		}
		for ev := range inotifyEvents(buf[:n]) {
			dir, known := wds[ev.wd]
			if known && ev.mask&unix.IN_IGNORED != 0 {
				// The directory was removed or unmounted (a release
				// directory swapped out, a ConfigMap's old data): its watch
				// is gone. For a directory the configuration needs, that is
				// a change like any other: the reload it brings rebuilds
				// the watch, and says so if the directory cannot be
				// watched again.
				delete(wds, ev.wd)
				if !dir.optional && !w.send("") {
					return
				}
				continue
			}
			name, ok := "", ev.mask&unix.IN_Q_OVERFLOW != 0
			if known && ev.name != "" {
				name, ok = filepath.Join(dir.path, ev.name), true
			}
			if ok && !w.send(name) {
				return
			}
		}
	}
}

type inotifyEvent struct {
	wd   int32
	mask uint32
	name string // "" for events on the watched directory itself
}

// inotifyEvents yields the events in b, the bytes of one read from an
// inotify descriptor: each a struct inotify_event (wd, mask, cookie, len)
// followed by len bytes of NUL-padded name. It stops at the first event
// that does not fit, which a kernel never returns.
func inotifyEvents(b []byte) func(yield func(inotifyEvent) bool) {
	return func(yield func(inotifyEvent) bool) {
		for len(b) >= unix.SizeofInotifyEvent {
			ev := inotifyEvent{
				wd:   int32(binary.NativeEndian.Uint32(b[0:4])),
				mask: binary.NativeEndian.Uint32(b[4:8]),
			}
			nameLen := binary.NativeEndian.Uint32(b[12:16])
			b = b[unix.SizeofInotifyEvent:]
			if uint64(nameLen) > uint64(len(b)) {
				return
			}
			name := b[:nameLen]
			b = b[nameLen:]
			for len(name) > 0 && name[len(name)-1] == 0 {
				name = name[:len(name)-1]
			}
			ev.name = string(name)
			if !yield(ev) {
				return
			}
		}
	}
}
