package relay

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"
)

// errNUL reports a NUL byte in a message: Moat never transmits one.
var errNUL = errors.New("relay: message contains a NUL byte")

// maxHeaderScan bounds how much of the header is held in memory to apply a
// subject prefix.
const maxHeaderScan = 1 << 20

// normWriter writes a message to w so that it can never smuggle SMTP
// commands: every line ends in CRLF (a lone CR or lone LF becomes CRLF),
// the last line is terminated, a NUL byte is an error, and, when dot is
// set, lines starting with "." are dot-stuffed (RFC 5321 4.5.2).
type normWriter struct {
	w         *bufio.Writer
	dot       bool
	bol       bool // at the beginning of a line
	pendingCR bool
}

func newNormWriter(w *bufio.Writer, dot bool) *normWriter {
	return &normWriter{w: w, dot: dot, bol: true}
}

func (n *normWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		if n.pendingCR {
			n.pendingCR = false
			n.w.WriteString("\r\n")
			n.bol = true
			if p[0] == '\n' {
				p = p[1:]
				continue
			}
		}
		if n.bol && n.dot && p[0] == '.' {
			n.w.WriteByte('.')
		}
		n.bol = false
		// Copy the run up to the next special byte in one call.
		i := bytes.IndexAny(p, "\r\n\x00")
		if i < 0 {
			n.w.Write(p)
			break
		}
		n.w.Write(p[:i])
		switch p[i] {
		case 0:
			return total - len(p) + i, errNUL
		case '\r':
			n.pendingCR = true
		case '\n':
			n.w.WriteString("\r\n")
			n.bol = true
		}
		p = p[i+1:]
	}
	return total, nil
}

// Close terminates the last line; it does not write the DATA terminator.
func (n *normWriter) Close() error {
	if n.pendingCR || !n.bol {
		n.w.WriteString("\r\n")
		n.pendingCR = false
		n.bol = true
	}
	return nil
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// readers are copyMessage's header readers (64 KiB each: one per message
// would be most of what a delivery allocates).
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}

// copyMessage writes the received message from r through nw, putting
// subjectPrefix in front of the Subject field's value (adding a Subject
// field if there is none) when subjectPrefix is not empty.
//
// A message without a header section of its own (its first line is
// neither a field nor empty: "hello\r\n.\r\n" is accepted SMTP) gets
// the empty line it lacks, so that the fields Moat puts in front of it do
// not run into its first line (as Postfix's cleanup does); the subject
// prefix then becomes a Subject field of its own.
//
// prepend is what Moat wrote above the message (its Received-less check
// fields). A field of the message that Moat also writes (X-Spam-Status,
// X-Moat-Checks, ...), or an Authentication-Results field in Moat's name,
// came from the sender and is removed, so that filters downstream can
// trust them (RFC 8601 5; SpamAssassin removes X-Spam-* fields it did not
// write).
func copyMessage(nw *normWriter, r io.Reader, subjectPrefix, prepend string) error {
	br := readers.Get().(*bufio.Reader)
	br.Reset(r)
	defer func() { br.Reset(nil); readers.Put(br) }()
	forged := ownedFields(prepend)
	if headerless(br) {
		sep := "\r\n"
		if subjectPrefix != "" {
			sep = "Subject: " + string(bytes.TrimRight([]byte(subjectPrefix), " ")) + "\r\n\r\n"
			subjectPrefix = ""
		}
		forged = nil // what follows is body
		if _, err := nw.Write([]byte(sep)); err != nil {
			return err
		}
	}
	r = br
	if subjectPrefix != "" || forged != nil {
		hdr, err := readHeader(br)
		if err != nil {
			return err
		}
		if forged != nil {
			hdr = forged.strip(hdr)
		}
		if subjectPrefix != "" {
			hdr = prefixSubject(hdr, subjectPrefix)
		}
		if _, err := nw.Write(hdr); err != nil {
			return err
		}
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		k, err := r.Read(buf)
		if k > 0 {
			if _, werr := nw.Write(buf[:k]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nw.Close()
		}
		if err != nil {
			return err
		}
	}
}

// spamFields are SpamAssassin's fields: Moat writes its own (some only
// when tagged), so a message never keeps the sender's.
var spamFields = []string{"x-spam-flag", "x-spam-status", "x-spam-score", "x-spam-level", "x-spam-report", "x-spam-checker-version"}

// fieldFilter is what copyMessage removes from a message's header.
type fieldFilter struct {
	names    map[string]bool // lower-case field names
	authserv string          // Moat's authserv-id in Authentication-Results
}

// ownedFields returns the filter for a message Moat wrote prepend above,
// nil when it wrote nothing (a DSN of its own).
func ownedFields(prepend string) *fieldFilter {
	if prepend == "" {
		return nil
	}
	f := &fieldFilter{names: map[string]bool{}}
	for _, n := range spamFields {
		f.names[n] = true
	}
	for line := range strings.SplitSeq(prepend, "\n") {
		if line == "" || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		name, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch name = strings.ToLower(strings.TrimSpace(name)); name {
		case "received": // trace fields accumulate
		case "authentication-results": // only those in Moat's name
			id, _, _ := strings.Cut(val, ";")
			f.authserv = strings.ToLower(strings.TrimSpace(id))
		default:
			f.names[name] = true
		}
	}
	return f
}

// strip returns hdr without the fields f names, continuation lines
// included.
func (f *fieldFilter) strip(hdr []byte) []byte {
	out := hdr[:0:0]
	drop := false
	for len(hdr) > 0 {
		end := bytes.IndexByte(hdr, '\n') + 1
		if end == 0 {
			end = len(hdr)
		}
		line := hdr[:end]
		hdr = hdr[end:]
		if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
			if !drop {
				out = append(out, line...)
			}
			continue
		}
		drop = false
		if name, val, ok := bytes.Cut(line, []byte(":")); ok {
			n := strings.ToLower(strings.TrimSpace(string(name)))
			if f.names[n] {
				drop = true
			} else if n == "authentication-results" && f.authserv != "" {
				id, _, _ := bytes.Cut(val, []byte(";"))
				drop = strings.EqualFold(strings.TrimSpace(string(id)), f.authserv)
			}
		}
		if !drop {
			out = append(out, line...)
		}
	}
	return out
}

// headerless reports whether the message in br starts with a line that
// is neither a header field ("Name:", a printable name) nor empty. It
// reads nothing: it peeks at most the first 1,000 octets.
func headerless(br *bufio.Reader) bool {
	b, _ := br.Peek(1000)
	if i := bytes.IndexAny(b, "\r\n"); i >= 0 { // a lone CR ends a line too (normWriter)
		b = b[:i]
	}
	if len(b) == 0 {
		return false // empty message, or an empty header section
	}
	colon := bytes.IndexByte(b, ':')
	if colon <= 0 {
		return true
	}
	for _, c := range b[:colon] {
		if c < 33 || c > 126 {
			return true
		}
	}
	return false
}

// readHeader returns the header section including the empty line that ends
// it (or everything read, if the message has no body or the header exceeds
// maxHeaderScan).
func readHeader(br *bufio.Reader) ([]byte, error) {
	var hdr []byte
	partial := false // the previous chunk did not end a line
	for len(hdr) < maxHeaderScan {
		line, err := br.ReadSlice('\n')
		hdr = append(hdr, line...)
		if err == bufio.ErrBufferFull {
			partial = true
			continue
		}
		wasPartial := partial
		partial = false
		if err == io.EOF {
			return hdr, nil
		}
		if err != nil {
			return nil, err
		}
		if !wasPartial && len(bytes.TrimRight(line, "\r\n")) == 0 {
			return hdr, nil
		}
	}
	return hdr, nil
}

// prefixSubject inserts prefix at the start of the first Subject field's
// value, or adds "Subject: prefix" at the end of the header.
func prefixSubject(hdr []byte, prefix string) []byte {
	pos := 0
	for pos < len(hdr) {
		end := bytes.IndexByte(hdr[pos:], '\n')
		if end < 0 {
			end = len(hdr)
		} else {
			end += pos + 1
		}
		line := hdr[pos:end]
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			break // end of header
		}
		if len(line) >= 8 && bytes.EqualFold(line[:8], []byte("subject:")) {
			v := 8
			for v < len(line) && (line[v] == ' ' || line[v] == '\t') {
				v++
			}
			out := make([]byte, 0, len(hdr)+len(prefix))
			out = append(out, hdr[:pos+v]...)
			if v == 8 {
				out = append(out, ' ')
			}
			out = append(out, prefix...)
			return append(out, hdr[pos+v:]...)
		}
		pos = end
	}
	// No Subject: add one where the header ends.
	field := "Subject: " + string(bytes.TrimRight([]byte(prefix), " ")) + "\r\n"
	out := make([]byte, 0, len(hdr)+len(field)+2)
	out = append(out, hdr[:pos]...)
	if pos > 0 && hdr[pos-1] != '\n' {
		out = append(out, "\r\n"...)
	}
	out = append(out, field...)
	return append(out, hdr[pos:]...)
}
