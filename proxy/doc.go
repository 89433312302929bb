// Package proxy wires egressd's listeners, DNS, dialing, relaying and
// decision logging around the pure policy and sni packages.
//
// An HTTP CONNECT tunnel goes through these steps, each able to end it with
// a logged reason:
//
//  1. parse the authority (canonical IP literals only) and ask the policy
//     whether any rule could allow host:port; if not, answer 403;
//  2. answer 200 and read the tunnel's first bytes, bounded by
//     hello_timeout and sni.MaxHelloBytes, until they hold a ClientHello;
//  3. decide with SNI, JA3 and JA4;
//  4. resolve the name, drop private addresses the rule does not open, dial
//     exactly a checked address, write the bytes already read, and relay
//     with splice(2) between the two *net.TCPConn: on Linux the epoll
//     relay (relay_linux.go) registers both sockets in one epoll set and
//     runs a tunnel only when a socket is ready, so a quiet tunnel holds
//     no goroutine; elsewhere, and for other connections, one goroutine
//     per direction runs io.Copy.
//
// A transparent connection (ServeTransparent on a ListenTransparent
// listener) starts at step 2 with the original destination as an IP
// target: SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST after a REDIRECT, the
// local address after a TPROXY. After an allow, the original destination
// is verified against the deciding rule (its cidrs, or the resolver's
// recent answers for the SNI name and the rule's exact hosts); a mismatch
// is refused (dst_mismatch) or re-pointed at the SNI name's address, as
// verify_destination says. Upstream sockets carry server.upstream_mark
// (SO_MARK) so that redirect rules can exempt them.
//
// Absolute-form http:// requests are decided on host and port and
// forwarded over a connection dialed the same way. Every connection writes
// one "decision" line, and every allowed one a "close" line, to the
// zerolog logger given to New.
//
// Run is what egressd serve runs: every listener the configuration names,
// the admin server, and the shutdown sequence. WatchConfig reloads a
// running Server when its files change or the caller's SIGHUP channel
// delivers. Suggest turns a decision log back into allow rules.
//
// The package is not a library for other proxies: it has no MITM, no
// caching and no upstream proxy chaining.
//
//	cfg, diags := policy.Load("egressd.hcl")
//	if diags.HasErrors() { ... }
//	srv, err := proxy.New(cfg, zerolog.New(os.Stdout))
//	ln, _ := proxy.Listen(cfg.Server.HTTPListen)
//	go srv.Serve(ln)
//	defer srv.Shutdown(ctx)
package proxy
