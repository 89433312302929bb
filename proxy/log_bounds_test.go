package proxy

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/egressd/egressd/sni"
)

// TestDecisionLineBoundsHelloValues: a hostile ClientHello of the 16 KiB
// egressd reads, with a 2,000-byte server name, 2,000 cipher suites and
// 40 ALPN names of 200 bytes, makes a decision line of at most a few KiB:
// sni, ja3_full and the alpn list are cut at maxLoggedHelloValue and
// marked "…", while ja3 is still the hash of the whole JA3 string. Before,
// the line was about 20 KB, past the 16 KiB at which Docker's and the
// CRI's log drivers split a line.
func TestDecisionLineBoundsHelloValues(t *testing.T) {
	e := newEnv(t)
	e.start(t, baseConfig)
	name := strings.Repeat("a", 2000) + ".allowed.egress.test"
	alpn := make([]string, 40)
	for i := range alpn {
		alpn[i] = fmt.Sprintf("%03d", i) + strings.Repeat("p", 197)
	}
	hello := bigClientHello(t, name, 2000, alpn...)
	var h sni.Hello
	if err := sni.ParseHandshake(hello, &h); err != nil {
		t.Fatal(err)
	}
	full, _ := h.JA3()
	sum := md5.Sum([]byte(full))

	c, _, resp := e.connect(t, fmt.Sprintf("allowed.egress.test:%d", e.tlsPort))
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %d", resp.StatusCode)
	}
	record := append([]byte{0x16, 3, 1, byte(len(hello) >> 8), byte(len(hello))}, hello...)
	if _, err := c.Write(record); err != nil {
		t.Fatal(err)
	}
	d := e.clientDecision(t, c, map[string]any{"reason": "sni_mismatch"})

	var line string
	for _, l := range strings.Split(e.log.String(), "\n") {
		if strings.Contains(l, `"client":"`+c.LocalAddr().String()+`"`) && strings.Contains(l, `"message":"decision"`) {
			line = l
		}
	}
	if len(line) > 4096 {
		t.Errorf("decision line is %d bytes, want at most 4096", len(line))
	}
	if got := d["ja3"]; got != hex.EncodeToString(sum[:]) {
		t.Errorf("ja3 %v, want the hash of the whole JA3 string %x", got, sum)
	}
	for field, whole := range map[string]string{"sni": name, "ja3_full": full} {
		v, _ := d[field].(string)
		if !strings.HasSuffix(v, "…") || !strings.HasPrefix(whole, strings.TrimSuffix(v, "…")) || len(v) > maxLoggedHelloValue+len("…") {
			t.Errorf("%s: %d bytes %.40q…, want the first %d bytes of the value marked …", field, len(v), v, maxLoggedHelloValue)
		}
	}
	got, _ := d["alpn"].([]any)
	if len(got) != 6 || got[5] != "…" || got[0] != alpn[0] || got[4] != alpn[4] {
		t.Errorf("alpn: %d names, want the first 5 (1,000 bytes) and …", len(got))
	}
}
