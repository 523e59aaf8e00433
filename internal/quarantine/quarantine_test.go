package quarantine_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"moat.dev/moat/internal/clamd"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/quarantine"
	"moat.dev/moat/internal/quarantine/qtest"
	"moat.dev/moat/internal/sink"
	"moat.dev/moat/internal/testutil/clamdtest"
	"moat.dev/moat/internal/verdict"
)

func TestMain(m *testing.M) {
	code := m.Run()
	clamdtest.Cleanup()
	os.Exit(code)
}

const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

type env struct {
	q    *quarantine.Store
	sink *sink.Server
	enq  *qtest.SMTPEnqueuer
	now  time.Time
	cfg  quarantine.Config
	db   *sql.DB
}

// backends runs f against SQLite and against PostgreSQL (skipped without
// MOAT_TEST_POSTGRES unless MOAT_REQUIRE_TOOLS=1).
func backends(t *testing.T, f func(t *testing.T, driver string)) {
	t.Run("sqlite", func(t *testing.T) { f(t, "sqlite") })
	t.Run("postgres", func(t *testing.T) { f(t, "postgres") })
}

func newEnv(t *testing.T, driver string, withClamd bool) *env {
	t.Helper()
	sk, err := sink.Start(sink.Config{Maildir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sk.Close() })
	e := &env{sink: sk, enq: &qtest.SMTPEnqueuer{Addr: sk.Addr()}, now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	db := qtest.DB
	if driver == "postgres" {
		db = qtest.PostgresDB
	}
	e.db = db(t)
	deps := quarantine.Deps{DB: e.db, Driver: driver, Enqueuer: e.enq, Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return e.now }}
	if withClamd {
		cd := clamdtest.Shared(t)
		cc := clamd.DefaultConfig()
		cc.Addrs = cd.Addrs
		c, err := clamd.New(cc, slog.New(slog.DiscardHandler), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		deps.Scanner = qtest.ClamScanner{C: c}
	}
	e.cfg = quarantine.DefaultConfig()
	e.cfg.Dir = t.TempDir()
	e.cfg.BaseURL = "https://q.example.net"
	e.cfg.DomainRetention = map[string]time.Duration{"short.example": 2 * time.Hour}
	e.q, err = quarantine.New(e.cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.q.Close() })
	return e
}

func msg(subject, body string) string {
	return "From: Alice <alice@sender.example>\r\nTo: bob@a.example\r\nSubject: " + subject + "\r\nMessage-ID: <x@sender.example>\r\n\r\n" + body + "\r\n"
}

func (e *env) hold(t *testing.T, entry quarantine.Entry, raw string) string {
	t.Helper()
	if entry.Received.IsZero() {
		entry.Received = e.now
	}
	id, err := e.q.Hold(context.Background(), &entry, strings.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestHoldStoresFileRowsAndAudit(t *testing.T) { backends(t, testHoldStoresFileRowsAndAudit) }

func testHoldStoresFileRowsAndAudit(t *testing.T, driver string) {
	e := newEnv(t, driver, false)
	ctx := context.Background()
	raw := msg("Cheap watches", "buy now")
	id := e.hold(t, quarantine.Entry{MsgID: "abc123", From: "alice@sender.example", Rcpts: []string{"Bob@A.example", "carol@b.example"},
		Subject: "Cheap watches", HeaderFrom: "Alice <alice@sender.example>", Score: 9.5, Action: "quarantine",
		Reasons: []verdict.Symbol{{Name: "BAYES_SPAM", Score: 7}, {Name: "RDNS_NONE", Score: 2.5}}, Refused: true}, raw)
	if id != "abc123" {
		t.Fatalf("id = %q, want the given message id", id)
	}
	b, err := os.ReadFile(e.cfg.Dir + "/abc123.eml")
	if err != nil || string(b) != raw {
		t.Fatalf("file: %v %q", err, b)
	}
	es, err := e.q.EntriesOf(ctx, id)
	if err != nil || len(es) != 2 {
		t.Fatalf("entries: %v %d", err, len(es))
	}
	if es[0].Rcpt != "bob@a.example" || es[0].Domain != "a.example" || es[1].Domain != "b.example" {
		t.Errorf("rcpt/domain: %+v / %+v", es[0], es[1])
	}
	if !es[0].Refused || es[0].Size != int64(len(raw)) || es[0].State != quarantine.Held || len(es[0].Reasons) != 2 {
		t.Errorf("entry: %+v", es[0])
	}
	if want := e.now.Add(30 * 24 * time.Hour); !es[0].Expires.Equal(want) {
		t.Errorf("expires %v, want %v", es[0].Expires, want)
	}
	rc, err := e.q.Open(ctx, es[1].ID)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != raw {
		t.Errorf("Open = %q", got)
	}
	au, _ := e.q.Audit(ctx, es[0].ID)
	if len(au) != 1 || au[0].Action != "held" || !strings.Contains(au[0].Detail, "refused") {
		t.Errorf("audit: %+v", au)
	}
	// A second Hold with the same message ID gets a fresh one.
	id2 := e.hold(t, quarantine.Entry{MsgID: "abc123", Rcpts: []string{"bob@a.example"}}, raw)
	if id2 == id {
		t.Error("duplicate message id reused")
	}
	// An unsafe message ID is replaced.
	id3 := e.hold(t, quarantine.Entry{MsgID: "../../etc/passwd", Rcpts: []string{"bob@a.example"}}, raw)
	if strings.ContainsAny(id3, "./") {
		t.Errorf("unsafe id %q", id3)
	}
}

func TestReleaseDeliversOnlyToThatRecipient(t *testing.T) {
	backends(t, testReleaseDeliversOnlyToThatRecipient)
}

func testReleaseDeliversOnlyToThatRecipient(t *testing.T, driver string) {
	e := newEnv(t, driver, false)
	ctx := context.Background()
	id := e.hold(t, quarantine.Entry{From: "alice@sender.example", Rcpts: []string{"bob@a.example", "carol@a.example"},
		Prepend: "Authentication-Results: moat; spf=pass\r\n"}, msg("Invoice", "please pay"))
	es, _ := e.q.EntriesOf(ctx, id)
	qid, err := e.q.Release(ctx, es[0].ID, quarantine.ReleaseOptions{By: "bob", AllowSender: true})
	if err != nil || qid == "" {
		t.Fatalf("release: %q %v", qid, err)
	}
	if !e.sink.Wait(1, 10*time.Second) {
		t.Fatal("nothing arrived at the sink")
	}
	d := e.sink.Deliveries()[0]
	if len(d.Rcpts) != 1 || d.Rcpts[0] != "bob@a.example" || d.From != "alice@sender.example" {
		t.Errorf("delivery envelope: %+v", d)
	}
	body, _ := os.ReadFile(d.Path)
	if !bytes.Contains(body, []byte("Authentication-Results: moat; spf=pass")) || !bytes.Contains(body, []byte("X-Moat-Released: bob;")) ||
		!bytes.Contains(body, []byte("please pay")) {
		t.Errorf("delivered message:\n%s", body)
	}
	if _, err := e.q.Release(ctx, es[0].ID, quarantine.ReleaseOptions{By: "bob"}); !errors.Is(err, quarantine.ErrNotHeld) {
		t.Errorf("second release: %v, want ErrNotHeld", err)
	}
	got, _ := e.q.Get(ctx, es[0].ID)
	if got.State != quarantine.Released || got.StateBy != "bob" {
		t.Errorf("state: %s by %s", got.State, got.StateBy)
	}
	if k, _ := e.q.Prefs.Lookup(ctx, "bob@a.example", "Alice@Sender.example"); k != quarantine.Allow {
		t.Errorf("allow pref = %q", k)
	}
	// Carol's copy is still held and the file still there.
	other, _ := e.q.Get(ctx, es[1].ID)
	if other.State != quarantine.Held {
		t.Errorf("carol's copy: %s", other.State)
	}
	if _, err := os.Stat(e.cfg.Dir + "/" + id + ".eml"); err != nil {
		t.Errorf("file removed while a copy is held: %v", err)
	}
	if err := e.q.Delete(ctx, es[1].ID, "carol"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.cfg.Dir + "/" + id + ".eml"); !os.IsNotExist(err) {
		t.Errorf("file kept after last copy deleted: %v", err)
	}
	au, _ := e.q.Audit(ctx, es[0].ID)
	if len(au) != 2 || au[1].Action != "release" || au[1].By != "bob" || !strings.Contains(au[1].Detail, "queue=") {
		t.Errorf("audit: %+v", au)
	}
}

func TestReleaseRescansWithClamd(t *testing.T) { backends(t, testReleaseRescansWithClamd) }

func testReleaseRescansWithClamd(t *testing.T, driver string) {
	e := newEnv(t, driver, true)
	ctx := context.Background()
	id := e.hold(t, quarantine.Entry{From: "x@sender.example", Rcpts: []string{"bob@a.example"}}, msg("virus", eicar))
	_, err := e.q.Release(ctx, id+"-1", quarantine.ReleaseOptions{By: "bob"})
	if !errors.Is(err, quarantine.ErrInfected) {
		t.Fatalf("release of EICAR: %v, want ErrInfected", err)
	}
	if got, _ := e.q.Get(ctx, id+"-1"); got.State != quarantine.Held {
		t.Errorf("infected message state %s, want held", got.State)
	}
	if e.enq.Count() != 0 {
		t.Error("infected message was enqueued")
	}
	au, _ := e.q.Audit(ctx, id+"-1")
	if au[len(au)-1].Action != "release_refused" || !strings.Contains(strings.ToLower(au[len(au)-1].Detail), "eicar") {
		t.Errorf("audit: %+v", au)
	}
	clean := e.hold(t, quarantine.Entry{From: "x@sender.example", Rcpts: []string{"bob@a.example"}}, msg("clean", "hello"))
	if _, err := e.q.Release(ctx, clean+"-1", quarantine.ReleaseOptions{By: "bob"}); err != nil {
		t.Fatalf("clean release: %v", err)
	}
}

func TestReleaseQueueDownStaysHeld(t *testing.T) { backends(t, testReleaseQueueDownStaysHeld) }

func testReleaseQueueDownStaysHeld(t *testing.T, driver string) {
	e := newEnv(t, driver, false)
	e.sink.Close()
	ctx := context.Background()
	id := e.hold(t, quarantine.Entry{From: "x@sender.example", Rcpts: []string{"bob@a.example"}}, msg("s", "b"))
	if _, err := e.q.Release(ctx, id+"-1", quarantine.ReleaseOptions{By: "bob"}); err == nil {
		t.Fatal("release succeeded with the queue down")
	}
	if got, _ := e.q.Get(ctx, id+"-1"); got.State != quarantine.Held {
		t.Errorf("state %s after failed release, want held", got.State)
	}
}

func TestListFilters(t *testing.T) { backends(t, testListFilters) }

func testListFilters(t *testing.T, driver string) {
	e := newEnv(t, driver, false)
	ctx := context.Background()
	base := e.now
	e.hold(t, quarantine.Entry{From: "a@s.example", Rcpts: []string{"bob@a.example"}, Subject: "Win 100% prize", Score: 12, Received: base.Add(-3 * time.Hour)}, msg("x", "y"))
	e.hold(t, quarantine.Entry{From: "b@s.example", Rcpts: []string{"bob@a.example"}, Subject: "Meeting notes", Score: 6, Received: base.Add(-2 * time.Hour)}, msg("x", "y"))
	e.hold(t, quarantine.Entry{From: "c@s.example", Rcpts: []string{"carol@b.example"}, Subject: "Cheap pills", HeaderFrom: "Pharma <c@s.example>", Score: 20, Received: base.Add(-1 * time.Hour)}, msg("x", "y"))
	cases := []struct {
		name string
		f    quarantine.Filter
		want []string // subjects, newest first
	}{
		{"all", quarantine.Filter{}, []string{"Cheap pills", "Meeting notes", "Win 100% prize"}},
		{"rcpt", quarantine.Filter{Rcpt: "BOB@a.example"}, []string{"Meeting notes", "Win 100% prize"}},
		{"domain", quarantine.Filter{Domain: "b.example"}, []string{"Cheap pills"}},
		{"search subject", quarantine.Filter{Search: "meeting"}, []string{"Meeting notes"}},
		{"search header from", quarantine.Filter{Search: "pharma"}, []string{"Cheap pills"}},
		{"search percent is literal", quarantine.Filter{Search: "100%"}, []string{"Win 100% prize"}},
		{"search underscore is literal", quarantine.Filter{Search: "_"}, nil},
		{"min score", quarantine.Filter{MinScore: ptr(10.0)}, []string{"Cheap pills", "Win 100% prize"}},
		{"since", quarantine.Filter{Since: base.Add(-150 * time.Minute)}, []string{"Cheap pills", "Meeting notes"}},
		{"until", quarantine.Filter{Until: base.Add(-150 * time.Minute)}, []string{"Win 100% prize"}},
		{"restrict rcpt", quarantine.Filter{Restrict: true, OnlyRcpts: []string{"carol@b.example"}}, []string{"Cheap pills"}},
		{"restrict domain", quarantine.Filter{Restrict: true, OnlyDomains: []string{"a.example"}}, []string{"Meeting notes", "Win 100% prize"}},
		{"restrict nothing", quarantine.Filter{Restrict: true}, nil},
		{"restrict and rcpt outside", quarantine.Filter{Restrict: true, OnlyRcpts: []string{"carol@b.example"}, Rcpt: "bob@a.example"}, nil},
		{"paging", quarantine.Filter{Limit: 1, Offset: 1}, []string{"Meeting notes"}},
		{"released state", quarantine.Filter{State: quarantine.Released}, nil},
	}
	for _, c := range cases {
		es, total, err := e.q.List(ctx, c.f)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var got []string
		for _, x := range es {
			got = append(got, x.Subject)
		}
		if strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
		if c.name == "paging" && total != 3 {
			t.Errorf("paging total = %d, want 3", total)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestExpiry(t *testing.T) { backends(t, testExpiry) }

func testExpiry(t *testing.T, driver string) {
	e := newEnv(t, driver, false)
	ctx := context.Background()
	short := e.hold(t, quarantine.Entry{Rcpts: []string{"x@short.example"}}, msg("s", "b"))
	long := e.hold(t, quarantine.Entry{Rcpts: []string{"x@a.example"}}, msg("s", "b"))
	e.now = e.now.Add(3 * time.Hour)
	n, err := e.q.Expire(ctx)
	if err != nil || n != 1 {
		t.Fatalf("Expire = %d, %v; want 1", n, err)
	}
	if g, _ := e.q.Get(ctx, short+"-1"); g.State != quarantine.Expired {
		t.Errorf("short-retention entry: %s", g.State)
	}
	if _, err := os.Stat(e.cfg.Dir + "/" + short + ".eml"); !os.IsNotExist(err) {
		t.Error("expired file kept")
	}
	if g, _ := e.q.Get(ctx, long+"-1"); g.State != quarantine.Held {
		t.Errorf("default-retention entry: %s", g.State)
	}
	e.now = e.now.Add(31 * 24 * time.Hour)
	if n, _ := e.q.Expire(ctx); n != 1 {
		t.Errorf("second Expire = %d, want 1", n)
	}
	// Long after, finished rows are forgotten (the audit log stays).
	e.now = e.now.Add(61 * 24 * time.Hour)
	e.q.Expire(ctx)
	if _, err := e.q.Get(ctx, long+"-1"); !errors.Is(err, quarantine.ErrNotFound) {
		t.Errorf("old row kept: %v", err)
	}
	if au, _ := e.q.Audit(ctx, long+"-1"); len(au) != 2 {
		t.Errorf("audit of forgotten row: %+v", au)
	}
}

func TestReportSpamAndPrefs(t *testing.T) { backends(t, testReportSpamAndPrefs) }

func testReportSpamAndPrefs(t *testing.T, driver string) {
	e := newEnv(t, driver, false)
	ctx := context.Background()
	id := e.hold(t, quarantine.Entry{From: "spam@s.example", Rcpts: []string{"bob@a.example"}}, msg("s", "b"))
	if err := e.q.ReportSpam(ctx, id+"-1", "bob"); err != nil {
		t.Fatal(err)
	}
	if err := e.q.ReportSpam(ctx, id+"-1", "bob"); !errors.Is(err, quarantine.ErrNotHeld) {
		t.Errorf("second report: %v", err)
	}
	p := e.q.Prefs
	p.BlockSender(ctx, "bob@a.example", "@s.example", "bob")
	p.AllowSender(ctx, "bob@a.example", "friend@s.example", "bob")
	for _, c := range []struct{ sender, want string }{{"friend@s.example", "allow"}, {"other@s.example", "block"}, {"x@else.example", ""}, {"", ""}} {
		if got, err := p.Lookup(ctx, "Bob@a.example", c.sender); err != nil || got != c.want {
			t.Errorf("Lookup(%q) = %q, %v; want %q", c.sender, got, err, c.want)
		}
	}
	if l, _ := p.List(ctx, "bob@a.example"); len(l) != 2 {
		t.Errorf("List = %+v", l)
	}
	p.Remove(ctx, "bob@a.example", "@s.example")
	if got, _ := p.Lookup(ctx, "bob@a.example", "other@s.example"); got != "" {
		t.Errorf("after Remove: %q", got)
	}
}

func TestLinks(t *testing.T) { backends(t, testLinks) }

func testLinks(t *testing.T, driver string) {
	e := newEnv(t, driver, false)
	ctx := context.Background()
	id := e.hold(t, quarantine.Entry{From: "a@s.example", Rcpts: []string{"bob@a.example", "carol@a.example"}}, msg("s", "b"))
	l := quarantine.Link{Action: quarantine.LinkRelease, EntryID: id + "-1", Rcpt: "bob@a.example", Expires: e.now.Add(time.Hour)}
	tok := e.q.SignLink(l)
	got, err := e.q.ParseLink(tok)
	if err != nil || got.Action != l.Action || got.EntryID != l.EntryID || got.Rcpt != l.Rcpt || !got.Expires.Equal(l.Expires) {
		t.Fatalf("ParseLink = %+v, %v", got, err)
	}
	// Altering any part breaks the signature.
	alt := l
	alt.EntryID = id + "-2"
	forged := strings.Split(e.q.SignLink(alt), ".")[0] + "." + strings.Split(tok, ".")[1]
	if _, err := e.q.ParseLink(forged); !errors.Is(err, quarantine.ErrLinkInvalid) {
		t.Errorf("forged entry: %v", err)
	}
	if _, err := e.q.ParseLink(tok[:len(tok)-2] + "AA"); !errors.Is(err, quarantine.ErrLinkInvalid) {
		t.Errorf("altered mac: %v", err)
	}
	// A link signed for bob cannot act on carol's entry even if validly signed (rcpt mismatch).
	mis := e.q.SignLink(quarantine.Link{Action: quarantine.LinkRelease, EntryID: id + "-2", Rcpt: "bob@a.example", Expires: e.now.Add(time.Hour)})
	if _, _, err := e.q.RedeemLink(ctx, mis); !errors.Is(err, quarantine.ErrLinkInvalid) {
		t.Errorf("rcpt mismatch: %v", err)
	}
	// Redeem once; twice is refused.
	if _, _, err := e.q.RedeemLink(ctx, tok); err != nil {
		t.Fatalf("redeem: %v", err)
	}
	if _, _, err := e.q.RedeemLink(ctx, tok); !errors.Is(err, quarantine.ErrLinkUsed) {
		t.Errorf("reuse: %v", err)
	}
	if g, _ := e.q.Get(ctx, id+"-1"); g.State != quarantine.Released || g.StateBy != "link:bob@a.example" {
		t.Errorf("after link: %s by %s", g.State, g.StateBy)
	}
	// Expiry.
	old := e.q.SignLink(quarantine.Link{Action: quarantine.LinkBlock, EntryID: id + "-2", Rcpt: "carol@a.example", Expires: e.now.Add(time.Minute)})
	e.now = e.now.Add(2 * time.Minute)
	if _, _, err := e.q.RedeemLink(ctx, old); !errors.Is(err, quarantine.ErrLinkExpired) {
		t.Errorf("expired: %v", err)
	}
	// A different store secret does not accept the token.
	if _, err := e.q.ParseLink("garbage"); !errors.Is(err, quarantine.ErrLinkInvalid) {
		t.Errorf("garbage: %v", err)
	}
}

func TestDigest(t *testing.T) { backends(t, testDigest) }

func testDigest(t *testing.T, driver string) {
	e := newEnv(t, driver, false)
	ctx := context.Background()
	e.hold(t, quarantine.Entry{From: "a@s.example", Rcpts: []string{"bob@a.example"}, Subject: "Prize <b>now</b>", Score: 11}, msg("s", "b"))
	e.hold(t, quarantine.Entry{From: "b@s.example", Rcpts: []string{"bob@a.example", "carol@b.example"}, Subject: "Invoice", Score: 7}, msg("s", "b"))
	n, err := e.q.SendDigests(ctx)
	if err != nil || n != 2 {
		t.Fatalf("SendDigests = %d, %v; want 2", n, err)
	}
	if !e.sink.Wait(2, 10*time.Second) {
		t.Fatal("digests did not arrive")
	}
	var bobDigest []byte
	for _, d := range e.sink.Deliveries() {
		if d.Rcpts[0] == "bob@a.example" {
			bobDigest, _ = os.ReadFile(d.Path)
		}
		if d.From != e.cfg.DigestFrom {
			t.Errorf("digest envelope sender %q", d.From)
		}
	}
	s := string(bobDigest)
	for _, want := range []string{"multipart/alternative", "text/plain", "text/html", "Subject: Quarantine: 2 new held messages", "Prize &lt;b&gt;now&lt;/b&gt;"} {
		if !strings.Contains(s, want) {
			t.Errorf("digest lacks %q", want)
		}
	}
	if c := strings.Count(strings.ReplaceAll(s, "=\r\n", ""), "https://q.example.net/l/"); c < 8 {
		t.Errorf("digest has %d links, want >= 8 (4 per message)", c)
	}
	// Nothing new: no digest.
	if n, _ := e.q.SendDigests(ctx); n != 0 {
		t.Errorf("second SendDigests = %d, want 0", n)
	}
	e.hold(t, quarantine.Entry{Rcpts: []string{"bob@a.example"}, Subject: "Third"}, msg("s", "b"))
	if n, _ := e.q.SendDigests(ctx); n != 1 {
		t.Errorf("third SendDigests = %d, want 1", n)
	}
}

func TestConfigValidate(t *testing.T) {
	c := quarantine.DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for key, mut := range map[string]func(*quarantine.Config){
		"retention":          func(c *quarantine.Config) { c.Retention = time.Minute },
		"digest_from":        func(c *quarantine.Config) { c.DigestFrom = "nope" },
		"base_url":           func(c *quarantine.Config) { c.BaseURL = "javascript:alert(1)" },
		"quarantine_dir":     func(c *quarantine.Config) { c.Dir = "" },
		"domain_retention":   func(c *quarantine.Config) { c.DomainRetention = map[string]time.Duration{"x": 1} },
		"digest_interval":    func(c *quarantine.Config) { c.DigestInterval = time.Second },
		"link_ttl":           func(c *quarantine.Config) { c.LinkTTL = 0 },
		"digest_max_entries": func(c *quarantine.Config) { c.DigestMaxEntries = 0 },
	} {
		c := quarantine.DefaultConfig()
		mut(&c)
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), key+":") {
			t.Errorf("%s: %v", key, err)
		}
	}
}

func FuzzParseLink(f *testing.F) {
	db := qtest.DB(f)
	cfg := quarantine.DefaultConfig()
	cfg.Dir = f.TempDir()
	q, err := quarantine.New(cfg, quarantine.Deps{DB: db, Secret: []byte("0123456789abcdef0123456789abcdef")})
	if err != nil {
		f.Fatal(err)
	}
	good := q.SignLink(quarantine.Link{Action: quarantine.LinkAllow, EntryID: "m-1", Rcpt: "a|b@c", Expires: time.Now().Add(time.Hour)})
	f.Add(good)
	f.Add("")
	f.Add("a.b")
	f.Fuzz(func(t *testing.T, tok string) {
		l, err := q.ParseLink(tok)
		if err == nil && tok != good {
			// Only tokens we signed verify; re-signing must reproduce them.
			if q.SignLink(*l) != tok {
				t.Fatalf("accepted a token we did not sign: %q", tok)
			}
		}
	})
}

func TestThresholds(t *testing.T) { backends(t, testThresholds) }

// testThresholds: a recipient's own thresholds are stored, read back
// (case-insensitive address), replaced, validated and removed, on both
// databases.
func testThresholds(t *testing.T, driver string) {
	e := newEnv(t, driver, false)
	ctx := context.Background()
	p := e.q.Prefs
	if th, err := p.Thresholds(ctx, "alice@a.example"); err != nil || !th.IsZero() {
		t.Fatalf("unset: %+v, %v", th, err)
	}
	f := func(v float64) *float64 { return &v }
	if err := p.SetThresholds(ctx, "Alice@A.example", policy.Thresholds{Tag: f(3), Reject: f(20)}, "alice"); err != nil {
		t.Fatal(err)
	}
	th, err := p.Thresholds(ctx, "alice@a.example")
	if err != nil || !th.Equal(policy.Thresholds{Tag: f(3), Reject: f(20)}) {
		t.Fatalf("read back %s, %v", th, err)
	}
	if err := p.SetThresholds(ctx, "alice@a.example", policy.Thresholds{Tag: f(8), Quarantine: f(4)}, "alice"); err == nil {
		t.Fatal("quarantine below tag accepted")
	}
	if th, _ := p.Thresholds(ctx, "alice@a.example"); !th.Equal(policy.Thresholds{Tag: f(3), Reject: f(20)}) {
		t.Fatalf("a refused change altered the thresholds: %s", th)
	}
	if err := p.SetThresholds(ctx, "alice@a.example", policy.Thresholds{Quarantine: f(7)}, "alice"); err != nil {
		t.Fatal(err)
	}
	if th, _ := p.Thresholds(ctx, "alice@a.example"); !th.Equal(policy.Thresholds{Quarantine: f(7)}) {
		t.Fatalf("replaced: %s", th)
	}
	if err := p.SetThresholds(ctx, "alice@a.example", policy.Thresholds{}, "alice"); err != nil {
		t.Fatal(err)
	}
	if th, _ := p.Thresholds(ctx, "alice@a.example"); !th.IsZero() {
		t.Fatalf("cleared: %s", th)
	}
}
