package classify

import (
	"sort"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"moat.dev/moat/internal/message"
)

// Feature is one hashed feature of a message. Name is filled only when
// names were asked for (explanations); scoring needs the hash alone.
type Feature struct {
	Hash uint64
	Name string
}

// FeatureSet selects the feature families extracted.
type FeatureSet struct {
	Grams    int  // character 4-grams over the first Grams bytes of raw header + decoded text (0 = off)
	Words    bool // word tokens of header fields, subject and body
	Pairs    bool // OSB word pairs (orthogonal sparse bigrams, window 5); needs Words
	Markup   bool // HTML tag and attribute tokens
	MaxWords int  // body words considered (the first N); 0 = 3000
	Headers  bool // sender, reply-path and relay domains, media type, mailer ("hd:")
}

// ignoredHeaders are added by filters along the way; trusting them would
// let an upstream filter (or a spammer forging it) decide for us.
var ignoredHeaders = map[string]bool{
	"X-Spam-Status": true, "X-Spam-Flag": true, "X-Spam-Level": true, "X-Spam-Score": true,
	"X-Spam-Checker-Version": true, "X-Spam-Report": true, "X-Bogosity": true, "X-Moat-Pass": true,
	"X-Spam": true, "X-Virus-Scanned": true, "X-Virus-Status": true, "Authentication-Results": true,
	"Content-Length": true, "Lines": true, "Status": true, "X-Status": true, "X-Keywords": true, "X-Uid": true,
}

// headerTokenLimit bounds tokens taken from one header field.
const headerTokenLimit = 64

type extractor struct {
	names bool
	seen  *hashSet
	out   []Feature
}

// hashSet is an open-addressing set of feature hashes: a message has a few
// thousand, and a Go map spent more time growing and hashing than the
// rest of feature extraction. Slot value 0 means empty; the hash 0 is
// tracked apart.
type hashSet struct {
	slots []uint64
	n     int
	zero  bool
}

// add inserts h and reports whether it was new.
func (s *hashSet) add(h uint64) bool {
	if h == 0 {
		if s.zero {
			return false
		}
		s.zero = true
		return true
	}
	if (s.n+1)*4 > len(s.slots)*3 {
		s.grow()
	}
	mask := uint64(len(s.slots) - 1)
	// The hashes are FNV-1a outputs; mix the high bits in before masking.
	for i := (h ^ h>>29) * 0x9E3779B97F4A7C15 >> 32 & mask; ; i = (i + 1) & mask {
		switch s.slots[i] {
		case h:
			return false
		case 0:
			s.slots[i] = h
			s.n++
			return true
		}
	}
}

// reset empties the set, keeping its table.
func (s *hashSet) reset() {
	clear(s.slots)
	s.n, s.zero = 0, false
}

func (s *hashSet) grow() {
	old := s.slots
	s.slots = make([]uint64, max(8192, 2*len(old)))
	s.n = 0
	for _, h := range old {
		if h != 0 {
			s.add(h)
		}
	}
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func hashStr(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

func (x *extractor) add(prefix, tok string) {
	h := hashStr(hashStr(fnvOffset, prefix), tok)
	x.addHash(h, prefix, tok)
}

// addAll adds the tokens toks, all with prefix (whose hash is taken once).
func (x *extractor) addAll(prefix string, toks []string) {
	ph := hashStr(fnvOffset, prefix)
	for _, t := range toks {
		x.addHash(hashStr(ph, t), prefix, t)
	}
}

func (x *extractor) addHash(h uint64, prefix, tok string) {
	if !x.seen.add(h) {
		return
	}
	f := Feature{Hash: h}
	if x.names {
		f.Name = prefix + tok
	}
	x.out = append(x.out, f)
}

func (x *extractor) pair(a, b string, d int) {
	h := hashStr(fnvOffset, "p:")
	h = hashStr(h, a)
	h ^= uint64('0' + d)
	h *= fnvPrime
	h = hashStr(h, b)
	if !x.seen.add(h) {
		return
	}
	f := Feature{Hash: h}
	if x.names {
		f.Name = "p:" + a + " " + strings.Repeat("_ ", d-1) + b
	}
	x.out = append(x.out, f)
}

// Extract returns the distinct features of m. The unigram families are:
// body words ("w:"), subject words ("s:"), words of other header fields
// prefixed by the field name ("h:from:"), URL hosts and registered domains
// ("u:"), hidden HTML text ("hid:"), attachment types and extensions
// ("att:"), MIME defects ("mal:") and a few shape features ("meta:").
// With fs.Pairs, OSB word pairs of the subject and body are added.
func Extract(m *message.Message, fs FeatureSet, names bool) []Feature {
	return extract(m, fs, names, make([]Feature, 0, fs.Grams+512))
}

// hashSets are extract's sets, reused: a new one for every message was
// most of the memory a lesson allocated.
var hashSets = sync.Pool{New: func() any { return new(hashSet) }}

// extract is Extract appending to out.
func extract(m *message.Message, fs FeatureSet, names bool, out []Feature) []Feature {
	maxWords := fs.MaxWords
	if maxWords <= 0 {
		maxWords = 3000
	}
	seen := hashSets.Get().(*hashSet)
	defer func() {
		seen.reset()
		hashSets.Put(seen)
	}()
	x := &extractor{names: names, out: out, seen: seen}
	if fs.Grams > 0 {
		grams(x, m, fs.Grams)
	}
	if fs.Words {
		wordFeatures(x, m, fs, maxWords)
	}
	if fs.Headers {
		headerTokens(x, m)
	}
	x.addAll("hid:", words(m.HiddenText, 500))
	if fs.Markup {
		x.addAll("html:", m.Markup)
	}
	for _, u := range m.URLs {
		x.add("u:", u.Host)
		if d := message.RegisteredDomain(u.Host); d != "" && d != u.Host {
			x.add("u:", d)
		}
		if _, ok := message.HostIP(u.Host); ok {
			x.add("meta:", "url_ip")
		}
	}
	for _, a := range m.Attachments {
		x.add("att:", a.ContentType)
		if i := strings.LastIndexByte(a.Filename, '.'); i >= 0 && len(a.Filename)-i <= 8 {
			x.add("att:ext:", strings.ToLower(a.Filename[i+1:]))
		}
	}
	for _, r := range m.Malformed {
		x.add("mal:", r)
	}
	if m.TextOnlyIn != "" {
		x.add("meta:only:", m.TextOnlyIn)
	}
	if m.HiddenText != "" {
		x.add("meta:", "hidden_text")
	}
	x.add("meta:urls:", bucket(len(m.URLs)))
	x.add("meta:parts:", bucket(m.Parts))
	return x.out
}

// grams adds binary character 4-grams over the first n bytes of the raw
// header block followed by the decoded visible text (Sculley & Wachman's
// representation, with MIME decoding so base64 bodies are seen as text).
func grams(x *extractor, m *message.Message, n int) {
	hdr := m.RawHeader
	if len(hdr) > n {
		hdr = hdr[:n]
	}
	buf := make([]byte, 0, n+1)
	buf = append(buf, hdr...)
	buf = append(buf, '\n')
	if rest := n + 1 - len(buf); rest > 0 {
		t := m.Text
		if len(t) > rest {
			t = t[:rest]
		}
		buf = append(buf, t...)
	}
	pre := hashStr(fnvOffset, "g:")
	for i := 0; i+4 <= len(buf); i++ {
		g := buf[i : i+4]
		h := pre
		for _, c := range g {
			h ^= uint64(c)
			h *= fnvPrime
		}
		if x.names {
			x.addHash(h, "g:", string(g))
		} else {
			x.addHash(h, "", "")
		}
	}
}

// headerTokens adds a few header-specific tokens that 4-grams see only
// in pieces: the sender's and reply path's domains, the host names and
// registered domains of Received relays, the media type, and the mailer.
func headerTokens(x *extractor, m *message.Message) {
	addr := func(prefix, v string) {
		if i := strings.LastIndexByte(v, '@'); i >= 0 {
			d := strings.ToLower(strings.Trim(v[i+1:], "<> \t\"'"))
			if j := strings.IndexAny(d, "> \t\"'"); j >= 0 {
				d = d[:j]
			}
			if d == "" {
				return
			}
			x.add(prefix, d)
			if r := message.RegisteredDomain(d); r != "" && r != d {
				x.add(prefix, r)
			}
		}
	}
	addr("hd:from:", m.Get("From"))
	addr("hd:rp:", m.Get("Return-Path"))
	addr("hd:rt:", m.Get("Reply-To"))
	n := 0
	for _, f := range m.Header {
		switch strings.ToLower(f.Name) {
		case "received":
			if n >= 8 {
				continue
			}
			n++
			v := f.Value
			for _, kw := range []string{"from ", "by "} {
				i := strings.Index(v, kw)
				if i < 0 {
					continue
				}
				h := strings.Fields(v[i+len(kw):])
				if len(h) == 0 {
					continue
				}
				host := strings.ToLower(strings.Trim(h[0], "()[];"))
				x.add("hd:rcv:"+kw, host)
				if r := message.RegisteredDomain(host); r != "" && r != host {
					x.add("hd:rcv:"+kw, r)
				}
			}
		case "content-type":
			ct := strings.ToLower(f.Value)
			if i := strings.IndexByte(ct, ';'); i >= 0 {
				ct = ct[:i]
			}
			x.add("hd:ct:", strings.TrimSpace(ct))
		case "x-mailer", "user-agent":
			x.addAll("hd:ua:", words(f.Value, 4))
		}
	}
}

func wordFeatures(x *extractor, m *message.Message, fs FeatureSet, maxWords int) {
	for _, f := range m.Header {
		if ignoredHeaders[f.Name] {
			continue
		}
		name := strings.ToLower(f.Name)
		switch {
		case f.Name == "Subject":
			ws := words(f.Value, 200)
			x.addAll("s:", ws)
			if fs.Pairs {
				osb(x, ws)
			}
			continue
		case strings.HasPrefix(name, "x-") && !isInteresting(name):
			// Unknown X- fields: only their presence.
			x.add("hx:", name)
			continue
		}
		x.add("hn:", name)
		x.addAll("h:"+name+":", words(f.Value, headerTokenLimit))
	}
	body := words(m.Text, maxWords)
	x.addAll("w:", body)
	if fs.Pairs {
		osb(x, body)
	}
}

func isInteresting(name string) bool {
	switch name {
	case "x-mailer", "x-mimeole", "x-priority", "x-msmail-priority", "x-originating-ip":
		return true
	}
	return false
}

func bucket(n int) string {
	switch {
	case n == 0:
		return "0"
	case n < 3:
		return "1-2"
	case n < 10:
		return "3-9"
	case n < 30:
		return "10-29"
	}
	return "30+"
}

// osb adds orthogonal sparse bigrams: (w[i], w[i+d]) for d = 1..4.
func osb(x *extractor, ws []string) {
	for i := range ws {
		for d := 1; d <= 4 && i+d < len(ws); d++ {
			x.pair(ws[i], ws[i+d], d)
		}
	}
}

// words splits s into lower-case tokens: runs of letters, digits and the
// joiners ' - . $ ! inside a word. Tokens longer than 20 bytes become a
// "skip:" token naming their first letter and length class (SpamBayes);
// single characters are dropped except digits and currency signs.
func words(s string, max int) []string {
	// About one token in six bytes of text: most calls allocate once.
	out := make([]string, 0, min(max, len(s)/6+1))
	start := -1
	flush := func(end int) {
		if start < 0 {
			return
		}
		t := trimJoiners(s[start:end])
		start = -1
		if t == "" {
			return
		}
		if len(t) > 20 {
			r, _ := utf8.DecodeRuneInString(t)
			out = append(out, "skip:"+string(unicode.ToLower(r))+strconv.Itoa(len(t)/10*10))
			return
		}
		if len(t) == 1 && !(t[0] >= '0' && t[0] <= '9') && t != "$" {
			return
		}
		out = append(out, strings.ToLower(t))
	}
	for i, r := range s {
		if len(out) >= max {
			return out
		}
		wordish := unicode.IsLetter(r) || unicode.IsDigit(r) || r == '$' || r == '\''
		joiner := r == '-' || r == '.' || r == '!' || r == '@' || r == '_'
		switch {
		case wordish:
			if start < 0 {
				start = i
			}
		case joiner && start >= 0:
			// stays inside the token
		default:
			flush(i)
		}
	}
	flush(len(s))
	if len(out) > max {
		out = out[:max]
	}
	return out
}

// trimJoiners is strings.Trim(t, "'-.!"), without building the cut set
// for each of the thousands of tokens of a message.
func trimJoiners(t string) string {
	isJoiner := func(c byte) bool { return c == '\'' || c == '-' || c == '.' || c == '!' }
	for len(t) > 0 && isJoiner(t[0]) {
		t = t[1:]
	}
	for len(t) > 0 && isJoiner(t[len(t)-1]) {
		t = t[:len(t)-1]
	}
	return t
}

// sortFeatures orders features by hash (for batched store access with
// good locality).
func sortFeatures(fs []Feature) {
	sort.Slice(fs, func(i, j int) bool { return fs[i].Hash < fs[j].Hash })
}
