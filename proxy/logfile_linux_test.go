package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// TestFileWriter: the decision log writes to a regular file with raw
// write(2), whole lines from concurrent writers, and to a pipe through
// os.File.
func TestFileWriter(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "decisions.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := fileWriter(f)
	if _, ok := w.(*rawFile); !ok {
		t.Fatalf("fileWriter(regular file) = %T, want *rawFile", w)
	}
	const writers, lines = 8, 500
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			for j := range lines {
				if _, err := fmt.Fprintf(w, "{\"writer\":%d,\"line\":%d,\"pad\":%q}\n", i, j, bytes.Repeat([]byte("x"), 300)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, l := range bytes.Split(bytes.TrimSuffix(got, []byte("\n")), []byte("\n")) {
		var i, j int
		if _, err := fmt.Sscanf(string(l), "{\"writer\":%d,\"line\":%d,", &i, &j); err != nil || !bytes.HasSuffix(l, []byte("x\"}")) {
			t.Fatalf("torn line %q", l)
		}
		seen[fmt.Sprint(i, j)] = true
	}
	if len(seen) != writers*lines {
		t.Errorf("%d distinct lines, want %d", len(seen), writers*lines)
	}

	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer pw.Close()
	if w := fileWriter(pw); w != pw {
		t.Errorf("fileWriter(pipe) = %T, want the *os.File", w)
	}
	ro, err := os.Open(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := fileWriter(ro).Write([]byte("x")); err == nil || !strings.Contains(err.Error(), "decisions.log") {
		t.Errorf("write to a read-only file: error %v, want one naming the file", err)
	}
}

// TestFileWriterDiskFull: a line cut by a full disk is ended before the
// next one, so that the lines after it are whole JSON again. A tmpfs of
// two pages, one taken by a filler: the log has 4096 bytes, four lines
// of 1000 and 96 bytes of the fifth.
func TestFileWriterDiskFull(t *testing.T) {
	needRoot(t, "mounting a small tmpfs")
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=8k"); err != nil {
		t.Fatalf("mount a tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "decisions.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := fileWriter(f)
	line := func(i int) []byte {
		return fmt.Appendf(nil, "{\"line\":%d,\"pad\":%q}\n", i, strings.Repeat("x", 1000-len(`{"line":0,"pad":""}`)-1))
	}
	for i := range 5 {
		n, err := w.Write(line(i))
		if i < 4 && err != nil || i == 4 && (!errors.Is(err, syscall.ENOSPC) || n != 96) {
			t.Fatalf("line %d: wrote %d, %v; want 1000 bytes, then 96 and ENOSPC", i, n, err)
		}
	}
	if _, err := w.Write(line(5)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("a line on the full disk: %v, want ENOSPC", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for i := 6; i < 8; i++ {
		if _, err := w.Write(line(i)); err != nil {
			t.Fatalf("line %d after space was freed: %v", i, err)
		}
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	var lines []int
	for _, l := range strings.SplitAfter(string(got), "\n") {
		var v struct{ Line int }
		if json.Unmarshal([]byte(l), &v) == nil {
			lines = append(lines, v.Line)
		}
	}
	if want := []int{0, 1, 2, 3, 6, 7}; !slices.Equal(lines, want) {
		t.Errorf("whole lines %v, want %v: the line the full disk cut is not ended before the next", lines, want)
	}
}

// TestFileWriterClosed: a write after the file was closed fails and does
// not reach the file that reused its descriptor number.
func TestFileWriterClosed(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "decisions.log"))
	if err != nil {
		t.Fatal(err)
	}
	w := fileWriter(f)
	if _, ok := w.(*rawFile); !ok {
		t.Fatalf("fileWriter(regular file) = %T, want *rawFile", w)
	}
	fd := f.Fd()
	f.Close()
	other, err := os.Create(filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if other.Fd() != fd {
		t.Logf("the other file got descriptor %d, not the log's %d: the write is checked all the same", other.Fd(), fd)
	}
	if _, err := w.Write([]byte("{\"message\":\"decision\"}\n")); err == nil || !strings.Contains(err.Error(), "decisions.log") {
		t.Errorf("write after close: error %v, want one naming the closed file", err)
	}
	if b, _ := os.ReadFile(other.Name()); len(b) != 0 {
		t.Errorf("the line went to the file that reused the descriptor: %q", b)
	}
}

// TestFileWriterFilesystems: raw writes only on the local filesystems
// listed, by statfs type; a regular file elsewhere (here procfs) is
// written through os.File.
func TestFileWriterFilesystems(t *testing.T) {
	for _, tc := range []struct {
		name  string
		typ   int64
		local bool
	}{
		{"ext4", 0xEF53, true},
		{"xfs", 0x58465342, true},
		{"btrfs", 0x9123683E, true},
		{"tmpfs", 0x01021994, true},
		{"overlayfs", 0x794C7630, true},
		{"nfs", 0x6969, false},
		{"smb2", 0xFE534D42, false},
		{"fuse", 0x65735546, false},
		{"9p", 0x01021997, false},
		{"proc", 0x9FA0, false},
	} {
		if got := localFS(tc.typ); got != tc.local {
			t.Errorf("localFS(%s, %#x) = %v, want %v", tc.name, tc.typ, got, tc.local)
		}
	}
	f, err := os.OpenFile("/proc/self/comm", os.O_WRONLY, 0)
	if err != nil {
		unavailable(t, "no writable regular file on procfs: %v", err)
	}
	defer f.Close()
	if w := fileWriter(f); w != f {
		t.Errorf("fileWriter(a regular file on procfs) = %T, want the *os.File", w)
	}
}
