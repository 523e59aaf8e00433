package smtpd

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{"<a@b.example>", "<>", "<a%b@c>", `<"a@b"@c.example> SIZE=1`, "<@a:b@c>",
		"<u@[1.2.3.4]>", "<postmaster>", "<ü@bücher.example.>", "<a@b", `<"\"@x>`, " <a@B.Example> BODY=8BITMIME"} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, s string, rcpt bool) {
		pa, rest, kind := parsePath(s, rcpt)
		if kind != addrOK {
			return
		}
		if rest != "" && rest[0] != ' ' {
			t.Fatalf("rest %q", rest)
		}
		if pa.Null {
			if rcpt {
				t.Fatal("null forward-path accepted")
			}
			return
		}
		a := pa.Addr.String()
		if !utf8.ValidString(a) || strings.ContainsAny(a, " \x00\r\n\t\x7f") {
			t.Fatalf("accepted %q", a)
		}
		if rcpt {
			if pa.Literal || strings.ContainsAny(pa.Addr.Local, "%!@") || pa.Lookup == "" {
				t.Fatalf("relay form accepted: %+v", pa)
			}
			if pa.Lookup != strings.ToLower(pa.Lookup) || strings.HasSuffix(pa.Lookup, ".") || strings.Contains(pa.Lookup, "..") {
				t.Fatalf("lookup %q", pa.Lookup)
			}
			for i := 0; i < len(pa.Lookup); i++ {
				if pa.Lookup[i] >= 0x80 {
					t.Fatalf("non-ASCII lookup %q", pa.Lookup)
				}
			}
		}
		// Re-parsing the canonical form gives the same address.
		pa2, _, kind2 := parsePath("<"+pa.Addr.Raw+">", rcpt)
		if kind2 != addrOK || pa2.Addr != pa.Addr || pa2.Lookup != pa.Lookup {
			t.Fatalf("canonical form %q re-parses as %+v (%d), was %+v", pa.Addr.Raw, pa2, kind2, pa)
		}
	})
}
