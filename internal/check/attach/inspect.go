package attach

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/url"
	"strings"
	"unicode/utf8"

	gomessage "github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset" // decoders for RFC 2047 names in other charsets
)

// Kind is a kind of finding.
type Kind uint8

const (
	BlockedExtension Kind = iota + 1
	BlockedType
	DoubleExtension
	DeceptiveName
	EncryptedArchive
	ArchiveLimit
	MIMEDepth
)

var kindInfo = [...]struct{ key, symbol string }{
	BlockedExtension: {"blocked_extension", "ATTACH_BLOCKED_EXT"},
	BlockedType:      {"blocked_type", "ATTACH_BLOCKED_TYPE"},
	DoubleExtension:  {"double_extension", "ATTACH_DOUBLE_EXT"},
	DeceptiveName:    {"deceptive_name", "ATTACH_DECEPTIVE_NAME"},
	EncryptedArchive: {"encrypted_archive", "ATTACH_ENCRYPTED_ARCHIVE"},
	ArchiveLimit:     {"archive_limit", "ATTACH_ARCHIVE_LIMIT"},
	MIMEDepth:        {"mime_depth", "ATTACH_MIME_DEPTH"},
}

// String returns the policy key of the kind ("blocked_extension").
func (k Kind) String() string {
	if int(k) < len(kindInfo) && k > 0 {
		return kindInfo[k].key
	}
	return "unknown"
}

// Symbol returns the symbol name of the kind ("ATTACH_BLOCKED_EXT").
func (k Kind) Symbol() string {
	if int(k) < len(kindInfo) && k > 0 {
		return kindInfo[k].symbol
	}
	return "ATTACH_UNKNOWN"
}

// Finding is one problem with one attachment.
type Finding struct {
	Kind Kind
	// Name is the file name, safe to show: printable ASCII, invisible and
	// bidi characters removed, others as '?', at most 64 bytes (the end is
	// kept, since the extension matters).
	Name string
	// Where is the archive path the name was found in ("docs.zip",
	// "docs.zip/inner.zip"), "" for a MIME part.
	Where string
	// Detail says more for logs ("type application/x-dosexec (sniffed)").
	Detail string
}

// Path is Where/Name, or Name.
func (f Finding) Path() string {
	if f.Where == "" || f.Name == "" {
		return f.Where + f.Name
	}
	return f.Where + "/" + f.Name
}

// decoyExtensions are what a double extension pretends to be.
var decoyExtensions = set(".pdf", ".doc", ".docx", ".docm", ".xls", ".xlsx", ".xlsm", ".ppt", ".pptx", ".odt", ".ods",
	".rtf", ".txt", ".csv", ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".mp3", ".mp4", ".wav", ".avi",
	".mov", ".htm", ".html", ".xml", ".eml", ".msg", ".zip", ".rar", ".7z", ".invoice", ".scan")

// executableExtensions always count as the hidden half of a double
// extension, even if a domain unblocked them.
var executableExtensions = set(DefaultBlockedExtensions...)

// archiveTypes are media types read as ZIP archives.
var archiveTypes = set("application/zip", "application/x-zip-compressed", "application/x-zip", "multipart/x-zip")

func set(items ...string) map[string]bool {
	m := make(map[string]bool, len(items))
	for _, s := range items {
		m[strings.ToLower(s)] = true
	}
	return m
}

type compiled struct {
	exts  map[string]bool
	types map[string]bool
}

func compile(p *Policy) compiled {
	return compiled{exts: set(p.BlockedExtensions...), types: set(p.BlockedTypes...)}
}

type inspector struct {
	lim      Config
	pol      compiled
	findings []Finding
	seen     map[Finding]bool
	parts    int
	budget   int64
}

// Inspect walks the MIME structure of the message in r and returns what
// it finds under policy p, within the limits of cfg (cfg.Policy is not
// used). It reads r to the end or until a limit is reached; its error is
// r's read error, never a parse problem.
func Inspect(r io.Reader, cfg Config, p *Policy) ([]Finding, error) {
	in := &inspector{lim: cfg, pol: compile(p), seen: map[Finding]bool{}, budget: cfg.MaxTotalBytes}
	er := &errReader{r: r}
	e, err := gomessage.Read(er)
	if e == nil {
		if er.err != nil {
			return nil, er.err
		}
		_ = err // an unparsable header: nothing to inspect
		return nil, nil
	}
	in.entity(e, 0)
	if er.err != nil {
		return in.findings, er.err
	}
	return in.findings, nil
}

// errReader remembers the underlying reader's error, so that a failing
// spool file is not mistaken for a malformed message.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

func (in *inspector) add(f Finding) {
	key := f
	key.Detail = ""
	if in.seen[key] {
		return
	}
	in.seen[key] = true
	in.findings = append(in.findings, f)
}

func (in *inspector) limit(name, where, detail string) {
	in.add(Finding{Kind: ArchiveLimit, Name: name, Where: where, Detail: detail})
}

func (in *inspector) entity(e *gomessage.Entity, depth int) {
	if depth > in.lim.MaxDepth {
		in.add(Finding{Kind: MIMEDepth, Detail: fmt.Sprintf("MIME nesting deeper than max_depth (%d)", in.lim.MaxDepth)})
		return
	}
	if mr := e.MultipartReader(); mr != nil {
		for {
			p, err := mr.NextPart()
			if p == nil {
				if err != nil && err != io.EOF {
					in.limit("", "", "malformed multipart: "+err.Error())
				}
				return
			}
			in.parts++
			if in.parts > in.lim.MaxParts {
				in.limit("", "", "more MIME parts than max_parts")
				return
			}
			in.entity(p, depth+1)
		}
	}
	mediaType, _, _ := e.Header.ContentType()
	mediaType = strings.ToLower(mediaType)
	names := partNames(e.Header)
	for _, n := range names {
		in.checkName(n, "")
	}
	var display string
	if len(names) > 0 {
		display = cleanName(names[0]).display
	}
	if in.pol.types[mediaType] {
		in.add(Finding{Kind: BlockedType, Name: display, Detail: "type " + mediaType})
	}
	if mediaType == "message/rfc822" || mediaType == "message/global" {
		if inner, _ := gomessage.Read(e.Body); inner != nil {
			in.entity(inner, depth+1)
		}
		return
	}
	if strings.HasPrefix(mediaType, "text/") && len(names) == 0 {
		return // body text: nothing to sniff
	}
	if in.budget <= 0 {
		in.limit(display, "", "max_total_bytes read")
		return
	}
	head := make([]byte, 512)
	n, _ := io.ReadFull(e.Body, head)
	head = head[:n]
	in.budget -= int64(n)
	if t := sniff(head); t != "" && in.pol.types[t] {
		in.add(Finding{Kind: BlockedType, Name: display, Detail: "type " + t + " (sniffed)"})
	}
	isZip := bytes.HasPrefix(head, []byte("PK\x03\x04")) || archiveTypes[mediaType]
	for _, nm := range names {
		isZip = isZip || cleanName(nm).ext == ".zip"
	}
	if !isZip || in.lim.MaxArchiveNesting < 1 {
		return
	}
	max := min(in.lim.MaxArchiveBytes, in.budget)
	rest, _ := io.ReadAll(io.LimitReader(e.Body, max-int64(n)+1))
	in.budget -= int64(len(rest))
	if int64(n+len(rest)) > max {
		in.limit(display, "", "archive larger than max_archive_bytes")
		return
	}
	if display == "" {
		display = "unnamed.zip"
	}
	in.zip(append(head, rest...), display, 1)
}

// zip inspects the entries of one in-memory ZIP archive found at where.
func (in *inspector) zip(data []byte, where string, level int) {
	if n, ok := zipEntryCount(data); !ok {
		in.limit("", where, "not a readable ZIP archive")
		return
	} else if n > in.lim.MaxArchiveEntries {
		in.limit("", where, "more entries than max_archive_entries")
		return
	}
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil && zr == nil {
		in.limit("", where, "not a readable ZIP archive: "+err.Error())
		return
	}
	encrypted := false
	for i, f := range zr.File {
		if i >= in.lim.MaxArchiveEntries {
			in.limit("", where, "more entries than max_archive_entries")
			break
		}
		base := f.Name
		if j := strings.LastIndexAny(base, "/\\"); j >= 0 {
			base = base[j+1:]
		}
		if base == "" { // a directory
			continue
		}
		if f.Flags&1 != 0 {
			encrypted = true
		}
		in.checkName(base, where)
		cn := cleanName(base)
		if cn.ext != ".zip" || f.Flags&1 != 0 {
			continue
		}
		if level >= in.lim.MaxArchiveNesting {
			in.limit(cn.display, where, "archive nested deeper than max_archive_nesting")
			continue
		}
		max := min(in.lim.MaxArchiveBytes, in.budget)
		if f.UncompressedSize64 > uint64(max) {
			in.limit(cn.display, where, "nested archive larger than max_archive_bytes")
			continue
		}
		rc, err := f.Open()
		if err != nil {
			in.limit(cn.display, where, "unreadable nested archive: "+err.Error())
			continue
		}
		// The declared size may lie (zip bombs): never read more than max.
		inner, err := io.ReadAll(io.LimitReader(rc, max+1))
		rc.Close()
		in.budget -= int64(len(inner))
		if int64(len(inner)) > max {
			in.limit(cn.display, where, "nested archive larger than max_archive_bytes")
			continue
		}
		if err != nil && !errors.Is(err, zip.ErrChecksum) {
			in.limit(cn.display, where, "unreadable nested archive: "+err.Error())
			continue
		}
		in.zip(inner, where+"/"+cn.display, level+1)
	}
	if encrypted {
		in.add(Finding{Kind: EncryptedArchive, Name: where, Detail: "encrypted entries"})
	}
}

// zipEntryCount reads the entry count from the end-of-central-directory
// record, so that an archive claiming millions of entries is refused before
// archive/zip allocates for them. ZIP64 archives report 0xFFFF and count
// as too many only if the limit is below that.
func zipEntryCount(data []byte) (int, bool) {
	const eocdLen = 22
	if len(data) < eocdLen {
		return 0, false
	}
	start := max(0, len(data)-eocdLen-65535)
	i := bytes.LastIndex(data[start:], []byte("PK\x05\x06"))
	if i < 0 || start+i+eocdLen > len(data) {
		return 0, false
	}
	rec := data[start+i:]
	return int(binary.LittleEndian.Uint16(rec[10:12])), true
}

// sniff recognises executables from their first bytes.
func sniff(head []byte) string {
	switch {
	case len(head) >= 64 && head[0] == 'M' && head[1] == 'Z':
		// A DOS header; check for the PE header it points at when visible.
		off := int(binary.LittleEndian.Uint32(head[60:64]))
		if off < 64 || (off+4 <= len(head) && string(head[off:off+4]) != "PE\x00\x00") {
			return ""
		}
		return "application/x-dosexec"
	case bytes.HasPrefix(head, []byte("\x7fELF")):
		return "application/x-executable"
	}
	return ""
}

// partNames returns the distinct file names a part declares: the
// Content-Disposition filename and the Content-Type name (mail clients
// differ in which they show and use). Malformed parameters are still read.
func partNames(h gomessage.Header) []string {
	var out []string
	addName := func(n string) {
		if n == "" {
			return
		}
		for _, o := range out {
			if o == n {
				return
			}
		}
		out = append(out, n)
	}
	_, dp, err := h.ContentDisposition()
	if err == nil {
		addName(dp["filename"])
	} else {
		for _, n := range lenientParams(h.Get("Content-Disposition"), "filename") {
			addName(n)
		}
	}
	_, tp, err := h.ContentType()
	if err == nil {
		addName(tp["name"])
	} else {
		for _, n := range lenientParams(h.Get("Content-Type"), "name") {
			addName(n)
		}
	}
	return out
}

// lenientParams extracts every name="value", name=value and
// name*=charset”percent-encoded value from a header value that
// mime.ParseMediaType refused (duplicate or broken parameters), so that a
// malformed header cannot hide a file name.
func lenientParams(v, name string) []string {
	var out []string
	lv := strings.ToLower(v)
	for i := 0; i < len(lv); {
		j := strings.Index(lv[i:], name)
		if j < 0 {
			break
		}
		j += i
		i = j + len(name)
		if j > 0 && lv[j-1] != ';' && lv[j-1] != ' ' && lv[j-1] != '\t' {
			continue
		}
		rest := v[i:]
		ext := false
		if strings.HasPrefix(rest, "*=") {
			ext, rest = true, rest[2:]
		} else if strings.HasPrefix(rest, "=") {
			rest = rest[1:]
		} else {
			continue
		}
		var val string
		if strings.HasPrefix(rest, `"`) {
			val = rest[1:]
			if k := strings.IndexByte(val, '"'); k >= 0 {
				val = val[:k]
			}
		} else {
			val = rest
			if k := strings.IndexAny(val, "; \t"); k >= 0 {
				val = val[:k]
			}
		}
		if ext {
			if k := strings.LastIndex(val, "''"); k >= 0 {
				val = val[k+2:]
			}
			if dec, err := url.PathUnescape(val); err == nil {
				val = dec
			}
		} else if dec, err := wordDecoder.DecodeHeader(val); err == nil {
			val = dec
		}
		if val != "" {
			out = append(out, val)
		}
	}
	return out
}

var wordDecoder = mime.WordDecoder{CharsetReader: func(cs string, r io.Reader) (io.Reader, error) {
	if gomessage.CharsetReader == nil {
		return nil, errors.New("no charset support")
	}
	return gomessage.CharsetReader(cs, r)
}}

type cleaned struct {
	name      string // invisible characters removed, trailing dots and spaces trimmed
	display   string
	ext       string // lower-case final extension with the dot
	stem      string // name without the final extension
	deceptive bool
}

// invisible reports characters that change how a name is displayed
// without being seen: bidi controls and zero-width characters.
func invisible(r rune) bool {
	switch {
	case r >= 0x202A && r <= 0x202E, r >= 0x2066 && r <= 0x2069, r == 0x200E, r == 0x200F, r == 0x061C:
		return true
	case r >= 0x200B && r <= 0x200D, r == 0x2060, r == 0xFEFF, r == 0x00AD:
		return true
	}
	return false
}

func cleanName(raw string) cleaned {
	var c cleaned
	// A NUL ends the name for C code: "evil.exe\x00.pdf" is evil.exe.
	if i := strings.IndexByte(raw, 0); i >= 0 {
		raw, c.deceptive = raw[:i], true
	}
	var b strings.Builder
	for _, r := range raw {
		if invisible(r) {
			c.deceptive = true
			continue
		}
		if r == utf8.RuneError || r < 0x20 || r == 0x7f {
			b.WriteRune('?')
			continue
		}
		b.WriteRune(r)
	}
	// Windows ignores trailing dots and spaces: "evil.exe. " runs evil.exe.
	c.name = strings.TrimRight(b.String(), ". \t")
	c.stem = c.name
	if i := strings.LastIndexByte(c.name, '.'); i >= 0 {
		c.ext, c.stem = strings.ToLower(c.name[i:]), c.name[:i]
	}
	c.display = display(c.name)
	return c
}

// display renders a name for an SMTP reply: printable ASCII only, at most
// 64 bytes, keeping the end.
func display(s string) string {
	b := make([]byte, 0, len(s))
	for _, r := range s {
		if r >= 0x20 && r < 0x7f && r != '(' && r != ')' {
			b = append(b, byte(r))
		} else {
			b = append(b, '?')
		}
	}
	if len(b) > 64 {
		b = append([]byte("..."), b[len(b)-61:]...)
	}
	return string(b)
}

func (in *inspector) checkName(raw, where string) {
	c := cleanName(raw)
	if c.deceptive {
		in.add(Finding{Kind: DeceptiveName, Name: c.display, Where: where, Detail: "invisible or bidi control characters in the name"})
	}
	if c.ext != "" && in.pol.exts[c.ext] {
		in.add(Finding{Kind: BlockedExtension, Name: c.display, Where: where, Detail: "extension " + c.ext})
	}
	// Double extension: "invoice.pdf.exe", "invoice.pdf      .js".
	stem := c.stem
	if c.ext == "" || stem == "" {
		return
	}
	hidden := executableExtensions[c.ext] || in.pol.exts[c.ext]
	if !hidden {
		return
	}
	stemTrim := strings.TrimRight(stem, " \t_-")
	padded := len(stem)-len(stemTrim) >= 3
	innerExt := ""
	if i := strings.LastIndexByte(stemTrim, '.'); i >= 0 {
		innerExt = strings.ToLower(stemTrim[i:])
	}
	if decoyExtensions[innerExt] || padded {
		in.add(Finding{Kind: DoubleExtension, Name: c.display, Where: where, Detail: "looks like " + innerExt + ", is " + c.ext})
	}
}
