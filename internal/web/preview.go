package web

import (
	"bytes"
	"io"
	"mime"
	"strings"

	"github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset" // decode non-UTF-8 charsets
	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// Limits of the safe preview: how much of a message is parsed and shown.
const (
	previewMaxRead  = 16 << 20
	previewMaxText  = 256 << 10
	previewMaxParts = 200
	previewMaxDepth = 10
)

type header struct{ Name, Value string }

type attachment struct {
	Name, Type string
	Size       int64
}

// preview is what the safe preview shows of a message: decoded headers,
// the text, the HTML (sanitized, for a sandboxed frame) and the list of
// attachments. Nothing in it is ever executed.
type preview struct {
	Headers                          []header
	From, To, Cc, Subject, Date, RTo string
	Text                             string
	TextFromHTML                     bool
	HTML                             string
	Attachments                      []attachment
	Truncated                        bool
	Problem                          string
}

func decodeHeader(v string) string {
	d := new(mime.WordDecoder)
	d.CharsetReader = message.CharsetReader
	if s, err := d.DecodeHeader(v); err == nil {
		return s
	}
	return v
}

// parsePreview reads a raw message; it never fails, it reports problems
// in the result.
func parsePreview(r io.Reader) *preview {
	p := &preview{}
	lr := &io.LimitedReader{R: r, N: previewMaxRead}
	ent, err := message.Read(lr)
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		if ent == nil {
			p.Problem = "The message could not be parsed."
			return p
		}
	}
	fields := ent.Header.Fields()
	for fields.Next() {
		v := decodeHeader(fields.Value())
		p.Headers = append(p.Headers, header{fields.Key(), v})
		switch strings.ToLower(fields.Key()) {
		case "from":
			p.From = v
		case "to":
			p.To = v
		case "cc":
			p.Cc = v
		case "subject":
			p.Subject = v
		case "date":
			p.Date = v
		case "reply-to":
			p.RTo = v
		}
	}
	parts := 0
	var walk func(e *message.Entity, depth int)
	walk = func(e *message.Entity, depth int) {
		if parts >= previewMaxParts || depth > previewMaxDepth {
			p.Truncated = true
			return
		}
		parts++
		if mr := e.MultipartReader(); mr != nil {
			for {
				sub, err := mr.NextPart()
				if err == io.EOF {
					return
				}
				if err != nil && (sub == nil || !message.IsUnknownCharset(err)) {
					if sub == nil {
						p.Problem = "Part of the message is malformed; the preview is incomplete."
						return
					}
				}
				walk(sub, depth+1)
			}
		}
		ct, ctParams, _ := e.Header.ContentType()
		if ct == "" {
			ct = "text/plain"
		}
		disp, dParams, _ := e.Header.ContentDisposition()
		name := dParams["filename"]
		if name == "" {
			name = ctParams["name"]
		}
		name = decodeHeader(name)
		isAttach := disp == "attachment" || name != "" || !strings.HasPrefix(ct, "text/") && ct != "message/rfc822"
		if ct == "message/rfc822" && disp != "attachment" {
			isAttach = true
		}
		if !isAttach && ct == "text/plain" && p.Text == "" {
			b, err := io.ReadAll(io.LimitReader(e.Body, previewMaxText+1))
			if len(b) > previewMaxText {
				b = b[:previewMaxText]
				p.Truncated = true
			}
			if err != nil && len(b) == 0 {
				p.Problem = "The text could not be decoded."
			}
			p.Text = strings.ToValidUTF8(string(b), "\uFFFD")
			return
		}
		if !isAttach && ct == "text/html" && p.HTML == "" {
			b, _ := io.ReadAll(io.LimitReader(e.Body, previewMaxText+1))
			if len(b) > previewMaxText {
				b = b[:previewMaxText]
				p.Truncated = true
			}
			p.HTML = strings.ToValidUTF8(string(b), "\uFFFD")
			return
		}
		if isAttach {
			n, _ := io.Copy(io.Discard, e.Body)
			if name == "" {
				name = "(unnamed)"
			}
			p.Attachments = append(p.Attachments, attachment{Name: name, Type: ct, Size: n})
			return
		}
		io.Copy(io.Discard, e.Body)
	}
	walk(ent, 0)
	if lr.N <= 0 {
		p.Truncated = true
	}
	if p.Text == "" && p.HTML != "" {
		p.Text = htmlToText(p.HTML)
		p.TextFromHTML = true
	}
	return p
}

// htmlToText renders HTML as plain text: the text nodes, with line breaks
// at block elements; script, style and head content is dropped.
func htmlToText(s string) string {
	z := html.NewTokenizer(strings.NewReader(s))
	var b strings.Builder
	skip := 0
	for {
		switch z.Next() {
		case html.ErrorToken:
			return collapseBlank(b.String())
		case html.TextToken:
			if skip == 0 {
				b.Write(bytes.Join(bytes.Fields(z.Text()), []byte(" ")))
				b.WriteByte(' ')
			}
		case html.StartTagToken, html.SelfClosingTagToken:
			name, _ := z.TagName()
			switch atom.Lookup(name) {
			case atom.Script, atom.Style, atom.Head, atom.Title:
				if t := z.Token(); t.Type == html.StartTagToken {
					skip++
				}
			case atom.Br, atom.P, atom.Div, atom.Tr, atom.Li, atom.H1, atom.H2, atom.H3, atom.H4, atom.Table, atom.Blockquote:
				b.WriteByte('\n')
			}
		case html.EndTagToken:
			name, _ := z.TagName()
			switch atom.Lookup(name) {
			case atom.Script, atom.Style, atom.Head, atom.Title:
				if skip > 0 {
					skip--
				}
			case atom.P, atom.Div, atom.Tr, atom.H1, atom.H2, atom.H3, atom.H4, atom.Table:
				b.WriteByte('\n')
			}
		}
	}
}

func collapseBlank(s string) string {
	lines := strings.Split(s, "\n")
	var out []string
	blank := 0
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" {
			blank++
			if blank > 1 {
				continue
			}
		} else {
			blank = 0
		}
		out = append(out, l)
	}
	return strings.TrimSpace(strings.Join(out, "\n"))
}

// Elements dropped with everything inside them, and elements dropped
// (keeping their content) from the sanitized HTML.
var (
	dropWithContent = map[atom.Atom]bool{atom.Script: true, atom.Noscript: true, atom.Iframe: true, atom.Object: true,
		atom.Embed: true, atom.Applet: true, atom.Frameset: true, atom.Frame: true, atom.Template: true, atom.Svg: true, atom.Math: true}
	dropTag = map[atom.Atom]bool{atom.Meta: true, atom.Base: true, atom.Link: true, atom.Form: true, atom.Input: true,
		atom.Button: true, atom.Select: true, atom.Textarea: true, atom.Html: true, atom.Body: true, atom.Head: true, atom.Title: true}
)

// sanitizeHTML removes active content from a message's HTML: scripts,
// frames, forms, meta refresh, event handlers, links and every URL that is
// not a data: image. The result is additionally served under a CSP with
// no script and no network access, inside a sandboxed frame.
func sanitizeHTML(s string) string {
	z := html.NewTokenizer(strings.NewReader(s))
	var b strings.Builder
	skip := 0
	for {
		tt := z.Next()
		switch tt {
		case html.ErrorToken:
			return b.String()
		case html.TextToken:
			if skip == 0 {
				b.WriteString(html.EscapeString(string(z.Text())))
			}
		case html.CommentToken, html.DoctypeToken:
		case html.StartTagToken, html.SelfClosingTagToken, html.EndTagToken:
			t := z.Token()
			if dropWithContent[t.DataAtom] || t.DataAtom == 0 && strings.Contains(t.Data, ":") {
				if tt == html.StartTagToken {
					skip++
				} else if tt == html.EndTagToken && skip > 0 {
					skip--
				}
				continue
			}
			if skip > 0 || dropTag[t.DataAtom] || t.DataAtom == 0 {
				continue
			}
			var attrs []html.Attribute
			for _, a := range t.Attr {
				k := strings.ToLower(a.Key)
				switch {
				case strings.HasPrefix(k, "on"), a.Namespace != "":
				case k == "href", k == "action", k == "formaction", k == "srcset", k == "background", k == "poster",
					k == "http-equiv", k == "ping", k == "xmlns", k == "target", k == "lowsrc", k == "dynsrc", k == "longdesc", k == "usemap":
				case k == "src":
					if strings.HasPrefix(strings.ToLower(strings.TrimSpace(a.Val)), "data:image/") {
						attrs = append(attrs, a)
					}
				case k == "style":
					if !strings.Contains(strings.ToLower(a.Val), "url(") && !strings.Contains(strings.ToLower(a.Val), "expression") {
						attrs = append(attrs, a)
					}
				default:
					attrs = append(attrs, a)
				}
			}
			t.Attr = attrs
			if t.DataAtom == atom.Style {
				// Keep CSS, but not its external references.
				if tt == html.StartTagToken {
					css := ""
					if z.Next() == html.TextToken {
						css = string(z.Raw())
					}
					if strings.Contains(strings.ToLower(css), "url(") || strings.Contains(strings.ToLower(css), "@import") {
						css = ""
					}
					b.WriteString("<style>")
					b.WriteString(strings.ReplaceAll(css, "</", "<\\/"))
					b.WriteString("</style>")
				}
				continue
			}
			b.WriteString(t.String())
		}
	}
}
