//go:build !unix

package main

// raiseNofile: there is no RLIMIT_NOFILE to raise.
func raiseNofile() {}
