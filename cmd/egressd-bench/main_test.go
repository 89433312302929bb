package main

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestMain lets the test binary serve as the reference relay, as the bench
// binary does: the bench starts os.Executable() with referenceEnv set.
func TestMain(m *testing.M) {
	if addr := os.Getenv(referenceEnv); addr != "" {
		os.Exit(referenceRelay(addr))
	}
	os.Exit(m.Run())
}

// TestQuickRun runs the whole bench in --quick mode with small numbers:
// it builds egressd, starts it with the generated 1,000-rule policy, and
// must print every row, with exactly one decision and one close line per
// tunnel.
func TestQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs egressd; skipped with -short")
	}
	out := filepath.Join(t.TempDir(), "table.md")
	var stdout, stderr bytes.Buffer
	code := run([]string{"--quick", "--tunnels", "50", "--duration", "200ms", "--transparent=false", "-o", out}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	table := stdout.String()
	if strings.Contains(table, "FAILED") {
		t.Fatalf("a measurement failed:\n%s", table)
	}
	for _, r := range newRows("CONNECT", true) {
		if !strings.Contains(table, "| CONNECT | "+r.name) {
			t.Errorf("no row %q in:\n%s", r.name, table)
		}
	}
	for _, l := range strings.Split(table, "\n") {
		// | mode | measurement | direct | via | ratio | target | met |
		if cells := strings.Split(l, " | "); strings.HasPrefix(l, "| CONNECT | ") && (len(cells) != 7 || cells[3] == "—") {
			t.Errorf("row without a value through the relay: %q", l)
		}
	}
	var logLine string
	for _, l := range strings.Split(table, "\n") {
		if strings.Contains(l, "decision-log lines") {
			logLine = l
		}
	}
	if !strings.Contains(logLine, "| 1.000 + 1.000 (") || !strings.HasSuffix(logLine, "| exactly 1 + 1 | met |") {
		t.Errorf("log-lines row is not 1 + 1: %q", logLine)
	}
	if written, err := os.ReadFile(out); err != nil || string(written) != table {
		t.Errorf("-o file differs from stdout (%v)", err)
	}
}

// TestPeersQuickRun measures every peer in --quick mode, so that the
// configurations the bench generates for them keep working: each must
// start, relay bulk, TLS and idle tunnels, and fill its column of the peer
// table.
func TestPeersQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs egressd and the peers; skipped with -short")
	}
	for _, p := range peerSpecs {
		if _, err := exec.LookPath(p.name); err != nil {
			msg := notInstalled(p.name)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"--quick", "--runs", "2", "-v", "--tunnels", "50", "--duration", "200ms", "--transparent=false", "--peers", "all"}, &stdout, &stderr)
	table := stdout.String()
	if code != 0 || strings.Contains(table, "FAILED") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, table, stderr.String())
	}
	// egressd's runs and the peers' take turns.
	var want, got []string
	for r := 1; r <= 2; r++ {
		want = append(want, fmt.Sprintf("CONNECT run %d/2", r))
		for _, p := range peerSpecs {
			want = append(want, fmt.Sprintf("%s run %d/2", p.name, r))
		}
	}
	for _, l := range strings.Split(stderr.String(), "\n") {
		if m, ok := strings.CutPrefix(l, "egressd-bench: "); ok && strings.Contains(m, " run ") {
			got = append(got, m)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("runs in the order\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	_, peers, ok := strings.Cut(table, "Peers, measured in this run")
	if !ok {
		t.Fatalf("no peer table in:\n%s", table)
	}
	for _, p := range peerSpecs {
		if !strings.Contains(peers, " | "+p.name+" (") {
			t.Errorf("no column for %s in:\n%s", p.name, peers)
		}
	}
	rows := 0
	for _, l := range strings.Split(peers, "\n") {
		if !strings.HasPrefix(l, "| ") || strings.HasPrefix(l, "| measurement") || strings.HasPrefix(l, "|---") {
			continue
		}
		rows++
		cells := strings.Split(strings.Trim(l, "| "), " | ")
		// measurement, target, egressd, one per peer, verdict
		if len(cells) != 4+len(peerSpecs) {
			t.Errorf("row has %d cells, want %d: %q", len(cells), 4+len(peerSpecs), l)
			continue
		}
		for i, c := range cells[2 : 3+len(peerSpecs)] {
			if c == "—" || c == "" {
				t.Errorf("row %q: column %d has no value", cells[0], i+2)
			}
		}
	}
	if rows != len(peerFigures) {
		t.Errorf("peer table has %d rows, want %d:\n%s", rows, len(peerFigures), peers)
	}
}

// TestRenderPeersVerdict checks the last column: "yes" only when egressd
// is strictly better than every peer, with the direction of each figure.
func TestRenderPeersVerdict(t *testing.T) {
	b := &bench{opt: options{runs: 1}}
	mk := func(bulk1Ratio, cpu1, p99Ratio float64) []*row {
		rows := newRows("x", true)
		add(rows[rowBulk1], 100, 100*bulk1Ratio, bulk1Ratio)
		add(rows[rowCPU1], 0, cpu1, 0)
		add(rows[rowP9964], 10, 10*p99Ratio, p99Ratio)
		return rows
	}
	egressd := mk(0.5, 0.4, 1.3)
	peers := []*peerResult{
		{spec: peerSpec{name: "fast"}, rows: mk(0.6, 0.5, 1.5)}, // more throughput, more CPU, worse p99
		{spec: peerSpec{name: "lean"}, rows: mk(0.2, 0.4, 1.1)}, // a tie on CPU counts against egressd; better p99
	}
	out := b.renderPeers(egressd, peers)
	for _, want := range []string{
		"| bulk download, 1 tunnel (MB/s) | ≥ 50% of direct | 50 % | 60 % | 20 % | no: fast |",
		"| CPU per GB, 1 tunnel (s/GB) | ≤ 0.4 s/GB | 0.400 | 0.500 | 0.400 | no: lean |",
		"| latency p99, concurrency 64 (ms) | ≤ 1.25× direct | 1.30× | 1.50× | 1.10× | no: lean |", // lower is better
		"| bulk download, 8 tunnels (MB/s) | ≥ 45% of direct | — | — | — | — |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	peers[0].rows[rowBulk1].ratio[0] = 0.4
	if out := b.renderPeers(egressd, peers); !strings.Contains(out, "| 50 % | 40 % | 20 % | yes |") {
		t.Errorf("egressd ahead of both, but:\n%s", out)
	}

	// A peer that failed, or has no value, or only a lower bound that
	// does not settle it, makes the verdict unknown, never "yes".
	add(egressd[rowCSConn], 0, 5, 0)
	bound := mk(0.1, 0.9, 2)
	add(bound[rowCSConn], 0, 1, 0)
	bound[rowCSConn].lowerBound = true
	peers = []*peerResult{
		{spec: peerSpec{name: "broken"}, err: errors.New("did not start")},
		{spec: peerSpec{name: "bounded"}, rows: bound},
	}
	out = b.renderPeers(egressd, peers)
	for _, want := range []string{
		"| bulk download, 1 tunnel (MB/s) | ≥ 50% of direct | 50 % | FAILED | 10 % | unknown: broken |",
		"| thread switches per connection, concurrency 64 | — | 5.0 | FAILED | ≥ 1.0 | unknown: broken, bounded |",
		"broken FAILED: did not start",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	// egressd's own lower bound that looks better than a peer's value
	// does not settle it either.
	egressd[rowCSConn].lowerBound = true
	exact := mk(0.1, 0.9, 2)
	add(exact[rowCSConn], 0, 7, 0)
	if out := b.renderPeers(egressd, []*peerResult{{spec: peerSpec{name: "exact"}, rows: exact}}); !strings.Contains(out, "| ≥ 5.0 | 7.0 | unknown: exact |") {
		t.Errorf("egressd's lower bound 5 against a peer's 7 is not unknown:\n%s", out)
	}
	if out := b.renderPeers(failRows(newRows("CONNECT", true), errors.New("x")), peers); !strings.Contains(out, "Peers not compared") {
		t.Errorf("a failed egressd run still compared:\n%s", out)
	}
}

// TestFlagErrors: unknown figures and peers are usage errors (exit 2),
// before anything is built or started.
func TestFlagErrors(t *testing.T) {
	for _, args := range [][]string{{"--only", "bogus"}, {"--peers", "bogus"}, {"--runs", "0"}, {"extra"}, {"--egressd-env", "GOMAXPROCS"}, {"--egressd-env", "=1"}} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit %d, want 2 (stderr %q)", args, code, stderr.String())
		}
	}
}

// TestParsePeersOnce: a peer named twice, or by name and through "all", is
// measured once, in the order first named.
func TestParsePeersOnce(t *testing.T) {
	out, _, err := parsePeers("nginx,haproxy,nginx")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range out {
		names = append(names, p.name)
	}
	if want := []string{"nginx", "haproxy"}; !slices.Equal(names, want) {
		t.Errorf("parsePeers(nginx,haproxy,nginx) = %v, want %v", names, want)
	}
}

// TestEgressdEnv: --egressd-env settings reach egressd's command, after
// the bench's own environment so that they win, and only egressd's.
func TestEgressdEnv(t *testing.T) {
	b := &bench{bin: "/bin/true"}
	if cmd := b.egressdCmd("x.hcl"); cmd.Env != nil {
		t.Errorf("no --egressd-env: Env = %q, want nil (the bench's environment)", cmd.Env)
	}
	t.Setenv("GOMAXPROCS", "7")
	b.opt.egressdEnv = []string{"GOMAXPROCS=1", "GODEBUG=x=1"}
	env := b.egressdCmd("x.hcl").Env
	if len(env) < 2 || !slices.Equal(env[len(env)-2:], b.opt.egressdEnv) {
		t.Fatalf("Env ends %q, want %q", env[max(0, len(env)-2):], b.opt.egressdEnv)
	}
	if !slices.Contains(env, "GOMAXPROCS=7") {
		t.Errorf("the bench's own environment is not passed on: %q", env)
	}
}

// TestTurnOrder: direct and the relay take connTurnsEach turns each, in
// pairs that alternate which side goes first.
func TestTurnOrder(t *testing.T) {
	var got strings.Builder
	via := 0
	for i := range 2 * connTurnsEach {
		if isViaTurn(i) {
			got.WriteByte('V')
			via++
		} else {
			got.WriteByte('D')
		}
	}
	if want := "DVVDDVVD"; got.String() != want {
		t.Errorf("turns %s, want %s", got.String(), want)
	}
	if via != connTurnsEach {
		t.Errorf("%d turns via the relay, want %d", via, connTurnsEach)
	}
}

// TestRenderInfiniteRatio: a direct run that measured nothing gives an
// infinite ratio, which is not a target met.
func TestRenderInfiniteRatio(t *testing.T) {
	b := &bench{opt: options{runs: 1}}
	rows := newRows("CONNECT", true)
	add(rows[rowBulk1], 0, 100, math.Inf(1))
	out := b.render(rows[:rowBulk1+1])
	if line := out[strings.Index(out, "| CONNECT |"):]; !strings.Contains(line[:strings.IndexByte(line, '\n')], "| NOT MET |") {
		t.Errorf("an infinite ratio is not NOT MET:\n%s", out)
	}
}

// TestCleanupAfterStop: a cleanup registered after cleanup ran (the run
// went on after a signal's cleanup) runs at once, so nothing it would
// undo (a namespace, a child) is left behind.
func TestCleanupAfterStop(t *testing.T) {
	b := &bench{}
	var order []int
	b.onCleanup(func() { order = append(order, 1) })
	b.onCleanup(func() { order = append(order, 2) })
	b.cleanup()
	b.onCleanup(func() { order = append(order, 3) })
	b.cleanup()
	if fmt.Sprint(order) != "[2 1 3]" {
		t.Errorf("cleanups ran as %v, want [2 1 3]", order)
	}
}
