package main

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"github.com/egressd/egressd/policy"
)

// maxPasswordInput bounds what passwd reads: a password line, not a file.
const maxPasswordInput = 4096

// minPasswordLen is the shortest password passwd hashes: a proxy
// credential is typed by machines, not people, and guessing one of fewer
// than 8 bytes online is within reach even at bcrypt's cost.
const minPasswordLen = 8

// runPasswd reads a password from the first line of stdin and prints its
// bcrypt hash: as a user block when a NAME is given, else the bare hash
// (for a users_file line NAME:HASH). The password is never echoed.
func runPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := newFlags("passwd", "passwd [NAME] < password-on-stdin", stderr)
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return exitUsage
	}
	name := fs.Arg(0)
	if name != "" {
		if err := policy.CheckName("user", name); err != nil {
			fmt.Fprintln(stderr, "egressd passwd:", err)
			return exitUsage
		}
	}
	line, err := bufio.NewReader(io.LimitReader(stdin, maxPasswordInput)).ReadString('\n')
	if err != nil && err != io.EOF {
		fmt.Fprintln(stderr, "egressd passwd: reading the password from stdin:", err)
		return exitFail
	}
	password := strings.TrimRight(line, "\r\n")
	if password != "" && (len(password) < minPasswordLen || strings.TrimSpace(password) == "") {
		fmt.Fprintf(stderr, "egressd passwd: the password is shorter than %d bytes or only blanks; use a long random one, for example: openssl rand -base64 24\n", minPasswordLen)
		return exitFail
	}
	hash, err := policy.HashPassword(password)
	if err != nil {
		fmt.Fprintf(stderr, "egressd passwd: %v; give the password on stdin, for example: printf '%%s\\n' \"$PASSWORD\" | egressd passwd ci\n", err)
		return exitFail
	}
	if name != "" { // a checked name: letters, digits, '-', '_', '.', which need no quoting
		fmt.Fprintf(stdout, "user %q {\n  password_hash = %q\n}\n", name, hash)
		return exitOK
	}
	fmt.Fprintln(stdout, hash)
	return exitOK
}
