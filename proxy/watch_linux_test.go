package proxy

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// inotifyRecord encodes one struct inotify_event with its name padded with
// pad NUL bytes, as the kernel pads names to the event alignment.
func inotifyRecord(wd int32, mask uint32, name string, pad int) []byte {
	b := make([]byte, unix.SizeofInotifyEvent, unix.SizeofInotifyEvent+len(name)+pad)
	binary.NativeEndian.PutUint32(b[0:], uint32(wd))
	binary.NativeEndian.PutUint32(b[4:], mask)
	binary.NativeEndian.PutUint32(b[12:], uint32(len(name)+pad))
	b = append(b, name...)
	return append(b, make([]byte, pad)...)
}

func TestInotifyEvents(t *testing.T) {
	cat := func(bs ...[]byte) []byte { return slices.Concat(bs...) }
	a := inotifyRecord(1, unix.IN_CLOSE_WRITE, "egressd.hcl", 5)
	b := inotifyRecord(2, unix.IN_MOVED_TO, "..data", 10)
	overflow := inotifyRecord(-1, unix.IN_Q_OVERFLOW, "", 0)
	for _, tc := range []struct {
		name string
		in   []byte
		want []inotifyEvent
	}{
		{"empty", nil, nil},
		{"one, NUL-padded", a, []inotifyEvent{{1, unix.IN_CLOSE_WRITE, "egressd.hcl"}}},
		{"two", cat(a, b), []inotifyEvent{{1, unix.IN_CLOSE_WRITE, "egressd.hcl"}, {2, unix.IN_MOVED_TO, "..data"}}},
		{"queue overflow: no name", overflow, []inotifyEvent{{-1, unix.IN_Q_OVERFLOW, ""}}},
		{"header cut short", cat(a, b[:10]), []inotifyEvent{{1, unix.IN_CLOSE_WRITE, "egressd.hcl"}}},
		{"name past the end", cat(a, b[:len(b)-1]), []inotifyEvent{{1, unix.IN_CLOSE_WRITE, "egressd.hcl"}}},
		{"length field near 2^32", func() []byte {
			r := inotifyRecord(3, unix.IN_CREATE, "x", 0)
			binary.NativeEndian.PutUint32(r[12:], 0xffffffff)
			return r
		}(), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := slices.Collect(inotifyEvents(tc.in))
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func FuzzInotifyEvents(f *testing.F) {
	f.Add(inotifyRecord(1, unix.IN_CLOSE_WRITE, "egressd.hcl", 5))
	f.Add(slices.Concat(inotifyRecord(1, unix.IN_CREATE, "a", 3), inotifyRecord(-1, unix.IN_Q_OVERFLOW, "", 0)))
	f.Fuzz(func(t *testing.T, b []byte) {
		// Each event must be the record at its offset, its name that
		// record's name without the NUL padding; the events stop only
		// where the next record does not fit.
		off := 0
		for ev := range inotifyEvents(b) {
			r := b[off:]
			nameLen := int(binary.NativeEndian.Uint32(r[12:16]))
			name := strings.TrimRight(string(r[unix.SizeofInotifyEvent:unix.SizeofInotifyEvent+nameLen]), "\x00")
			want := inotifyEvent{int32(binary.NativeEndian.Uint32(r[0:4])), binary.NativeEndian.Uint32(r[4:8]), name}
			if ev != want {
				t.Fatalf("event at offset %d: %+v, want %+v", off, ev, want)
			}
			off += unix.SizeofInotifyEvent + nameLen
		}
		if r := b[off:]; len(r) >= unix.SizeofInotifyEvent && uint64(binary.NativeEndian.Uint32(r[12:16])) <= uint64(len(r)-unix.SizeofInotifyEvent) {
			t.Fatalf("events stopped at offset %d of %d before a record that fits", off, len(b))
		}
	})
}

// TestWatchDirsRemoved: when a watched directory goes away its watch ends,
// and the watcher says that anything may have changed ("") instead of
// falling silent, so that a reload rebuilds the watch; an optional
// directory's goes without a word.
func TestWatchDirsRemoved(t *testing.T) {
	base := t.TempDir()
	dir, opt := filepath.Join(base, "conf"), filepath.Join(base, "opt")
	for _, d := range []string{dir, opt} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	w, err := watchDirs([]string{dir}, []string{opt})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := os.Remove(opt); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case name := <-w.Names():
			if name == "" {
				return
			}
			if name == opt {
				continue // the optional directory's entry in the parent is not watched
			}
			t.Fatalf("name %q, want \"\" for the removed directory", name)
		case err := <-w.Errors():
			t.Fatalf("error %v, want \"\" on Names", err)
		case <-time.After(5 * time.Second):
			t.Fatal("nothing within 5s of removing the watched directory")
		}
	}
}

// TestWatchDirsSkipsAppends: a file kept open for appending (a decision
// log beside the configuration) produces no event however many lines it
// gets, while a configuration written and closed, renamed into place or
// removed does; Close ends Names.
func TestWatchDirsSkipsAppends(t *testing.T) {
	dir := t.TempDir()
	logf, err := os.OpenFile(filepath.Join(dir, "decisions.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	w, err := watchDirs([]string{dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	next := func() string {
		t.Helper()
		select {
		case n := <-w.Names():
			return n
		case err := <-w.Errors():
			t.Fatal(err)
		case <-time.After(5 * time.Second):
			t.Fatal("no event within 5s")
		}
		return ""
	}
	for range 500 {
		if _, err := logf.WriteString(`{"message":"decision"}` + "\n"); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(dir, "egressd.hcl")
	if err := os.WriteFile(cfg, []byte("# 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The first events must be the configuration's (created, then written
	// and closed): the appends made none.
	for range 2 {
		if got := next(); got != cfg {
			t.Fatalf("event %q, want %q (the log's appends must not wake the watcher)", got, cfg)
		}
	}
	tmp := filepath.Join(dir, ".egressd.hcl.tmp")
	if err := os.WriteFile(tmp, []byte("# 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, cfg); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for !seen[cfg] {
		seen[next()] = true
	}
	if err := os.Remove(cfg); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != cfg {
		t.Fatalf("after remove: %q, want %q", got, cfg)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-w.Names():
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("Names not closed 5s after Close")
		}
	}
}
