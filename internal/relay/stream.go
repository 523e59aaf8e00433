package relay

import (
	"bufio"
	"bytes"
	"errors"
	"io"
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

// copyMessage writes the received message from r through nw, putting
// subjectPrefix in front of the Subject field's value (adding a Subject
// field if there is none) when subjectPrefix is not empty.
//
// A message without a header section of its own (its first line is
// neither a field nor empty: "hello\r\n.\r\n" is accepted SMTP) gets
// the empty line it lacks, so that the fields Moat puts in front of it do
// not run into its first line (as Postfix's cleanup does); the subject
// prefix then becomes a Subject field of its own.
func copyMessage(nw *normWriter, r io.Reader, subjectPrefix string) error {
	br := bufio.NewReaderSize(r, 64<<10)
	if headerless(br) {
		sep := "\r\n"
		if subjectPrefix != "" {
			sep = "Subject: " + string(bytes.TrimRight([]byte(subjectPrefix), " ")) + "\r\n\r\n"
			subjectPrefix = ""
		}
		if _, err := nw.Write([]byte(sep)); err != nil {
			return err
		}
	}
	r = br
	if subjectPrefix != "" {
		hdr, err := readHeader(br)
		if err != nil {
			return err
		}
		if _, err := nw.Write(prefixSubject(hdr, subjectPrefix)); err != nil {
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
