package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sni"
)

// helloBufs holds the buffers tunnels read their first bytes into. A buffer
// lives only for the hello phase: after the decision its bytes are written
// upstream and it goes back, so idle tunnels hold none.
var helloBufs = sync.Pool{New: func() any {
	b := make([]byte, sni.MaxHelloBytes)
	return &b
}}

// firstBytes is what a tunnel's client sent before the decision.
type firstBytes struct {
	buf   *[]byte
	n     int
	hello sni.Hello
	tls   bool // a complete ClientHello was parsed
}

func (f *firstBytes) bytes() []byte { return (*f.buf)[:f.n] }

func (f *firstBytes) release() {
	if f.buf != nil {
		helloBufs.Put(f.buf)
		f.buf = nil
	}
}

// readHello reads from c until the bytes hold a complete ClientHello, are
// recognisably not TLS, or a limit is hit. Its failure reason is "" when the
// bytes were read; then f.tls tells whether they were a hello.
func readHello(c net.Conn, timeout time.Duration, f *firstBytes) (policy.Reason, error) {
	f.buf = helloBufs.Get().(*[]byte)
	buf := *f.buf
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	for {
		if f.n == len(buf) {
			return policy.ReasonHelloTooLarge, sni.ErrTooLarge
		}
		m, err := c.Read(buf[f.n:])
		f.n += m
		if m > 0 {
			_, perr := sni.ParseRecords(buf[:f.n], &f.hello)
			switch {
			case perr == nil:
				f.tls = true
				return "", nil
			case errors.Is(perr, sni.ErrNotTLS):
				return "", nil
			case errors.Is(perr, sni.ErrTooLarge):
				return policy.ReasonHelloTooLarge, perr
			case !errors.Is(perr, sni.ErrNeedMore):
				return policy.ReasonHelloMalformed, perr
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			return policy.ReasonHelloTimeout, err
		case errors.Is(err, io.EOF):
			return policy.ReasonClientClosed, err
		default:
			return policy.ReasonClientClosed, err
		}
	}
}
