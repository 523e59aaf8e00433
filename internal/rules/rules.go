// Package rules is Moat's content rule language, a readable subset of
// SpamAssassin's:
//
//	header   NAME Subject =~ /re/flags     decoded header field (any instance)
//	header   NAME Subject !~ /re/flags     negated
//	header   NAME exists:Reply-To          the field is present
//	header   NAME ALL =~ /re/              all fields, "Name: value" lines
//	body     NAME /re/flags                subject + visible text of every text part
//	rawbody  NAME /re/flags                undecoded body
//	full     NAME /re/flags                raw header + raw body
//	uri      NAME /re/flags                each URL found (text and HTML)
//	meta     NAME (A && !B) || C > 0       boolean (and sums: A + B + C >= 2) over other rules
//	score    NAME 1.5
//	describe NAME text
//	symbol   NAME                          declares another check's symbol (SPF_FAIL, ...) for meta rules
//
// Flags: i (case-insensitive), m (multi-line), s (dot matches newline).
// Regular expressions are Go RE2: no look-around, no back-references. Rules
// whose name starts with "__" are building blocks for meta rules and score
// nothing. Moat adds pseudo header fields for rules: X-Moat-Malformed
// (MIME defects), X-Moat-Hidden-Text, X-Moat-Attachment ("name type"),
// X-Moat-Text-Only-In, X-Moat-Markup and X-Moat-Text-Size (see TargetFrom).
//
// A compiled Set matches efficiently: every regex's required literal (if
// it has one) goes into an Aho-Corasick automaton per target, one pass over
// the text finds which literals occur, and only those rules' regexes run.
package rules

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"regexp/syntax"
	"sort"
	"strconv"
	"strings"

	"moat.dev/moat/internal/message"
)

// Kind is the target a rule tests.
type Kind int

const (
	KindHeader Kind = iota
	KindBody
	KindRawBody
	KindFull
	KindURI
	KindMeta
	numTargets = KindMeta
)

var kindNames = map[string]Kind{"header": KindHeader, "body": KindBody, "rawbody": KindRawBody, "full": KindFull, "uri": KindURI, "meta": KindMeta}

// Rule is one compiled rule.
type Rule struct {
	Name     string
	Kind     Kind
	Header   string // header name (KindHeader), "ALL" for all fields
	Exists   bool   // header exists: test
	Negate   bool   // !~
	Re       *regexp.Regexp
	Literals []string // lower-cased literals, one of which every match contains (nil = always run the regex)
	Meta     expr
	Score    float64
	Describe string
	Pos      string // file:line of the definition
}

// Set is a compiled rule set.
type Set struct {
	Rules []*Rule
	byKey map[string]*Rule
	order []*Rule // meta rules in dependency order
	ac    [numTargets]*acMatcher
	acIdx [numTargets][]*Rule // automaton pattern index → rule (a rule may own several patterns)
	plain [numTargets][]*Rule // rules without a usable literal
}

// ParseFiles parses and compiles the files in order; later files may
// override scores and descriptions of earlier ones.
func ParseFiles(paths ...string) (*Set, error) {
	p := newParser()
	if err := p.parseFiles(paths); err != nil {
		return nil, err
	}
	return p.compile()
}

// parseFiles parses the files in order.
func (p *parser) parseFiles(paths []string) error {
	for _, path := range paths {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		err = p.parse(path, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// Parse parses one rules text; name is used in error messages.
func Parse(name string, r io.Reader) (*Set, error) {
	p := newParser()
	if err := p.parse(name, r); err != nil {
		return nil, err
	}
	return p.compile()
}

type parser struct {
	external map[string]bool
	rules    map[string]*Rule
	order    []string
	scores   map[string]float64
	scorePos map[string]string
	descr    map[string]string
}

func newParser() *parser {
	return &parser{external: map[string]bool{}, rules: map[string]*Rule{}, scores: map[string]float64{}, scorePos: map[string]string{}, descr: map[string]string{}}
}

var nameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

func (p *parser) parse(file string, r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	ln := 0
	for sc.Scan() {
		ln++
		pos := fmt.Sprintf("%s:%d", file, ln)
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		kw, rest := cut(line)
		name, rest := cut(rest)
		if kw == "" || name == "" {
			return fmt.Errorf("%s: expected KEYWORD NAME ...", pos)
		}
		if !nameRe.MatchString(name) {
			return fmt.Errorf("%s: bad rule name %q", pos, name)
		}
		switch kw {
		case "score":
			f, err := strconv.ParseFloat(strings.Fields(rest + " x")[0], 64)
			if err != nil || rest == "" {
				return fmt.Errorf("%s: score %s: expected a number, got %q", pos, name, rest)
			}
			p.scores[name] = f
			p.scorePos[name] = pos
			continue
		case "describe":
			p.descr[name] = rest
			continue
		case "tflags", "lang":
			continue // accepted for SpamAssassin compatibility, ignored
		case "symbol":
			p.external[name] = true // a symbol of another check, usable in meta rules
			continue
		}
		kind, ok := kindNames[kw]
		if !ok {
			return fmt.Errorf("%s: unknown keyword %q", pos, kw)
		}
		if _, dup := p.rules[name]; dup {
			return fmt.Errorf("%s: rule %s defined twice (first at %s)", pos, name, p.rules[name].Pos)
		}
		rule := &Rule{Name: name, Kind: kind, Pos: pos}
		var err error
		switch kind {
		case KindHeader:
			err = parseHeaderRule(rule, rest)
		case KindMeta:
			rule.Meta, err = parseExpr(rest)
		default:
			rule.Re, err = parseRegex(rest)
		}
		if err != nil {
			return fmt.Errorf("%s: %s %s: %v", pos, kw, name, err)
		}
		p.rules[name] = rule
		p.order = append(p.order, name)
	}
	return sc.Err()
}

func cut(s string) (string, string) {
	s = strings.TrimSpace(s)
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimSpace(s[i+1:])
}

func parseHeaderRule(r *Rule, rest string) error {
	if strings.HasPrefix(rest, "exists:") {
		r.Exists = true
		r.Header = strings.TrimSpace(strings.TrimPrefix(rest, "exists:"))
		if r.Header == "" {
			return fmt.Errorf("exists: needs a header name")
		}
		return nil
	}
	hdr, rest := cut(rest)
	op, rest := cut(rest)
	switch op {
	case "=~":
	case "!~":
		r.Negate = true
	default:
		return fmt.Errorf("expected =~ or !~ after header name, got %q", op)
	}
	r.Header = hdr
	re, err := parseRegex(rest)
	r.Re = re
	return err
}

// parseRegex parses /re/flags (or m{re}flags) into a Go regexp.
func parseRegex(s string) (*regexp.Regexp, error) {
	s = strings.TrimSpace(s)
	var body, flags string
	switch {
	case strings.HasPrefix(s, "/"):
		end := strings.LastIndexByte(s, '/')
		if end <= 0 {
			return nil, fmt.Errorf("regex %q: missing closing /", s)
		}
		body, flags = s[1:end], s[end+1:]
	case strings.HasPrefix(s, "m{"):
		end := strings.LastIndexByte(s, '}')
		if end <= 1 {
			return nil, fmt.Errorf("regex %q: missing closing }", s)
		}
		body, flags = s[2:end], s[end+1:]
	default:
		return nil, fmt.Errorf("regex %q: expected /.../flags", s)
	}
	prefix := ""
	for _, f := range strings.TrimSpace(flags) {
		switch f {
		case 'i', 'm', 's':
			prefix += string(f)
		default:
			return nil, fmt.Errorf("regex %q: unsupported flag %q", s, f)
		}
	}
	body = strings.ReplaceAll(body, `\/`, `/`)
	if prefix != "" {
		body = "(?" + prefix + ")" + body
	}
	re, err := regexp.Compile(body)
	if err != nil {
		return nil, fmt.Errorf("regex %q: %v", s, err)
	}
	return re, nil
}

func (p *parser) compile() (*Set, error) {
	s := &Set{byKey: map[string]*Rule{}}
	for _, name := range p.order {
		r := p.rules[name]
		r.Score = 1
		if strings.HasPrefix(name, "__") {
			r.Score = 0
		}
		if sc, ok := p.scores[name]; ok {
			r.Score = sc
		}
		r.Describe = p.descr[name]
		s.Rules = append(s.Rules, r)
		s.byKey[name] = r
	}
	for name, pos := range p.scorePos {
		if s.byKey[name] == nil {
			return nil, fmt.Errorf("%s: score for undefined rule %s", pos, name)
		}
	}
	// Meta rules: check references, order by dependencies, reject cycles.
	state := map[string]int{}
	var visit func(r *Rule, path []string) error
	visit = func(r *Rule, path []string) error {
		if r.Kind != KindMeta {
			return nil
		}
		switch state[r.Name] {
		case 1:
			return fmt.Errorf("%s: meta %s: dependency cycle %s", r.Pos, r.Name, strings.Join(append(path, r.Name), " -> "))
		case 2:
			return nil
		}
		state[r.Name] = 1
		for _, ref := range r.Meta.refs(nil) {
			dep := s.byKey[ref]
			if dep == nil && p.external[ref] {
				continue
			}
			if dep == nil {
				return fmt.Errorf("%s: meta %s: unknown rule %s", r.Pos, r.Name, ref)
			}
			if err := visit(dep, append(path, r.Name)); err != nil {
				return err
			}
		}
		state[r.Name] = 2
		s.order = append(s.order, r)
		return nil
	}
	for _, r := range s.Rules {
		if err := visit(r, nil); err != nil {
			return nil, err
		}
	}
	// Literal prefilter per target.
	var pats [numTargets][]string
	for _, r := range s.Rules {
		if r.Kind == KindMeta {
			continue
		}
		if !r.Negate && !r.Exists {
			r.Literals = requiredLiterals(r.Re)
		}
		if len(r.Literals) > 0 {
			for _, l := range r.Literals {
				pats[r.Kind] = append(pats[r.Kind], l)
				s.acIdx[r.Kind] = append(s.acIdx[r.Kind], r)
			}
		} else {
			s.plain[r.Kind] = append(s.plain[r.Kind], r)
		}
	}
	for k := Kind(0); k < numTargets; k++ {
		if len(pats[k]) > 0 {
			s.ac[k] = newAC(pats[k])
		}
	}
	return s, nil
}

// requiredLiterals returns lower-cased ASCII strings of at least 3 bytes
// such that every match of re contains at least one of them, or nil.
func requiredLiterals(re *regexp.Regexp) []string {
	t, err := syntax.Parse(re.String(), syntax.Perl)
	if err != nil {
		return nil
	}
	set := need(t.Simplify())
	if len(set) == 0 || len(set) > 32 {
		return nil
	}
	out := make([]string, 0, len(set))
	for _, l := range set {
		if len(l) < 3 {
			return nil
		}
		for i := 0; i < len(l); i++ {
			if l[i] >= 0x80 {
				// The automaton folds ASCII case only; non-ASCII literals
				// (Unicode case folding) go without a prefilter.
				return nil
			}
		}
		out = append(out, strings.ToLower(l))
	}
	return out
}

// minLen is the length of the shortest literal of a set (0 for none).
func minLen(set []string) int {
	if len(set) == 0 {
		return 0
	}
	m := len(set[0])
	for _, s := range set[1:] {
		m = min(m, len(s))
	}
	return m
}

// need returns a set of literals one of which every match of t contains.
func need(t *syntax.Regexp) []string {
	switch t.Op {
	case syntax.OpLiteral:
		return []string{string(t.Rune)}
	case syntax.OpCapture, syntax.OpPlus:
		return need(t.Sub[0])
	case syntax.OpRepeat:
		if t.Min >= 1 {
			return need(t.Sub[0])
		}
	case syntax.OpAlternate:
		var all []string
		for _, sub := range t.Sub {
			n := need(sub)
			if len(n) == 0 {
				return nil
			}
			all = append(all, n...)
		}
		return all
	case syntax.OpConcat:
		var best []string
		cur := ""
		for _, sub := range t.Sub {
			if sub.Op == syntax.OpLiteral {
				cur += string(sub.Rune)
				if len(cur) > minLen(best) {
					best = []string{cur}
				}
				continue
			}
			cur = ""
			if n := need(sub); minLen(n) > minLen(best) {
				best = n
			}
		}
		return best
	}
	return nil
}

// Hit is one rule that matched.
type Hit struct {
	Name     string
	Score    float64
	Describe string
}

// Target is the text a rule set runs over. Build it with TargetFrom.
type Target struct {
	Headers []HeaderField // decoded fields, in order
	Body    string        // subject + visible text
	RawBody string
	Full    string
	URIs    []string
}

// HeaderField is one decoded header field.
type HeaderField struct{ Name, Value string }

// Match runs the set over t and returns the hits of scored rules (names
// not starting with "__"), sorted by name. extra gives the results of
// rules evaluated elsewhere (other checks' symbols) that meta rules may
// reference.
func (s *Set) Match(t *Target, extra map[string]bool) []Hit {
	matched := map[string]bool{}
	for k, v := range extra {
		matched[k] = v
	}
	texts := [numTargets]string{}
	texts[KindBody] = t.Body
	texts[KindRawBody] = t.RawBody
	texts[KindFull] = t.Full
	texts[KindURI] = strings.Join(t.URIs, "\n")
	var allHdr strings.Builder
	for _, h := range t.Headers {
		allHdr.WriteString(h.Name)
		allHdr.WriteString(": ")
		allHdr.WriteString(h.Value)
		allHdr.WriteByte('\n')
	}
	texts[KindHeader] = allHdr.String()
	for k := Kind(0); k < numTargets; k++ {
		cands := s.plain[k]
		if ac := s.ac[k]; ac != nil {
			found := ac.find(texts[k])
			for i, r := range s.acIdx[k] {
				if found[i] {
					cands = append(cands[:len(cands):len(cands)], r)
				}
			}
		}
		for _, r := range cands {
			if s.test(r, t, texts[k]) {
				matched[r.Name] = true
			}
		}
		// Negated and exists: header rules live in plain (no literal);
		// a negated rule is true when nothing matches, handled in test.
	}
	for _, r := range s.order {
		if r.Meta.eval(matched) != 0 {
			matched[r.Name] = true
		}
	}
	var hits []Hit
	for _, r := range s.Rules {
		if matched[r.Name] && !strings.HasPrefix(r.Name, "__") && r.Score != 0 {
			hits = append(hits, Hit{Name: r.Name, Score: r.Score, Describe: r.Describe})
		}
	}
	sort.Slice(hits, func(i, j int) bool { return hits[i].Name < hits[j].Name })
	return hits
}

func (s *Set) test(r *Rule, t *Target, text string) bool {
	switch r.Kind {
	case KindHeader:
		if r.Header == "ALL" {
			return r.Re.MatchString(text) != r.Negate
		}
		found := false
		for _, h := range t.Headers {
			if !strings.EqualFold(h.Name, r.Header) {
				continue
			}
			if r.Exists {
				return true
			}
			found = true
			if r.Re.MatchString(h.Value) {
				return !r.Negate
			}
		}
		if r.Exists {
			return false
		}
		// SpamAssassin: a missing header is tested as the empty string.
		if !found && r.Re.MatchString("") {
			return !r.Negate
		}
		return r.Negate
	case KindURI:
		for _, u := range t.URIs {
			if r.Re.MatchString(u) {
				return true
			}
		}
		return false
	default:
		return r.Re.MatchString(text)
	}
}

// TargetFrom builds the match target of a decoded message, adding the
// pseudo header fields X-Moat-Malformed, X-Moat-Hidden-Text,
// X-Moat-Attachment, X-Moat-Text-Only-In ("html" or "plain" when the
// message has text of one kind only), X-Moat-Markup (the distinct HTML
// tags and attributes, space-separated and space-framed, e.g.
// " font font.size=7 img.src ") and X-Moat-Text-Size (visible text
// length in bytes, whitespace runs counted once).
func TargetFrom(m *message.Message) *Target {
	t := &Target{Headers: make([]HeaderField, 0, len(m.Header)+4)}
	for _, f := range m.Header {
		t.Headers = append(t.Headers, HeaderField{Name: f.Name, Value: f.Value})
	}
	if len(m.Malformed) > 0 {
		t.Headers = append(t.Headers, HeaderField{Name: "X-Moat-Malformed", Value: strings.Join(m.Malformed, " ")})
	}
	if m.HiddenText != "" {
		t.Headers = append(t.Headers, HeaderField{Name: "X-Moat-Hidden-Text", Value: m.HiddenText})
	}
	for _, a := range m.Attachments {
		t.Headers = append(t.Headers, HeaderField{Name: "X-Moat-Attachment", Value: a.Filename + " " + a.ContentType})
	}
	if m.TextOnlyIn != "" {
		t.Headers = append(t.Headers, HeaderField{Name: "X-Moat-Text-Only-In", Value: m.TextOnlyIn})
	}
	if len(m.Markup) > 0 {
		seen := make(map[string]bool, len(m.Markup))
		var b strings.Builder
		for _, k := range m.Markup {
			if !seen[k] {
				seen[k] = true
				b.WriteByte(' ')
				b.WriteString(k)
			}
		}
		b.WriteByte(' ')
		t.Headers = append(t.Headers, HeaderField{Name: "X-Moat-Markup", Value: b.String()})
	}
	t.Headers = append(t.Headers, HeaderField{Name: "X-Moat-Text-Size", Value: strconv.Itoa(len(strings.Join(strings.Fields(m.Text), " ")))})
	t.Body = m.Subject + "\n" + m.Text
	t.RawBody = string(m.RawBody)
	t.Full = string(m.RawHeader) + "\n" + string(m.RawBody)
	for _, u := range m.URLs {
		t.URIs = append(t.URIs, u.Raw)
	}
	return t
}
