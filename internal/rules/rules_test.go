package rules

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"moat.dev/moat/internal/message"
)

const gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

func hitNames(hs []Hit) string {
	var n []string
	for _, h := range hs {
		n = append(n, h.Name)
	}
	return strings.Join(n, ",")
}

func matchRaw(t *testing.T, s *Set, raw string) []Hit {
	t.Helper()
	m := message.ParseBytes([]byte(raw), message.DefaultLimits())
	return s.Match(TargetFrom(m), nil)
}

func TestGTUBE(t *testing.T) {
	s, err := ParseDefault()
	if err != nil {
		t.Fatal(err)
	}
	plain := "From: a@b.example\r\nTo: c@d.example\r\nSubject: test\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-Id: <1@b>\r\n\r\nhello\r\n" + gtube + "\r\n"
	hits := matchRaw(t, s, plain)
	var score float64
	for _, h := range hits {
		score += h.Score
	}
	if !strings.Contains(hitNames(hits), "GTUBE") || score < 1000 {
		t.Fatalf("GTUBE not found: %v", hits)
	}
	// GTUBE inside a base64 part is found after decoding.
	b64 := "From: a@b.example\r\nSubject: t\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		"WEpTKkM0SkRCUUFETjEuTlNCTjMqMklETkVOKkdUVUJFLVNUQU5EQVJELUFOVEktVUJFLVRFU1QtRU1BSUwqQy4zNFg=\r\n--XX--\r\n"
	if !strings.Contains(hitNames(matchRaw(t, s, b64)), "GTUBE") {
		t.Fatal("GTUBE in base64 part not found")
	}
	// A clean message does not hit GTUBE.
	if strings.Contains(hitNames(matchRaw(t, s, "Subject: hi\r\n\r\nGTUBE is a test string\r\n")), "GTUBE") {
		t.Fatal("false GTUBE")
	}
}

func TestRuleKindsAndMeta(t *testing.T) {
	src := `
# comment
header   SUBJ_FREE   Subject =~ /free/i
header   NOT_FROM_X  From !~ /@x\.example/
header   HAS_REPLY   exists:Reply-To
body     __MONEY     /\$\d+/
body     __LOTTO     /lottery/i
meta     MONEY_LOTTO __MONEY && __LOTTO
meta     ANY_TWO     (SUBJ_FREE + HAS_REPLY + __LOTTO) >= 2
meta     NOT_SPF     !SPF_PASS && SUBJ_FREE
symbol   SPF_PASS
rawbody  RAW_QP      /=3D/
uri      URI_EVIL    /evil\.example/
full     FULL_X      /X-Bad: yes/
score    SUBJ_FREE   2.5
describe SUBJ_FREE   subject says free
score    NOT_FROM_X  0.1
`
	s, err := Parse("test.rules", strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	raw := "From: a@y.example\r\nSubject: =?utf-8?q?FREE_stuff?=\r\nReply-To: r@y.example\r\nX-Bad: yes\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>Win the Lottery: $100 <a href=3D\"http://www.evil.example/x\">here</a></p>\r\n"
	m := message.ParseBytes([]byte(raw), message.DefaultLimits())
	hits := s.Match(TargetFrom(m), map[string]bool{"SPF_PASS": false})
	got := hitNames(hits)
	want := "ANY_TWO,FULL_X,HAS_REPLY,MONEY_LOTTO,NOT_FROM_X,NOT_SPF,RAW_QP,SUBJ_FREE,URI_EVIL"
	if got != want {
		t.Fatalf("hits %s, want %s", got, want)
	}
	for _, h := range hits {
		if h.Name == "SUBJ_FREE" && (h.Score != 2.5 || h.Describe != "subject says free") {
			t.Errorf("SUBJ_FREE: %+v", h)
		}
		if h.Name == "ANY_TWO" && h.Score != 1 {
			t.Errorf("default score: %+v", h)
		}
	}
	// With SPF_PASS true the meta turns off; a non-matching message hits
	// only the negated header rule.
	hits = s.Match(TargetFrom(m), map[string]bool{"SPF_PASS": true})
	if strings.Contains(hitNames(hits), "NOT_SPF") {
		t.Error("NOT_SPF with SPF_PASS")
	}
	clean := message.ParseBytes([]byte("From: a@x.example\r\nSubject: hello\r\n\r\nnothing\r\n"), message.DefaultLimits())
	if got := hitNames(s.Match(TargetFrom(clean), nil)); got != "" {
		t.Errorf("clean message hits %s", got)
	}
}

func TestParseErrorsNameFileLine(t *testing.T) {
	cases := map[string]string{
		"header A Subject =~ /(unclosed/\n": "x.rules:1",
		"\n\nbody B /ok/\nbogus C /x/\n":    "x.rules:4: unknown keyword",
		"meta M A && \n":                    "x.rules:1",
		"body A /a/\nbody A /b/\n":          "x.rules:2: rule A defined twice",
		"meta M X\n":                        "unknown rule X",
		"meta M N\nmeta N M\n":              "dependency cycle",
		"score NOPE 1\n":                    "x.rules:1: score for undefined rule NOPE",
		"body A /a(?=b)/\n":                 "x.rules:1",
		"body A /a/x\n":                     "unsupported flag",
		"header A Subject ~ /a/\n":          "expected =~ or !~",
		"score A many\nbody A /x/\n":        "x.rules:1: score A: expected a number",
		"body bad-name /x/\n":               "bad rule name",
	}
	for src, want := range cases {
		_, err := Parse("x.rules", strings.NewReader(src))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", src, err, want)
		}
	}
}

func TestRequiredLiteralPrefilter(t *testing.T) {
	s, err := Parse("t", strings.NewReader("body A /foo\\s+barbaz/i\nbody B /(?:x|y)z/\nbody C /qux+quux/\nbody D /\\b(?:viagra|cialis)\\b/i\nbody E /(?:viagra|x)/\n"))
	if err != nil {
		t.Fatal(err)
	}
	lits := map[string]string{}
	for _, r := range s.Rules {
		lits[r.Name] = strings.Join(r.Literals, "|")
	}
	if lits["A"] != "barbaz" || lits["B"] != "" || lits["C"] != "quux" || lits["D"] != "viagra|cialis" || lits["E"] != "" {
		t.Fatalf("literals %v", lits)
	}
	// The prefilter must not lose case-insensitive matches.
	m := message.ParseBytes([]byte("Subject: s\r\n\r\nFOO   BARBAZ and quxxquux QUXXQUUX CiAlIs\r\n"), message.DefaultLimits())
	if got := hitNames(s.Match(TargetFrom(m), nil)); got != "A,C,D,E" {
		t.Fatalf("hits %s", got)
	}
}

func TestAhoCorasick(t *testing.T) {
	ac := newAC([]string{"he", "she", "his", "hers", "xyz"})
	got := ac.find("uSHErs")
	want := []bool{true, true, false, true, false}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("find: %v, want %v", got, want)
		}
	}
}

func TestLoadLocalOverrides(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "local.rules")
	os.WriteFile(p, []byte("score GTUBE 0\nbody LOCAL_ONE /purple widget/i\nscore LOCAL_ONE 3\n"), 0o644)
	s, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	got := hitNames(matchRaw(t, s, "Subject: x\r\nDate: x\r\nMessage-Id: <a@b>\r\nTo: a@b\r\n\r\nPURPLE widget "+gtube+"\r\n"))
	if got != "LOCAL_ONE" {
		t.Fatalf("hits %q", got)
	}
	os.WriteFile(p, []byte("body GTUBE /x/\n"), 0o644)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), p+":1") {
		t.Fatalf("redefinition error %v", err)
	}
}

func BenchmarkMatchDefault(b *testing.B) {
	s, err := ParseDefault()
	if err != nil {
		b.Fatal(err)
	}
	body := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit. Visit http://www.example.com/page now.\r\n", 200)
	m := message.ParseBytes([]byte("From: a@b.example\r\nSubject: hello there\r\n\r\n"+body), message.DefaultLimits())
	tg := TargetFrom(m)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.Match(tg, nil)
	}
}

func FuzzParseRules(f *testing.F) {
	f.Add("body A /x/i\nmeta B A && !(A || A) + 1 > 0\nscore B 2\n")
	f.Add("header H Subject =~ /[a-z]+/\nheader E exists:To\nuri U m{^https?://}i\n")
	f.Add(Default)
	f.Fuzz(func(t *testing.T, src string) {
		s, err := Parse("f.rules", strings.NewReader(src))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.rules:") && !strings.Contains(err.Error(), "token too long") {
				t.Fatalf("error without file:line: %v", err)
			}
			return
		}
		s.Match(&Target{Headers: []HeaderField{{"Subject", "abc"}}, Body: "x abc http://a.example", URIs: []string{"http://a.example"}}, nil)
	})
}

// TestStructurePseudoHeaders: rules see the decoder's view of the HTML
// (X-Moat-Markup, X-Moat-Text-Only-In, X-Moat-Text-Size), and the shipped
// bulk-mail rules fire on a typical pitch but not on a plain note.
func TestStructurePseudoHeaders(t *testing.T) {
	raw := "From: Deals <x1234567890@bulk.example>\r\nSubject: ADV: Lowest rates!!!          8812\r\nX-MSMail-Priority: High\r\nX-Priority: 1\r\n" +
		"Content-Type: text/html\r\n\r\n<center><font size=\"7\" color=\"#FF0000\">ACT NOW</font></center>" +
		"<p>Dear Friend, this is a one-time mailing. Earn $5,000 per week working from home! No obligation, risk free.</p>" +
		"<p>To be removed from our list, reply with REMOVE in the subject.</p>\r\n"
	m := message.ParseBytes([]byte(raw), message.DefaultLimits())
	tg := TargetFrom(m)
	get := func(name string) string {
		for _, h := range tg.Headers {
			if h.Name == name {
				return h.Value
			}
		}
		return ""
	}
	if v := get("X-Moat-Text-Only-In"); v != "html" {
		t.Errorf("X-Moat-Text-Only-In = %q", v)
	}
	if v := get("X-Moat-Markup"); !strings.Contains(v, " font.size=7 ") || !strings.Contains(v, " center ") {
		t.Errorf("X-Moat-Markup = %q", v)
	}
	if v := get("X-Moat-Text-Size"); v == "" || v == "0" {
		t.Errorf("X-Moat-Text-Size = %q", v)
	}
	s, err := ParseDefault()
	if err != nil {
		t.Fatal(err)
	}
	got := hitNames(s.Match(tg, nil))
	for _, want := range []string{"SUBJ_ADV", "SUBJ_PADDED_ID", "MIME_HTML_ONLY", "HTML_LOUD", "DEAR_SOMEBODY", "ONE_TIME_MAILING",
		"EARN_MONEY", "NO_OBLIGATION", "MONEY_BACK", "REMOVE_INSTRUCTIONS", "MISSING_MIMEOLE", "PRIORITY_HIGH_BOTH", "SPAM_PHRASES_5"} {
		if !strings.Contains(","+got+",", ","+want+",") {
			t.Errorf("pitch: %s did not fire; hits %s", want, got)
		}
	}
	var sum float64
	for _, h := range s.Match(tg, nil) {
		sum += h.Score
	}
	if sum < 5 {
		t.Errorf("pitch scores %.1f on rules alone, want >= 5", sum)
	}
	note := message.ParseBytes([]byte("From: Ann <ann@example.org>\r\nTo: bob@example.org\r\nSubject: lunch\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-Id: <a1@example.org>\r\n\r\nShall we meet at noon? The report is attached.\r\n"), message.DefaultLimits())
	if got := hitNames(s.Match(TargetFrom(note), nil)); got != "" {
		t.Errorf("plain note hits %s", got)
	}
}
