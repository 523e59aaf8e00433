package message

import (
	"bytes"
	"strings"
	"testing"
)

// oldNormalized is the definition writeNormalized must keep: fingerprints
// are stored (classifier lessons), so the bytes hashed must not change.
func oldNormalized(s string) string {
	return strings.ToLower(strings.Join(strings.Fields(s), " "))
}

var normalizeCases = []string{
	"", " ", "a", "  Hello\tWORLD \r\n  again ", "ÄÖÜ ẞtraße\u00a0NBSP\u0085NEL\u2003em",
	"bad \xff\xfe utf8 \xc3", strings.Repeat("Word ", 400), strings.Repeat("x", 2000) + " Y",
	"İstanbul ΣΊΣΥΦΟΣ", "\x00nul\x00 \v\f",
}

func TestWriteNormalizedMatchesDefinition(t *testing.T) {
	for _, s := range normalizeCases {
		var b bytes.Buffer
		writeNormalized(&b, s)
		if want := oldNormalized(s); b.String() != want {
			t.Errorf("writeNormalized(%q) = %q, want %q", s, b.String(), want)
		}
	}
}

func FuzzWriteNormalized(f *testing.F) {
	for _, s := range normalizeCases {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var b bytes.Buffer
		writeNormalized(&b, s)
		if want := oldNormalized(s); b.String() != want {
			t.Fatalf("writeNormalized(%q) = %q, want %q", s, b.String(), want)
		}
	})
}

// ParseOwned and ParseBytes agree with Parse.
func TestParseOwnedMatchesParse(t *testing.T) {
	raw := []byte("From: A <a@example.com>\r\nSubject: Hi there\r\n\r\nSee http://example.com/x now\r\n")
	m1, err := Parse(bytes.NewReader(raw), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	m2 := ParseOwned(append([]byte(nil), raw...), DefaultLimits())
	m3 := ParseBytes(raw, DefaultLimits())
	for _, m := range []*Message{m2, m3} {
		if m.Fingerprint != m1.Fingerprint || m.Subject != m1.Subject || m.Text != m1.Text || len(m.URLs) != len(m1.URLs) || !bytes.Equal(m.RawBody, m1.RawBody) {
			t.Fatalf("parse results differ: %+v vs %+v", m, m1)
		}
	}
	if len(m1.URLs) != 1 || m1.Subject != "Hi there" {
		t.Fatalf("unexpected parse: %+v", m1)
	}
	// ParseBytes copies: changing the input afterwards changes nothing.
	raw2 := append([]byte(nil), raw...)
	m4 := ParseBytes(raw2, DefaultLimits())
	for i := range raw2 {
		raw2[i] = 'x'
	}
	if !bytes.Equal(m4.RawBody, m1.RawBody) {
		t.Fatal("ParseBytes kept a reference to the caller's buffer")
	}
}
