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
	line, err := bufio.NewReader(io.LimitReader(stdin, maxPasswordInput)).ReadString('\n')
	if err != nil && err != io.EOF {
		fmt.Fprintln(stderr, "egressd passwd: reading the password from stdin:", err)
		return exitFail
	}
	password := strings.TrimRight(line, "\r\n")
	hash, err := policy.HashPassword(password)
	if err != nil {
		fmt.Fprintf(stderr, "egressd passwd: %v; give the password on stdin, for example: printf '%%s\\n' \"$PASSWORD\" | egressd passwd ci\n", err)
		return exitFail
	}
	if name := fs.Arg(0); name != "" {
		fmt.Fprintf(stdout, "user %q {\n  password_hash = %q\n}\n", name, hash)
		return exitOK
	}
	fmt.Fprintln(stdout, hash)
	return exitOK
}
