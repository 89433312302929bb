package policy

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// File is one configuration file: its name (used in diagnostics) and its
// contents.
type File struct {
	Name string
	Src  []byte
	// Users marks the users file (server.users_file): NAME:PASSWORD_HASH
	// lines rather than HCL. Load and LoadFS add it.
	Users bool
}

// Config is a parsed, validated configuration.
type Config struct {
	Server   Server
	Resolver Resolver
	Log      Log
	Policy   *Policy // compiled rules; nil when the configuration has errors
	// Tests are the test blocks of every file, in configuration order
	// (RunTests decides them).
	Tests []Test
}

// Server is the server block.
type Server struct {
	HTTPListen               string // host:port
	AllowPrivateDestinations bool
	HelloTimeout             time.Duration
	IdleTimeout              time.Duration
	DialTimeout              time.Duration
	// TransparentListen is the transparent gateway's listen address
	// (host:port); "" when the gateway is off.
	TransparentListen string
	// TransparentMode is how connections reach the transparent listener:
	// "redirect" (iptables/nft REDIRECT; original destination from
	// SO_ORIGINAL_DST) or "tproxy" (TPROXY; the listener is opened with
	// IP_TRANSPARENT and the local address is the original destination).
	TransparentMode string
	// VerifyDestination is the default for allow rules without their own
	// verify_destination: "refuse" or "redirect".
	VerifyDestination string
	// UpstreamMark is the SO_MARK put on every upstream socket (0: none).
	UpstreamMark uint32
	// DNSListen is the gateway DNS server's listen address (host:port,
	// UDP and TCP); "" when it is off.
	DNSListen string
	// DNSRefuse is the answer to a query for a name no policy allows:
	// "refused" (REFUSED) or "nxdomain" (NXDOMAIN).
	DNSRefuse string
	// QUICListen is the QUIC gateway's UDP listen address (host:port) for
	// datagrams steered by a TPROXY rule; "" when it is off.
	QUICListen string
	// AdminListen is the address of the metrics and health endpoints
	// (/metrics, /healthz, /readyz); "" when they are off.
	AdminListen string
	// Mode is ModeEnforce (the default) or ModeAudit: in audit mode every
	// policy behaves as if it said mode = "audit".
	Mode string
	// MaxConnections bounds the connections (tunnels, plain-HTTP requests,
	// QUIC flows) open at once; MaxConnectionsPerClient bounds them per
	// client address. New connections beyond either are refused at once.
	MaxConnections          int
	MaxConnectionsPerClient int
	// ShutdownGrace is how long a stop (SIGTERM) lets open tunnels finish
	// before closing them.
	ShutdownGrace time.Duration
	// UsersFile names a file of "name:password_hash" lines, read by Load
	// and LoadFS relative to the configuration; "" when there is none.
	UsersFile string
}

// Resolver is the resolver block.
type Resolver struct {
	// Servers are DNS servers as "ip:port" ("[ip]:port" for IPv6). Empty
	// means the system's resolv.conf.
	Servers []string
}

// Log is the log block.
type Log struct {
	Format string // "json" or "console"
	Output string // "stdout", "stderr", or a file path
}

// Parse parses and validates configuration files, merged in the order
// given (Load and LoadFS sort by name). It is pure: it reads nothing but
// its arguments.
//
// The returned diagnostics hold every problem found, errors and warnings,
// sorted by file and position, each with its file:line:col
// (FormatDiagnostics). When diags.HasErrors(), Config.Policy is nil; the
// Config itself is never nil. The Config keeps nothing of the parsed
// syntax: a running server holds only what it decides with (the syntax
// trees of 10,000 rules are 17 MB of heap, the compiled rules 4 MB).
func Parse(files []File) (*Config, hcl.Diagnostics) { return parse(files, nil) }

// parse is Parse; with read set (Load, LoadFS) it also reads the users
// file the server block names, unless files already hold one.
func parse(files []File, read usersReader) (*Config, hcl.Diagnostics) {
	cfg := &Config{}
	var diags hcl.Diagnostics
	if len(files) == 0 {
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "No configuration files",
			Detail:   "Nothing to parse. Give a .hcl file, or a directory that holds at least one *.hcl file.",
		})
	}
	raw := &rawConfig{}
	order := make(map[string]int, len(files))
	for i, f := range files {
		if _, dup := order[f.Name]; dup {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Duplicate file name",
				Detail:   fmt.Sprintf("Two configuration files are both named %s; give each file a distinct name.", quote(f.Name)),
				Subject:  &hcl.Range{Filename: f.Name, Start: hcl.InitialPos, End: hcl.InitialPos},
			})
			continue
		}
		order[f.Name] = i
		if f.Users {
			continue // parsed by compileAllUsers
		}
		if len(f.Src) > maxConfigFileBytes {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Configuration file too large",
				Detail:   fmt.Sprintf("%s is %d bytes; the limit is %d. Split the rules over several files in one directory.", quote(f.Name), len(f.Src), maxConfigFileBytes),
			})
			continue
		}
		if d := checkNesting(f.Src, f.Name); d.HasErrors() {
			diags = append(diags, d...)
			continue
		}
		hf, d := hclsyntax.ParseConfig(f.Src, f.Name, hcl.InitialPos)
		diags = append(diags, d...)
		if hf == nil {
			continue
		}
		if d.HasErrors() {
			// A file with syntax errors has an incomplete body; decoding it
			// would report problems that are only echoes of the syntax
			// error. Other files are still decoded.
			continue
		}
		diags = append(diags, decodeFile(hf, raw)...)
	}

	server, d := compileServer(raw.server)
	diags = append(diags, d...)
	if read != nil && server.UsersFile != "" && !slices.ContainsFunc(files, func(f File) bool { return f.Users }) {
		name, src, err := read(server.UsersFile)
		if err != nil {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Cannot read users_file",
				Detail:   fmt.Sprintf("Reading %s (server.users_file): %v. Create it with NAME:PASSWORD_HASH lines (egressd passwd prints a hash), or remove users_file.", quote(name), err),
				Subject:  raw.server.usersFile.rng.Ptr(),
			})
		} else {
			files = append(files[:len(files):len(files)], File{Name: name, Src: src, Users: true})
			if _, ok := order[name]; !ok {
				order[name] = len(files) - 1
			}
		}
	}
	resolver, d := compileResolver(raw.resolver)
	diags = append(diags, d...)
	logc, d := compileLog(raw.log)
	diags = append(diags, d...)
	pol, d := compilePolicies(raw.policies, server.AllowPrivateDestinations)
	diags = append(diags, d...)
	pol.verify = server.VerifyDestination
	pol.audit = server.Mode == ModeAudit
	d, usersFileGiven := compileAllUsers(raw, files, server.UsersFile, pol)
	diags = append(diags, d...)
	// Users named in clients blocks and tests are checked once the users
	// are known: always, unless users_file is set and was not read (a
	// direct Parse without it).
	testUsers := pol.users
	if server.UsersFile == "" || usersFileGiven {
		checkClientUsers(raw.policies, pol.users, &diags)
	} else {
		testUsers = nil
	}
	tests, d := compileTests(raw.tests, raw.policies, testUsers)
	diags = append(diags, d...)

	cfg.Server, cfg.Resolver, cfg.Log, cfg.Tests = server, resolver, logc, tests
	if !diags.HasErrors() {
		cfg.Policy = pol
	}
	sortDiagnostics(diags, order)
	return cfg, diags
}

// sortDiagnostics orders diagnostics by file (in the order given to Parse)
// and position; diagnostics without a subject come first. hcl reports
// unknown attributes in map order; sorting makes output stable.
func sortDiagnostics(diags hcl.Diagnostics, order map[string]int) {
	sort.SliceStable(diags, func(i, j int) bool {
		a, b := diags[i].Subject, diags[j].Subject
		switch {
		case a == nil || b == nil:
			return a == nil && b != nil
		case a.Filename != b.Filename:
			return order[a.Filename] < order[b.Filename]
		}
		return a.Start.Byte < b.Start.Byte
	})
}

// Load reads the configuration at path: one file, or every *.hcl file
// directly in a directory, in name order (subdirectories and names starting
// with '.' are skipped; symbolic links to files are followed, as in a
// Kubernetes ConfigMap volume, and a link to nothing is an error). It only
// reads files; see Parse.
func Load(p string) (*Config, hcl.Diagnostics) {
	fi, err := os.Stat(p)
	if err != nil {
		return emptyConfig(readDiag(p, err))
	}
	if !fi.IsDir() {
		src, err := readLimited(func() (fs.File, error) { return os.Open(p) })
		if err != nil {
			return emptyConfig(readDiag(p, err))
		}
		return parse([]File{{Name: p, Src: src}}, osUsersReader(filepath.Dir(p)))
	}
	entries, err := os.ReadDir(p)
	if err != nil {
		return emptyConfig(readDiag(p, err))
	}
	var files []File
	var diags hcl.Diagnostics
	for _, e := range entries {
		if !IsConfigName(e.Name()) {
			continue
		}
		name := filepath.Join(p, e.Name())
		fi, err := os.Stat(name)
		switch {
		case err != nil:
			// A link to nothing (or an entry that cannot be looked at) is
			// an error, not a file to skip: it may hold the deny rules.
			diags = append(diags, readDiag(name, err))
			continue
		case fi.IsDir():
			continue
		case !fi.Mode().IsRegular():
			diags = append(diags, readDiag(name, fmt.Errorf("%s is not a regular file", fi.Mode().Type())))
			continue
		}
		src, err := readLimited(func() (fs.File, error) { return os.Open(name) })
		if err != nil {
			diags = append(diags, readDiag(name, err))
			continue
		}
		files = append(files, File{Name: name, Src: src})
	}
	return finishLoad(p, files, diags, osUsersReader(p))
}

// LoadFS is Load for an fs.FS (for example an embed.FS): dir names a
// directory, whose *.hcl files are read in name order, or a single file.
func LoadFS(fsys fs.FS, dir string) (*Config, hcl.Diagnostics) {
	if fsys == nil {
		return emptyConfig(readDiag(dir, fs.ErrInvalid))
	}
	fi, err := fs.Stat(fsys, dir)
	if err != nil {
		return emptyConfig(readDiag(dir, err))
	}
	if !fi.IsDir() {
		src, err := readLimited(func() (fs.File, error) { return fsys.Open(dir) })
		if err != nil {
			return emptyConfig(readDiag(dir, err))
		}
		return parse([]File{{Name: dir, Src: src}}, fsUsersReader(fsys, path.Dir(dir)))
	}
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return emptyConfig(readDiag(dir, err))
	}
	var files []File
	var diags hcl.Diagnostics
	for _, e := range entries {
		if !IsConfigName(e.Name()) {
			continue
		}
		name := path.Join(dir, e.Name())
		if fi, err := fs.Stat(fsys, name); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		src, err := readLimited(func() (fs.File, error) { return fsys.Open(name) })
		if err != nil {
			diags = append(diags, readDiag(name, err))
			continue
		}
		files = append(files, File{Name: name, Src: src})
	}
	return finishLoad(dir, files, diags, fsUsersReader(fsys, dir))
}

// IsConfigName reports whether a directory entry named name is one of a
// configuration directory's files: *.hcl, not hidden.
func IsConfigName(name string) bool {
	return strings.HasSuffix(name, ".hcl") && !strings.HasPrefix(name, ".")
}

func finishLoad(dir string, files []File, diags hcl.Diagnostics, readUsers usersReader) (*Config, hcl.Diagnostics) {
	if diags.HasErrors() {
		return &Config{}, diags
	}
	if len(files) == 0 {
		return emptyConfig(&hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "No configuration files",
			Detail:   fmt.Sprintf("Directory %s holds no *.hcl files. Put the configuration in a file whose name ends in .hcl, or give the path of the file itself.", quote(dir)),
		})
	}
	cfg, d := parse(files, readUsers)
	return cfg, append(diags, d...)
}

// usersReader reads server.users_file, resolved against the configuration's
// directory; it returns the name to report and the contents.
type usersReader func(name string) (string, []byte, error)

// UsersFilePath is where Load reads server.users_file from, for a
// configuration in directory base (a file's directory, or the directory).
func UsersFilePath(base, usersFile string) string {
	if filepath.IsAbs(usersFile) {
		return filepath.Clean(usersFile)
	}
	return filepath.Join(base, usersFile)
}

func osUsersReader(base string) usersReader {
	return func(name string) (string, []byte, error) {
		name = UsersFilePath(base, name)
		src, err := readLimited(func() (fs.File, error) { return os.Open(name) })
		return name, src, err
	}
}

func fsUsersReader(fsys fs.FS, base string) usersReader {
	return func(name string) (string, []byte, error) {
		name = path.Join(base, name)
		src, err := readLimited(func() (fs.File, error) { return fsys.Open(name) })
		return name, src, err
	}
}

// nil0 returns an empty Config (never nil) with one diagnostic.
func emptyConfig(d *hcl.Diagnostic) (*Config, hcl.Diagnostics) {
	return &Config{}, hcl.Diagnostics{d}
}

func readDiag(p string, err error) *hcl.Diagnostic {
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  "Cannot read configuration",
		Detail:   fmt.Sprintf("Reading %s: %v. Give the path of a readable .hcl file, or of a directory that holds *.hcl files.", quote(p), err),
	}
}

// readLimited reads a whole file, refusing one larger than
// maxConfigFileBytes.
func readLimited(open func() (fs.File, error)) ([]byte, error) {
	f, err := open()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > maxConfigFileBytes {
		return nil, fmt.Errorf("file is %d bytes, larger than %d; split the rules over several files in one directory", fi.Size(), maxConfigFileBytes)
	}
	src, err := io.ReadAll(io.LimitReader(f, maxConfigFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(src) > maxConfigFileBytes {
		return nil, fmt.Errorf("file is larger than %d bytes; split the rules over several files in one directory", maxConfigFileBytes)
	}
	return src, nil
}

// FormatDiagnostics renders diagnostics one per line as
//
//	file:line:col: error: summary: detail
//
// ("warning:" for warnings; the location is left out when a diagnostic has
// none). Newlines inside a detail become spaces.
func FormatDiagnostics(diags hcl.Diagnostics) string {
	// In file and line order, as a compiler prints them: the checks run
	// in passes (a users file's lines are split first, their hashes
	// checked later), which would otherwise print line 3 before line 1.
	diags = slices.Clone(diags)
	slices.SortStableFunc(diags, func(a, b *hcl.Diagnostic) int {
		switch {
		case a == nil || a.Subject == nil || b == nil || b.Subject == nil:
			return boolCmp(a == nil || a.Subject == nil, b == nil || b.Subject == nil) // placeless last
		case a.Subject.Filename != b.Subject.Filename:
			return strings.Compare(a.Subject.Filename, b.Subject.Filename)
		case a.Subject.Start.Line != b.Subject.Start.Line:
			return a.Subject.Start.Line - b.Subject.Start.Line
		}
		return a.Subject.Start.Column - b.Subject.Start.Column
	})
	var b strings.Builder
	for _, d := range diags {
		if d == nil {
			continue
		}
		if d.Subject != nil {
			fmt.Fprintf(&b, "%s:%d:%d: ", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column)
		}
		if d.Severity == hcl.DiagWarning {
			b.WriteString("warning: ")
		} else {
			b.WriteString("error: ")
		}
		b.WriteString(oneLine(d.Summary))
		if d.Detail != "" {
			b.WriteString(": ")
			b.WriteString(oneLine(d.Detail))
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// boolCmp orders false before true.
func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

func oneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.Join(strings.Fields(s), " ")
}
