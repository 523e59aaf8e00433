// Package passmark signs and verifies Moat's pass mark: a header field that
// tells a customer's backend "this message went through Moat's filters, for
// these recipients, unaltered". Unlike a plain marker header it cannot be
// forged, replayed to another recipient or reused on altered content.
//
// The field is
//
//	X-Moat-Pass: v=1; d=example.com; id=QID; t=1700000000; r=TAG,TAG; bh=BASE64; s=BASE64
//
// where each TAG is a truncated HMAC of one envelope recipient (so the
// recipient list is not disclosed to the other recipients), bh is the
// SHA-256 of the canonical body and of the From, To, Cc, Subject, Date and
// Message-ID fields, and s is HMAC-SHA256 over everything before it, keyed
// with the domain's secret.
package passmark

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Field is the header field name of the pass mark.
const Field = "X-Moat-Pass"

var b64 = base64.RawStdEncoding

// DomainSecret derives a customer domain's secret from the site master key,
// so each backend holds only its own domain's key.
func DomainSecret(master []byte, domain string) []byte {
	m := hmac.New(sha256.New, master)
	m.Write([]byte("moat-pass-v1:" + strings.ToLower(strings.TrimSuffix(domain, "."))))
	return m.Sum(nil)
}

// Mark is the content of a pass mark.
type Mark struct {
	Domain string
	ID     string
	Time   time.Time
	Rcpts  []string // envelope recipients (signing); tags are used when verifying
	Digest []byte   // content digest, see Digest
}

// digestFields are the header fields the content digest covers, when
// present. MTAs on the way to the mailbox may add missing Date or
// Message-ID fields (Postfix does for local clients), so, like DKIM's h=,
// the digest records which of these were present when it was made; a
// field added later is ignored, any change to a covered one is not.
var digestFields = []string{"From", "To", "Cc", "Subject", "Date", "Message-Id"}

// Digest computes the content digest of a raw message (header and body):
// one byte saying which of the covered fields were present, then the
// SHA-256 of those fields (every instance) and of the canonical body.
func Digest(r io.Reader) ([]byte, error) { return digest(r, -1) }

// digest computes the digest over the fields in mask (-1: those present).
func digest(r io.Reader, mask int) ([]byte, error) {
	br := bufio.NewReader(r)
	hdr, first, err := readHeader(br)
	if err != nil {
		return nil, fmt.Errorf("passmark: reading header: %w", err)
	}
	if mask < 0 {
		mask = 0
		for i, name := range digestFields {
			if len(hdr[name]) > 0 {
				mask |= 1 << i
			}
		}
	}
	h := sha256.New()
	for i, name := range digestFields {
		if mask&(1<<i) == 0 {
			continue
		}
		for _, v := range hdr[name] {
			fmt.Fprintf(h, "%s:%s\n", strings.ToLower(name), strings.Join(strings.Fields(v), " "))
		}
		fmt.Fprintf(h, "%s.\n", strings.ToLower(name)) // a covered field that vanished changes the digest
	}
	h.Write([]byte("\n"))
	// Body: line endings canonicalised to CRLF, trailing empty lines ignored
	// (as DKIM's simple body canonicalisation), so a relay that changes LF to
	// CRLF does not break the mark, but any change of content does.
	var blank int
	for {
		line, err := first, error(nil)
		if first != nil {
			first = nil
		} else {
			line, err = br.ReadBytes('\n')
		}
		if len(line) > 0 {
			line = bytes.TrimRight(line, "\r\n")
			if len(line) == 0 {
				blank++
			} else {
				for ; blank > 0; blank-- {
					h.Write([]byte("\r\n"))
				}
				h.Write(line)
				h.Write([]byte("\r\n"))
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("passmark: reading body: %w", err)
		}
	}
	return append([]byte{byte(mask)}, h.Sum(nil)...), nil
}

// readHeader reads a message's header section, as tolerant as the mail
// on the wire needs: it ends at the empty line, at the end of the input,
// or at the first line that is neither a field ("Name: value", a printable
// name) nor the continuation of one. That line (not a header line, as
// Postfix's cleanup also decides) is returned as the body's first line,
// with its line ending. textproto refuses such a header outright, which
// would leave a message Moat accepted impossible to sign.
func readHeader(br *bufio.Reader) (textproto.MIMEHeader, []byte, error) {
	hdr := textproto.MIMEHeader{}
	var key string // the field being read (for continuations)
	var val []string
	flush := func() {
		if key != "" {
			hdr[key] = append(hdr[key], strings.Join(val, " "))
		}
		key, val = "", val[:0]
	}
	for {
		line, err := br.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, nil, err
		}
		text := bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0: // end of input
			flush()
			return hdr, nil, nil
		case len(text) == 0: // the empty line ending the header
			flush()
			return hdr, nil, nil
		case (text[0] == ' ' || text[0] == '\t') && key != "":
			val = append(val, strings.TrimSpace(string(text)))
		default:
			colon := bytes.IndexByte(text, ':')
			if colon <= 0 || !fieldName(text[:colon]) {
				flush()
				return hdr, line, nil // the body starts here
			}
			flush()
			key = textproto.CanonicalMIMEHeaderKey(string(text[:colon]))
			val = append(val, strings.TrimSpace(string(text[colon+1:])))
		}
		if err != nil { // io.EOF after a last line without its ending
			flush()
			return hdr, nil, nil
		}
	}
}

// fieldName reports whether b is a header field name (RFC 5322 2.2:
// printable US-ASCII but the colon).
func fieldName(b []byte) bool {
	for _, c := range b {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}

func rcptTag(secret []byte, rcpt string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("rcpt:" + strings.ToLower(rcpt)))
	return b64.EncodeToString(m.Sum(nil)[:9])
}

// Sign returns the field value (without the name) for mark m.
func Sign(secret []byte, m Mark) string {
	tags := make([]string, 0, len(m.Rcpts))
	for _, r := range m.Rcpts {
		tags = append(tags, rcptTag(secret, r))
	}
	slices.Sort(tags)
	base := fmt.Sprintf("v=1; d=%s; id=%s; t=%d; r=%s; bh=%s", strings.ToLower(m.Domain), m.ID, m.Time.Unix(),
		strings.Join(tags, ","), b64.EncodeToString(m.Digest))
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(base))
	return base + "; s=" + b64.EncodeToString(mac.Sum(nil))
}

// Errors returned by Verify.
var (
	ErrMissing   = errors.New("no pass mark")
	ErrMalformed = errors.New("malformed pass mark")
	ErrForged    = errors.New("pass mark signature does not verify")
	ErrRecipient = errors.New("pass mark was not issued for this recipient")
	ErrAltered   = errors.New("message content changed after the pass mark was issued")
	ErrExpired   = errors.New("pass mark is too old or from the future")
)

// Parsed is a pass mark read from a header value.
type Parsed struct {
	Domain string
	ID     string
	Time   time.Time
	tags   []string
	bh     []byte
	base   string
	sig    []byte
}

// Parse reads a field value.
func Parse(value string) (*Parsed, error) {
	value = strings.Join(strings.Fields(value), " ")
	i := strings.LastIndex(value, "; s=")
	if i < 0 {
		return nil, ErrMalformed
	}
	p := &Parsed{base: value[:i]}
	var err error
	if p.sig, err = b64.DecodeString(value[i+4:]); err != nil {
		return nil, ErrMalformed
	}
	seen := map[string]bool{}
	for _, kv := range strings.Split(p.base, "; ") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || seen[k] {
			return nil, ErrMalformed
		}
		seen[k] = true
		switch k {
		case "v":
			if v != "1" {
				return nil, ErrMalformed
			}
		case "d":
			p.Domain = v
		case "id":
			p.ID = v
		case "t":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, ErrMalformed
			}
			p.Time = time.Unix(n, 0)
		case "r":
			if v != "" {
				p.tags = strings.Split(v, ",")
			}
		case "bh":
			if p.bh, err = b64.DecodeString(v); err != nil {
				return nil, ErrMalformed
			}
		default:
			return nil, ErrMalformed
		}
	}
	if !seen["v"] || !seen["d"] || !seen["t"] || !seen["bh"] || !seen["r"] || !seen["id"] {
		return nil, ErrMalformed
	}
	return p, nil
}

// Options for Verify.
type Options struct {
	MaxAge time.Duration // default 7 days (longer than the queue lifetime)
	Now    time.Time     // default time.Now()
}

// Verify checks value against secret, the envelope recipients the backend
// sees (each must have been marked) and the content digest.
func Verify(secret []byte, value string, rcpts []string, digest []byte, opt Options) (*Parsed, error) {
	p, err := Parse(value)
	if err != nil {
		return nil, err
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(p.base))
	if !hmac.Equal(mac.Sum(nil), p.sig) {
		return p, ErrForged
	}
	if opt.MaxAge == 0 {
		opt.MaxAge = 7 * 24 * time.Hour
	}
	if opt.Now.IsZero() {
		opt.Now = time.Now()
	}
	if opt.Now.Sub(p.Time) > opt.MaxAge || p.Time.Sub(opt.Now) > 5*time.Minute {
		return p, ErrExpired
	}
	if len(rcpts) == 0 {
		return p, ErrRecipient
	}
	for _, r := range rcpts {
		if !slices.Contains(p.tags, rcptTag(secret, r)) {
			return p, fmt.Errorf("%w: %s", ErrRecipient, r)
		}
	}
	if !hmac.Equal(digest, p.bh) {
		return p, ErrAltered
	}
	return p, nil
}

// VerifyMessage finds the pass mark in a raw message and verifies it. When
// the message carries several marks (relayed twice), any valid one passes.
func VerifyMessage(secret []byte, raw []byte, rcpts []string, opt Options) (*Parsed, error) {
	hdrEnd := bytes.Index(raw, []byte("\r\n\r\n"))
	if hdrEnd < 0 {
		hdrEnd = bytes.Index(raw, []byte("\n\n"))
	}
	if hdrEnd < 0 {
		hdrEnd = len(raw)
	}
	hdr, _, err := readHeader(bufio.NewReader(bytes.NewReader(raw[:hdrEnd])))
	if err != nil {
		return nil, err
	}
	vals := hdr[textproto.CanonicalMIMEHeaderKey(Field)]
	if len(vals) == 0 {
		return nil, ErrMissing
	}
	var firstErr error
	for _, v := range vals {
		mask := -1
		if p, err := Parse(v); err == nil && len(p.bh) == 33 {
			mask = int(p.bh[0])
		}
		digest, err := digest(bytes.NewReader(raw), mask)
		if err != nil {
			return nil, err
		}
		p, err := Verify(secret, v, rcpts, digest, opt)
		if err == nil {
			return p, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, firstErr
}
