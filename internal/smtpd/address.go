package smtpd

import (
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"

	"moat.dev/moat/internal/pipeline"
)

// addrErrKind says why an address was refused.
type addrErrKind uint8

const (
	addrOK     addrErrKind = iota
	addrSyntax             // 501 5.1.3 (5.1.7 for MAIL)
	addrRelay              // 550 5.7.1: an address form that asks us to relay elsewhere
)

// RFC 5321 4.5.3.1: a local part has at most 64 octets, a path (with its
// angle brackets) at most 256; longer paths are refused as syntax errors,
// and longer local parts in RCPT (see parsePath).
// The domain's limit (255, or 253 without the root's dot) follows.
const (
	maxLocalPart = 64
	maxPath      = 256
)

// parsedAddr is an envelope address parsed strictly by parsePath.
type parsedAddr struct {
	Addr pipeline.Address
	// Lookup is the domain as looked up in the domain store: lower-case
	// ASCII (A-labels), no trailing dot. "" for the null sender and for
	// address literals.
	Lookup  string
	Literal bool // domain is an address literal [...]
	Null    bool // the null reverse-path <>
}

// idnaLookup maps case and converts U-labels to A-labels for comparisons.
var idnaLookup = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.Transitional(false))

// parsePath parses the argument of MAIL FROM: or RCPT TO: (after the colon)
// strictly. go-smtp's own parser is lenient: it silently strips source
// routes and quotes, which would hide relay tricks, so the session uses
// this parser on the raw command line instead.
//
// rcpt selects the forward-path rules: the percent hack (user%host@us),
// bang paths (host!user@us), quoted local parts containing '@', source
// routes, address literals and unqualified addresses (postmaster) are
// refused as relay attempts, since Moat is never a final destination and
// never interprets any of them. A reverse-path may be <> and may use those
// forms (it is only ever a DSN destination) except source routes.
//
// Everywhere: the path must be in angle brackets; C0 controls, DEL, NUL,
// spaces, invalid UTF-8 and RFC 5321 length overruns are syntax errors. rest is what follows '>'
// (ESMTP parameters), which is empty or starts with a space.
func parsePath(arg string, rcpt bool) (pa parsedAddr, rest string, kind addrErrKind) {
	s := strings.TrimLeft(arg, " ")
	if len(s) < 2 || s[0] != '<' {
		return pa, "", addrSyntax
	}
	// Find the closing '>' outside a quoted string.
	end, inQuote := -1, false
	for i := 1; i < len(s); i++ {
		c := s[i]
		if inQuote {
			switch c {
			case '\\':
				i++
			case '"':
				inQuote = false
			}
			continue
		}
		if c == '"' {
			inQuote = true
		} else if c == '>' {
			end = i
			break
		}
	}
	if end < 0 {
		return pa, "", addrSyntax
	}
	inner, rest := s[1:end], s[end+1:]
	if rest != "" && rest[0] != ' ' {
		return pa, "", addrSyntax
	}
	if !utf8.ValidString(inner) {
		return pa, "", addrSyntax
	}
	for i := 0; i < len(inner); i++ {
		if c := inner[i]; c <= ' ' || c == 0x7f {
			return pa, "", addrSyntax
		}
	}
	if inner == "" {
		if rcpt {
			return pa, "", addrSyntax
		}
		pa.Null = true
		return pa, rest, addrOK
	}
	if len(inner) > maxPath-2 {
		return pa, "", addrSyntax
	}
	if inner[0] == '@' {
		// Source route <@a,@b:user@c>: never followed (RFC 5321 allows
		// refusing it; we never relay to the route).
		return pa, "", addrRelay
	}
	pa.Addr.Raw = inner

	// Local part.
	var local string
	var i int
	if inner[0] == '"' {
		i = 1
		for ; i < len(inner); i++ {
			c := inner[i]
			if c == '\\' {
				i++
				if i >= len(inner) {
					return pa, "", addrSyntax
				}
				c = inner[i]
			} else if c == '"' {
				break
			}
			if rcpt && (c == '@' || c == '%' || c == '!') {
				return pa, "", addrRelay
			}
		}
		if i >= len(inner) || i == 1 {
			return pa, "", addrSyntax // unterminated or empty quoted string
		}
		i++ // past the closing quote
		local = inner[:i]
		if i >= len(inner) || inner[i] != '@' {
			return pa, "", addrSyntax
		}
	} else {
		for ; i < len(inner) && inner[i] != '@'; i++ {
			c := inner[i]
			if c >= 0x80 {
				continue // UTF-8 (SMTPUTF8)
			}
			if !isAtext(c) && c != '.' {
				return pa, "", addrSyntax
			}
			if rcpt && (c == '%' || c == '!') {
				return pa, "", addrRelay
			}
		}
		local = inner[:i]
		if i >= len(inner) {
			// No domain. RCPT TO:<postmaster> is legal, but Moat is not a
			// final destination for anything: refuse as relaying.
			if rcpt && strings.EqualFold(local, "postmaster") {
				return pa, "", addrRelay
			}
			return pa, "", addrSyntax
		}
		if local == "" {
			return pa, "", addrSyntax
		}
	}
	if rcpt && len(local) > maxLocalPart {
		// Only for recipients: no mailbox here has a longer name, while
		// senders' VERP and SRS bounce addresses often exceed 64 octets
		// and are real mail (Postfix and Exim accept them too).
		return pa, "", addrSyntax
	}
	domain := inner[i+1:]
	if domain == "" {
		return pa, "", addrSyntax
	}
	pa.Addr.Local = local

	if domain[0] == '[' {
		if rcpt {
			return pa, "", addrRelay
		}
		if len(domain) < 3 || domain[len(domain)-1] != ']' || strings.ContainsAny(domain[1:len(domain)-1], "[]\\@") {
			return pa, "", addrSyntax
		}
		pa.Literal = true
		pa.Addr.Domain = strings.ToLower(domain)
		return pa, rest, addrOK
	}
	d := strings.TrimSuffix(domain, ".")
	if d == "" || len(d) > 253 {
		return pa, "", addrSyntax
	}
	ascii := true
	labelLen := 0
	for j := 0; j < len(d); j++ {
		c := d[j]
		switch {
		case c == '.':
			if labelLen == 0 {
				return pa, "", addrSyntax
			}
			labelLen = 0
			continue
		case c >= 0x80:
			ascii = false
		case c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		default:
			return pa, "", addrSyntax
		}
		labelLen++
		if labelLen > 63 && ascii {
			return pa, "", addrSyntax
		}
	}
	if labelLen == 0 {
		return pa, "", addrSyntax
	}
	lookup := strings.ToLower(d)
	if !ascii {
		a, err := idnaLookup.ToASCII(d)
		if err != nil || a == "" {
			return pa, "", addrSyntax
		}
		lookup = strings.ToLower(a)
		// The address keeps the UTF-8 form (SMTPUTF8), lower-cased.
		pa.Addr.Domain = strings.ToLower(d)
	} else {
		pa.Addr.Domain = lookup
	}
	if strings.HasPrefix(lookup, "-") || strings.Contains(lookup, "-.") || strings.Contains(lookup, ".-") || strings.HasSuffix(lookup, "-") {
		return pa, "", addrSyntax
	}
	pa.Lookup = lookup
	return pa, rest, addrOK
}

// isAtext reports whether c is an RFC 5322 atext character.
func isAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}
