package proxy

import (
	"fmt"
	"io"
	"os"
	"time"

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
		w = os.Stdout
	case "stderr":
		w = os.Stderr
	default:
		f, err := os.OpenFile(l.Output, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return zerolog.Nop(), nil, fmt.Errorf("open decision log: %w; check log { output = %q }", err, l.Output)
		}
		w, closer = f, f
	}
	if l.Format == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	}
	return zerolog.New(w).With().Timestamp().Logger(), closer, nil
}
