package policy

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"golang.org/x/crypto/bcrypt"
)

// testHash is a cheap bcrypt hash (cost 10) of "s3cret", made once.
var testHash = func() string {
	h, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.DefaultCost)
	if err != nil {
		panic(err)
	}
	return string(h)
}()

// argonHash is an argon2id PHC hash of "s3cret" (m=19456 KiB, t=2, p=1:
// OWASP's first recommendation), computed with
// golang.org/x/crypto/argon2.IDKey and the salt "saltsaltsalt".
const argonHash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aiw2o9oMq/9ebSZcoiTcfCAvRu6fmltcIeT3flB1dAo"

func clientsConfig() string {
	return `
user "ci" {
  password_hash = "` + testHash + `"
}
user "argon" {
  password_hash = "` + argonHash + `"
}
policy "ci-runners" {
  clients {
    cidrs = ["10.1.0.0/16"]
    users = ["ci"]
  }
  allow "github" {
    hosts = ["api.github.com"]
  }
}
policy "builders" {
  mode = "audit"
  clients {
    cidrs = ["10.2.0.0/16"]
    users = ["argon"]
  }
  allow "registry" {
    hosts = ["cgr.dev"]
  }
  deny "no-pastebin" {
    hosts = ["pastebin.com"]
  }
}
`
}

func TestClientsAndAudit(t *testing.T) {
	p := mustParse(t, clientsConfig()).Policy
	ci := netip.MustParseAddr("10.1.4.5")
	builder := netip.MustParseAddr("10.2.0.9")
	stranger := netip.MustParseAddr("192.0.2.7")
	tls := func(host string, client netip.Addr, user string) Request {
		return Request{Host: host, Port: 443, Hello: HelloTLS, SNI: host, Client: client, User: user}
	}
	tests := []struct {
		name      string
		r         Request
		allow     bool
		wouldDeny bool
		reason    Reason
		rule      string
		identity  string
	}{
		{"ci by cidr", tls("api.github.com", ci, ""), true, false, ReasonAllowed, "github", "cidr:ci-runners"},
		{"ci by user from anywhere", tls("api.github.com", stranger, "ci"), true, false, ReasonAllowed, "github", "ci"},
		{"ci cannot use the builders' rule", tls("cgr.dev", ci, ""), false, false, ReasonNoRule, "", "cidr:ci-runners"},
		{"builder allowed", tls("cgr.dev", builder, ""), true, false, ReasonAllowed, "registry", "cidr:builders"},
		{"builder audit: no rule", tls("example.com", builder, ""), true, true, ReasonNoRule, "", "cidr:builders"},
		{"builder audit: deny rule", tls("pastebin.com", builder, ""), true, true, ReasonDeniedByRule, "no-pastebin", "cidr:builders"},
		{"builder audit: sni mismatch", Request{Host: "cgr.dev", Port: 443, Hello: HelloTLS, SNI: "evil.test", Client: builder}, true, true, ReasonSNIMismatch, "registry", "cidr:builders"},
		{"argon user is a builder", tls("cgr.dev", stranger, "argon"), true, false, ReasonAllowed, "registry", "argon"},
		{"stranger", tls("api.github.com", stranger, ""), false, false, ReasonNoPolicyForClient, "", ""},
		{"unknown user", tls("api.github.com", stranger, "mallory"), false, false, ReasonNoPolicyForClient, "", "mallory"},
		{"no client address", tls("api.github.com", netip.Addr{}, ""), false, false, ReasonNoPolicyForClient, "", ""},
		{"mapped client address", tls("api.github.com", netip.MustParseAddr("::ffff:10.1.4.5"), ""), true, false, ReasonAllowed, "github", "cidr:ci-runners"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Decide(&tt.r)
			if d.Allow != tt.allow || d.WouldDeny != tt.wouldDeny || d.Reason != tt.reason || d.Rule != tt.rule || d.Identity != tt.identity {
				t.Errorf("Decide = %+v, want allow=%v would_deny=%v reason=%s rule=%q identity=%q", d, tt.allow, tt.wouldDeny, tt.reason, tt.rule, tt.identity)
			}
		})
	}
	if !p.NeedsAuth() {
		t.Error("NeedsAuth = false with users in clients")
	}
}

func TestServerAuditMode(t *testing.T) {
	p := mustParse(t, `
server { mode = "audit" }
policy "web" {
  allow "example" { hosts = ["example.com"] }
}`).Policy
	d := p.Decide(&Request{Host: "other.test", Port: 443, Hello: HelloTLS, SNI: "other.test"})
	if !d.Allow || !d.WouldDeny || d.Reason != ReasonNoRule {
		t.Errorf("server audit: %+v", d)
	}
	d = p.Decide(&Request{Host: "example.com", Port: 443, Hello: HelloTLS, SNI: "example.com"})
	if !d.Allow || d.WouldDeny {
		t.Errorf("server audit, allowed: %+v", d)
	}
	// Audit mode never opens private destinations by itself.
	d = p.Decide(&Request{Addr: netip.MustParseAddr("169.254.169.254"), Port: 80, Hello: HelloHTTP})
	if !d.WouldDeny || d.AddrAllowed(netip.MustParseAddr("169.254.169.254")) {
		t.Errorf("audit opened the metadata address: %+v", d)
	}
}

func TestAuthenticate(t *testing.T) {
	p := mustParse(t, clientsConfig()).Policy
	tests := []struct {
		user, pw string
		want     bool
	}{
		{"ci", "s3cret", true},
		{"ci", "wrong", false},
		{"ci", "", false},
		{"argon", "s3cret", true},
		{"argon", "s3cre", false},
		{"nobody", "s3cret", false},
		{"", "", false},
	}
	for _, tt := range tests {
		if got := p.Authenticate(tt.user, tt.pw); got != tt.want {
			t.Errorf("Authenticate(%q, %q) = %v, want %v", tt.user, tt.pw, got, tt.want)
		}
	}
	if !p.HasUser("ci") || !p.HasUser("argon") || p.HasUser("nobody") || p.HasUser("") {
		t.Error("HasUser does not tell the declared users")
	}
	p.CheckDecoy("s3cret")
	var nilPol *Policy
	nilPol.CheckDecoy("s3cret")
	if nilPol.Authenticate("ci", "s3cret") || nilPol.NeedsAuth() || nilPol.HasUser("ci") {
		t.Error("nil policy authenticates")
	}
	h, err := HashPassword("correct horse")
	if err != nil || !strings.HasPrefix(h, "$2a$10$") {
		t.Fatalf("HashPassword = %q, %v", h, err)
	}
	if _, err := HashPassword(""); err == nil {
		t.Error("HashPassword accepted an empty password")
	}
}

func TestClientsDiagnostics(t *testing.T) {
	tests := []struct {
		name, src, pos, word string
	}{
		{"unknown user", "policy \"p\" {\n  clients {\n    users = [\"ghost\"]\n  }\n  allow \"r\" { hosts = [\"a.test\"] }\n}\n", "t.hcl:3:14", "Unknown user"},
		{"empty clients", "policy \"p\" {\n  clients {}\n  allow \"r\" { hosts = [\"a.test\"] }\n}\n", "t.hcl:2:3", "Empty clients block"},
		{"bad client cidr", "policy \"p\" {\n  clients {\n    cidrs = [\"10.0.0.1/8\"]\n  }\n  allow \"r\" { hosts = [\"a.test\"] }\n}\n", "t.hcl:3:14", "10.0.0.0/8"},
		{"two clients blocks", "policy \"p\" {\n  clients { cidrs = [\"10.0.0.0/8\"] }\n  clients { cidrs = [\"10.0.0.0/8\"] }\n  allow \"r\" { hosts = [\"a.test\"] }\n}\n", "t.hcl:3:3", "Duplicate clients block"},
		{"bad policy mode", "policy \"p\" {\n  mode = \"loose\"\n  allow \"r\" { hosts = [\"a.test\"] }\n}\n", "t.hcl:2:10", "Invalid mode"},
		{"clear-text password", "user \"u\" {\n  password_hash = \"hunter2\"\n}\n", "t.hcl:1:6", "clear-text passwords are not accepted"},
		{"low bcrypt cost", "user \"u\" {\n  password_hash = \"$2a$04$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy\"\n}\n", "t.hcl:1:6", "below 10"},
		{"argon2id too little memory", "user \"u\" {\n  password_hash = \"$argon2id$v=19$m=7167,t=10,p=1$c2FsdHNhbHRzYWx0$0+4uSdXbC06vdabP0i3bVbjuG1SFSRGPLy6OoqlCqVg\"\n}\n", "t.hcl:1:6", "too weak"},
		{"argon2id too little work", "user \"u\" {\n  password_hash = \"$argon2id$v=19$m=19456,t=1,p=1$c2FsdHNhbHRzYWx0$0+4uSdXbC06vdabP0i3bVbjuG1SFSRGPLy6OoqlCqVg\"\n}\n", "t.hcl:1:6", "too weak"},
		{"argon2id too costly", "user \"u\" {\n  password_hash = \"$argon2id$v=19$m=4194304,t=3,p=1$c2FsdHNhbHRzYWx0$0+4uSdXbC06vdabP0i3bVbjuG1SFSRGPLy6OoqlCqVg\"\n}\n", "t.hcl:1:6", "exceed the limits"},
		{"duplicate user", "user \"u\" {\n  password_hash = \"" + testHash + "\"\n}\nuser \"u\" {\n  password_hash = \"" + testHash + "\"\n}\n", "t.hcl:4:6", "Duplicate user"},
		{"user without hash", "user \"u\" {\n}\n", "t.hcl:1:10", "password_hash"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, diags := Parse(one(tt.src))
			out := FormatDiagnostics(diags)
			if !diags.HasErrors() || !strings.Contains(out, tt.pos+": error") || !strings.Contains(out, tt.word) {
				t.Errorf("got:\n%s\nwant an error at %s mentioning %q", out, tt.pos, tt.word)
			}
			if strings.Contains(out, "hunter2") {
				t.Errorf("a clear-text password was echoed:\n%s", out)
			}
		})
	}
}

func TestUsersFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, src string) {
		t.Helper()
		if err := writeFileForTest(dir, name, src); err != nil {
			t.Fatal(err)
		}
	}
	write("egressd.hcl", `
server { users_file = "users" }
policy "p" {
  clients { users = ["alice"] }
  allow "r" { hosts = ["a.test"] }
}`)
	write("users", "# proxy users\nalice:"+testHash+"\n\n")
	cfg, diags := Load(dir)
	if diags.HasErrors() {
		t.Fatal(FormatDiagnostics(diags))
	}
	if !cfg.Policy.Authenticate("alice", "s3cret") || cfg.Policy.Authenticate("alice", "nope") {
		t.Error("alice from the users file does not authenticate")
	}

	write("users", "alice:"+testHash+"\nbob hunter2\n")
	_, diags = Load(dir)
	out := FormatDiagnostics(diags)
	if !strings.Contains(out, "users:2:1: error") || strings.Contains(out, "hunter2") {
		t.Errorf("bad users line: %s", out)
	}

	// In line order, although the lines are checked in two passes.
	write("users", "alice:$2a$10$short\n\nbob hunter2\n")
	_, diags = Load(dir)
	out = FormatDiagnostics(diags)
	if i, j := strings.Index(out, "users:1:1:"), strings.Index(out, "users:3:1:"); i < 0 || j < 0 || j < i {
		t.Errorf("users file diagnostics not in line order:\n%s", out)
	}

	// One user past maxUsers: reported at its line.
	var many strings.Builder
	many.WriteString("alice:" + testHash + "\n")
	for i := range maxUsers {
		fmt.Fprintf(&many, "u%d:%s\n", i, testHash)
	}
	write("users", many.String())
	_, diags = Load(dir)
	if out := FormatDiagnostics(diags); !strings.Contains(out, fmt.Sprintf("users:%d:1: error: Too many users", maxUsers+1)) {
		t.Errorf("%d users: want Too many users at the first past the limit:\n%.300s", maxUsers+1, out)
	}

	write("users", "bob:"+testHash+"\n")
	_, diags = Load(dir)
	if out := FormatDiagnostics(diags); !strings.Contains(out, "Unknown user") {
		t.Errorf("alice missing from the users file: %s", out)
	}

	// An unreadable users file is an error, and like any error it leaves
	// no policy to serve.
	if err := os.Remove(filepath.Join(dir, "users")); err != nil {
		t.Fatal(err)
	}
	cfg, diags = Load(dir)
	if out := FormatDiagnostics(diags); !strings.Contains(out, "Cannot read users_file") || cfg.Policy != nil {
		t.Errorf("missing users file: policy %v, diagnostics %s", cfg.Policy != nil, out)
	}
	for _, d := range diags {
		if d.Summary == "Cannot read users_file" && (d.Subject == nil || !strings.HasSuffix(d.Subject.Filename, ".hcl") || d.Subject.Start.Line < 1) {
			t.Errorf("the unreadable users file's diagnostic does not point at users_file: %+v", d.Subject)
		}
	}

	// LoadFS reads it from the same file system.
	fsys := fstest.MapFS{
		"conf/egressd.hcl": {Data: []byte("server { users_file = \"users\" }\npolicy \"p\" {\n  clients { users = [\"alice\"] }\n  allow \"r\" { hosts = [\"a.test\"] }\n}\n")},
		"conf/users":       {Data: []byte("alice:" + testHash + "\n")},
	}
	cfg, diags = LoadFS(fsys, "conf")
	if diags.HasErrors() || !cfg.Policy.Authenticate("alice", "s3cret") {
		t.Errorf("LoadFS with users_file: %s", FormatDiagnostics(diags))
	}
}

func writeFileForTest(dir, name, src string) error {
	return os.WriteFile(filepath.Join(dir, name), []byte(src), 0o600)
}

// TestUsersFileWithoutSetting: a users file given to Parse when no server
// block sets users_file is an error located at the users file.
func TestUsersFileWithoutSetting(t *testing.T) {
	_, diags := Parse([]File{
		{Name: "t.hcl", Src: []byte("policy \"p\" {\n  allow \"r\" { hosts = [\"a.test\"] }\n}\n")},
		{Name: "users", Src: []byte("alice:" + testHash + "\n"), Users: true},
	})
	if out := FormatDiagnostics(diags); !strings.Contains(out, "users:1:1: error: Users file without users_file") {
		t.Errorf("want the error at users:1:1, got:\n%s", out)
	}
}

// TestDecoyHashMatchesUsers: an unknown user is checked against a decoy
// with a declared user's parameters (bcrypt cost, argon2id time, memory,
// threads and key length), the most expensive of the first user's kind,
// so that it costs as much as any known user, and the decoy accepts no
// password.
func TestDecoyHashMatchesUsers(t *testing.T) {
	bcryptHash := func(cost int) string {
		t.Helper()
		h, err := bcrypt.GenerateFromPassword([]byte("s3cret"), cost)
		if err != nil {
			t.Fatal(err)
		}
		return string(h)
	}
	// egressd refuses costs below 10 (bcrypt.DefaultCost).
	bcrypt10, bcrypt11 := bcryptHash(bcrypt.DefaultCost), bcryptHash(bcrypt.DefaultCost+1)
	for _, tc := range []struct{ name, hash string }{
		{"bcrypt cost 11", bcrypt11},
		{"bcrypt default cost", bcrypt10},
		{"argon2id", argonHash},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := parsePasswordHash(tc.hash)
			if err != nil {
				t.Fatal(err)
			}
			d := makeDecoy(h)
			if d.argon != h.argon {
				t.Fatalf("decoy argon=%v for argon=%v", d.argon, h.argon)
			}
			if h.argon {
				if d.time != h.time || d.memory != h.memory || d.threads != h.threads || len(d.key) != len(h.key) {
					t.Errorf("decoy parameters t=%d m=%d p=%d len=%d, want t=%d m=%d p=%d len=%d",
						d.time, d.memory, d.threads, len(d.key), h.time, h.memory, h.threads, len(h.key))
				}
			} else {
				want, _ := bcrypt.Cost([]byte(h.raw))
				if got, err := bcrypt.Cost([]byte(d.raw)); err != nil || got != want {
					t.Errorf("decoy cost %d (%v), want %d", got, err, want)
				}
			}
			if d.verify("s3cret") {
				t.Error("the decoy accepts the real hash's password")
			}
		})
	}
	// The decoy has the highest cost declared, whatever the order: an
	// unknown user costs as much as the dearest known one.
	for _, order := range [][2]string{{bcrypt10, bcrypt11}, {bcrypt11, bcrypt10}} {
		cfg, diags := Parse([]File{{Name: "users.hcl", Src: []byte(fmt.Sprintf(
			"user \"a\" {\n  password_hash = %q\n}\nuser \"b\" {\n  password_hash = %q\n}\npolicy \"p\" {}\n", order[0], order[1]))}})
		if diags.HasErrors() {
			t.Fatal(FormatDiagnostics(diags))
		}
		want := bcrypt.DefaultCost + 1
		if len(cfg.Policy.decoys) != 1 {
			t.Fatalf("%d decoys for bcrypt users only, want 1", len(cfg.Policy.decoys))
		}
		if got, err := bcrypt.Cost([]byte(cfg.Policy.decoys[0].raw)); err != nil || got != want {
			t.Errorf("users of cost %s then %s: decoy cost %d (%v), want the highest, %d", order[0][4:6], order[1][4:6], got, err, want)
		}
	}
}

// argonParams is an argon2id PHC hash with the given parameters and a
// 32-byte key that no password matches (egressd checks only its form).
func argonParams(m, t, p int) string {
	return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$c2FsdHNhbHRzYWx0$%s", m, t, p, strings.Repeat("A", 43))
}

// TestDecoysCoverEveryUser: with users of both kinds, an unknown user is
// checked against a decoy of each kind, each at least as costly as every
// declared hash of its kind (argon2id: the highest m and t, the fewest
// lanes, whichever users they come from), so that it costs at least the
// hash work of any known user. With one decoy of the first user's kind, a
// wrong password of an argon2id user cost more than an unknown user when
// the first user had a bcrypt hash.
func TestDecoysCoverEveryUser(t *testing.T) {
	bcrypt11, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.DefaultCost+1)
	if err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf(`
user "alice" {
  password_hash = %q
}
user "bob" {
  password_hash = %q
}
user "carol" {
  password_hash = %q
}
user "dave" {
  password_hash = %q
}
policy "p" {}
`, testHash, argonParams(9216, 4, 2), bcrypt11, argonParams(7168, 5, 1))
	cfg, diags := Parse(one(src))
	if diags.HasErrors() {
		t.Fatal(FormatDiagnostics(diags))
	}
	d := cfg.Policy.decoys
	if len(d) != 2 || d[0].argon || !d[1].argon {
		t.Fatalf("decoys %+v, want a bcrypt one then an argon2id one", d)
	}
	if got := d[0].bcryptCost(); got != bcrypt.DefaultCost+1 {
		t.Errorf("bcrypt decoy cost %d, want the highest declared, %d", got, bcrypt.DefaultCost+1)
	}
	if a := d[1]; a.memory != 9216 || a.time != 5 || a.threads != 1 || len(a.key) != 32 {
		t.Errorf("argon2id decoy m=%d t=%d p=%d len=%d, want m=9216 t=5 p=1 len=32", a.memory, a.time, a.threads, len(a.key))
	}
	if !cfg.Policy.Authenticate("alice", "s3cret") {
		t.Error("alice does not authenticate beside two decoys")
	}
	for _, h := range d {
		if h.verify("s3cret") {
			t.Errorf("the %s decoy accepts a password", h.params())
		}
	}
	// Users alike: no decoy of the other kind.
	cfg = mustParse(t, fmt.Sprintf("user \"a\" {\n  password_hash = %q\n}\npolicy \"p\" {}\n", argonHash))
	if d := cfg.Policy.decoys; len(d) != 1 || !d[0].argon {
		t.Errorf("argon2id users only: decoys %+v, want one argon2id", d)
	}
	if cfg := mustParse(t, `policy "p" {}`); len(cfg.Policy.decoys) != 0 {
		t.Error("decoys without users")
	}
}

// TestAuditedDenyDoesNotMaskEnforced: a deny rule of an audit-mode policy
// that comes first does not let through what another, enforced policy's
// deny rule refuses; alone it lets the connection through as would_deny.
func TestAuditedDenyDoesNotMaskEnforced(t *testing.T) {
	p := mustParse(t, `
policy "a-audit" {
  mode = "audit"
  deny "soft" { hosts = ["x.test", "y.test"] }
}
policy "b-enforced" {
  deny "hard" { hosts = ["x.test"] }
  allow "x" { hosts = ["x.test", "y.test"] }
}
`).Policy
	for _, tc := range []struct {
		host      string
		allow     bool
		wouldDeny bool
		rule      string
	}{
		{"x.test", false, false, "hard"},
		{"y.test", true, true, "soft"},
	} {
		d := p.Decide(&Request{Host: tc.host, Port: 443, Hello: HelloTLS, SNI: tc.host})
		if d.Allow != tc.allow || d.WouldDeny != tc.wouldDeny || d.Rule != tc.rule {
			t.Errorf("%s: %+v, want allow %v would_deny %v by rule %s", tc.host, d, tc.allow, tc.wouldDeny, tc.rule)
		}
	}
	if _, rule, ok := p.NameAllowed("x.test"); ok || rule != "hard" {
		t.Errorf("NameAllowed(x.test) = %v by %q, want refused by hard, as Decide", ok, rule)
	}
}

// TestAuditedDenyDoesNotOpen: a deny rule of an audit-mode policy only
// logs; it never lets through a connection that the configuration without
// it refuses. Here the presets-like "base" policy is enforced and covers
// every client, so a name no rule allows is no_rule and refused; naming it
// in an audit-mode deny rule (the rollout of a tightening) must not open
// it, for the rollout's clients or anyone else.
func TestAuditedDenyDoesNotOpen(t *testing.T) {
	p := mustParse(t, `
policy "base" {
  allow "github" { hosts = ["github.com"] }
}
policy "rollout" {
  mode = "audit"
  clients { cidrs = ["10.30.0.0/16"] }
  allow "registry" { hosts = ["cgr.dev"] }
  deny "no-pastebin" { hosts = ["pastebin.com", "*.pastebin.com"] }
}
policy "tighten-everyone" {
  mode = "audit"
  deny "no-exfil" { hosts = ["*.exfil.test"] }
}
`).Policy
	builder := netip.MustParseAddr("10.30.0.9")
	other := netip.MustParseAddr("192.0.2.7")
	tls := func(host string, client netip.Addr) Request {
		return Request{Host: host, Port: 443, Hello: HelloTLS, SNI: host, Client: client}
	}
	tests := []struct {
		name      string
		r         Request
		allow     bool // the verdict egressd acts on
		wouldDeny bool
	}{
		// Baselines: a name nobody mentions is refused, audit or not.
		{"builder, unmentioned name", tls("example.org", builder), false, false},
		{"other, unmentioned name", tls("example.org", other), false, false},
		// Allowed names stay allowed.
		{"builder, allowed name", tls("github.com", builder), true, false},
		// An audit-mode deny must not turn "refused" into "let through".
		{"builder, audit-denied name", tls("pastebin.com", builder), false, false},
		{"builder, audit-denied wildcard", tls("dl.pastebin.com", builder), false, false},
		{"other, audit-denied name (policy without clients)", tls("a.exfil.test", other), false, false},
		{"other, audit-denied name, IP literal", Request{Addr: netip.MustParseAddr("203.0.113.9"), Port: 443, Hello: HelloTLS, SNI: "a.exfil.test", Client: other}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Decide(&tt.r)
			if d.Allow != tt.allow || d.WouldDeny != tt.wouldDeny {
				t.Errorf("Decide = %+v (%s), want allow=%v would_deny=%v", d, DescribeDecision(d), tt.allow, tt.wouldDeny)
			}
		})
	}
}

// TestAuditedDenyVerifiesAgainstAllowRule: when an audit-mode deny rule
// decides (the connection goes through with would_deny), destination
// verification must use the allow rule that lets it through, as
// AddrAllowed does, never the deny rule: a deny rule's cidrs name what
// to refuse. Otherwise auditing a deny of a bad network makes every
// address of that network pass verification for any SNI (SNI spoofing
// through the transparent gateway).
func TestAuditedDenyVerifiesAgainstAllowRule(t *testing.T) {
	p := mustParse(t, `
server { verify_destination = "redirect" }
policy "web" {
  allow "github" {
    hosts              = ["github.com"]
    verify_destination = "refuse"
  }
}
policy "watch" {
  mode = "audit"
  deny "bad-net" { cidrs = ["203.0.113.0/24"] }
}
`).Policy
	attacker := netip.MustParseAddr("203.0.113.9")
	tests := []struct {
		name      string
		r         Request
		wouldDeny bool
	}{
		{"enforced allow only", Request{Addr: netip.MustParseAddr("198.51.100.9"), Port: 443, Hello: HelloTLS, SNI: "github.com", Transparent: true}, false},
		{"audited deny over the allow", Request{Addr: attacker, Port: 443, Hello: HelloTLS, SNI: "github.com", Transparent: true}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Decide(&tt.r)
			if !d.Allow || d.WouldDeny != tt.wouldDeny {
				t.Fatalf("Decide = %+v, want allow with would_deny=%v", d, tt.wouldDeny)
			}
			if d.RuleHasCIDR(tt.r.Addr) {
				t.Errorf("RuleHasCIDR(%s) = true: the address passes destination verification though no allow rule lists it", tt.r.Addr)
			}
			if got := d.RuleHosts(); len(got) != 1 || got[0] != "github.com" {
				t.Errorf("RuleHosts = %q, want the allowing rule's [github.com]", got)
			}
			if got := d.VerifyDestination(); got != VerifyRefuse {
				t.Errorf("VerifyDestination = %q, want the allowing rule's %q", got, VerifyRefuse)
			}
		})
	}
}

// TestAuditedDenyOverAuditedAllowKeepsItsRule: an audit-mode deny rule
// only logs. When the connection goes through because an audit-mode
// policy's allow rule failed its conditions (ja3_mismatch: audited), the
// deny rule may decide (would_deny, denied_by_rule), but what the allow
// rule opens and how the destination is verified stay the allow rule's,
// as without the deny rule.
func TestAuditedDenyOverAuditedAllowKeepsItsRule(t *testing.T) {
	const base = `
policy "lan" {
  mode = "audit"
  allow "nas" {
    cidrs              = ["10.9.0.0/16"]
    ja3                = ["0123456789abcdef0123456789abcdef"]
    verify_destination = "redirect"
  }
}
`
	const watch = `
policy "watch" {
  mode = "audit"
  deny "watch-nas" { cidrs = ["10.9.0.0/16"] }
}
`
	a := netip.MustParseAddr("10.9.0.5")
	r := Request{Addr: a, Port: 443, Hello: HelloTLS, SNI: "nas.example", JA3: "ffffffffffffffffffffffffffffffff", Transparent: true}
	for _, tc := range []struct{ name, src string }{
		{"allow rule alone", base},
		{"with an audit-mode deny rule", base + watch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustParse(t, tc.src).Policy
			d := p.Decide(&r)
			if !d.Allow || !d.WouldDeny {
				t.Fatalf("Decide = %s, want an audited allow", DescribeDecision(d))
			}
			if !d.AddrAllowed(a) {
				t.Errorf("AddrAllowed(%s) = false (%s): the allow rule's private cidr no longer opens it", a, DescribeDecision(d))
			}
			if !d.RuleHasCIDR(a) {
				t.Errorf("RuleHasCIDR(%s) = false (%s): destination verification lost the allow rule's cidrs", a, DescribeDecision(d))
			}
			if got := d.VerifyDestination(); got != VerifyRedirect {
				t.Errorf("VerifyDestination = %q, want the allow rule's %q", got, VerifyRedirect)
			}
		})
	}
}

// TestUserHashesDifferWarns: users whose hashes differ in kind or cost get
// one warning, at the first user whose hash differs from the first user's;
// users hashed alike get none.
func TestUserHashesDifferWarns(t *testing.T) {
	user := func(name, hash string) string {
		return fmt.Sprintf("user %q {\n  password_hash = %q\n}\n", name, hash)
	}
	bcrypt11, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.DefaultCost+1)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, src, want string // want: where the warning is, "" for none
	}{
		{"alike", user("a", testHash) + user("b", testHash) + user("c", testHash), ""},
		{"argon2id alike", user("a", argonHash) + user("b", argonParams(19456, 2, 1)), ""},
		{"kinds", user("a", testHash) + user("b", testHash) + user("c", argonHash) + user("d", argonHash), "t.hcl:7:6"},
		{"bcrypt costs", user("a", testHash) + user("b", string(bcrypt11)) + user("c", testHash), "t.hcl:4:6"},
		{"argon2id lanes", user("a", argonHash) + user("b", argonParams(19456, 2, 4)), "t.hcl:4:6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, diags := Parse(one(tc.src + "policy \"p\" {}\n"))
			out := FormatDiagnostics(diags)
			if diags.HasErrors() {
				t.Fatal(out)
			}
			if tc.want == "" {
				if len(diags) != 0 {
					t.Errorf("users hashed alike: %s", out)
				}
				return
			}
			if len(diags) != 1 || !strings.HasPrefix(out, tc.want+": warning: Password hashes differ in cost") ||
				!strings.Contains(out, "failed checks differ in time") || !strings.Contains(out, "egressd passwd") {
				t.Errorf("got:\n%s\nwant one warning at %s", out, tc.want)
			}
		})
	}
}
