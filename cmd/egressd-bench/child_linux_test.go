package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
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
	// sh exits on SIGTERM (trapped: as a PID namespace's init it takes
	// no signal it has no handler for) while its background sleep keeps
	// stdout open.
	c, err := b.startChild("sh", exec.Command("sh", "-c", shWithWorker), "", func() error { return nil })
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

// TestChildWithoutSysAdmin: as root without CAP_SYS_ADMIN (a container's
// default) children still start, without a PID namespace: the stop test
// run again under setpriv with the capability dropped.
func TestChildWithoutSysAdmin(t *testing.T) {
	needCapSysAdmin(t, "dropping CAP_SYS_ADMIN")
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("setpriv (util-linux) is not installed: %v", err)
		}
		t.Skipf("setpriv (util-linux) is not installed (%v); skipping", err)
	}
	out, err := exec.Command(setpriv, "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--",
		os.Args[0], "-test.run=^TestChildStopTakesTheGroup$", "-test.count=1", "-test.v").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestChildStopTakesTheGroup") {
		t.Fatalf("without CAP_SYS_ADMIN: %v\n%s", err, out)
	}
}

// needCapSysAdmin skips a test that needs CAP_SYS_ADMIN, naming what,
// except under CI=true, where .ci/run runs as root and the test must run.
func needCapSysAdmin(t *testing.T, what string) {
	t.Helper()
	if haveCapSysAdmin() {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s needs CAP_SYS_ADMIN; CI runs as root", what)
	}
	t.Skipf("%s needs CAP_SYS_ADMIN (root); skipping", what)
}

// TestHasCap: CapEff read from /proc/PID/status.
func TestHasCap(t *testing.T) {
	for _, tc := range []struct {
		status string
		want   bool
	}{
		{"Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n", true}, // root
		{"CapEff:\t00000000a80425fb\n", false},                                     // Docker's default set
		{"CapEff:\t0000000000200000\n", true},                                      // CAP_SYS_ADMIN alone
		{"CapPrm:\t000001ffffffffff\nCapEff:\t0000000000000000\n", false},
		{"CapEff:\tzz\n", false},
		{"", false},
	} {
		if got := hasCap(tc.status, capSysAdmin); got != tc.want {
			t.Errorf("hasCap(%q, CAP_SYS_ADMIN) = %v, want %v", tc.status, got, tc.want)
		}
	}
}

// shWithWorker is a child that leaves a worker behind: sh, which exits on
// SIGTERM, and a sleep.
const shWithWorker = `trap "exit 0" TERM; sleep 60 & echo started; wait`

// TestChildDiesWithBench: a bench killed with SIGKILL, which runs no
// cleanup, takes its children's workers with it, not only the children.
// The test binary re-runs itself as the bench (childBenchEnv).
func TestChildDiesWithBench(t *testing.T) {
	needCapSysAdmin(t, "a PID namespace per child")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childBenchEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	worker, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		t.Fatalf("the bench printed %q, %v; want its child's worker pid", line, err)
	}
	cmd.Process.Kill()
	for deadline := time.Now().Add(5 * time.Second); alive(worker); {
		if time.Now().After(deadline) {
			syscall.Kill(worker, syscall.SIGKILL)
			t.Fatalf("worker %d still runs 5s after the bench was killed", worker)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// childBenchEnv makes the test binary childBench.
const childBenchEnv = "EGRESSD_BENCH_TEST_CHILD_BENCH"

func init() {
	if os.Getenv(childBenchEnv) != "" {
		childBench()
	}
}

// childBench is the bench of TestChildDiesWithBench: it starts a child
// with a worker, prints the worker's pid and waits to be killed.
func childBench() {
	b := &bench{}
	c, err := b.startChild("sh", exec.Command("sh", "-c", shWithWorker), "", func() error { return nil })
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if tree := processTree(c.pid); len(tree) >= 2 {
			fmt.Println(tree[1])
			time.Sleep(time.Minute) // killed by the test before
			os.Exit(1)
		}
	}
	fmt.Println("no worker within 5s")
	b.cleanup()
	os.Exit(1)
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
