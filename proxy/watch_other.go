//go:build !linux

package proxy

import (
	"errors"
	"fmt"

	"github.com/fsnotify/fsnotify"
)

// Elsewhere the configuration watcher uses fsnotify, which cannot leave
// out plain writes: a decision log kept in the configuration's directory
// wakes it for every line (and is then ignored).

// watchDirs watches dirs and optional (not recursively) and delivers the
// path of every entry that was written, created, removed or renamed in
// them, and "" when events were dropped, so that the reader assumes
// anything may have changed. A directory of dirs that cannot be watched is
// named in the error, and the others are watched all the same: the watcher
// is nil only when none can be. An optional directory that cannot be
// watched is left out without a word.
func watchDirs(dirs, optional []string) (*dirWatcher, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	var errs []error
	watched := 0
	for _, dir := range dirs {
		if err := fw.Add(dir); err != nil {
			errs = append(errs, fmt.Errorf("watching %s: %w", dir, err))
			continue
		}
		watched++
	}
	for _, dir := range optional {
		if fw.Add(dir) == nil {
			watched++
		}
	}
	if watched == 0 {
		fw.Close()
		return nil, errors.Join(errs...)
	}
	w := newDirWatcher(fw.Close)
	go readFsnotify(w, fw)
	return w, errors.Join(errs...)
}

func readFsnotify(w *dirWatcher, fw *fsnotify.Watcher) {
	defer close(w.names)
	for {
		select {
		case ev, ok := <-fw.Events:
			if !ok {
				return
			}
			if ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Remove|fsnotify.Rename) != 0 && !w.send(ev.Name) {
				return
			}
		case err, ok := <-fw.Errors:
			if !ok {
				return
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				if !w.send("") {
					return
				}
				continue
			}
			w.fail(err)
		}
	}
}
