package reports

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"moat.dev/moat/internal/classify"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/verdict"
)

const original = "From: Prize Dept <win@lottery.example>\r\nSubject: You have won\r\n\r\nClaim your prize of one million now.\r\n"

func TestOriginals(t *testing.T) {
	attached := "From: alice@example.com\r\nSubject: Fwd: You have won\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nmore of these please block\r\n" +
		"--b\r\nContent-Type: message/rfc822\r\n\r\n" + original + "--b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		"U3ViamVjdDogc2Vjb25kCgpzZWNvbmQgYm9keQo=\r\n--b--\r\n"
	got := Originals([]byte(attached), 20)
	if len(got) != 2 || !bytes.Equal(got[0], []byte(strings.TrimSuffix(original, "\r\n"))) || !strings.Contains(string(got[1]), "second body") {
		t.Fatalf("attached: %q", got)
	}
	if got := Originals([]byte(attached), 1); len(got) != 1 {
		t.Fatalf("max 1: %d originals", len(got))
	}
	for _, marker := range []string{"-----Original Message-----", "---------- Forwarded message ---------", "Begin forwarded message:"} {
		inline := "From: alice@example.com\r\nSubject: Fwd: You have won\r\n\r\nthis one got through\r\n\r\n" + marker + "\r\n" +
			"From: Prize Dept <win@lottery.example>\r\nDate: Mon, 1 Jan 2026\r\nSubject: You have won\r\n\r\nClaim your prize of one million now.\r\n"
		got := Originals([]byte(inline), 20)
		if len(got) != 1 {
			t.Fatalf("%s: %d originals", marker, len(got))
		}
		m := message.ParseBytes(got[0], message.DefaultLimits())
		if m.Subject != "You have won" || !strings.Contains(m.Text, "Claim your prize") || strings.Contains(m.Text, "got through") {
			t.Fatalf("%s: subject %q text %q", marker, m.Subject, m.Text)
		}
	}
	plain := "From: alice@example.com\r\nSubject: Fwd: FW: You have won\r\n\r\nClaim your prize of one million now.\r\n"
	got = Originals([]byte(plain), 20)
	if len(got) != 1 {
		t.Fatalf("plain: %d", len(got))
	}
	if m := message.ParseBytes(got[0], message.DefaultLimits()); m.Subject != "You have won" || !strings.Contains(m.Text, "Claim your prize") {
		t.Fatalf("plain: %q %q", m.Subject, m.Text)
	}
	if got := Originals([]byte("Subject: x\r\n\r\n  \r\n"), 20); len(got) != 0 {
		t.Fatalf("empty report: %q", got)
	}
}

func FuzzOriginals(f *testing.F) {
	f.Add([]byte("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n" + original + "--b--\r\n"))
	f.Add([]byte("Subject: x\r\n\r\n-----Original Message-----\r\nFrom: a\r\n\r\nb\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, o := range Originals(b, 5) {
			message.ParseBytes(o, message.DefaultLimits())
		}
	})
}

func TestConfig(t *testing.T) {
	for _, c := range []Config{{Spam: "spam report", MaxOriginals: 20}, {Spam: "x", Ham: "X", MaxOriginals: 20}, {MaxOriginals: 0}} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	r, err := New(Config{Spam: "spam-report", Ham: "ham-report", MaxOriginals: 20}, Deps{Classifier: &classify.Classifier{}, Verify: func(context.Context, *pipeline.Txn, pipeline.Address) (bool, error) { return true, nil }, Log: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]string{"Spam-Report": "spam", "ham-report": "ham", "spam-report+x": "", "alice": ""} {
		if got := r.Match(pipeline.Address{Local: addr, Domain: "example.com"}); got != want {
			t.Errorf("Match(%s) = %q, want %q", addr, got, want)
		}
	}
}

// TestLearn: who may report, and what a report teaches (a real SQLite
// model): the reporting user's model and the site model.
func TestLearn(t *testing.T) {
	ctx := context.Background()
	db, err := classify.OpenSQLite(filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := classify.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	c, err := classify.New(classify.DefaultConfig(), classify.NewSQLStore(db))
	if err != nil {
		t.Fatal(err)
	}
	users := map[string]bool{"alice@example.com": true}
	verifyErr := error(nil)
	r, err := New(Config{Spam: "spam-report", Ham: "ham-report", MaxOriginals: 20}, Deps{Classifier: c, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Verify: func(_ context.Context, _ *pipeline.Txn, a pipeline.Address) (bool, error) {
			return users[a.String()], verifyErr
		}})
	if err != nil {
		t.Fatal(err)
	}
	spf := func(result string) *verdict.Report {
		rep := &verdict.Report{}
		rep.Add(verdict.Result{Check: "spf", Auth: []string{"spf=" + result + " smtp.mailfrom=example.com"}})
		return rep
	}
	tx := func(from string, auth string, rep *verdict.Report) *pipeline.Txn {
		l, d, _ := strings.Cut(from, "@")
		return &pipeline.Txn{From: pipeline.Address{Local: l, Domain: d}, Conn: &pipeline.Conn{AuthUser: auth}, Report: rep}
	}
	report := []byte("From: alice@example.com\r\nSubject: Fwd: You have won\r\n\r\n-----Original Message-----\r\n" + original)
	cases := []struct {
		name string
		tx   *pipeline.Txn
		code int
	}{
		{"other domain", tx("alice@elsewhere.example", "", spf("pass")), 550},
		{"no proof", tx("alice@example.com", "", spf("fail")), 550},
		{"not a user", tx("mallory@example.com", "", spf("pass")), 550},
		{"user, SPF pass", tx("alice@example.com", "", spf("pass")), 250},
		{"user, authenticated", tx("alice@example.com", "alice", &verdict.Report{}), 250},
	}
	for _, cs := range cases {
		if got := r.Learn(ctx, cs.tx, "example.com", "spam", report); got.Code != cs.code {
			t.Errorf("%s: %v, want %d", cs.name, got, cs.code)
		}
	}
	verifyErr = errors.New("store down")
	if got := r.Learn(ctx, tx("alice@example.com", "", spf("pass")), "example.com", "spam", report); got.Code != 451 {
		t.Errorf("verifier failing: %v, want 451", got)
	}
	for user, want := range map[string]int64{"": 1, "alice@example.com": 1} {
		tot, err := c.Totals(ctx, user)
		if err != nil {
			t.Fatal(err)
		}
		if tot.Spam != want || tot.Ham != 0 {
			t.Errorf("model %q: %d spam, %d ham; want %d spam (the second report of the same message counts once)", user, tot.Spam, tot.Ham, want)
		}
	}
}
