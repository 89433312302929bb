//go:build !linux

package proxy

import (
	"errors"

	"github.com/fsnotify/fsnotify"
)

// Elsewhere the configuration watcher uses fsnotify, which cannot leave
// out plain writes: a decision log kept in the configuration's directory
// wakes it for every line (and is then ignored).

type dirWatcher struct {
	w     *fsnotify.Watcher
	names chan string
	errs  chan error
	done  chan struct{} // closed by Close: the reader stops sending
}

// watchDirs watches dirs (not recursively) and delivers the path of every
// entry that was written, created, removed or renamed in them, and "" when
// events were dropped, so that the reader assumes anything may have
// changed.
func watchDirs(dirs []string) (*dirWatcher, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	for _, dir := range dirs {
		if err := fw.Add(dir); err != nil {
			fw.Close()
			return nil, err
		}
	}
	w := &dirWatcher{w: fw, names: make(chan string, 16), errs: make(chan error, 1), done: make(chan struct{})}
	go w.read()
	return w, nil
}

func (w *dirWatcher) Names() <-chan string { return w.names }
func (w *dirWatcher) Errors() <-chan error { return w.errs }

// Close stops the watcher; Names is closed once the reader has ended.
func (w *dirWatcher) Close() error {
	close(w.done)
	return w.w.Close()
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

func (w *dirWatcher) read() {
	defer close(w.names)
	for {
		select {
		case ev, ok := <-w.w.Events:
			if !ok {
				return
			}
			if ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Remove|fsnotify.Rename) != 0 && !w.send(ev.Name) {
				return
			}
		case err, ok := <-w.w.Errors:
			if !ok {
				return
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				if !w.send("") {
					return
				}
				continue
			}
			select {
			case w.errs <- err:
			default: // one unread error is enough to report
			}
		}
	}
}
