package web

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"moat.dev/moat/internal/clamd"
	"moat.dev/moat/internal/classify"
	"moat.dev/moat/internal/quarantine"
	"moat.dev/moat/internal/quarantine/qtest"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/sink"
	"moat.dev/moat/internal/testutil/clamdtest"
	"moat.dev/moat/internal/users"
	"moat.dev/moat/internal/verdict"
)

func TestMain(m *testing.M) {
	code := m.Run()
	clamdtest.Cleanup()
	os.Exit(code)
}

// browser starts a headless Chromium for the test (stopped at its end)
// and returns its context, bounded to 60 s.
func browser(t *testing.T, bin string) context.Context {
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelA)
	bctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(cancelB)
	bctx, cancelT := context.WithTimeout(bctx, 60*time.Second)
	t.Cleanup(cancelT)
	return bctx
}

func chromium(t *testing.T) string {
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	if os.Getenv("MOAT_REQUIRE_TOOLS") == "1" {
		t.Fatal("chromium is not installed (MOAT_REQUIRE_TOOLS=1)")
	}
	t.Skip("chromium is not installed")
	return ""
}

func artifactDir(t *testing.T) string {
	if d := os.Getenv("MOAT_ARTIFACTS"); d != "" {
		d = filepath.Join(d, "web")
		if err := os.MkdirAll(d, 0o755); err == nil {
			return d
		}
	}
	return t.TempDir()
}

// TestBrowserReleaseFlow drives a real headless Chromium: an end user logs
// in, finds a held message, previews it and releases it; the message then
// arrives at a real SMTP sink (through a test Enqueuer that delivers over
// SMTP, since the relay is not wired yet), was re-scanned by a real clamd,
// and the real classifier's spam probability for it drops (taught ham).
func TestBrowserReleaseFlow(t *testing.T) {
	bin := chromium(t)
	ctx := context.Background()
	db := qtest.DB(t)
	sk, err := sink.Start(sink.Config{Maildir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer sk.Close()

	cd := clamdtest.Shared(t)
	cc := clamd.DefaultConfig()
	cc.Addrs = cd.Addrs
	scanner, err := clamd.New(cc, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer scanner.Close()

	ccfg := classify.DefaultConfig()
	ccfg.MinHam, ccfg.MinSpam, ccfg.MinUserTrain = 0, 0, 0
	ccfg.TrainMode = "everything"
	cl, err := classify.New(ccfg, classify.NewMemStore())
	if err != nil {
		t.Fatal(err)
	}
	learner := qtest.Learner{C: cl}

	qc := quarantine.DefaultConfig()
	qc.Dir = t.TempDir()
	q, err := quarantine.New(qc, quarantine.Deps{DB: db, Enqueuer: &qtest.SMTPEnqueuer{Addr: sk.Addr()},
		Scanner: qtest.ClamScanner{C: scanner}, Learner: learner})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	users.Migrate(ctx, db)
	us := users.New(db)
	if err := us.Create(ctx, &users.User{Name: "erin", Role: users.EndUser, Addresses: []string{"erin@a.example"}}, password); err != nil {
		t.Fatal(err)
	}

	const rcpt = "erin@a.example"
	raw := "From: Quarterly Newsletter <news@partner.example>\r\nTo: erin@a.example\r\nSubject: Your quarterly partner report\r\n" +
		"Date: Mon, 02 Mar 2026 09:00:00 +0000\r\nMessage-ID: <r1@partner.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" +
		"Hello Erin,\r\nattached is the quarterly partner report with revenue figures and the meeting agenda.\r\nRegards, Partner team\r\n"
	// Teach the user's model that messages like this one are spam, so the
	// quarantine is plausible and the score has room to move.
	for i := 0; i < 3; i++ {
		spam := fmt.Sprintf("From: news@partner.example\r\nSubject: quarterly partner report %d\r\n\r\nquarterly partner report revenue figures meeting agenda offer %d\r\n", i, i)
		if err := learner.Learn(ctx, []byte(spam), true, rcpt); err != nil {
			t.Fatal(err)
		}
		ham := fmt.Sprintf("From: friend@x.example\r\nSubject: lunch %d\r\n\r\nshall we have lunch tomorrow at noon %d\r\n", i, i)
		learner.Learn(ctx, []byte(ham), false, rcpt)
	}
	before, err := learner.Score(ctx, []byte(raw), rcpt)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Hold(ctx, &quarantine.Entry{From: "news@partner.example", Rcpts: []string{rcpt}, Subject: "Your quarterly partner report",
		HeaderFrom: "Quarterly Newsletter <news@partner.example>", Score: 7.5, Action: "quarantine",
		Reasons: []verdict.Symbol{{Name: "BAYES_SPAM", Score: 5, Detail: fmt.Sprintf("p=%.2f", before)}, {Name: "DNSBL_LISTED", Score: 2.5}},
		Client:  clientInfo()}, strings.NewReader(raw)); err != nil {
		t.Fatal(err)
	}

	cfg := DefaultConfig()
	cfg.CookieSecure = false
	h, err := New(cfg, Deps{Quarantine: q, Users: us})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	bctx := browser(t, bin)

	art := artifactDir(t)
	var listShot, previewShot []byte
	var listText, previewText, flashText string
	err = chromedp.Do(bctx,
		chromedp.Navigate(srv.URL+"/quarantine"),
		chromedp.WaitVisible(chromedp.CSS(`#login-form`)),
		chromedp.SendKeys(chromedp.CSS(`#name`), "erin"),
		chromedp.SendKeys(chromedp.CSS(`#password`), password),
		chromedp.Click(chromedp.CSS(`#login-submit`)),
		chromedp.WaitVisible(chromedp.CSS(`table.msgs`)),
		into(&listText, chromedp.Text(chromedp.CSS(`table.msgs`))),
		into(&listShot, chromedp.FullScreenshot(100)),
		chromedp.Click(chromedp.CSS(`td.subject a`)),
		chromedp.WaitVisible(chromedp.CSS(`#body-text`)),
		into(&previewText, chromedp.Text(chromedp.CSS(`#body-text`))),
		into(&previewShot, chromedp.FullScreenshot(100)),
		chromedp.Click(chromedp.CSS(`#release`)),
		chromedp.WaitVisible(chromedp.CSS(`.flash-ok`)),
		into(&flashText, chromedp.Text(chromedp.CSS(`.flash-ok`))),
	)
	saveShots(t, art, map[string][]byte{"quarantine-list.png": listShot, "quarantine-preview.png": previewShot})
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	if !strings.Contains(listText, "Your quarterly partner report") || !strings.Contains(listText, "BAYES_SPAM") {
		t.Errorf("list text: %q", listText)
	}
	if !strings.Contains(previewText, "attached is the quarterly partner report") {
		t.Errorf("preview text: %q", previewText)
	}
	if !strings.Contains(flashText, "released") {
		t.Errorf("flash: %q", flashText)
	}
	if !sk.Wait(1, 15*time.Second) {
		t.Fatal("the released message did not arrive at the sink")
	}
	d := sk.Deliveries()[0]
	body, _ := os.ReadFile(d.Path)
	if d.Rcpts[0] != rcpt || !strings.Contains(string(body), "Hello Erin") || !strings.Contains(string(body), "X-Moat-Released: erin;") {
		t.Errorf("delivered: %+v\n%s", d, body)
	}
	after, err := learner.Score(ctx, []byte(raw), rcpt)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("classifier spam probability for %s: before release %.3f, after release (taught ham) %.3f", rcpt, before, after)
	if !(after < before) {
		t.Errorf("score did not move toward ham: before %.3f after %.3f", before, after)
	}
}

func clientInfo() queue.ClientInfo {
	return queue.ClientInfo{IP: "192.0.2.10", Helo: "mail.partner.example", Proto: "ESMTP"}
}

// into runs a and stores its value in dst, so values can be read inside
// one chromedp.Do sequence.
func into[T any](dst *T, a chromedp.Action[T]) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		v, err := a(ctx, t)
		if err != nil {
			return chromedp.Void{}, err
		}
		*dst = v
		return chromedp.Void{}, nil
	}
}

// saveShots writes the non-empty screenshots into art, named by their keys.
func saveShots(t *testing.T, art string, shots map[string][]byte) {
	t.Helper()
	for name, b := range shots {
		if len(b) > 0 {
			p := filepath.Join(art, name)
			if werr := os.WriteFile(p, b, 0o644); werr == nil {
				t.Logf("screenshot: %s", p)
			}
		}
	}
}
