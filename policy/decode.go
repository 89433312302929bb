package policy

// Decoding: HCL syntax → raw structs. One function per block type, in the
// manner of Packer's hcl2template. Decoding checks only what HCL knows:
// block and attribute names (through schemas), value types and list
// shapes. What the values mean (host names, CIDRs, ports, durations) is
// checked by compile.go, which turns the raw structs into a Policy. Every
// raw value keeps its source range so those checks can point at it.

import (
	"fmt"
	"math/big"
	"strconv"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// str is a string value with the range of the expression that gave it.
type str struct {
	v   string
	rng hcl.Range
}

// boolean is a bool value with its range.
type boolean struct {
	v   bool
	rng hcl.Range
}

// list is a list attribute: its items, and the range of the whole
// expression (set is false when the attribute is absent).
type list struct {
	set   bool
	rng   hcl.Range
	elems int // number of elements written, valid or not
	items []str
}

type rawConfig struct {
	server   *rawServer
	resolver *rawResolver
	log      *rawLog
	policies []*rawPolicy
	users    []*rawUser
	tests    []*rawTest
}

type rawServer struct {
	def                      hcl.Range
	httpListen               *str
	allowPrivateDestinations *boolean
	helloTimeout             *str
	idleTimeout              *str
	dialTimeout              *str
	transparentListen        *str
	transparentMode          *str
	verifyDestination        *str
	upstreamMark             *num
	dnsListen                *str
	quicListen               *str
	dnsRefuse                *str
	adminListen              *str
	mode                     *str
	maxConnections           *num
	maxConnectionsPerClient  *num
	shutdownGrace            *str
	usersFile                *str
}

// num is a whole number value with its range.
type num struct {
	v   int64
	rng hcl.Range
}

type rawResolver struct {
	def     hcl.Range
	servers list
}

type rawLog struct {
	def    hcl.Range
	format *str
	output *str
}

type rawPolicy struct {
	name        string
	nameRng     hcl.Range
	def         hcl.Range
	description *str
	mode        *str
	clients     *rawClients
	rules       []*rawRule
}

type rawRule struct {
	deny    bool
	name    string
	nameRng hcl.Range
	def     hcl.Range

	hosts list
	cidrs list
	sni   list
	ja3   list
	ja4   list
	// protocols: "tcp", "quic"
	protocols list
	ports     struct {
		set   bool
		rng   hcl.Range
		elems int
		items []str
	}
	requireTLS        *boolean
	allowPublicSuffix *boolean
	verifyDestination *str
	description       *str
}

func (r *rawRule) kind() string {
	if r.deny {
		return "deny"
	}
	return "allow"
}

// Schemas are built by functions, not kept in package variables, so that
// the package has no mutable state.

func rootSchema() *hcl.BodySchema {
	return &hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{
		{Type: "server"},
		{Type: "resolver"},
		{Type: "log"},
		{Type: "policy", LabelNames: []string{"name"}},
		{Type: "user", LabelNames: []string{"name"}},
		{Type: "test", LabelNames: []string{"name"}},
	}}
}

func serverSchema() *hcl.BodySchema {
	return &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
		{Name: "http_listen"},
		{Name: "allow_private_destinations"},
		{Name: "hello_timeout"},
		{Name: "idle_timeout"},
		{Name: "dial_timeout"},
		{Name: "transparent_listen"},
		{Name: "transparent_mode"},
		{Name: "verify_destination"},
		{Name: "upstream_mark"},
		{Name: "dns_listen"},
		{Name: "quic_listen"},
		{Name: "admin_listen"},
		{Name: "mode"},
		{Name: "max_connections"},
		{Name: "max_connections_per_client"},
		{Name: "shutdown_grace"},
		{Name: "users_file"},
		{Name: "dns_refuse"},
	}}
}

func resolverSchema() *hcl.BodySchema {
	return &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "servers"}}}
}

func logSchema() *hcl.BodySchema {
	return &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "format"}, {Name: "output"}}}
}

func policySchema() *hcl.BodySchema {
	return &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "description"}, {Name: "mode"}},
		Blocks: []hcl.BlockHeaderSchema{
			{Type: "clients"},
			{Type: "allow", LabelNames: []string{"name"}},
			{Type: "deny", LabelNames: []string{"name"}},
		},
	}
}

func ruleSchema() *hcl.BodySchema {
	return &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
		{Name: "description"},
		{Name: "hosts"},
		{Name: "cidrs"},
		{Name: "ports"},
		{Name: "sni"},
		{Name: "ja3"},
		{Name: "ja4"},
		{Name: "require_tls"},
		{Name: "protocols"},
		{Name: "allow_public_suffix"},
		{Name: "verify_destination"},
	}}
}

// decodeFile decodes the top level of one file into raw.
func decodeFile(f *hcl.File, raw *rawConfig) hcl.Diagnostics {
	content, diags := f.Body.Content(rootSchema())
	for _, b := range content.Blocks {
		switch b.Type {
		case "server":
			if raw.server != nil {
				diags = append(diags, duplicateBlock(b, raw.server.def))
				continue
			}
			s, d := decodeServerBlock(b)
			diags = append(diags, d...)
			raw.server = s
		case "resolver":
			if raw.resolver != nil {
				diags = append(diags, duplicateBlock(b, raw.resolver.def))
				continue
			}
			r, d := decodeResolverBlock(b)
			diags = append(diags, d...)
			raw.resolver = r
		case "log":
			if raw.log != nil {
				diags = append(diags, duplicateBlock(b, raw.log.def))
				continue
			}
			l, d := decodeLogBlock(b)
			diags = append(diags, d...)
			raw.log = l
		case "policy":
			p, d := decodePolicyBlock(b)
			diags = append(diags, d...)
			raw.policies = append(raw.policies, p)
		case "user":
			u, d := decodeUserBlock(b)
			diags = append(diags, d...)
			raw.users = append(raw.users, u)
		case "test":
			t, d := decodeTestBlock(b)
			diags = append(diags, d...)
			raw.tests = append(raw.tests, t)
		}
	}
	return diags
}

func duplicateBlock(b *hcl.Block, first hcl.Range) *hcl.Diagnostic {
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  fmt.Sprintf("Duplicate %s block", b.Type),
		Detail: fmt.Sprintf("Only one %s block is allowed across all configuration files; the first is at %s. Merge the settings into that block and remove this one.",
			b.Type, posString(first)),
		Subject: b.DefRange.Ptr(),
	}
}

// posString renders a range's start as file:line:col.
func posString(r hcl.Range) string {
	return fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)
}

func decodeServerBlock(b *hcl.Block) (*rawServer, hcl.Diagnostics) {
	s := &rawServer{def: b.DefRange}
	content, diags := b.Body.Content(serverSchema())
	for name, attr := range content.Attributes {
		switch name {
		case "http_listen":
			s.httpListen = decodeString(attr, `http_listen = "127.0.0.1:3128"`, &diags)
		case "allow_private_destinations":
			s.allowPrivateDestinations = decodeBool(attr, `allow_private_destinations = false`, &diags)
		case "hello_timeout":
			s.helloTimeout = decodeString(attr, `hello_timeout = "10s"`, &diags)
		case "idle_timeout":
			s.idleTimeout = decodeString(attr, `idle_timeout = "5m"`, &diags)
		case "dial_timeout":
			s.dialTimeout = decodeString(attr, `dial_timeout = "10s"`, &diags)
		case "transparent_listen":
			s.transparentListen = decodeString(attr, `transparent_listen = "0.0.0.0:15001"`, &diags)
		case "transparent_mode":
			s.transparentMode = decodeString(attr, `transparent_mode = "redirect"`, &diags)
		case "verify_destination":
			s.verifyDestination = decodeString(attr, `verify_destination = "refuse"`, &diags)
		case "upstream_mark":
			s.upstreamMark = decodeUint32(attr, `upstream_mark = 1`, &diags)
		case "dns_listen":
			s.dnsListen = decodeString(attr, `dns_listen = "0.0.0.0:53"`, &diags)
		case "quic_listen":
			s.quicListen = decodeString(attr, `quic_listen = "0.0.0.0:15002"`, &diags)
		case "admin_listen":
			s.adminListen = decodeString(attr, `admin_listen = "127.0.0.1:9090"`, &diags)
		case "mode":
			s.mode = decodeString(attr, `mode = "audit"`, &diags)
		case "max_connections":
			s.maxConnections = decodeUint32(attr, `max_connections = 10000`, &diags)
		case "max_connections_per_client":
			s.maxConnectionsPerClient = decodeUint32(attr, `max_connections_per_client = 512`, &diags)
		case "shutdown_grace":
			s.shutdownGrace = decodeString(attr, `shutdown_grace = "30s"`, &diags)
		case "users_file":
			s.usersFile = decodeString(attr, `users_file = "/etc/egressd/users"`, &diags)
		case "dns_refuse":
			s.dnsRefuse = decodeString(attr, `dns_refuse = "refused"`, &diags)
		}
	}
	return s, diags
}

func decodeResolverBlock(b *hcl.Block) (*rawResolver, hcl.Diagnostics) {
	r := &rawResolver{def: b.DefRange}
	content, diags := b.Body.Content(resolverSchema())
	if attr, ok := content.Attributes["servers"]; ok {
		r.servers = decodeStringList(attr, `servers = ["127.0.0.1:5353", "[2001:db8::53]"]`, &diags)
	}
	return r, diags
}

func decodeLogBlock(b *hcl.Block) (*rawLog, hcl.Diagnostics) {
	l := &rawLog{def: b.DefRange}
	content, diags := b.Body.Content(logSchema())
	for name, attr := range content.Attributes {
		switch name {
		case "format":
			l.format = decodeString(attr, `format = "json"`, &diags)
		case "output":
			l.output = decodeString(attr, `output = "stderr"`, &diags)
		}
	}
	return l, diags
}

func decodePolicyBlock(b *hcl.Block) (*rawPolicy, hcl.Diagnostics) {
	p := &rawPolicy{name: b.Labels[0], nameRng: b.LabelRanges[0], def: b.DefRange}
	content, diags := b.Body.Content(policySchema())
	if attr, ok := content.Attributes["description"]; ok {
		p.description = decodeString(attr, `description = "Pull images from cgr.dev"`, &diags)
	}
	if attr, ok := content.Attributes["mode"]; ok {
		p.mode = decodeString(attr, `mode = "audit"`, &diags)
	}
	for _, rb := range content.Blocks {
		if rb.Type == "clients" {
			if p.clients != nil {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate clients block",
					Detail:  fmt.Sprintf("policy %s already has a clients block at %s. Merge the two.", quote(p.name), posString(p.clients.def)),
					Subject: rb.DefRange.Ptr()})
				continue
			}
			c, d := decodeClientsBlock(rb)
			diags = append(diags, d...)
			p.clients = c
			continue
		}
		r, d := decodeRuleBlock(rb)
		diags = append(diags, d...)
		p.rules = append(p.rules, r)
	}
	return p, diags
}

// decodeRuleBlock decodes an allow or a deny block.
func decodeRuleBlock(b *hcl.Block) (*rawRule, hcl.Diagnostics) {
	r := &rawRule{deny: b.Type == "deny", name: b.Labels[0], nameRng: b.LabelRanges[0], def: b.DefRange}
	content, diags := b.Body.Content(ruleSchema())
	for name, attr := range content.Attributes {
		switch name {
		case "description":
			r.description = decodeString(attr, `description = "why this rule exists"`, &diags)
		case "hosts":
			r.hosts = decodeStringList(attr, `hosts = ["cgr.dev", "*.r2.cloudflarestorage.com"]`, &diags)
		case "cidrs":
			r.cidrs = decodeStringList(attr, `cidrs = ["198.41.192.0/24", "2606:4700:a0::/48"]`, &diags)
		case "sni":
			r.sni = decodeStringList(attr, `sni = ["h2.cftunnel.com", "*.example.com"]`, &diags)
		case "ja3":
			r.ja3 = decodeStringList(attr, `ja3 = ["3fed133de60c35724739b913924b6c24"]`, &diags)
		case "ja4":
			r.ja4 = decodeStringList(attr, `ja4 = ["t13d1516h2_8daaf6152771_e5627efa2ab1"]`, &diags)
		case "ports":
			r.ports.set, r.ports.rng = true, attr.Expr.Range()
			r.ports.items, r.ports.elems = decodePorts(attr, &diags)
		case "protocols":
			r.protocols = decodeStringList(attr, `protocols = ["tcp"]`, &diags)
		case "require_tls":
			r.requireTLS = decodeBool(attr, `require_tls = false`, &diags)
		case "allow_public_suffix":
			r.allowPublicSuffix = decodeBool(attr, `allow_public_suffix = true`, &diags)
		case "verify_destination":
			r.verifyDestination = decodeString(attr, `verify_destination = "redirect"`, &diags)
		}
	}
	return r, diags
}

// value evaluates a constant expression. Variables and functions are not
// available; HCL reports them. ok is false when diagnostics were added.
func value(expr hcl.Expression, what string, diags *hcl.Diagnostics) (cty.Value, bool) {
	v, d := expr.Value(nil)
	*diags = append(*diags, d...)
	if d.HasErrors() {
		return cty.NilVal, false
	}
	if v.IsNull() || !v.IsWhollyKnown() {
		*diags = append(*diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Missing value",
			Detail:   fmt.Sprintf("%s has no value (null). Give a value or remove the attribute.", what),
			Subject:  expr.Range().Ptr(),
		})
		return cty.NilVal, false
	}
	return v, true
}

func decodeString(attr *hcl.Attribute, example string, diags *hcl.Diagnostics) *str {
	v, ok := value(attr.Expr, attr.Name, diags)
	if !ok {
		return nil
	}
	if v.Type() != cty.String {
		*diags = append(*diags, typeDiag(attr.Expr, attr.Name, "a string", v.Type(), example))
		return nil
	}
	return &str{v: v.AsString(), rng: attr.Expr.Range()}
}

func decodeBool(attr *hcl.Attribute, example string, diags *hcl.Diagnostics) *boolean {
	v, ok := value(attr.Expr, attr.Name, diags)
	if !ok {
		return nil
	}
	if v.Type() != cty.Bool {
		*diags = append(*diags, typeDiag(attr.Expr, attr.Name, "true or false", v.Type(), example))
		return nil
	}
	return &boolean{v: v.True(), rng: attr.Expr.Range()}
}

// decodeUint32 decodes a whole number from 0 to 4294967295.
func decodeUint32(attr *hcl.Attribute, example string, diags *hcl.Diagnostics) *num {
	v, ok := value(attr.Expr, attr.Name, diags)
	if !ok {
		return nil
	}
	if v.Type() != cty.Number {
		*diags = append(*diags, typeDiag(attr.Expr, attr.Name, "a number", v.Type(), example))
		return nil
	}
	f := v.AsBigFloat()
	i, acc := f.Int64()
	if !f.IsInt() || acc != big.Exact || i < 0 || i > 1<<32-1 {
		*diags = append(*diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Invalid " + attr.Name,
			Detail:   fmt.Sprintf("%s must be a whole number from 0 to 4294967295. For example: %s.", attr.Name, example),
			Subject:  attr.Expr.Range().Ptr(),
		})
		return nil
	}
	return &num{v: i, rng: attr.Expr.Range()}
}

// listElems returns the element expressions of a static list.
func listElems(attr *hcl.Attribute, example string, diags *hcl.Diagnostics) ([]hcl.Expression, bool) {
	elems, d := hcl.ExprList(attr.Expr)
	if d.HasErrors() {
		*diags = append(*diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("%s must be a list", attr.Name),
			Detail:   fmt.Sprintf("Write the values in brackets, for example %s.", example),
			Subject:  attr.Expr.Range().Ptr(),
		})
		return nil, false
	}
	return elems, true
}

func decodeStringList(attr *hcl.Attribute, example string, diags *hcl.Diagnostics) list {
	l := list{set: true, rng: attr.Expr.Range()}
	elems, ok := listElems(attr, example, diags)
	if !ok {
		l.elems = -1 // not a list; already reported
		return l
	}
	l.elems = len(elems)
	for _, e := range elems {
		v, ok := value(e, "An element of "+attr.Name, diags)
		if !ok {
			continue
		}
		if v.Type() != cty.String {
			*diags = append(*diags, typeDiag(e, "Each element of "+attr.Name, "a string", v.Type(), example))
			continue
		}
		l.items = append(l.items, str{v: v.AsString(), rng: e.Range()})
	}
	return l
}

// decodePorts decodes ports elements: numbers, or strings holding a number
// or a "lo-hi" range. Numbers are checked here and turned into their
// decimal text, so that compile parses both forms alike.
func decodePorts(attr *hcl.Attribute, diags *hcl.Diagnostics) ([]str, int) {
	const example = `ports = [443, 8443, "8000-8080"]`
	elems, ok := listElems(attr, example, diags)
	if !ok {
		return nil, -1
	}
	var out []str
	for _, e := range elems {
		v, ok := value(e, "An element of ports", diags)
		if !ok {
			continue
		}
		switch v.Type() {
		case cty.String:
			out = append(out, str{v: v.AsString(), rng: e.Range()})
		case cty.Number:
			// Check the range before formatting: rendering a number like
			// 1e4000000 in decimal takes seconds.
			f := v.AsBigFloat()
			i, acc := f.Int64()
			if !f.IsInt() || acc != big.Exact || i < 1 || i > 65535 {
				*diags = append(*diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  "Invalid port",
					Detail:   "A port must be a whole number from 1 to 65535, or a \"lo-hi\" range string. For example: " + example + ".",
					Subject:  e.Range().Ptr(),
				})
				continue
			}
			out = append(out, str{v: strconv.FormatInt(i, 10), rng: e.Range()})
		default:
			*diags = append(*diags, typeDiag(e, "Each element of ports", "a number or a string", v.Type(), example))
		}
	}
	return out, len(elems)
}

func typeDiag(expr hcl.Expression, what, want string, got cty.Type, example string) *hcl.Diagnostic {
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  "Wrong type",
		Detail:   fmt.Sprintf("%s must be %s, not %s. For example: %s.", what, want, got.FriendlyName(), example),
		Subject:  expr.Range().Ptr(),
	}
}
