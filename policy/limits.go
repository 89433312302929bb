package policy

import "time"

// Limits and defaults. Each one says why it has the value it has.
const (
	// maxNameLen is the longest host name accepted, in bytes, without the
	// trailing dot: RFC 1035 §2.3.4 allows 255 octets on the wire, which is
	// 253 characters in dotted presentation form.
	maxNameLen = 253

	// maxLabelLen is the longest label of a host name (RFC 1035 §2.3.4).
	maxLabelLen = 63

	// maxHostInputLen bounds the input NormalizeHost will look at before
	// IDNA processing. A valid name is at most 253 ASCII bytes after
	// conversion; a U-label input is at most 4 bytes per rune, so 1024 bytes
	// is generous for every valid name while keeping the IDNA mapping work
	// on hostile input (a client-controlled SNI or Host) bounded.
	maxHostInputLen = 1024

	// maxIdentLen is the longest policy or rule name. Names are written into
	// every decision log line and may become metric label values, so they
	// are kept short.
	maxIdentLen = 128

	// maxConfigFileBytes is the largest configuration file Parse, Load and
	// LoadFS accept. 100,000 rules at ~200 bytes each is 20 MB; 64 MiB
	// leaves room while still refusing a path that points at a device or a
	// runaway generated file before it exhausts memory.
	maxConfigFileBytes = 64 << 20

	// maxNesting is how deeply a configuration file's expressions may
	// nest (checkNesting). Real policies nest 3-4 levels (policy, rule, a
	// list, an object); 64 leaves room for generated files while bounding
	// the HCL parser's recursion, about 5 KiB of stack per level, to a few
	// hundred KiB: 100,000 levels overflowed the stack and ended the
	// process.
	maxNesting = 64

	// maxExprTokens is how many operators, brackets and traversal steps
	// may be pending at any point of a configuration file: in the item
	// being read (an attribute, a list element, a function argument) and
	// in the items it is nested in (checkNesting). Parsing and evaluating
	// recurse per operator and step, 1-5 KiB of stack each: 2,000,000
	// "+1" or 600,000 "[*]" overflowed the stack. A policy's values are
	// strings and numbers, which do not count; 1,000 is far beyond any
	// real expression and bounds the recursion to a few MiB.
	maxExprTokens = 1000

	// maxDiagValueLen is how much of an offending value a diagnostic or an
	// error quotes. Values come from configuration or from clients; quoting
	// them whole would let one bad value flood a log line.
	maxDiagValueLen = 80

	// ja3Len is the length of a JA3 fingerprint: an MD5 digest in hex.
	ja3Len = 32

	// ja4Len is the length of a FoxIO JA4 fingerprint:
	// 10-character prefix, '_', 12 hex, '_', 12 hex.
	ja4Len = 36

	// httpsPort is the port an allow rule without ports is limited to.
	// Policy is deny by default; an allow rule that names hosts but no ports
	// opens only HTTPS, the common case, rather than every port.
	httpsPort = 443

	// defaultDNSPort is the port of a resolver server given without one.
	defaultDNSPort = 53
)

// Defaults of the server block.
const (
	DefaultHTTPListen   = "127.0.0.1:3128"
	DefaultHelloTimeout = 10 * time.Second
	DefaultIdleTimeout  = 5 * time.Minute
	DefaultDialTimeout  = 10 * time.Second

	// DefaultShutdownGrace: long enough for a typical download or API call
	// in flight to finish, short enough for a rolling restart (Kubernetes
	// gives 30 s before SIGKILL by default).
	DefaultShutdownGrace = 20 * time.Second
	// DefaultMaxConnections bounds open connections: each costs two file
	// descriptors and a few KiB, so 16,384 fit in 32,768 descriptors and a
	// few hundred MiB at most.
	DefaultMaxConnections = 16384
	// DefaultMaxConnectionsPerClient keeps one client (a runaway loop, a
	// compromised workload) from taking every slot: a sixteenth of the
	// total.
	DefaultMaxConnectionsPerClient = DefaultMaxConnections / 16
	// maxConnectionsLimit is the largest max_connections accepted: beyond
	// it the descriptor budget, not the setting, would be the limit.
	maxConnectionsLimit = 1 << 20
	DefaultLogFormat    = "json"
	DefaultLogOutput    = "stdout"
)

// Values of transparent_mode and verify_destination.
const (
	TransparentRedirect = "redirect" // iptables/nft REDIRECT: SO_ORIGINAL_DST
	TransparentTProxy   = "tproxy"   // TPROXY: IP_TRANSPARENT listener

	VerifyRefuse   = "refuse"   // deny with dst_mismatch (the default)
	VerifyRedirect = "redirect" // dial the address resolved for the SNI name
)

// Values of dns_refuse.
const (
	DNSRefuseRefused  = "refused"  // answer REFUSED (the default)
	DNSRefuseNXDomain = "nxdomain" // answer NXDOMAIN
)

// Values of mode (server and policy blocks).
const (
	ModeEnforce = "enforce" // deny what the policy does not allow (the default)
	ModeAudit   = "audit"   // allow it, logged with would_deny and the reason
)
