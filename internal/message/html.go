package message

import (
	"strconv"
	"strings"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

type link struct{ href, text string }

type rendered struct {
	text   string
	hidden string
	links  []link
	markup []string
}

// maxMarkup bounds the markup tokens kept per part.
const maxMarkup = 1000

// maxHTMLTokens bounds the work on one HTML part.
const maxHTMLTokens = 200000

type elem struct {
	a      atom.Atom
	hidden bool
	fg, bg string
}

// renderHTML returns the text a reader would see, the text hidden from them
// (display:none, visibility:hidden, font sizes below 3px or <font size=1>
// ... with tiny fonts, foreground colour equal to background colour), and
// every link target with its anchor text. script, style, head and
// comments produce no text.
func renderHTML(s string) rendered {
	z := html.NewTokenizer(strings.NewReader(s))
	var out rendered
	var vis, hid strings.Builder
	stack := []elem{{bg: "#ffffff", fg: "#000000"}}
	skip := 0 // inside script/style/head title is kept
	var curLink *link
	var linkText strings.Builder
	for n := 0; n < maxHTMLTokens; n++ {
		tt := z.Next()
		switch tt {
		case html.ErrorToken:
			out.text, out.hidden = collapse(vis.String()), collapse(hid.String())
			if curLink != nil {
				curLink.text = linkText.String()
				out.links = append(out.links, *curLink)
			}
			return out
		case html.TextToken:
			if skip > 0 {
				continue
			}
			t := string(z.Text())
			top := stack[len(stack)-1]
			if top.hidden {
				hid.WriteString(t)
			} else {
				vis.WriteString(t)
			}
			if curLink != nil {
				linkText.WriteString(t)
			}
		case html.StartTagToken, html.SelfClosingTagToken:
			tn, hasAttr := z.TagName()
			a := atom.Lookup(tn)
			parent := stack[len(stack)-1]
			e := elem{a: a, hidden: parent.hidden, fg: parent.fg, bg: parent.bg}
			var href, src string
			if len(out.markup) < maxMarkup {
				out.markup = append(out.markup, string(tn))
			}
			for hasAttr {
				var k, v []byte
				k, v, hasAttr = z.TagAttr()
				if len(out.markup) < maxMarkup {
					switch string(k) {
					case "color", "bgcolor", "size", "face", "align", "border", "width", "height":
						out.markup = append(out.markup, string(tn)+"."+string(k)+"="+strings.ToLower(string(v)))
					case "href", "src", "alt", "title", "style", "class", "id", "name", "value":
						out.markup = append(out.markup, string(tn)+"."+string(k))
					}
				}
				switch string(k) {
				case "href":
					href = string(v)
				case "src":
					src = string(v)
				case "style":
					applyStyle(&e, string(v))
				case "color":
					e.fg = normColor(string(v))
				case "bgcolor":
					e.bg = normColor(string(v))
				case "size":
					if a == atom.Font {
						if sz, err := strconv.Atoi(strings.TrimSpace(string(v))); err == nil && sz <= 0 {
							e.hidden = true
						}
					}
				case "hidden":
					e.hidden = true
				}
			}
			if e.fg != "" && e.fg == e.bg {
				e.hidden = true
			}
			switch a {
			case atom.Script, atom.Style, atom.Head:
				if tt == html.StartTagToken {
					skip++
				}
			case atom.Br, atom.P, atom.Div, atom.Tr, atom.Li, atom.H1, atom.H2, atom.H3, atom.Td, atom.Table:
				vis.WriteByte('\n')
			case atom.Img:
				if src != "" {
					out.links = append(out.links, link{href: src})
				}
				continue
			case atom.A, atom.Area:
				if href != "" {
					if curLink != nil {
						curLink.text = linkText.String()
						out.links = append(out.links, *curLink)
					}
					curLink = &link{href: href}
					linkText.Reset()
				}
			}
			if tt == html.StartTagToken && !voidElement(a) && len(stack) < 256 {
				stack = append(stack, e)
			}
		case html.EndTagToken:
			tn, _ := z.TagName()
			a := atom.Lookup(tn)
			switch a {
			case atom.Script, atom.Style, atom.Head:
				if skip > 0 {
					skip--
				}
			case atom.A, atom.Area:
				if curLink != nil {
					curLink.text = linkText.String()
					out.links = append(out.links, *curLink)
					curLink = nil
				}
			case atom.P, atom.Div, atom.Tr, atom.Li, atom.Td:
				vis.WriteByte('\n')
			}
			// Pop to the matching element, tolerating bad nesting.
			for i := len(stack) - 1; i > 0; i-- {
				if stack[i].a == a {
					stack = stack[:i]
					break
				}
			}
		}
	}
	out.text, out.hidden = collapse(vis.String()), collapse(hid.String())
	return out
}

func voidElement(a atom.Atom) bool {
	switch a {
	case atom.Br, atom.Img, atom.Hr, atom.Meta, atom.Link, atom.Input, atom.Area, atom.Base, atom.Col, atom.Wbr, atom.Embed, atom.Source:
		return true
	}
	return false
}

func applyStyle(e *elem, style string) {
	for _, decl := range strings.Split(strings.ToLower(style), ";") {
		k, v, ok := strings.Cut(decl, ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "!important"))
		v = strings.TrimSpace(v)
		switch k {
		case "display":
			if v == "none" {
				e.hidden = true
			}
		case "visibility":
			if v == "hidden" || v == "collapse" {
				e.hidden = true
			}
		case "font-size":
			if tinyFont(v) {
				e.hidden = true
			}
		case "opacity":
			if f, err := strconv.ParseFloat(v, 64); err == nil && f < 0.1 {
				e.hidden = true
			}
		case "color":
			e.fg = normColor(v)
		case "background-color", "background":
			e.bg = normColor(v)
		}
	}
}

// tinyFont reports font sizes below 3px (or 2pt, 0.2em).
func tinyFont(v string) bool {
	num := strings.TrimRight(v, "abcdefghijklmnopqrstuvwxyz%")
	unit := v[len(num):]
	f, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil {
		return false
	}
	switch unit {
	case "px", "":
		return f < 3
	case "pt":
		return f < 2
	case "em", "rem":
		return f < 0.2
	case "%":
		return f < 20
	}
	return false
}

var namedColors = map[string]string{"white": "#ffffff", "black": "#000000", "red": "#ff0000", "blue": "#0000ff", "green": "#008000", "yellow": "#ffff00", "gray": "#808080", "grey": "#808080", "silver": "#c0c0c0"}

func normColor(v string) string {
	v = strings.ToLower(strings.TrimSpace(v))
	if c, ok := namedColors[v]; ok {
		return c
	}
	if len(v) == 4 && v[0] == '#' {
		return "#" + string([]byte{v[1], v[1], v[2], v[2], v[3], v[3]})
	}
	if len(v) == 6 && !strings.HasPrefix(v, "#") && isHex(v) {
		return "#" + v
	}
	return v
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// collapse squeezes runs of blank space while keeping line breaks.
func collapse(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	lines := strings.Split(s, "\n")
	blank := 0
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) == 0 {
			blank++
			continue
		}
		if b.Len() > 0 {
			if blank > 0 {
				b.WriteString("\n")
			} else {
				b.WriteString("\n")
			}
		}
		blank = 0
		b.WriteString(strings.Join(f, " "))
	}
	return b.String()
}
