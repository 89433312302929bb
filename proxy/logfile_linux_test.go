package proxy

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
		t.Skipf("no writable regular file on procfs: %v", err)
	}
	defer f.Close()
	if w := fileWriter(f); w != f {
		t.Errorf("fileWriter(a regular file on procfs) = %T, want the *os.File", w)
	}
}
