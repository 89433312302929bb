package proxy

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf16"

	"github.com/rs/zerolog"

	"github.com/egressd/egressd/policy"
)

// NewLogger opens the decision log the log block names. The returned closer
// closes the file, if one was opened.
func NewLogger(l policy.Log) (zerolog.Logger, io.Closer, error) {
	var w io.Writer
	var closer io.Closer = io.NopCloser(nil)
	switch l.Output {
	case "", "stdout":
		w = fileWriter(os.Stdout)
	case "stderr":
		w = fileWriter(os.Stderr)
	default:
		f, err := os.OpenFile(l.Output, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return zerolog.Nop(), nil, fmt.Errorf("open decision log: %w; check log { output = %q }", err, l.Output)
		}
		w, closer = fileWriter(f), f
	}
	if l.Format == "console" {
		w = consoleWriter(w, isTerminal(w))
	}
	return zerolog.New(w).With().Timestamp().Logger(), closer, nil
}

// consoleTarget is the host:port part of a console line, made from the
// host and port fields.
const consoleTarget = "target"

// consoleWriter renders the decision log for a person tailing it, one line
// per event with the fields in a fixed order:
//
//	2026-01-02T15:04:05.000Z DENY connect 10.0.0.7:51234 -> example.com:443 sni=example.com policy=p/r reason=no_rule ja4=t13d… detail=… conn=7
//	2026-01-02T15:04:06.000Z CLOSE connect bytes_up=812 bytes_down=6120 duration_ms=143 conn=7
//
// Colours only when color is set (the output is a terminal).
func consoleWriter(out io.Writer, color bool) zerolog.ConsoleWriter {
	return zerolog.ConsoleWriter{
		Out:        out,
		NoColor:    !color,
		TimeFormat: "2006-01-02T15:04:05.000Z07:00",
		PartsOrder: []string{zerolog.TimestampFieldName, zerolog.LevelFieldName, zerolog.MessageFieldName,
			fieldMode, fieldClient, consoleTarget},
		FieldsOrder: []string{fieldSNI, fieldPolicy, fieldReason, fieldJA4, fieldDetail,
			fieldBytesUp, fieldBytesDown, fieldDurationMS, fieldConn, fieldDst},
		// Parts are not fields; ja3_full is too long for a console line.
		FieldsExclude: []string{fieldMode, fieldClient, consoleTarget, fieldJA3Full},
		FormatPrepare: prepareConsole,
		FormatLevel: func(i any) string {
			if l, _ := i.(string); l != "" && l != zerolog.LevelInfoValue {
				return strings.ToUpper(l)
			}
			return ""
		},
		FormatMessage: func(i any) string {
			m, _ := i.(string)
			switch {
			case !color:
			case m == "ALLOW":
				return "\x1b[32m" + m + "\x1b[0m"
			case m == "DENY":
				return "\x1b[31;1m" + m + "\x1b[0m"
			}
			return m
		},
		// Field values: zerolog quotes strings with strconv.Quote, but
		// prints lists (alpn: the client's raw protocol names) as
		// encoding/json writes them, which leaves C1 controls and
		// bidirectional overrides as they are.
		FormatFieldValue: func(i any) string { return escapeNonPrint(fmt.Sprintf("%s", i)) },
		FormatPartValueByName: func(i any, name string) string {
			if i == nil {
				return ""
			}
			v := consoleSafe(fmt.Sprint(i))
			if name == consoleTarget {
				return "-> " + v
			}
			return v
		},
	}
}

// consoleSafe returns s as it is when it is printable ASCII, and quoted
// with every other byte escaped when not: a refused target is the
// client's bytes, and a terminal must not act on them (escape sequences,
// U+009B CSI, U+202E right-to-left override). zerolog quotes field
// values, not the parts.
func consoleSafe(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return strconv.QuoteToASCII(s)
		}
	}
	return s
}

// escapeNonPrint returns s with every rune that is not printable (C0 and
// C1 controls, format characters such as U+202E) escaped as \uXXXX;
// printable text, é included, stays as it is. The console writer's values
// come from the JSON line, so they are valid UTF-8.
func escapeNonPrint(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case unicode.IsPrint(r):
			b.WriteRune(r)
		case r > 0xffff:
			// As JSON writes it: a UTF-16 surrogate pair, not \u and five
			// or six hex digits (which read as a BMP rune and a digit).
			r1, r2 := utf16.EncodeRune(r)
			fmt.Fprintf(&b, `\u%04x\u%04x`, r1, r2)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
	}
	return b.String()
}

// prepareConsole turns a decision-log event into what consoleWriter
// prints: the verdict (ALLOW, DENY) or CLOSE as the message, host and port
// as one host:port, policy and rule as one policy/rule.
func prepareConsole(evt map[string]any) error {
	switch evt[zerolog.MessageFieldName] {
	case msgDecision:
		if d, ok := evt[fieldDecision].(string); ok {
			evt[zerolog.MessageFieldName] = strings.ToUpper(d)
			delete(evt, fieldDecision)
		}
	case msgClose:
		evt[zerolog.MessageFieldName] = "CLOSE"
	}
	if h, ok := evt[fieldHost].(string); ok {
		if p, ok := evt[fieldPort]; ok {
			h = net.JoinHostPort(h, fmt.Sprint(p))
			delete(evt, fieldPort)
		}
		evt[consoleTarget] = h
		delete(evt, fieldHost)
	}
	if p, ok := evt[fieldPolicy].(string); ok {
		if r, ok := evt[fieldRule].(string); ok {
			evt[fieldPolicy] = p + "/" + r
			delete(evt, fieldRule)
		}
	}
	return nil
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
