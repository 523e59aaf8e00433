// Package message turns raw RFC 5322 bytes into the decoded view that the
// content checks (classifier, rules, URI blocklists, DKIM) need: decoded
// header fields, the visible text of every text part (HTML rendered to text,
// hidden text noted separately), URLs with their domains, attachment names
// and types, and the raw body for rawbody rules.
//
// Parsing is bounded (parts, depth, decoded bytes, wall time) and never fails
// on malformed input: problems are recorded in Message.Malformed, which the
// rules and the classifier can score. Parse returns an error only when the
// reader itself fails.
package message

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"mime"
	stdtextproto "net/textproto"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	gomessage "github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset" // registers charset decoders for go-message
	"github.com/emersion/go-message/textproto"
)

// Limits bound the work Parse does on one message.
type Limits struct {
	MaxParts        int           // MIME parts walked; more are skipped (Malformed "too_many_parts")
	MaxDepth        int           // multipart nesting depth
	MaxDecodedBytes int64         // decoded bytes read over all parts
	MaxRawBody      int           // bytes of the raw body kept for rawbody rules
	MaxTime         time.Duration // wall time; 0 = unbounded
}

// DefaultLimits are generous enough for real mail and small enough that a
// hostile message costs at most a few milliseconds.
func DefaultLimits() Limits {
	return Limits{MaxParts: 100, MaxDepth: 10, MaxDecodedBytes: 4 << 20, MaxRawBody: 256 << 10, MaxTime: 2 * time.Second}
}

// Field is one header field with its RFC 2047-decoded value.
type Field struct {
	Name  string // canonical form, e.g. "Subject"
	Value string // decoded, unfolded
}

// URL is one link found in the message.
type URL struct {
	Raw    string // as written (href or text)
	Host   string // lower-case host name or IP literal, no port
	InHTML bool   // found in an HTML href/src
	Text   string // anchor text of an HTML link, if any
}

// Attachment describes one non-text or named part.
type Attachment struct {
	Filename    string // RFC 2047/2231 decoded
	ContentType string // lower-case media type
	Size        int64  // decoded bytes read (bounded)
}

// Message is the decoded view of one message.
type Message struct {
	Header      []Field
	Subject     string
	From        string   // the decoded From field
	Text        string   // visible text of all text parts, UTF-8, parts separated by "\n"
	HiddenText  string   // HTML text a reader would not see (display:none, tiny fonts, invisible colour)
	HTML        bool     // at least one text/html part
	Markup      []string // HTML tag names and selected attributes ("font", "font.color=#ff0000"), bounded
	TextOnlyIn  string   // "html" when the only text is HTML, "plain" when only plain, "" otherwise
	URLs        []URL    // deduplicated by Raw
	Attachments []Attachment
	Parts       int      // parts walked
	Malformed   []string // reasons, deduplicated: "header", "base64", "charset", "encoding", "depth", ...
	RawHeader   []byte   // the header block as received
	RawBody     []byte   // the undecoded body, truncated to Limits.MaxRawBody
	Fingerprint [32]byte // SHA-256 of the normalized visible text (for learn de-duplication)
}

// Get returns the first decoded value of the named header field.
func (m *Message) Get(name string) string {
	for _, f := range m.Header {
		if strings.EqualFold(f.Name, name) {
			return f.Value
		}
	}
	return ""
}

// Values returns all decoded values of the named header field.
func (m *Message) Values(name string) []string {
	var out []string
	for _, f := range m.Header {
		if strings.EqualFold(f.Name, name) {
			out = append(out, f.Value)
		}
	}
	return out
}

func (m *Message) flag(reason string) {
	for _, r := range m.Malformed {
		if r == reason {
			return
		}
	}
	m.Malformed = append(m.Malformed, reason)
}

// HasMalformed reports whether reason was flagged.
func (m *Message) HasMalformed(reason string) bool {
	for _, r := range m.Malformed {
		if r == reason {
			return true
		}
	}
	return false
}

type parser struct {
	lim      Limits
	m        *Message
	deadline time.Time
	budget   int64
	text     strings.Builder
	hidden   strings.Builder
	urlSeen  map[string]bool
	plain    int
	html     int
}

var errBudget = errors.New("message: limit reached")

// ParseBytes parses a message held in memory.
func ParseBytes(raw []byte, lim Limits) *Message {
	return ParseOwned(bytes.Clone(raw), lim)
}

// ParseOwned is ParseBytes without the copy: the Message keeps slices of
// raw (RawHeader, RawBody), so the caller must not modify raw afterwards.
func ParseOwned(raw []byte, lim Limits) *Message {
	if raw == nil {
		raw = []byte{}
	}
	return parseRaw(raw, lim)
}

// Parse reads and decodes one message. It reads at most what the limits
// allow of the decoded content, but the raw header and up to MaxRawBody
// of the raw body are always kept. The error is non-nil only if r fails.
func Parse(r io.Reader, lim Limits) (*Message, error) {
	raw, err := io.ReadAll(r)
	if err != nil {
		return &Message{}, err
	}
	return parseRaw(raw, lim), nil
}

func parseRaw(raw []byte, lim Limits) *Message {
	if lim.MaxParts <= 0 || lim.MaxDepth <= 0 || lim.MaxDecodedBytes <= 0 {
		d := DefaultLimits()
		if lim.MaxParts <= 0 {
			lim.MaxParts = d.MaxParts
		}
		if lim.MaxDepth <= 0 {
			lim.MaxDepth = d.MaxDepth
		}
		if lim.MaxDecodedBytes <= 0 {
			lim.MaxDecodedBytes = d.MaxDecodedBytes
		}
	}
	p := &parser{lim: lim, m: &Message{}, budget: lim.MaxDecodedBytes, urlSeen: map[string]bool{}}
	if lim.MaxTime > 0 {
		p.deadline = time.Now().Add(lim.MaxTime)
	}
	p.parse(raw)
	return p.m
}

// splitHeader finds the end of the header block (CRLFCRLF or LFLF).
func splitHeader(raw []byte) (hdr, body []byte) {
	if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
		j := bytes.Index(raw, []byte("\n\n"))
		if j >= 0 && j < i {
			return raw[:j+1], raw[j+2:]
		}
		return raw[:i+2], raw[i+4:]
	}
	if j := bytes.Index(raw, []byte("\n\n")); j >= 0 {
		return raw[:j+1], raw[j+2:]
	}
	return raw, nil
}

func (p *parser) parse(raw []byte) {
	m := p.m
	// An mbox "From " envelope line (messages saved by local delivery
	// agents) is not part of the message.
	if bytes.HasPrefix(raw, []byte("From ")) {
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			raw = raw[i+1:]
		} else {
			raw = nil
		}
	}
	hdrBytes, body := splitHeader(raw)
	m.RawHeader = hdrBytes
	rb := body
	if p.lim.MaxRawBody > 0 && len(rb) > p.lim.MaxRawBody {
		rb = rb[:p.lim.MaxRawBody]
	}
	m.RawBody = rb

	br := bufio.NewReader(bytes.NewReader(raw))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		// Unparseable header: salvage "Name: value" lines by hand and
		// treat the rest as plain text.
		m.flag("header")
		hh := salvageHeader(hdrBytes)
		p.collectHeader(hh)
		p.addText(string(body), false)
		p.finish()
		return
	}
	p.collectHeader(h)
	e, err := gomessage.New(gomessage.Header{Header: h}, br)
	p.noteEntityErr(err)
	if e == nil {
		p.finish()
		return
	}
	p.walk(e, 0)
	p.finish()
}

func salvageHeader(b []byte) textproto.Header {
	var h textproto.Header
	var name, val string
	flush := func() {
		if name != "" {
			h.Add(name, strings.TrimSpace(val))
		}
		name, val = "", ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" {
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && name != "" {
			val += " " + strings.TrimSpace(line)
			continue
		}
		flush()
		if i := strings.IndexByte(line, ':'); i > 0 && !strings.ContainsAny(line[:i], " \t") {
			name, val = line[:i], line[i+1:]
		}
	}
	flush()
	return h
}

var wordDecoder = &mime.WordDecoder{CharsetReader: func(cs string, in io.Reader) (io.Reader, error) {
	if gomessage.CharsetReader == nil {
		return nil, fmt.Errorf("no charset reader")
	}
	return gomessage.CharsetReader(strings.ToLower(cs), in)
}}

func decodeWords(s string) (string, bool) {
	if !strings.Contains(s, "=?") {
		return s, true
	}
	d, err := wordDecoder.DecodeHeader(s)
	if err != nil {
		return s, false
	}
	return d, true
}

func (p *parser) collectHeader(h textproto.Header) {
	fields := h.Fields()
	for fields.Next() {
		if len(p.m.Header) >= 1000 {
			p.m.flag("too_many_header_fields")
			break
		}
		v, ok := decodeWords(fields.Value())
		if !ok {
			p.m.flag("header_encoding")
		}
		v = sanitize(v)
		name := stdtextproto.CanonicalMIMEHeaderKey(fields.Key())
		p.m.Header = append(p.m.Header, Field{Name: name, Value: v})
	}
	p.m.Subject = p.m.Get("Subject")
	p.m.From = p.m.Get("From")
}

// sanitize makes s valid UTF-8 without NULs.
func sanitize(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.ReplaceAll(s, "\x00", "")
}

func (p *parser) noteEntityErr(err error) {
	switch {
	case err == nil:
	case gomessage.IsUnknownCharset(err):
		p.m.flag("charset")
	case gomessage.IsUnknownEncoding(err):
		p.m.flag("encoding")
	default:
		p.m.flag("mime")
	}
}

func (p *parser) timeUp() bool {
	return !p.deadline.IsZero() && time.Now().After(p.deadline)
}

func (p *parser) walk(e *gomessage.Entity, depth int) {
	m := p.m
	if m.Parts >= p.lim.MaxParts {
		m.flag("too_many_parts")
		return
	}
	if p.timeUp() {
		m.flag("timeout")
		return
	}
	m.Parts++
	mt, params, err := e.Header.ContentType()
	if err != nil && e.Header.Get("Content-Type") != "" {
		m.flag("content_type")
		mt = strings.ToLower(strings.TrimSpace(strings.SplitN(e.Header.Get("Content-Type"), ";", 2)[0]))
	}
	if mt == "" {
		mt = "text/plain"
	}
	if strings.HasPrefix(mt, "multipart/") {
		if depth >= p.lim.MaxDepth {
			m.flag("depth")
			return
		}
		if params["boundary"] == "" {
			m.flag("no_boundary")
			p.readPart(e, "text/plain", params)
			return
		}
		mr := e.MultipartReader()
		if mr == nil {
			m.flag("mime")
			return
		}
		n := 0
		for {
			part, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil && part == nil {
				if n == 0 {
					m.flag("multipart")
				} else if !strings.Contains(err.Error(), "EOF") {
					m.flag("multipart")
				}
				break
			}
			n++
			p.noteEntityErr(err)
			p.walk(part, depth+1)
			if m.Parts >= p.lim.MaxParts || p.timeUp() || p.budget <= 0 {
				if p.budget <= 0 {
					m.flag("too_large")
				}
				if m.Parts >= p.lim.MaxParts {
					m.flag("too_many_parts")
				}
				break
			}
		}
		return
	}
	if mt == "message/rfc822" || mt == "message/global" {
		if depth >= p.lim.MaxDepth {
			m.flag("depth")
			return
		}
		data := p.read(e.Body)
		br := bufio.NewReader(bytes.NewReader(data))
		h, err := textproto.ReadHeader(br)
		if err != nil {
			m.flag("header")
			return
		}
		for _, k := range []string{"Subject"} {
			if v, ok := decodeWords(h.Get(k)); ok && v != "" {
				p.addText(sanitize(v), false)
			}
		}
		inner, err := gomessage.New(gomessage.Header{Header: h}, br)
		p.noteEntityErr(err)
		if inner != nil {
			p.walk(inner, depth+1)
		}
		return
	}
	p.readPart(e, mt, params)
}

// read reads a decoded body within the byte budget, flagging decode errors.
func (p *parser) read(r io.Reader) []byte {
	if p.budget <= 0 {
		p.m.flag("too_large")
		return nil
	}
	lr := &io.LimitedReader{R: r, N: p.budget + 1}
	var buf bytes.Buffer
	_, err := buf.ReadFrom(&deadlineReader{r: lr, p: p})
	if err != nil {
		msg := err.Error()
		switch {
		case errors.Is(err, errBudget):
			p.m.flag("timeout")
		case strings.Contains(msg, "base64"):
			p.m.flag("base64")
		case strings.Contains(msg, "quotedprintable") || strings.Contains(msg, "quoted-printable"):
			p.m.flag("quoted_printable")
		case strings.Contains(msg, "multipart") || strings.Contains(msg, "EOF"):
			p.m.flag("multipart")
		default:
			p.m.flag("decode")
		}
	}
	if int64(buf.Len()) > p.budget {
		p.m.flag("too_large")
		buf.Truncate(int(p.budget))
	}
	p.budget -= int64(buf.Len())
	return buf.Bytes()
}

type deadlineReader struct {
	r io.Reader
	p *parser
}

func (d *deadlineReader) Read(b []byte) (int, error) {
	if d.p.timeUp() {
		return 0, errBudget
	}
	return d.r.Read(b)
}

func (p *parser) readPart(e *gomessage.Entity, mt string, params map[string]string) {
	disp, dparams, _ := e.Header.ContentDisposition()
	name := dparams["filename"]
	if name == "" {
		name = params["name"]
	}
	if name != "" {
		if d, ok := decodeWords(name); ok {
			name = d
		}
		name = sanitize(name)
	}
	isText := strings.HasPrefix(mt, "text/") || mt == "application/xhtml+xml"
	attach := disp == "attachment" || name != "" || !isText
	data := p.read(e.Body)
	if attach {
		p.m.Attachments = append(p.m.Attachments, Attachment{Filename: name, ContentType: mt, Size: int64(len(data))})
		if !isText || disp == "attachment" {
			return
		}
	}
	s := sanitize(string(data))
	if ch := strings.ToLower(params["charset"]); ch != "" && ch != "utf-8" && ch != "us-ascii" && !utf8.Valid(data) {
		p.m.flag("charset")
	}
	switch mt {
	case "text/html", "application/xhtml+xml":
		p.html++
		p.m.HTML = true
		h := renderHTML(s)
		p.addText(h.text, false)
		if h.hidden != "" {
			p.hidden.WriteString(h.hidden)
			p.hidden.WriteByte('\n')
		}
		if len(p.m.Markup) < 4*maxMarkup {
			p.m.Markup = append(p.m.Markup, h.markup...)
		}
		for _, l := range h.links {
			p.addURL(l.href, true, l.text)
		}
	default:
		p.plain++
		p.addText(s, true)
	}
}

func (p *parser) addText(s string, scanURLs bool) {
	s = sanitize(s)
	if p.text.Len() > 0 {
		p.text.WriteByte('\n')
	}
	p.text.WriteString(s)
	if scanURLs {
		for _, u := range findURLs(s) {
			p.addURL(u, false, "")
		}
	}
}

func (p *parser) addURL(raw string, inHTML bool, text string) {
	raw = strings.TrimSpace(raw)
	if raw == "" || p.urlSeen[raw] || len(p.m.URLs) >= 500 {
		return
	}
	host := hostOf(raw)
	if host == "" {
		return
	}
	p.urlSeen[raw] = true
	p.m.URLs = append(p.m.URLs, URL{Raw: raw, Host: host, InHTML: inHTML, Text: strings.TrimSpace(text)})
}

func (p *parser) finish() {
	m := p.m
	m.Text = p.text.String()
	m.HiddenText = strings.TrimSpace(p.hidden.String())
	switch {
	case p.html > 0 && p.plain == 0:
		m.TextOnlyIn = "html"
	case p.plain > 0 && p.html == 0:
		m.TextOnlyIn = "plain"
	}
	// Plain-text URLs inside the visible text of HTML parts.
	if m.HTML {
		for _, u := range findURLs(m.Text) {
			p.addURL(u, false, "")
		}
	}
	m.Fingerprint = Fingerprint(m)
}

// Fingerprint is the SHA-256 of the message's normalized content: the
// visible text with whitespace collapsed and lower-cased, plus the subject
// and attachment names. Resending or re-wrapping the same message gives the
// same fingerprint; the Received chain does not matter.
func Fingerprint(m *Message) [32]byte {
	h := sha256.New()
	writeNormalized(h, m.Subject)
	h.Write([]byte{0})
	writeNormalized(h, m.Text)
	for _, a := range m.Attachments {
		h.Write([]byte{0})
		fmt.Fprintf(h, "%s/%s/%d", a.Filename, a.ContentType, a.Size)
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// writeNormalized writes strings.ToLower(strings.Join(strings.Fields(s),
// " ")) to w without building it: word by word through a small buffer
// (lower-casing maps rune by rune, so word-wise equals whole-string).
func writeNormalized(w io.Writer, s string) {
	var buf [512]byte
	b := buf[:0]
	first := true
	for len(s) > 0 {
		// Skip leading space, find the end of the word (strings.Fields'
		// definition of space: unicode.IsSpace).
		i := 0
		for i < len(s) {
			r, n := rune(s[i]), 1
			if r >= utf8.RuneSelf {
				r, n = utf8.DecodeRuneInString(s[i:])
			}
			if !unicode.IsSpace(r) {
				break
			}
			i += n
		}
		s = s[i:]
		if s == "" {
			break
		}
		j := 0
		for j < len(s) {
			r, n := rune(s[j]), 1
			if r >= utf8.RuneSelf {
				r, n = utf8.DecodeRuneInString(s[j:])
			}
			if unicode.IsSpace(r) {
				break
			}
			j += n
		}
		word := strings.ToLower(s[:j])
		s = s[j:]
		if !first {
			b = append(b, ' ')
		}
		first = false
		if len(b)+len(word) > cap(b) {
			w.Write(b)
			b = b[:0]
			if len(word) > cap(b) {
				io.WriteString(w, word)
				continue
			}
		}
		b = append(b, word...)
	}
	w.Write(b)
}
