package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/egressd/egressd/policy"
)

// RunOptions are what Run needs besides the configuration.
type RunOptions struct {
	// Version appears in the startup lines and on the admin listener.
	Version string
	// Status receives a line for each listener as it starts serving
	// (io.Discard when nil).
	Status io.Writer
	// Watch, when set, is called once every listener is open and before
	// any is served, with a context that ends when Run stops serving. It
	// must return promptly (WatchConfig does) with a channel that is
	// closed once it has stopped; Run waits for that before it closes the
	// decision log.
	Watch func(context.Context, *Server) <-chan struct{}
}

// Run opens every listener cfg names (all before serving any, so that a
// bad address fails the start instead of leaving a half-running gateway),
// serves them until ctx is done, then stops accepting, drains open tunnels
// for up to server.shutdown_grace and closes the ones left.
func Run(ctx context.Context, cfg *policy.Config, o RunOptions) error {
	status := o.Status
	if status == nil {
		status = io.Discard
	}
	version := o.Version
	logger, closer, err := NewLogger(cfg.Log)
	if err != nil {
		return err
	}
	defer closer.Close()
	srv, err := New(cfg, logger)
	if err != nil {
		return err
	}
	var opened []io.Closer
	fail := func(what, addr, setting string, err error) error {
		for _, c := range opened {
			c.Close()
		}
		return fmt.Errorf("%s on %s: %w; change %s", what, addr, err, setting)
	}
	ln, err := Listen(cfg.Server.HTTPListen)
	if err != nil {
		return fail("listen", cfg.Server.HTTPListen, "server.http_listen or --http-listen", err)
	}
	opened = append(opened, ln)
	var tln net.Listener
	if a := cfg.Server.TransparentListen; a != "" {
		if tln, err = ListenTransparent(a, cfg.Server.TransparentMode == policy.TransparentTProxy); err != nil {
			return fail("transparent listen", a, "server.transparent_listen or --transparent-listen", err)
		}
		opened = append(opened, tln)
	}
	var qpc *net.UDPConn
	if a := cfg.Server.QUICListen; a != "" {
		if qpc, err = ListenQUIC(a); err != nil {
			return fail("QUIC listen", a, "server.quic_listen or --quic-listen", err)
		}
		opened = append(opened, qpc)
	}
	var (
		dpc net.PacketConn
		dln net.Listener
	)
	if a := cfg.Server.DNSListen; a != "" {
		if dpc, dln, err = listenDNS(a); err != nil {
			return fail("DNS listen", a, "server.dns_listen or --dns-listen", err)
		}
		opened = append(opened, dpc, dln)
	}
	var aln net.Listener
	if a := cfg.Server.AdminListen; a != "" {
		if aln, err = listenTCP(a); err != nil {
			return fail("admin listen", a, "server.admin_listen or --admin-listen", err)
		}
		opened = append(opened, aln)
	}
	if o.Watch != nil {
		// Watching starts before the first line announces the proxy, so
		// no configuration change after it is missed.
		wctx, cancel := context.WithCancel(ctx)
		stopped := o.Watch(wctx, srv)
		defer func() {
			cancel()
			if stopped != nil {
				<-stopped
			}
		}()
	}
	fmt.Fprintf(status, "egressd %s: HTTP proxy listening on %s\n", version, ln.Addr())
	errc := make(chan error, 4)
	n := 1
	go func() { errc <- srv.Serve(ln) }()
	if tln != nil {
		fmt.Fprintf(status, "egressd %s: transparent gateway (%s) listening on %s\n", version, cfg.Server.TransparentMode, tln.Addr())
		n++
		go func() { errc <- srv.ServeTransparent(tln) }()
	}
	if qpc != nil {
		fmt.Fprintf(status, "egressd %s: QUIC gateway (tproxy, udp) listening on %s\n", version, qpc.LocalAddr())
		n++
		go func() { errc <- srv.ServeQUIC(qpc) }()
	}
	if dpc != nil {
		fmt.Fprintf(status, "egressd %s: DNS server (udp, tcp) listening on %s\n", version, dpc.LocalAddr())
		n++
		go func() { errc <- srv.ServeDNS(dpc, dln) }()
	}
	var admin *http.Server
	if aln != nil {
		srv.SetVersion(version)
		admin = srv.adminServer(aln)
		fmt.Fprintf(status, "egressd %s: admin (metrics, health) listening on %s\n", version, aln.Addr())
		go func() {
			if err := admin.Serve(aln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				fmt.Fprintln(status, "egressd: admin server:", err)
			}
		}()
	}
	// Every listener is open and served: ready until Shutdown.
	srv.SetReady(true)
	var first error
	select {
	case first = <-errc:
		n--
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownGrace)
	defer cancel()
	_ = srv.Shutdown(sctx) // unready first, then drains
	if admin != nil {
		// After the drain, so /metrics and /healthz answer until the end.
		if err := admin.Shutdown(sctx); err != nil {
			_ = admin.Close()
		}
	}
	for ; n > 0; n-- {
		if err := <-errc; first == nil {
			first = err
		}
	}
	return first
}

// listenDNS opens the gateway DNS server's UDP socket and TCP listener on
// one address. With port 0 the TCP listener takes the port the UDP socket
// got (retried a few times, in case another program holds it on TCP).
func listenDNS(addr string) (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 5 {
		pc, err := net.ListenPacket(listenNetwork("udp", addr), addr)
		if err != nil {
			return nil, nil, err
		}
		ln, err := listenTCP(pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
		if _, p, _ := net.SplitHostPort(addr); p != "0" {
			break
		}
	}
	return nil, nil, lastErr
}
