package main

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/hashicorp/hcl/v2"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/proxy"
)

// reloadDebounce collects the burst of events one edit makes (an editor's
// write-rename, a ConfigMap update swapping the ..data symlink) into one
// reload.
const reloadDebounce = 300 * time.Millisecond

// watchConfig reloads the configuration on SIGHUP and, when path is set,
// whenever a file in the configuration's directory (or the users file's)
// changes, until ctx is done. load reads and validates the configuration
// with the command-line overrides applied. The signal handler and the
// watches are in place when it returns; the reloading runs in its own
// goroutine.
func watchConfig(ctx context.Context, path string, load func() (*policy.Config, hcl.Diagnostics), srv *proxy.Server) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)

	var events <-chan fsnotify.Event
	var errs <-chan error
	var watcher *fsnotify.Watcher
	if path != "" {
		if w, err := fsnotify.NewWatcher(); err != nil {
			srv.ReloadFailed("watching the configuration: " + err.Error() + "; reload with SIGHUP")
		} else {
			watcher = w
			for _, dir := range watchDirs(path, load) {
				if err := w.Add(dir); err != nil {
					srv.ReloadFailed("watching " + dir + ": " + err.Error() + "; reload with SIGHUP")
				}
			}
			events, errs = w.Events, w.Errors
		}
	}
	reload := func() {
		cfg, diags := load()
		if diags.HasErrors() {
			srv.ReloadFailed(policy.FormatDiagnostics(diags))
			return
		}
		_ = srv.Reload(cfg) // logged by Reload
	}
	go func() {
		defer signal.Stop(hup)
		if watcher != nil {
			defer watcher.Close()
		}
		reloadLoop(ctx, hup, events, errs, reload, srv)
	}()
}

func reloadLoop(ctx context.Context, hup <-chan os.Signal, events <-chan fsnotify.Event, errs <-chan error, reload func(), srv *proxy.Server) {
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			reload()
		case ev := <-events:
			if ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Remove|fsnotify.Rename) != 0 {
				debounce = time.After(reloadDebounce)
			}
		case err := <-errs:
			srv.ReloadFailed("watching the configuration: " + err.Error())
		case <-debounce:
			debounce = nil
			reload()
		}
	}
}

// watchDirs are the directories to watch: the configuration directory (or
// a single file's directory: editors and Kubernetes replace files rather
// than write them in place), and the users file's.
func watchDirs(path string, load func() (*policy.Config, hcl.Diagnostics)) []string {
	base := path
	if fi, err := os.Stat(path); err == nil && !fi.IsDir() {
		base = filepath.Dir(path)
	}
	dirs := []string{base}
	if cfg, _ := load(); cfg != nil && cfg.Server.UsersFile != "" {
		uf := cfg.Server.UsersFile
		if !filepath.IsAbs(uf) {
			uf = filepath.Join(base, uf)
		}
		if d := filepath.Dir(uf); d != base {
			dirs = append(dirs, d)
		}
	}
	return dirs
}
