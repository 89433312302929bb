//go:build !unix

package proxy

// readable: without MSG_PEEK the goroutine relay waits inside the copy.
func (d *direction) readable(uintptr) bool { return true }
