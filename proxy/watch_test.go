package proxy

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/rs/zerolog"

	"github.com/egressd/egressd/policy"
)

func TestConfigWatchRelevant(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "egressd.hcl")
	if err := os.WriteFile(file, []byte("policy \"p\" {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const noUsers, withUsers = "", "secrets/users"
	tests := []struct {
		name, path string
		usersFile  string
		event      string
		want       bool
	}{
		{"file itself", file, noUsers, file, true},
		{"file, other .hcl beside it", file, noUsers, filepath.Join(dir, "other.hcl"), false},
		{"file, log beside it", file, noUsers, filepath.Join(dir, "egressd.log"), false},
		{"file, ConfigMap swap", file, noUsers, filepath.Join(dir, "..data"), true},
		{"file, ConfigMap timestamp dir", file, noUsers, filepath.Join(dir, "..2026_11_23_01"), true},
		{"dir, an .hcl file", dir, noUsers, filepath.Join(dir, "b.hcl"), true},
		{"dir, a hidden .hcl file", dir, noUsers, filepath.Join(dir, ".b.hcl"), false},
		{"dir, a log", dir, noUsers, filepath.Join(dir, "egressd.log"), false},
		{"dir, .hcl in a subdirectory", dir, noUsers, filepath.Join(dir, "sub", "b.hcl"), false},
		{"users file", dir, withUsers, filepath.Join(dir, "secrets", "users"), true},
		{"beside the users file", dir, withUsers, filepath.Join(dir, "secrets", "other"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cw := newConfigWatch(tt.path, tt.usersFile)
			if got := cw.relevant(tt.event); got != tt.want {
				t.Errorf("relevant(%q) with --config %q = %v, want %v", tt.event, tt.path, got, tt.want)
			}
		})
	}
	// A users file in another directory is watched there too.
	cw := newConfigWatch(dir, withUsers)
	if want := []string{dir, filepath.Join(dir, "secrets")}; !slices.Equal(cw.dirs, want) {
		t.Errorf("watched directories %q, want %q", cw.dirs, want)
	}
}

// TestWatchDirsPartial: a directory that cannot be watched is named in
// the error while the others are still watched; with none watchable there
// is no watcher.
func TestWatchDirsPartial(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	w, err := watchDirs([]string{dir, missing}, nil)
	if w == nil {
		t.Fatalf("no watcher for %s beside an unwatchable directory: %v", dir, err)
	}
	defer w.Close()
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("error %v, want one naming %s", err, missing)
	}
	cfg := filepath.Join(dir, "egressd.hcl")
	if err := os.WriteFile(cfg, []byte("# 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-w.Names():
		if got != cfg {
			t.Errorf("event %q, want %q", got, cfg)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no event for %s within 5s", cfg)
	}
	if w, err := watchDirs([]string{missing}, nil); w != nil || err == nil {
		t.Errorf("watchDirs of a missing directory only = %v, %v; want no watcher and an error", w, err)
	}
}

// TestReloadLoop: reloadLoop reloads once per burst of relevant names,
// ReloadDebounce after the last; on "" (events lost); on hup; never for
// irrelevant names nor for a watcher that ended; and logs watcher errors.
func TestReloadLoop(t *testing.T) {
	relevant := func(n string) bool { return strings.HasSuffix(n, ".hcl") }
	for _, tc := range []struct {
		name        string
		names       []string
		closeNames  bool
		hup         bool
		err         error
		wantReloads int
	}{
		{"one relevant name", []string{"a.hcl"}, false, false, nil, 1},
		{"a burst, one reload", []string{"a.hcl", "b.hcl", "x.log", "a.hcl"}, false, false, nil, 1},
		{"irrelevant only", []string{"x.log", "y.swp"}, false, false, nil, 0},
		{"events lost", []string{""}, false, false, nil, 1},
		{"watcher ended", nil, true, false, nil, 0},
		{"watcher ended, hup still reloads", nil, true, true, nil, 1},
		{"hup", nil, false, true, nil, 1},
		{"watcher error", nil, false, false, errors.New("inotify read: EIO"), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			cfg, diags := policy.Parse([]policy.File{{Name: "r.hcl", Src: []byte(`policy "p" {}`)}})
			if diags.HasErrors() {
				t.Fatal(policy.FormatDiagnostics(diags))
			}
			s, err := New(cfg, zerolog.New(&buf)) // buf is read once the loop has ended
			if err != nil {
				t.Fatal(err)
			}
			names, errs := make(chan string, len(tc.names)), make(chan error, 1)
			hup := make(chan os.Signal, 1)
			var reloads atomic.Int32
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				s.reloadLoop(ctx, hup, &watchSet{names: names, errs: errs, relevant: relevant}, func() { reloads.Add(1) })
			}()
			for _, n := range tc.names {
				names <- n
			}
			if tc.closeNames {
				close(names)
			}
			if tc.hup {
				hup <- syscall.SIGHUP
			}
			if tc.err != nil {
				errs <- tc.err
			}
			time.Sleep(ReloadDebounce + 200*time.Millisecond)
			cancel()
			<-done
			if got := int(reloads.Load()); got != tc.wantReloads {
				t.Errorf("%d reloads, want %d", got, tc.wantReloads)
			}
			logged := buf.String()
			if tc.err != nil && !strings.Contains(logged, tc.err.Error()) {
				t.Errorf("watcher error not logged; log:\n%s", logged)
			}
		})
	}
}

// usersFileSetup starts the users_file watch tests: the configuration's
// path, two directories for users files, write (any file) and config (the
// configuration naming dir's users file).
func usersFileSetup(t *testing.T) (path, dirA, dirB string, write func(name, src string), config func(dir string) string) {
	path = filepath.Join(t.TempDir(), "egressd.hcl")
	dirA, dirB = t.TempDir(), t.TempDir()
	write = func(name, src string) {
		if err := os.WriteFile(name, []byte(src), 0o600); err != nil {
			t.Error(err) // not Fatal: load functions call it from the watch's goroutine
		}
	}
	config = func(dir string) string {
		return "server { users_file = \"" + filepath.Join(dir, "users") + "\" }\n" +
			"policy \"p\" {\n  clients { users = [\"alice\"] }\n  allow \"r\" { hosts = [\"a.test\"] }\n}\n"
	}
	return path, dirA, dirB, write, config
}

// TestWatchConfigFollowsUsersFile: a reload that names another users_file
// applies its users and watches the new file, whose edits then reload,
// and no longer the old one.
func TestWatchConfigFollowsUsersFile(t *testing.T) {
	h, err := policy.HashPassword("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	path, dirA, dirB, write, config := usersFileSetup(t)
	hB, err := policy.HashPassword("n3w")
	if err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(dirA, "users"), "alice:"+h+"\n")
	write(filepath.Join(dirB, "users"), "alice:"+hB+"\n")
	write(path, config(dirA))
	w := watching(t, path, path, nil)
	s, logBuf := w.s, w.log
	reloads, waitReloads := w.reloads, w.waitReloads

	write(path, config(dirB))
	// Two reload lines: the move, then a re-read under the watch that
	// covers the new users file.
	waitReloads(2, "the configuration moved users_file")
	if l := logBuf.String(); strings.Contains(l, fieldRestart) {
		t.Errorf("a users_file change is said to need a restart: %s", l)
	}
	if p := s.policy(); !p.Authenticate("alice", "n3w") || p.Authenticate("alice", "s3cret") {
		t.Errorf("after the reload alice's password is not the new users file's")
	}
	write(filepath.Join(dirA, "users"), "alice:"+h+"\n# old file\n")
	time.Sleep(3 * ReloadDebounce)
	if n := reloads(); n != 2 {
		t.Errorf("the old users file's edit reloaded (%d reloads, want 2): it is still watched", n)
	}
	write(filepath.Join(dirB, "users"), "alice:"+hB+"\n# new file\n")
	waitReloads(3, "an edit of the new users file")
}

// TestWatchConfigFollowsLinks: the watch follows what the configuration
// path names when that changes: a symbolic link to a release directory
// re-pointed, the directory removed and created again, and a file that is
// a link into another directory edited there. Each is seen without a
// SIGHUP, and edits after it reload too.
func TestWatchConfigFollowsLinks(t *testing.T) {
	const src = "policy \"p\" {\n  allow \"r\" { hosts = [\"a.test\"] }\n}\n"
	write := func(name, s string) {
		t.Helper()
		if err := os.WriteFile(name, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	watchFrom := func(t *testing.T, path string) (waitReloads func(n int, after string), reloads func() int, logText func() string) {
		w := watching(t, path, path, nil)
		return w.waitReloads, w.reloads, w.log.String
	}
	// releases makes base/rel1 and base/rel2, each with a.hcl, and
	// base/current linked to rel1; repoint links it to rel2 atomically.
	releases := func(t *testing.T) (base, current string) {
		base = t.TempDir()
		for _, r := range []string{"rel1", "rel2"} {
			os.Mkdir(filepath.Join(base, r), 0o755)
			write(filepath.Join(base, r, "a.hcl"), src)
		}
		current = filepath.Join(base, "current")
		if err := os.Symlink("rel1", current); err != nil {
			t.Fatal(err)
		}
		return base, current
	}
	repoint := func(t *testing.T, base, current string) {
		tmp := filepath.Join(base, "current.tmp")
		if err := os.Symlink("rel2", tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, current); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("a linked directory re-pointed", func(t *testing.T) {
		base, current := releases(t)
		waitReloads, reloads, _ := watchFrom(t, current)
		repoint(t, base, current)
		waitReloads(1, "current re-pointed to rel2")
		write(filepath.Join(base, "rel2", "a.hcl"), src+"# edited\n")
		waitReloads(2, "an edit in rel2")
		write(filepath.Join(base, "rel1", "a.hcl"), src+"# old release\n")
		time.Sleep(3 * ReloadDebounce)
		if n := reloads(); n != 2 {
			t.Errorf("an edit of the old release reloaded (%d reloads, want 2)", n)
		}
	})
	t.Run("the directory removed and created again", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "conf")
		os.Mkdir(dir, 0o755)
		write(filepath.Join(dir, "a.hcl"), src)
		waitReloads, _, _ := watchFrom(t, dir)
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		os.Mkdir(dir, 0o755)
		write(filepath.Join(dir, "a.hcl"), src)
		waitReloads(1, "the directory created again")
		write(filepath.Join(dir, "a.hcl"), src+"# edited\n")
		waitReloads(2, "an edit in the new directory")
	})
	t.Run("a file linked into another directory", func(t *testing.T) {
		base := t.TempDir()
		dir, other := filepath.Join(base, "conf"), filepath.Join(base, "other")
		os.Mkdir(dir, 0o755)
		os.Mkdir(other, 0o755)
		write(filepath.Join(dir, "a.hcl"), src)
		write(filepath.Join(other, "b.hcl"), "# b\n")
		if err := os.Symlink(filepath.Join("..", "other", "b.hcl"), filepath.Join(dir, "b.hcl")); err != nil {
			t.Fatal(err)
		}
		waitReloads, _, _ := watchFrom(t, dir)
		write(filepath.Join(other, "b.hcl"), "# b, edited\n")
		waitReloads(1, "the link's target edited")
		// Its target removed (the reload fails: a link to nothing), then
		// written again: that reloads too.
		if err := os.Remove(filepath.Join(other, "b.hcl")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * ReloadDebounce)
		write(filepath.Join(other, "b.hcl"), "# b, again\n")
		waitReloads(2, "the link's target written again")
	})
	t.Run("re-pointed and the old release removed at once", func(t *testing.T) {
		base, current := releases(t)
		waitReloads, _, logText := watchFrom(t, current)
		repoint(t, base, current)
		if err := os.RemoveAll(filepath.Join(base, "rel1")); err != nil {
			t.Fatal(err)
		}
		waitReloads(1, "current re-pointed, rel1 removed")
		time.Sleep(2 * ReloadDebounce)
		if l := logText(); strings.Contains(l, `"outcome":"error"`) {
			t.Errorf("a release switch logged a reload error:\n%s", l)
		}
		write(filepath.Join(base, "rel2", "a.hcl"), src+"# edited\n")
		waitReloads(2, "an edit in rel2")
	})
}

// TestReloadLogsWarnings: a reload to a configuration with warnings says
// them in its reload line, as a start says them on stderr.
func TestReloadLogsWarnings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "egressd.hcl")
	if err := os.WriteFile(path, []byte("policy \"p\" {\n  allow \"r\" { hosts = [\"a.test\"] }\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hup := make(chan os.Signal, 1)
	logBuf := watching(t, path, "", hup).log
	// "*" in an allow rule is valid, with a warning.
	if err := os.WriteFile(path, []byte("policy \"p\" {\n  allow \"r\" { hosts = [\"*\"] }\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hup <- syscall.SIGHUP
	waitFor(t, "a reload line with the warning", func() bool {
		l := logBuf.String()
		return strings.Contains(l, `"outcome":"ok"`) && strings.Contains(l, `"warnings":"`) && strings.Contains(l, "matches every host name")
	})
}

// watchedConfig is a Server watching its configuration (watching).
type watchedConfig struct {
	s   *Server
	log *syncBuffer
	t   *testing.T
}

// watching serves the configuration at path with WatchConfig on watch
// ("": SIGHUP only, from hup) until the test ends.
func watching(t *testing.T, path, watch string, hup <-chan os.Signal) *watchedConfig {
	t.Helper()
	load := func() (*policy.Config, hcl.Diagnostics) { return policy.Load(path) }
	cfg, diags := load()
	if diags.HasErrors() {
		t.Fatal(policy.FormatDiagnostics(diags))
	}
	w := &watchedConfig{log: new(syncBuffer), t: t}
	var err error
	if w.s, err = New(cfg, zerolog.New(w.log)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := w.s.WatchConfig(ctx, watch, load, hup)
	t.Cleanup(func() { cancel(); <-stopped })
	return w
}

// reloads counts the successful reloads logged.
func (w *watchedConfig) reloads() int { return strings.Count(w.log.String(), `"outcome":"ok"`) }

// waitReloads waits until there have been n successful reloads.
func (w *watchedConfig) waitReloads(n int, after string) {
	w.t.Helper()
	if !eventually(func() bool { return w.reloads() >= n }) {
		w.t.Fatalf("%s: %d reloads, want %d; log:\n%s", after, w.reloads(), n, w.log.String())
	}
}

// TestWatchConfigNewUsersFileEditedDuringReload: a reload that moves
// users_file reads the new file before it is watched, and Reload's decoy
// calibration takes a while (seconds with argon2id). An edit of the new
// users file in that window (a Secret updated just after the ConfigMap
// that names it) must still reload: egressd must not keep running users
// that differ from the file on disk without a word. (From a review; it
// failed on 912f037.)
func TestWatchConfigNewUsersFileEditedDuringReload(t *testing.T) {
	hOld, err := policy.HashPassword("0ld-passw0rd")
	if err != nil {
		t.Fatal(err)
	}
	hNew, err := policy.HashPassword("n3w-passw0rd")
	if err != nil {
		t.Fatal(err)
	}
	path, dirA, dirB, write, config := usersFileSetup(t)
	usersB := filepath.Join(dirB, "users")
	write(filepath.Join(dirA, "users"), "alice:"+hOld+"\n")
	write(usersB, "alice:"+hOld+"\n")
	write(path, config(dirA))

	// The first reload's load is followed at once by an edit of the new
	// users file, as if it came while Reload ran.
	var loads atomic.Int32
	load := func() (*policy.Config, hcl.Diagnostics) {
		cfg, diags := policy.Load(path)
		if loads.Add(1) == 2 { // 1: the start
			write(usersB, "alice:"+hNew+"\n")
		}
		return cfg, diags
	}
	cfg, diags := load()
	if diags.HasErrors() {
		t.Fatal(policy.FormatDiagnostics(diags))
	}
	logBuf := new(syncBuffer)
	s, err := New(cfg, zerolog.New(logBuf))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := s.WatchConfig(ctx, path, load, nil)
	t.Cleanup(func() { cancel(); <-stopped })

	write(path, config(dirB))
	if !eventually(func() bool { return s.policy().Authenticate("alice", "n3w-passw0rd") }) {
		t.Fatalf("users file %s holds alice's new password, but egressd still runs the one it read during the reload; log:\n%s", usersB, logBuf.String())
	}
}

// TestWatchConfigUsersFileFlipStops: a configuration that names another
// users_file at every load (two writers fighting over a ConfigMap) does
// not keep the reload goroutine from its end: once ctx is done, the watch
// ends without chasing every further flip. (From a review of 6fa648e.)
func TestWatchConfigUsersFileFlipStops(t *testing.T) {
	h, err := policy.HashPassword("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	path, dirA, dirB, write, config := usersFileSetup(t)
	write(filepath.Join(dirA, "users"), "alice:"+h+"\n")
	write(filepath.Join(dirB, "users"), "alice:"+h+"\n")
	write(path, config(dirA))

	const flips = 16
	var loads atomic.Int32
	load := func() (*policy.Config, hcl.Diagnostics) {
		cfg, diags := policy.Load(path)
		// Every load but the start's is followed by the other writer.
		if n := loads.Add(1); n > 1 && n <= flips && cfg != nil {
			dir := dirA
			if cfg.Server.UsersFile == filepath.Join(dirA, "users") {
				dir = dirB
			}
			write(path, config(dir))
		}
		return cfg, diags
	}
	cfg, diags := load()
	if diags.HasErrors() {
		t.Fatal(policy.FormatDiagnostics(diags))
	}
	s, err := New(cfg, zerolog.New(new(syncBuffer)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopped := s.WatchConfig(ctx, path, load, nil)

	write(path, config(dirB))
	// Two passes, each with a decoy calibration: slow under -race on a
	// loaded machine.
	if !eventuallyWithin(30*time.Second, func() bool { return loads.Load() >= 3 }) {
		t.Fatal("no reload")
	}
	cancel()
	<-stopped
	if n := loads.Load(); n > flips/2 {
		t.Errorf("the watch ended only after %d loads (ctx done after 3): the reload chased every users_file flip", n)
	}
}
