package proxy

import (
	"bytes"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sni"
)

// TestConsoleLog: log { format = "console" } writes each decision as one
// readable line, fields in a fixed order, no JSON and (not a terminal) no
// colours; JSON stays the default.
func TestConsoleLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.log")
	cfg, diags := policy.Parse([]policy.File{{Name: "c.hcl", Src: []byte(`
log {
  format = "console"
  output = "` + path + `"
}
policy "p" {
  allow "r" { hosts = ["example.com"] }
}
`)}})
	if diags.HasErrors() {
		t.Fatal(policy.FormatDiagnostics(diags))
	}
	logger, closer, err := NewLogger(cfg.Log)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	s, err := New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	c := s.newConn(ModeConnect, "10.0.0.7:51234")
	c.host, c.port = "example.com", 443
	c.fingerprint(&sni.Hello{ServerName: "example.com", LegacyVersion: 0x0303, CipherSuites: []uint16{0x1301}}, false)
	c.decision = policy.Decision{Policy: "p", Rule: "r", Reason: policy.ReasonConnectionLimit}
	c.detail = "max_connections_per_client: 2 connections open from 10.0.0.7"
	s.logDecision(c)
	c.decision = policy.Decision{Allow: true, Policy: "p", Rule: "r", Reason: policy.ReasonAllowed}
	c.detail = ""
	c.start = time.Now().Add(-1500 * time.Millisecond)
	s.logClose(c, 812, 6120)

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want a decision and a close line:\n%s", len(lines), b)
	}
	dec, cl := lines[0], lines[1]
	for _, l := range lines {
		if json.Valid([]byte(l)) || strings.HasPrefix(l, "{") || strings.Contains(l, "\x1b[") {
			t.Errorf("line is JSON or coloured: %q", l)
		}
	}
	// In this order: time, verdict, mode, client, host:port, sni,
	// policy/rule, reason, ja4, detail.
	order := []string{time.Now().Format("2006-01-02T"), " DENY ", "connect ", "10.0.0.7:51234 ", "-> example.com:443 ",
		"sni=example.com ", "policy=p/r ", "reason=connection_limit ", "ja4=" + c.ja4 + " ", "detail=",
		"max_connections_per_client: 2"}
	at := 0
	for _, w := range order {
		i := strings.Index(dec[at:], w)
		if i < 0 {
			t.Fatalf("decision line %q lacks %q after position %d", dec, w, at)
		}
		at += i + len(w)
	}
	for _, w := range []string{"ja3_full=", "level=", "host=", "port=", "rule="} {
		if strings.Contains(dec, w) {
			t.Errorf("decision line %q has %q", dec, w)
		}
	}
	for _, w := range []string{" CLOSE connect ", "bytes_up=812 ", "bytes_down=6120 ", "duration_ms=15"} {
		if !strings.Contains(cl, w) {
			t.Errorf("close line %q lacks %q", cl, w)
		}
	}

	// The default stays JSON.
	cfg.Log.Format = policy.DefaultLogFormat
	cfg.Log.Output = filepath.Join(t.TempDir(), "json.log")
	jl, jc, err := NewLogger(cfg.Log)
	if err != nil {
		t.Fatal(err)
	}
	defer jc.Close()
	s.log = jl
	c.client = netip.MustParseAddrPort("10.0.0.7:51234")
	s.logDecision(c)
	if b, _ := os.ReadFile(cfg.Log.Output); !json.Valid(b) || !strings.Contains(string(b), `"decision":"allow"`) {
		t.Errorf("default format: %q, want a JSON line", b)
	}
}

// TestConsoleLogEscapesTarget: a refused target is the client's bytes;
// the console line quotes it when it is not printable ASCII, so no
// escape sequence or bidirectional override reaches a terminal.
func TestConsoleLogEscapesTarget(t *testing.T) {
	for _, host := range []string{"evil\u202e\u009b31m.example", "a\x1b[2Jb", "tab\there", "caf\u00e9.example"} {
		var buf bytes.Buffer
		s, err := New(&policy.Config{Policy: &policy.Policy{}}, zerolog.New(consoleWriter(&buf, false)))
		if err != nil {
			t.Fatal(err)
		}
		c := s.newConn(ModeConnect, "10.0.0.7:51234")
		c.host, c.port = host, 443
		c.decision = policy.Decision{Reason: policy.ReasonBadRequest}
		s.logDecision(c)
		line := buf.String()
		for _, r := range strings.TrimSuffix(line, "\n") {
			if r < 0x20 || r > 0x7e {
				t.Errorf("console line for %q holds %U: %q", host, r, line)
				break
			}
		}
		if want := "-> " + strconv.QuoteToASCII(net.JoinHostPort(host, "443")); !strings.Contains(line, want) {
			t.Errorf("console line %q lacks %s", line, want)
		}
	}
}

// TestConsoleLogEscapesALPN: ALPN protocol names are the client's raw
// bytes (RFC 7301 allows any octets). On a console line, as for the
// target, no C1 control (U+009B CSI) or bidirectional override reaches the
// terminal unescaped, and the escaped list still reads as the one the
// client sent: a rune past U+FFFF (the invisible tag characters) must not
// print as \u and five hex digits, which reads as a BMP rune and a digit,
// another client's ALPN. (From two reviews; the first three cases failed
// on 912f037, the fourth on 6fa648e.)
func TestConsoleLogEscapesALPN(t *testing.T) {
	for _, alpn := range []string{"h2\u202eevil", "\u009b31mred", "a\u2066b", "h2\U000E0041", "h2\ue004" + "1"} {
		var buf bytes.Buffer
		s, err := New(&policy.Config{Policy: &policy.Policy{}}, zerolog.New(consoleWriter(&buf, false)))
		if err != nil {
			t.Fatal(err)
		}
		c := s.newConn(ModeConnect, "10.0.0.7:51234")
		c.host, c.port = "example.com", 443
		c.fingerprint(&sni.Hello{ServerName: "example.com", LegacyVersion: 0x0303, CipherSuites: []uint16{0x1301}, ALPN: []string{alpn}}, false)
		c.decision = policy.Decision{Reason: policy.ReasonNoRule}
		s.logDecision(c)
		line := strings.TrimSuffix(buf.String(), "\n")
		for _, r := range line {
			if r < 0x20 || r > 0x7e {
				t.Errorf("console line for ALPN %+q holds %U: %q", alpn, r, line)
				break
			}
		}
		_, v, ok := strings.Cut(line, "alpn=")
		if !ok {
			t.Fatalf("no alpn field: %q", line)
		}
		v, _, _ = strings.Cut(v, " ")
		var got []string
		if err := json.Unmarshal([]byte(v), &got); err != nil || len(got) != 1 || got[0] != alpn {
			t.Errorf("ALPN %+q prints as %s, which reads as %+q (%v)", alpn, v, got, err)
		}
	}
}
