package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestChildStopTakesTheGroup: a child whose own process outlives it (as
// nginx's and HAProxy's workers outlive a master killed first) is in the
// process tree the CPU and RSS figures add up, and stop ends both and
// returns, although the worker held the output pipe.
func TestChildStopTakesTheGroup(t *testing.T) {
	b := &bench{}
	defer b.cleanup()
	// sh exits on SIGTERM while its background sleep, which ignores
	// nothing, keeps stdout open.
	c, err := b.startChild("sh", exec.Command("sh", "-c", "sleep 60 & echo started; wait"), "", func() error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	var tree []int
	for deadline := time.Now().Add(5 * time.Second); len(tree) < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("process tree of sh %d = %v, want sh and its sleep", c.pid, tree)
		}
		time.Sleep(20 * time.Millisecond)
		tree = processTree(c.pid)
	}
	worker := tree[1]
	stopped := make(chan struct{})
	go func() { c.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(15 * time.Second):
		t.Fatal("stop did not return within 15s while a worker held the output pipe")
	}
	for deadline := time.Now().Add(5 * time.Second); alive(worker); {
		if time.Now().After(deadline) {
			t.Fatalf("worker %d still runs after stop", worker)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive: pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && len(s) > i+2 {
		return s[i+2] != 'Z'
	}
	return true
}
