package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/rs/zerolog"

	"github.com/egressd/egressd/configs"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/proxy"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1 // invalid configuration, deny verdict, runtime failure
	exitUsage = 2 // bad flags or arguments
)

const usage = `egressd: an egress proxy that lets through only what its policy allows.

Usage:
  egressd serve    [--config PATH] [--http-listen ADDR]   run the proxy
                   [--transparent-listen ADDR] [--tproxy]
                   [--quic-listen ADDR] [--dns-listen ADDR]
                   [--admin-listen ADDR]                  (metrics, health)
                   [--shutdown-grace DUR]
  egressd validate --config PATH                          check a configuration
  egressd check    [--config PATH] [--sni NAME] [--ja3 HASH] [--ja4 FP] [--client ADDR] [--user NAME]
                   [--plain|--http] [--quic] HOST:PORT
                                                          evaluate the policy offline
  egressd test     [--config PATH] [-v]                   run the configuration's test blocks
  egressd suggest  [FILE|-]                               allow rules for a decision log's denials
  egressd passwd   [NAME] < password                      print a password hash for a user block
  egressd version                                         print the version

With no --config, egressd uses its embedded default: every preset in configs/.
Run "egressd COMMAND --help" for a command's flags.
`

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return runServe(rest, stdout, stderr)
	case "validate":
		return runValidate(rest, stdout, stderr)
	case "check":
		return runCheck(rest, stdout, stderr)
	case "test":
		return runTest(rest, stdout, stderr)
	case "suggest":
		return runSuggest(rest, stdin, stdout, stderr)
	case "passwd":
		return runPasswd(rest, stdin, stdout, stderr)
	case "version", "--version":
		return runVersion(rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "egressd: unknown command %q\n\n%s", cmd, usage)
	return exitUsage
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("version", "version", stderr)
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "egressd version: takes no arguments, got %q\n", fs.Args())
		return exitUsage
	}
	fmt.Fprintln(stdout, "egressd", version)
	return exitOK
}

func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: egressd %s\n", synopsis)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprint(stderr, "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags returns the exit code to use when parsing ended the command
// (help or a usage error), or -1 to go on.
func parseFlags(fs *flag.FlagSet, args []string) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	return -1
}

// loadDiags loads the configuration at path (the embedded presets when
// path is "").
func loadDiags(path string) (*policy.Config, hcl.Diagnostics) {
	if path == "" {
		return policy.LoadFS(configs.FS, ".")
	}
	return policy.Load(path)
}

// loadConfig reads path, or the embedded presets when path is empty, and
// prints every diagnostic (warnings too) to stderr.
func loadConfig(path string, stderr io.Writer) (*policy.Config, bool) {
	cfg, diags := loadDiags(path)
	if len(diags) > 0 {
		fmt.Fprint(stderr, policy.FormatDiagnostics(diags))
	}
	return cfg, !diags.HasErrors()
}

func runServe(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("serve", "serve [--config PATH] [--http-listen ADDR] [--transparent-listen ADDR] [--tproxy] [--quic-listen ADDR] [--dns-listen ADDR] [--admin-listen ADDR] [--shutdown-grace DUR]", stderr)
	path := fs.String("config", "", "HCL file or directory of *.hcl files (default: the embedded presets)")
	grace := fs.Duration("shutdown-grace", 0, "how long SIGINT/SIGTERM lets open tunnels finish (e.g. 30s), overriding server.shutdown_grace")
	listen := fs.String("http-listen", "", "HTTP proxy listen address, overriding server.http_listen")
	tlisten := fs.String("transparent-listen", "", "transparent gateway listen address for REDIRECT/TPROXY'ed TCP, overriding server.transparent_listen")
	tproxy := fs.Bool("tproxy", false, "the transparent listener receives TPROXY'ed connections (IP_TRANSPARENT), overriding server.transparent_mode")
	qlisten := fs.String("quic-listen", "", "QUIC gateway listen address for TPROXY'ed UDP (443, 7844), overriding server.quic_listen")
	dlisten := fs.String("dns-listen", "", "gateway DNS server listen address (UDP and TCP), overriding server.dns_listen")
	alisten := fs.String("admin-listen", "", "metrics and health endpoints (/metrics, /healthz, /readyz) listen address, overriding server.admin_listen")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "egressd serve: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if flagSet(fs, "shutdown-grace") && *grace <= 0 {
		fmt.Fprintf(stderr, "egressd serve: --shutdown-grace %v: give a duration greater than zero, e.g. 30s\n", *grace)
		return exitUsage
	}
	// SIGHUP reloads. It is caught from the start to the exit: its
	// default action ends the process, which must not happen while the
	// configuration loads or while a stop drains the tunnels.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	cfg, ok := loadConfig(*path, stderr)
	if !ok {
		return exitFail
	}
	override := func(cfg *policy.Config) {
		applyServeFlags(cfg, *listen, *tlisten, *tproxy, *qlisten, *dlisten, *alisten, *grace)
	}
	override(cfg)
	// Reloads (SIGHUP, file changes) read the same path with the same
	// command-line overrides.
	load := func() (*policy.Config, hcl.Diagnostics) {
		cfg, diags := loadDiags(*path)
		override(cfg)
		return cfg, diags
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first SIGINT/SIGTERM a second one ends the process at
	// once, without waiting for the drain.
	context.AfterFunc(ctx, stop)
	watch := func(ctx context.Context, srv *proxy.Server) <-chan struct{} {
		return srv.WatchConfig(ctx, *path, load, hup)
	}
	// Decision-log timestamps to the nanosecond: a process-wide zerolog
	// setting, so the process's owner sets it.
	zerolog.TimeFieldFormat = time.RFC3339Nano
	if err := proxy.Run(ctx, cfg, proxy.RunOptions{Version: version, Status: stderr, Watch: watch}); err != nil {
		fmt.Fprintln(stderr, "egressd:", err)
		return exitFail
	}
	return exitOK
}

// flagSet reports whether the command line set flag name.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// applyServeFlags applies serve's listener and grace flags over the
// configuration's settings ("" or 0: keep the configuration's).
func applyServeFlags(cfg *policy.Config, listen, tlisten string, tproxy bool, qlisten, dlisten, alisten string, grace time.Duration) {
	if listen != "" {
		cfg.Server.HTTPListen = listen
	}
	if tlisten != "" {
		cfg.Server.TransparentListen = tlisten
	}
	if tproxy {
		cfg.Server.TransparentMode = policy.TransparentTProxy
	}
	if qlisten != "" {
		cfg.Server.QUICListen = qlisten
	}
	if dlisten != "" {
		cfg.Server.DNSListen = dlisten
	}
	if alisten != "" {
		cfg.Server.AdminListen = alisten
	}
	if grace > 0 {
		cfg.Server.ShutdownGrace = grace
	}
}

func runValidate(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("validate", "validate --config PATH", stderr)
	path := fs.String("config", "", "HCL file or directory of *.hcl files (required)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if *path == "" || fs.NArg() > 0 {
		fs.Usage()
		return exitUsage
	}
	if _, ok := loadConfig(*path, stdout); !ok {
		return exitFail
	}
	fmt.Fprintf(stdout, "%s: valid\n", *path)
	return exitOK
}

func runCheck(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("check", "check [--config PATH] [--sni NAME] [--ja3 HASH] [--ja4 FP] [--client ADDR] [--user NAME] [--plain|--http] [--quic] HOST:PORT", stderr)
	path := fs.String("config", "", "HCL file or directory (default: the embedded presets)")
	sniName := fs.String("sni", "", "ClientHello server name (default: HOST when it is a name)")
	ja3 := fs.String("ja3", "", "JA3 hash of the client's hello")
	ja4 := fs.String("ja4", "", "JA4 fingerprint of the client's hello")
	plain := fs.Bool("plain", false, "the tunnel's first bytes are not TLS")
	httpReq := fs.Bool("http", false, "a plain http:// proxy request rather than a tunnel")
	quic := fs.Bool("quic", false, "a UDP flow on the QUIC gateway (HOST is then the original destination address; with --plain, UDP that is not QUIC)")
	clientAddr := fs.String("client", "", "the client's address, for policies whose clients block lists cidrs")
	user := fs.String("user", "", "the proxy user the client authenticated as, for policies whose clients block lists users")
	if code := parseFlags(fs, reorder(fs, args)); code >= 0 {
		return code
	}
	switch {
	case fs.NArg() != 1:
		fs.Usage()
		return exitUsage
	case *httpReq && (*plain || *quic):
		fmt.Fprintln(stderr, "egressd check: --http (a plain http:// request) excludes --plain and --quic (kinds of tunnel and flow); give one of them")
		return exitUsage
	case (*plain || *httpReq) && (*sniName != "" || *ja3 != "" || *ja4 != ""):
		// Without a ClientHello they would be ignored, and the verdict
		// printed would not be the one asked about.
		fmt.Fprintln(stderr, "egressd check: --sni, --ja3 and --ja4 describe a TLS ClientHello, which --plain and --http connections do not send; leave them out, or drop --plain/--http")
		return exitUsage
	}
	t, err := proxy.ParseTarget(fs.Arg(0), 0)
	if err != nil {
		fmt.Fprintln(stderr, "egressd check:", err)
		return exitUsage
	}
	var client netip.Addr
	if *clientAddr != "" {
		if client, err = netip.ParseAddr(*clientAddr); err != nil || client.Zone() != "" {
			fmt.Fprintf(stderr, "egressd check: --client %q is not an IP address\n", *clientAddr)
			return exitUsage
		}
	}
	cfg, ok := loadConfig(*path, stderr)
	if !ok {
		return exitUsage
	}
	if *user != "" && !cfg.Policy.HasUser(*user) {
		// egressd would answer such a user 407 before any decision.
		fmt.Fprintf(stderr, "egressd check: --user %q is not declared by a user block or the users_file; name a declared user\n", *user)
		return exitUsage
	}
	r := policy.Request{Host: t.Host, Addr: t.Addr, Port: t.Port, Hello: policy.HelloTLS, SNI: t.Host, JA3: strings.ToLower(*ja3), JA4: *ja4,
		Client: client.Unmap(), User: *user}
	if *quic {
		// The QUIC gateway sees an address, never a name: a flow is
		// decided like a transparent connection.
		r.Protocol = policy.ProtocolQUIC
		r.Transparent = t.Host == ""
	}
	switch {
	case *plain:
		r.Hello = policy.HelloNotTLS
	case *httpReq:
		r.Hello = policy.HelloHTTP
	case *sniName != "":
		r.SNI = *sniName
	}
	d := cfg.Policy.Decide(&r)
	if d.Allow && t.Addr.IsValid() && !d.AddrAllowed(t.Addr) {
		d.Allow, d.WouldDeny, d.Reason = false, false, policy.ReasonPrivateDestination
	}
	printDecision(stdout, t, d)
	if d.Allow {
		return exitOK
	}
	return exitFail
}

func printDecision(w io.Writer, t proxy.Target, d policy.Decision) {
	verdict := "deny"
	if d.Allow {
		verdict = "allow"
	}
	fmt.Fprintf(w, "%s %s", verdict, t)
	if d.Policy != "" {
		fmt.Fprintf(w, " policy=%s rule=%s", d.Policy, d.Rule)
	}
	fmt.Fprintf(w, " reason=%s", d.Reason)
	if d.WouldDeny {
		fmt.Fprint(w, " would_deny")
	}
	fmt.Fprintln(w)
}

// reorder moves flags before positional arguments, so "check HOST:PORT
// --sni x" works as well as "check --sni x HOST:PORT".
func reorder(fs *flag.FlagSet, args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			pos = append(pos, args[i+1:]...)
			i = len(args)
		case strings.HasPrefix(a, "-"):
			flags = append(flags, a)
			if !strings.Contains(a, "=") && takesValue(fs, a) && i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
		default:
			pos = append(pos, a)
		}
	}
	return append(flags, pos...)
}

// takesValue reports whether the flag takes the next argument as its
// value: every flag of fs but the boolean ones (and -h, --help).
func takesValue(fs *flag.FlagSet, flagArg string) bool {
	name := strings.TrimLeft(flagArg, "-")
	f := fs.Lookup(name)
	if f == nil {
		return name != "h" && name != "help"
	}
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return !ok || !b.IsBoolFlag()
}
