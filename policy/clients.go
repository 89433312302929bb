package policy

import (
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// Per-workload policies: a policy's clients block says which clients it
// applies to (source addresses, proxy users), user blocks and the
// users_file declare the proxy users with password hashes, and mode =
// "audit" turns a policy's denials into logged would-be denials.

// Limits on users and their hashes.
const (
	// maxUsers bounds the declared users: identities are written into every
	// decision line and each costs a hash verification; ten thousand is far
	// beyond one egress proxy's workloads.
	maxUsers = 10000
	// maxArgon2Memory (KiB) and maxArgon2Time bound what a configured
	// argon2id hash may make every authentication cost: 256 MiB and 10
	// passes are well above the recommended 64 MiB and 3 (RFC 9106 §4).
	maxArgon2Memory = 256 << 10
	maxArgon2Time   = 10
	// minArgon2Memory (KiB) and minArgon2Work (KiB × passes) are the floor
	// below which a leaked users file is cheap to crack, as bcrypt's cost
	// 10 is for bcrypt: the OWASP Password Storage Cheat Sheet's weakest
	// argon2id settings, m=7 MiB with t=5, up to m=19 MiB with t=2, all
	// cost 35-38 MiB-passes.
	minArgon2Memory = 7 << 10
	minArgon2Work   = 7 << 10 * 5
	// maxUsersFileBytes bounds the users file: 10,000 lines of ~100 bytes.
	maxUsersFileBytes = 4 << 20
)

type rawClients struct {
	def   hcl.Range
	cidrs list
	users list
}

type rawUser struct {
	name    string
	nameRng hcl.Range
	def     hcl.Range
	hash    *str
}

func clientsSchema() *hcl.BodySchema {
	return &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "cidrs"}, {Name: "users"}}}
}

func userSchema() *hcl.BodySchema {
	return &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "password_hash", Required: true}}}
}

func decodeClientsBlock(b *hcl.Block) (*rawClients, hcl.Diagnostics) {
	c := &rawClients{def: b.DefRange}
	content, diags := b.Body.Content(clientsSchema())
	if attr, ok := content.Attributes["cidrs"]; ok {
		c.cidrs = decodeStringList(attr, `cidrs = ["10.20.0.0/16"]`, &diags)
	}
	if attr, ok := content.Attributes["users"]; ok {
		c.users = decodeStringList(attr, `users = ["ci"]`, &diags)
	}
	return c, diags
}

func decodeUserBlock(b *hcl.Block) (*rawUser, hcl.Diagnostics) {
	u := &rawUser{name: b.Labels[0], nameRng: b.LabelRanges[0], def: b.DefRange}
	content, diags := b.Body.Content(userSchema())
	if attr, ok := content.Attributes["password_hash"]; ok {
		u.hash = decodeString(attr, `password_hash = "$2a$10$..." (egressd passwd prints one)`, &diags)
	}
	return u, diags
}

// clientSet is a compiled clients block.
type clientSet struct {
	cidrs []netip.Prefix
	users []string
}

// polInfo is what Decide needs to know about one policy block.
type polInfo struct {
	ident   string // "cidr:NAME", the identity of an address match
	audit   bool
	clients *clientSet // nil: the policy applies to every client
}

// appliesTo reports whether the policy covers the client: it has no
// clients block, or lists the user, or a cidr holding the address.
func (pi *polInfo) appliesTo(client netip.Addr, user string) bool {
	c := pi.clients
	return c == nil || (user != "" && slices.Contains(c.users, user)) || prefixesContain(c.cidrs, client)
}

// compileClients validates a clients block; users are checked against the
// declared ones later (they may come from the users file).
func compileClients(policy string, rc *rawClients, diags *hcl.Diagnostics) *clientSet {
	c := &clientSet{}
	if rc.cidrs.elems == 0 && rc.users.elems == 0 {
		*diags = append(*diags, errDiag(rc.def, "Empty clients block",
			fmt.Sprintf("The clients block of policy %s lists no clients, so the policy would apply to nobody. Add cidrs = [\"10.20.0.0/16\"] and/or users = [\"ci\"], or remove the block to apply the policy to every client.", quote(policy))))
	}
	for _, l := range []struct {
		name string
		l    list
	}{{"cidrs", rc.cidrs}, {"users", rc.users}} {
		if l.l.set && l.l.elems == 0 {
			*diags = append(*diags, errDiag(l.l.rng, fmt.Sprintf("Empty %s list", l.name),
				fmt.Sprintf("clients of policy %s: %s = [] lists nothing. Remove the attribute, or list at least one value.", quote(policy), l.name)))
		}
	}
	for _, it := range rc.cidrs.items {
		p, d := parseCIDR(it)
		if d != nil {
			*diags = append(*diags, d)
			continue
		}
		c.cidrs = append(c.cidrs, p)
	}
	for _, it := range rc.users.items {
		c.users = append(c.users, it.v)
	}
	return c
}

// --- users and password hashes -------------------------------------------

// pwHash is a parsed password hash.
type pwHash struct {
	raw string // bcrypt: the whole hash
	// argon2id parameters and values.
	argon   bool
	time    uint32
	memory  uint32
	threads uint8
	salt    []byte
	key     []byte
}

// parsePasswordHash accepts a bcrypt hash ($2a$, $2b$, $2y$) or an
// argon2id hash in the PHC string format
// ($argon2id$v=19$m=65536,t=3,p=4$SALT$HASH, unpadded base64).
func parsePasswordHash(s string) (pwHash, error) {
	switch {
	case strings.HasPrefix(s, "$2a$"), strings.HasPrefix(s, "$2b$"), strings.HasPrefix(s, "$2y$"):
		cost, err := bcrypt.Cost([]byte(s))
		if err != nil {
			return pwHash{}, fmt.Errorf("not a valid bcrypt hash: %v", err)
		}
		if cost < bcrypt.DefaultCost {
			return pwHash{}, fmt.Errorf("bcrypt cost %d is below %d: re-hash the password with egressd passwd", cost, bcrypt.DefaultCost)
		}
		return pwHash{raw: s}, nil
	case strings.HasPrefix(s, "$argon2id$"):
		parts := strings.Split(s, "$")
		// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, hash
		if len(parts) != 6 || parts[2] != "v=19" {
			return pwHash{}, fmt.Errorf("not an argon2id hash in PHC format ($argon2id$v=19$m=65536,t=3,p=4$SALT$HASH)")
		}
		h := pwHash{argon: true}
		for _, kv := range strings.Split(parts[3], ",") {
			k, v, _ := strings.Cut(kv, "=")
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return pwHash{}, fmt.Errorf("argon2id parameter %s is not a number", quote(kv))
			}
			switch k {
			case "m":
				h.memory = uint32(n)
			case "t":
				h.time = uint32(n)
			case "p":
				if n > 255 {
					return pwHash{}, fmt.Errorf("argon2id parallelism %d is above 255", n)
				}
				h.threads = uint8(n)
			default:
				return pwHash{}, fmt.Errorf("unknown argon2id parameter %s", quote(k))
			}
		}
		if h.memory == 0 || h.time == 0 || h.threads == 0 {
			return pwHash{}, fmt.Errorf("argon2id needs m, t and p, all above zero")
		}
		if h.memory > maxArgon2Memory || h.time > maxArgon2Time {
			return pwHash{}, fmt.Errorf("argon2id parameters m=%d t=%d exceed the limits m=%d t=%d: every authentication would pay them", h.memory, h.time, maxArgon2Memory, maxArgon2Time)
		}
		if h.memory < minArgon2Memory || uint64(h.memory)*uint64(h.time) < minArgon2Work {
			return pwHash{}, fmt.Errorf("argon2id parameters m=%d t=%d are too weak: m must be at least %d and m*t at least %d (e.g. m=19456,t=2 or m=65536,t=3); re-hash the password, or use egressd passwd", h.memory, h.time, minArgon2Memory, minArgon2Work)
		}
		var err error
		if h.salt, err = base64.RawStdEncoding.DecodeString(parts[4]); err != nil || len(h.salt) < 8 {
			return pwHash{}, fmt.Errorf("argon2id salt is not unpadded base64 of at least 8 bytes")
		}
		if h.key, err = base64.RawStdEncoding.DecodeString(parts[5]); err != nil || len(h.key) < 16 {
			return pwHash{}, fmt.Errorf("argon2id hash is not unpadded base64 of at least 16 bytes")
		}
		return h, nil
	}
	return pwHash{}, fmt.Errorf("not a bcrypt ($2a$/$2b$/$2y$) or argon2id ($argon2id$) hash; clear-text passwords are not accepted (egressd passwd prints a hash)")
}

func (h *pwHash) verify(password string) bool {
	if !h.argon {
		return bcrypt.CompareHashAndPassword([]byte(h.raw), []byte(password)) == nil
	}
	k := argon2.IDKey([]byte(password), h.salt, h.time, h.memory, h.threads, uint32(len(h.key)))
	return subtle.ConstantTimeCompare(k, h.key) == 1
}

// HashPassword returns a bcrypt hash of password for a user block or the
// users file (egressd passwd).
func HashPassword(password string) (string, error) {
	if len(password) == 0 {
		return "", fmt.Errorf("empty password")
	}
	if len(password) > 72 {
		return "", fmt.Errorf("password longer than 72 bytes (bcrypt ignores the rest); use a shorter one")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	return string(h), err
}

// Authenticate reports whether password is user's. An unknown user costs
// at least the hash work of any known one (CheckDecoy), so the answer's
// timing does not tell whether the user exists. A wrong password of a
// user whose hash is cheaper than the decoys still returns sooner: a
// caller that answers clients evens that out (HasUser, CheckDecoy).
func (p *Policy) Authenticate(user, password string) bool {
	if p == nil || len(p.users) == 0 {
		return false
	}
	h, ok := p.users[user]
	if !ok {
		p.CheckDecoy(password)
		return false
	}
	return h.verify(password)
}

// HasUser reports whether user is declared, so that a caller can tell a
// failed check of an unknown user (which costs CheckDecoy's work) from
// one of a known user (which may cost less) and make both take as long.
// It is not for telling clients.
func (p *Policy) HasUser(user string) bool {
	if p == nil {
		return false
	}
	_, ok := p.users[user]
	return ok
}

// CheckDecoy does the hash work Authenticate does for an unknown user,
// and nothing else: it checks password against a decoy hash of each kind
// declared (bcrypt, argon2id), each at least as costly as every declared
// user's hash of that kind, so that it costs at least as much as a check
// of any known user. A caller times it to learn what a failed check
// should take; with no users it does nothing.
func (p *Policy) CheckDecoy(password string) {
	if p == nil {
		return
	}
	for i := range p.decoys {
		p.decoys[i].verify(password)
	}
}

// NeedsAuth reports whether some policy lists users in its clients block:
// the HTTP proxy then asks clients without credentials to authenticate.
func (p *Policy) NeedsAuth() bool { return p != nil && p.needsAuth }

// decoyHash is a bcrypt hash (cost 10) of a random string nobody knows,
// the model of the bcrypt decoy.
const decoyHash = "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"

// bcryptCost is h's bcrypt cost (0 for argon2id).
func (h pwHash) bcryptCost() int {
	if h.argon {
		return 0
	}
	cost, _ := bcrypt.Cost([]byte(h.raw))
	return cost
}

// params describes what a check of h costs, for messages: its kind and
// parameters (never its salt or hash).
func (h pwHash) params() string {
	if h.argon {
		return fmt.Sprintf("argon2id m=%d,t=%d,p=%d", h.memory, h.time, h.threads)
	}
	return fmt.Sprintf("bcrypt cost %d", h.bcryptCost())
}

// dearer returns a hash of the kind of a and b (which must be alike) at
// least as costly to check as either: bcrypt's higher cost; argon2id's
// higher memory and passes, fewer lanes (a check runs its lanes in
// parallel) and longer key. Only its parameters matter (makeDecoy).
func dearer(a, b pwHash) pwHash {
	if !a.argon {
		if b.bcryptCost() > a.bcryptCost() {
			return b
		}
		return a
	}
	a.memory, a.time = max(a.memory, b.memory), max(a.time, b.time)
	a.threads = min(a.threads, b.threads)
	if len(b.key) > len(a.key) {
		a.key = b.key
	}
	return a
}

// makeDecoy returns a hash with the same parameters as h that no password
// matches.
func makeDecoy(h pwHash) pwHash {
	if !h.argon {
		d, _ := parsePasswordHash(decoyHash)
		if cost := h.bcryptCost(); cost != bcrypt.DefaultCost {
			// Same cost as the real hashes: a fixed salt is fine for a decoy.
			d.raw = h.raw[:4] + fmt.Sprintf("%02d", cost) + decoyHash[6:]
		}
		return d
	}
	d := h
	d.key = bytes.Repeat([]byte{0x5a}, len(h.key))
	return d
}

// userDef is a declared user, from a user block or the users file.
type userDef struct {
	name string
	hash string
	rng  hcl.Range
}

// compileUsers validates the declared users and returns them by name.
func compileUsers(defs []userDef, diags *hcl.Diagnostics) map[string]pwHash {
	out := make(map[string]pwHash, len(defs))
	first := make(map[string]hcl.Range, len(defs))
	for _, u := range defs {
		if d := checkIdent("user", u.name, u.rng); d != nil {
			*diags = append(*diags, d)
			continue
		}
		if r, dup := first[u.name]; dup {
			*diags = append(*diags, errDiag(u.rng, "Duplicate user", fmt.Sprintf("user %s is already declared at %s. Remove one of them.", quote(u.name), posString(r))))
			continue
		}
		first[u.name] = u.rng
		h, err := parsePasswordHash(u.hash)
		if err != nil {
			*diags = append(*diags, errDiag(u.rng, "Invalid password_hash", fmt.Sprintf("user %s: %v.", quote(u.name), err)))
			continue
		}
		if len(out) == maxUsers {
			// Reported at the first user past the limit, once.
			*diags = append(*diags, errDiag(u.rng, "Too many users",
				fmt.Sprintf("user %s is past the limit of %d users; remove users, or give workloads that share a policy one user.", quote(u.name), maxUsers)))
			break
		}
		out[u.name] = h
	}
	return out
}

// parseUsersFile parses "name:hash" lines ('#' starts a comment line).
func parseUsersFile(f File, diags *hcl.Diagnostics) []userDef {
	if len(f.Src) > maxUsersFileBytes {
		*diags = append(*diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Users file too large",
			Detail: fmt.Sprintf("%s is %d bytes; the limit is %d.", quote(f.Name), len(f.Src), maxUsersFileBytes)})
		return nil
	}
	var out []userDef
	for i, line := range strings.Split(string(f.Src), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		rng := hcl.Range{Filename: f.Name, Start: hcl.Pos{Line: i + 1, Column: 1}, End: hcl.Pos{Line: i + 1, Column: len(line) + 1}}
		name, hash, ok := strings.Cut(line, ":")
		if !ok {
			// Never echo the line: it may be a clear-text password.
			*diags = append(*diags, errDiag(rng, "Invalid users file line", "Each line is NAME:PASSWORD_HASH (egressd passwd prints the hash); this line has no \":\"."))
			continue
		}
		out = append(out, userDef{name: name, hash: hash, rng: rng})
	}
	return out
}

// checkClientUsers reports clients.users entries that name no declared user.
func checkClientUsers(raws []*rawPolicy, users map[string]pwHash, diags *hcl.Diagnostics) {
	for _, rp := range raws {
		if rp.clients == nil {
			continue
		}
		for _, it := range rp.clients.users.items {
			if _, ok := users[it.v]; !ok {
				*diags = append(*diags, errDiag(it.rng, "Unknown user",
					fmt.Sprintf("policy %s lists user %s in its clients, but no user block or users_file line declares it. Add user %s { password_hash = \"...\" } (egressd passwd prints a hash).", quote(rp.name), quote(it.v), quote(it.v))))
			}
		}
	}
}

// compileAllUsers compiles the user blocks and the users file (a File with
// Users set, if Parse was given one) into p. given reports whether a users
// file was among files.
func compileAllUsers(raw *rawConfig, files []File, usersFile string, p *Policy) (hcl.Diagnostics, bool) {
	var diags hcl.Diagnostics
	var defs []userDef
	for _, u := range raw.users {
		if u.hash == nil {
			continue // Required: HCL reported it
		}
		defs = append(defs, userDef{name: u.name, hash: u.hash.v, rng: u.nameRng})
	}
	given := ""
	for _, f := range files {
		if !f.Users {
			continue
		}
		if given == "" {
			given = f.Name
		}
		defs = append(defs, parseUsersFile(f, &diags)...)
	}
	if given != "" && usersFile == "" {
		diags = append(diags, errDiag(hcl.Range{Filename: given, Start: hcl.InitialPos, End: hcl.InitialPos}, "Users file without users_file",
			fmt.Sprintf("%s was given as a users file, but no server block sets users_file; set users_file, or drop the file.", quote(given))))
	}
	p.users = compileUsers(defs, &diags)
	// The decoys: for each kind of hash declared (bcrypt, argon2id), one
	// at least as costly as every declared hash of that kind, so that an
	// unknown user costs as much hash work as the dearest known one. With
	// only the first user's kind, a wrong password of a user of the other
	// kind could cost more than an unknown user, and tell that it exists.
	var dearest [2]pwHash // of each kind: bcrypt, argon2id
	var order []int       // the kinds declared, in order
	var first userDef
	warned := false
	for _, u := range defs {
		h, ok := p.users[u.name]
		if !ok {
			continue
		}
		k := 0
		if h.argon {
			k = 1
		}
		if !slices.Contains(order, k) {
			order, dearest[k] = append(order, k), h
		} else {
			dearest[k] = dearer(dearest[k], h)
		}
		// One warning, at the first user whose hash costs differently
		// from the first user's.
		if first.name == "" {
			first = u
		} else if f := p.users[first.name]; !warned && h.params() != f.params() {
			warned = true
			diags = append(diags, warnDiag(u.rng, "Password hashes differ in cost",
				fmt.Sprintf("user %s has a hash of %s and user %s one of %s, so failed checks differ in time: egressd makes each failed check last as long as an unknown user's, which costs the dearest hash of each kind, by waiting out the difference. Re-hash the passwords alike with egressd passwd (bcrypt cost %d).",
					quote(u.name), h.params(), quote(first.name), f.params(), bcrypt.DefaultCost)))
		}
	}
	for _, k := range order {
		p.decoys = append(p.decoys, makeDecoy(dearest[k]))
	}
	return diags, given != ""
}

// policyApplies reports whether ru's policy covers the client.
func (p *Policy) policyApplies(ru *rule, client netip.Addr, user string) bool {
	if !p.scoped {
		return true
	}
	return p.pols[ru.pol].appliesTo(client, user)
}

// anyApplies reports whether some policy covers the client.
func (p *Policy) anyApplies(client netip.Addr, user string) bool {
	for i := range p.pols {
		if p.pols[i].appliesTo(client, user) {
			return true
		}
	}
	return false
}

// identity is Decision.Identity: the user when the client authenticated,
// else the first policy whose clients cidrs contain its address.
func (p *Policy) identity(client netip.Addr, user string) string {
	if user != "" {
		return user
	}
	for i := range p.pols {
		if c := p.pols[i].clients; c != nil && prefixesContain(c.cidrs, client) {
			return p.pols[i].ident
		}
	}
	return ""
}

// audited reports whether a denial is turned into an audit-mode allow: the
// server is in audit mode, or the deciding rule's policy is, or (no rule
// decided) every policy that covers the client is.
func (p *Policy) audited(d Decision, client netip.Addr, user string) bool {
	if p.audit {
		return true
	}
	if d.rule != nil {
		return p.pols[d.rule.pol].audit
	}
	if d.Reason != ReasonNoRule {
		return false
	}
	covered := false
	for i := range p.pols {
		if p.pols[i].appliesTo(client, user) {
			if !p.pols[i].audit {
				return false
			}
			covered = true
		}
	}
	return covered
}

// Audit reports whether the server block sets mode = "audit".
func (p *Policy) Audit() bool { return p != nil && p.audit }
