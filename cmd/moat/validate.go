package main

import (
	"errors"
	"flag"
	"strings"

	"moat.dev/moat/internal/api"
)

// normDomain returns s as a domain name the way the configuration and the
// store write it (lower case, no trailing dot), and whether it is one.
func normDomain(s string) (string, bool) {
	n := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), "."))
	_, _, err := api.ParseRole("domain:" + n) // the API's domain name rule
	return n, err == nil
}

// validAddress reports whether s looks like local@domain, with a valid
// domain and no spaces or control characters.
func validAddress(s string) bool {
	local, domain, ok := strings.Cut(s, "@")
	if !ok || local == "" || strings.ContainsFunc(local, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '@' }) {
		return false
	}
	_, ok = normDomain(domain)
	return ok
}

// parseExit is the exit status after a flag parse error: 0 when the user
// asked for help (-h, --help: the usage was printed), else 2.
func parseExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}
