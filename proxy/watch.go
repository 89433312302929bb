package proxy

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/egressd/egressd/policy"
)

// ReloadDebounce is how long WatchConfig waits after a file event before
// it reloads. It collects the burst of events one edit makes (an editor's
// write-rename, a ConfigMap update swapping the ..data symlink) into one
// reload.
const ReloadDebounce = 300 * time.Millisecond

// WatchConfig reloads s's configuration with load whenever hup delivers
// (the caller's SIGHUP) and, when path is set, whenever one of its files
// or the server's users_file changes (see configWatch), until ctx is
// done. load reads and validates the configuration the way the running
// one was (same path, same command-line overrides). The watches are in
// place when it returns; the reloading runs in its own goroutine, and the
// returned channel is closed when that has ended. A failed reload keeps
// the running configuration and is logged (ReloadFailed). A reload that
// names another users_file moves the watch to it.
func (s *Server) WatchConfig(ctx context.Context, path string, load func() (*policy.Config, hcl.Diagnostics), hup <-chan os.Signal) (stopped <-chan struct{}) {
	var ws watchSet
	var watcher *dirWatcher
	users := s.cfg.UsersFile
	// watch (re)builds the watch; the new one is in place before the old
	// one goes, so no edit falls between them.
	watch := func() {
		cw := newConfigWatch(path, users)
		w, err := watchDirsFunc(cw.dirs, cw.optional)
		if err != nil {
			s.watchFailed(err.Error() + "; reload with SIGHUP")
		}
		if watcher != nil {
			watcher.Close()
		}
		watcher, ws = w, watchSet{relevant: cw.relevant}
		if w != nil {
			ws.names, ws.errs = w.Names(), w.Errors()
		}
	}
	if path != "" {
		watch()
	}
	reload := func() {
		// A reload that moved users_file loads again (below); each pass
		// is one reload, and a done ctx ends them.
		for ctx.Err() == nil {
			// The watch is built again first: what the path names may
			// have changed (a symbolic link re-pointed, a directory
			// removed and created again, a file linked elsewhere), and no
			// edit may fall between the new watch and the load.
			if path != "" {
				watch()
			}
			cfg, diags := load()
			if diags.HasErrors() {
				s.ReloadFailed(policy.FormatDiagnostics(diags))
				return
			}
			// Reload logs its outcome. The new users file's users are in
			// the new policy; its changes must reload too.
			if s.Reload(cfg, diags) != nil || path == "" || cfg.Server.UsersFile == users {
				return
			}
			// The new users file was not watched while it was read and
			// while Reload ran (the decoy calibration takes seconds with
			// argon2id): an edit then would be lost. Load again, under a
			// watch that covers it (the next pass builds it first).
			users = cfg.Server.UsersFile
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if watcher != nil {
				watcher.Close()
			}
		}()
		s.reloadLoop(ctx, hup, &ws, reload)
	}()
	return done
}

// watchDirsFunc is watchDirs; a test replaces it to make watching fail.
var watchDirsFunc = watchDirs

// msgWatch is the message of a line saying that the configuration's
// files are not (all) watched.
const msgWatch = "config watch"

// watchFailed logs that the configuration's files could not be watched
// (inotify limits, a directory gone): edits may then need a SIGHUP. It is
// not a reload: no "reload" line, and egressd_reloads_total does not
// count it, or every successful reload would also log and count a failed
// one while the watch keeps failing.
func (s *Server) watchFailed(detail string) {
	s.log.Warn().Str(fieldDetail, "watching the configuration: "+detail).Msg(msgWatch)
}

// watchSet is what reloadLoop listens to: a watcher's names and errors
// (nil channels when nothing is watched) and which names matter. reload
// may replace it.
type watchSet struct {
	names    <-chan string
	errs     <-chan error
	relevant func(string) bool
}

// reloadLoop reloads on hup, and ReloadDebounce after the last relevant
// name from ws.names ("" means events were lost: anything may have
// changed). It reads ws afresh after every reload.
func (s *Server) reloadLoop(ctx context.Context, hup <-chan os.Signal, ws *watchSet, reload func()) {
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			reload()
		case name, ok := <-ws.names:
			if !ok {
				ws.names = nil // the watcher ended (its error comes on errs)
				continue
			}
			if name == "" || ws.relevant(name) {
				debounce = time.After(ReloadDebounce)
			}
		case err := <-ws.errs:
			s.watchFailed(err.Error())
		case <-debounce:
			debounce = nil
			reload()
		}
	}
}

// configWatch is what the watcher looks at: the configuration's directory
// (or a single file's: editors and Kubernetes replace files rather than
// write them in place) and the users file's, and which names in them are
// the configuration's. Other files there (a decision log written beside
// the configuration, an editor's swap file) do not reload it: a reload
// re-parses every rule.
//
// Beside those it watches, where it can (optional), the directory that
// holds a configuration directory, for the directory's own entry (a
// symbolic link re-pointed to another release, a directory removed and
// created again), and the directories that the configuration's files and
// the users file link to, for their targets: editing a link's target
// changes nothing in the directory that holds the link.
type configWatch struct {
	dirs     []string
	optional []string
	file     string // the configuration file, or "" for a directory
	dir      string // the configuration directory
	users    string // the users file, or ""
	targets  map[string]bool
}

func newConfigWatch(path, usersFile string) configWatch {
	cw := configWatch{dir: filepath.Clean(path), targets: map[string]bool{}}
	if fi, err := os.Stat(path); err == nil && !fi.IsDir() {
		cw.file, cw.dir = filepath.Clean(path), filepath.Dir(path)
	}
	cw.dirs = []string{cw.dir}
	var files []string
	if cw.file != "" {
		files = append(files, cw.file)
	} else {
		if parent := filepath.Dir(cw.dir); parent != cw.dir {
			cw.optional = append(cw.optional, parent)
		}
		entries, _ := os.ReadDir(cw.dir)
		for _, e := range entries {
			if e.Type()&os.ModeSymlink != 0 && policy.IsConfigName(e.Name()) {
				files = append(files, filepath.Join(cw.dir, e.Name()))
			}
		}
	}
	if usersFile != "" {
		cw.users = policy.UsersFilePath(cw.dir, usersFile)
		if d := filepath.Dir(cw.users); d != cw.dir {
			cw.dirs = append(cw.dirs, d)
		}
		files = append(files, cw.users)
	}
	for _, f := range files {
		t, err := filepath.EvalSymlinks(f)
		if err != nil {
			// A link to nothing (yet): watch where it points, so that its
			// target's creation reloads.
			if t, err = os.Readlink(f); err != nil {
				continue
			}
			if !filepath.IsAbs(t) {
				t = filepath.Join(filepath.Dir(f), t)
			}
			t = filepath.Clean(t)
		}
		if t == f {
			continue
		}
		cw.targets[t] = true
		if d := filepath.Dir(t); !slices.Contains(cw.dirs, d) && !slices.Contains(cw.optional, d) {
			cw.optional = append(cw.optional, d)
		}
	}
	return cw
}

// relevant reports whether a change to name can change the configuration:
// the configuration file itself, a *.hcl file of a configuration
// directory, the users file, or a Kubernetes ConfigMap volume's "..data"
// swap (its "..*" entries; the files themselves are symbolic links into
// it and see no event).
func (cw configWatch) relevant(name string) bool {
	name = filepath.Clean(name)
	base := filepath.Base(name)
	switch {
	case name == cw.file, name == cw.users, cw.targets[name]:
		return true
	case cw.file == "" && name == cw.dir:
		return true // the directory's entry in its parent
	case strings.HasPrefix(base, ".."):
		return true
	case cw.file == "" && filepath.Dir(name) == cw.dir:
		return policy.IsConfigName(base)
	}
	return false
}

// dirWatcher delivers the names that watchDirs (watch_linux.go,
// watch_other.go) sees change, until Close.
type dirWatcher struct {
	names chan string
	errs  chan error
	done  chan struct{} // closed by Close: the reader stops sending
	stop  func() error  // ends the platform's watch, which ends the reader
}

func newDirWatcher(stop func() error) *dirWatcher {
	return &dirWatcher{names: make(chan string, 16), errs: make(chan error, 1), done: make(chan struct{}), stop: stop}
}

func (w *dirWatcher) Names() <-chan string { return w.names }
func (w *dirWatcher) Errors() <-chan error { return w.errs }

// Close stops the watcher; Names is closed once the reader has ended.
func (w *dirWatcher) Close() error {
	close(w.done)
	return w.stop()
}

// send delivers name unless the watcher is being closed.
func (w *dirWatcher) send(name string) bool {
	select {
	case w.names <- name:
		return true
	case <-w.done:
		return false
	}
}

// fail reports the error that ended the reader, if no earlier one is
// waiting to be read.
func (w *dirWatcher) fail(err error) {
	select {
	case w.errs <- err:
	default:
	}
}
