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
