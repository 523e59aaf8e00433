package passmark

import (
	"bytes"
	"encoding/hex"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const msg = "From: a@sender.example\r\nTo: bob@example.com\r\nSubject: hello\r\nMessage-ID: <1@x>\r\n\r\nHello Bob.\r\n\r\nBye.\r\n"

func mark(t *testing.T, secret []byte, raw string, rcpts []string, at time.Time) string {
	t.Helper()
	d, err := Digest(strings.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return Field + ": " + Sign(secret, Mark{Domain: "example.com", ID: "Q1", Time: at, Rcpts: rcpts, Digest: d}) + "\r\n"
}

func TestVerify(t *testing.T) {
	master := []byte("0123456789abcdef0123456789abcdef")
	secret := DomainSecret(master, "example.com")
	now := time.Now()
	good := mark(t, secret, msg, []string{"bob@example.com", "carol@example.com"}, now) + msg

	cases := []struct {
		name  string
		raw   string
		rcpts []string
		key   []byte
		want  error
	}{
		{"genuine", good, []string{"bob@example.com"}, secret, nil},
		{"genuine both rcpts, case-insensitive", good, []string{"BOB@example.com", "carol@example.com"}, secret, nil},
		{"missing", msg, []string{"bob@example.com"}, secret, ErrMissing},
		{"replayed to another recipient", good, []string{"mallory@example.com"}, secret, ErrRecipient},
		{"altered body", strings.Replace(good, "Hello Bob", "Hello Rob", 1), []string{"bob@example.com"}, secret, ErrAltered},
		{"altered subject", strings.Replace(good, "Subject: hello", "Subject: win", 1), []string{"bob@example.com"}, secret, ErrAltered},
		{"other domain's key", good, []string{"bob@example.com"}, DomainSecret(master, "other.example"), ErrForged},
		{"forged signature", strings.Replace(good, "id=Q1", "id=Q2", 1), []string{"bob@example.com"}, secret, ErrForged},
		{"expired", mark(t, secret, msg, []string{"bob@example.com"}, now.Add(-8*24*time.Hour)) + msg, []string{"bob@example.com"}, secret, ErrExpired},
		{"garbage", Field + ": v=1; nonsense\r\n" + msg, []string{"bob@example.com"}, secret, ErrMalformed},
		{"no recipient given", good, nil, secret, ErrRecipient},
	}
	for _, c := range cases {
		_, err := VerifyMessage(c.key, []byte(c.raw), c.rcpts, Options{})
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

func TestDigestToleratesLineEndingsAndTrailingBlankLines(t *testing.T) {
	a, _ := Digest(strings.NewReader(msg))
	b, _ := Digest(strings.NewReader(strings.ReplaceAll(msg, "\r\n", "\n") + "\n\n"))
	if !bytes.Equal(a, b) {
		t.Fatal("CRLF/LF or trailing blank lines change the digest")
	}
	c, _ := Digest(strings.NewReader(strings.Replace(msg, "Bye.", "Bye!", 1)))
	if bytes.Equal(a, c) {
		t.Fatal("body change does not change the digest")
	}
}

func TestMasterKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k", "pass.key")
	k1, err := LoadOrCreateMaster(path)
	if err != nil || len(k1) != 32 {
		t.Fatal(err, len(k1))
	}
	k2, err := LoadOrCreateMaster(path)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatal("key not kept across starts", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("v=1; d=example.com; id=Q; t=1; r=abc; bh=AAAA; s=AAAA")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		Parse(s)
		VerifyMessage([]byte("k"), []byte(Field+": "+s+"\r\n\r\nbody"), []string{"a@b"}, Options{})
	})
}

// TestFieldsAddedOnTheWay: an MTA adding a missing Date or Message-ID on
// the way to the mailbox (Postfix does for local clients) keeps the mark
// valid; adding a second Subject does not.
func TestFieldsAddedOnTheWay(t *testing.T) {
	secret := DomainSecret([]byte("0123456789abcdef"), "example.com")
	bare := "From: a@sender.example\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
	marked := mark(t, secret, bare, []string{"bob@example.com"}, time.Now())
	added := marked + "Date: Mon, 23 Nov 2026 08:00:00 +0000\r\nMessage-ID: <added@mta>\r\n" + bare
	if _, err := VerifyMessage(secret, []byte(added), []string{"bob@example.com"}, Options{}); err != nil {
		t.Fatalf("fields added later broke the mark: %v", err)
	}
	twice := marked + "Subject: second subject\r\n" + bare
	if _, err := VerifyMessage(secret, []byte(twice), []string{"bob@example.com"}, Options{}); !errors.Is(err, ErrAltered) {
		t.Fatalf("an added Subject: got %v, want ErrAltered", err)
	}
	removed := marked + strings.Replace(bare, "Subject: hi\r\n", "", 1)
	if _, err := VerifyMessage(secret, []byte(removed), []string{"bob@example.com"}, Options{}); !errors.Is(err, ErrAltered) {
		t.Fatalf("a removed Subject: got %v, want ErrAltered", err)
	}
}

// TestDigestUnchanged pins digests made before the header reader was
// Moat's own (textproto's): marks already on their way still verify.
func TestDigestUnchanged(t *testing.T) {
	for raw, want := range map[string]string{
		"From: a@b.example\r\nTo: c@d.example\r\nSubject:  hello\r\n   folded  world\r\nMessage-ID: <1@b>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody line\r\n\r\n\r\n": "3bc7a5cbd0250880b775dc8cb6f1d4d5b1eb0e82f68d8ca97994b3310426109cfe",
		"Received: from x\r\n\tby y\r\nsubject: lower\r\n\r\n": "08e8f110e92f83ed5531012abf0923f2e3fb9bc26a6e84435c9eebe1c1e313370b",
		"X-A: 1\r\n": "0001ba4719c80b6fe911b091a7c05124b64eeece964e09c058ef8f9805daca546b",
	} {
		d, err := Digest(strings.NewReader(raw))
		if err != nil || hex.EncodeToString(d) != want {
			t.Errorf("digest of %q: %x, %v; want %s", raw, d, err, want)
		}
	}
}

// TestMalformedHeaderSigns: mail whose header section is not one (no
// header at all, or a line in it that is not a field) is accepted SMTP;
// its mark must be made and verified, and still cover the content.
func TestMalformedHeaderSigns(t *testing.T) {
	master := []byte("0123456789abcdef0123456789abcdef")
	secret := DomainSecret(master, "example.com")
	for _, body := range []string{
		"Just a body line\r\n\r\nmore\r\n",
		"x\r\n",
		"Subject: hi\r\nthis line is not a field\r\nFrom: x@y.example\r\n\r\nbody\r\n",
		"Subject : spaced\r\n\r\nbody\r\n",
		" leading continuation\r\n\r\nbody\r\n",
	} {
		// As the relay sends it: Moat's fields in front, then the message
		// given the empty line it lacks (or not: both must verify).
		for _, raw := range []string{body, "\r\n" + body} {
			m := mark(t, secret, "Received: by moat\r\n"+raw, []string{"bob@example.com"}, time.Now())
			full := m + "Received: by moat\r\n" + raw
			if _, err := VerifyMessage(secret, []byte(full), []string{"bob@example.com"}, Options{}); err != nil {
				t.Errorf("%q: %v", raw, err)
			}
			altered := strings.Replace(full, "body", "bodY", 1)
			if altered == full {
				i := strings.LastIndex(full, "x\r\n") // the body's, after the mark
				altered = full[:i] + "y" + full[i+1:]
			}
			if _, err := VerifyMessage(secret, []byte(altered), []string{"bob@example.com"}, Options{}); !errors.Is(err, ErrAltered) {
				t.Errorf("%q altered: %v, want ErrAltered", raw, err)
			}
		}
	}
}
