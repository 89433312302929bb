package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestSuggestUsage(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"suggest", "a", "b"}, strings.NewReader(""), &stdout, &stderr); code != exitUsage {
		t.Errorf("two files: exit %d, want %d", code, exitUsage)
	}
	if code := run([]string{"suggest", "/nonexistent/decisions.log"}, strings.NewReader(""), &stdout, &stderr); code != exitFail {
		t.Errorf("missing file: exit %d, want %d", code, exitFail)
	}
	stdout.Reset()
	if code := run([]string{"suggest", "-"}, strings.NewReader(`{"level":"info","conn":1,"mode":"connect","client":"10.0.0.1:1","host":"a.example.com","port":443,"decision":"deny","reason":"no_rule","message":"decision"}`+"\n"), &stdout, &stderr); code != exitOK || !strings.Contains(stdout.String(), `"a-example-com-443"`) {
		t.Errorf("stdin via -: exit %d, output %s", code, stdout.String())
	}
}
