package clamd

import (
	"errors"
	"fmt"
	"strings"
)

// Status is the outcome a clamd reply reports.
type Status uint8

const (
	StatusOK    Status = iota + 1 // "stream: OK"
	StatusFound                   // "stream: <signature> FOUND"
	StatusError                   // "... ERROR"
)

// Reply is one parsed clamd reply.
type Reply struct {
	ID        int    // session request ID ("3: stream: OK"), 0 outside a session
	Status    Status // OK, FOUND or ERROR
	Signature string // with StatusFound: the signature name, sanitized
	Message   string // with StatusError: clamd's text without " ERROR"
}

// SizeLimit reports whether clamd refused the stream for exceeding its
// StreamMaxLength.
func (r Reply) SizeLimit() bool {
	return r.Status == StatusError && strings.Contains(r.Message, "size limit exceeded")
}

// ErrProtocol is wrapped by every error about a reply clamd should not send.
var ErrProtocol = errors.New("clamd: protocol error")

// maxSignature bounds the signature names we pass on (they end up in SMTP
// replies, headers, logs and metric labels).
const maxSignature = 128

// ParseReply parses one scan reply (the terminating NUL or newline may be
// included). Replies are "[<id>: ]<path>: OK", "[<id>: ]<path>: <sig> FOUND"
// or "[<id>: ]<text> ERROR".
func ParseReply(s string) (Reply, error) {
	var r Reply
	s = strings.TrimRight(s, "\x00\n")
	if i := strings.Index(s, ": "); i > 0 && i <= 9 && allDigits(s[:i]) {
		n := 0
		for _, c := range s[:i] {
			n = n*10 + int(c-'0')
		}
		r.ID, s = n, s[i+2:]
	}
	switch {
	case strings.HasSuffix(s, " FOUND"):
		body := strings.TrimSuffix(s, " FOUND")
		j := strings.LastIndex(body, ": ")
		if j < 0 {
			return Reply{}, fmt.Errorf("%w: FOUND without a signature: %q", ErrProtocol, clip(s))
		}
		sig := sanitize(body[j+2:])
		if sig == "" {
			return Reply{}, fmt.Errorf("%w: empty signature: %q", ErrProtocol, clip(s))
		}
		r.Status, r.Signature = StatusFound, sig
	case strings.HasSuffix(s, " ERROR"):
		r.Status, r.Message = StatusError, sanitize(strings.TrimSuffix(s, " ERROR"))
	case strings.HasSuffix(s, ": OK"):
		r.Status = StatusOK
	default:
		return Reply{}, fmt.Errorf("%w: unexpected reply %q", ErrProtocol, clip(s))
	}
	return r, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// sanitize keeps a signature name safe for an SMTP reply line, a header
// field and a metric label: printable ASCII only (no CR, LF or other
// controls), no parentheses or semicolons, bounded length. Anything else
// becomes '?'.
func sanitize(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > maxSignature {
		s = s[:maxSignature]
	}
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e || c == '(' || c == ')' || c == ';' {
			b[i] = '?'
		}
	}
	return string(b)
}

func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}
