package web

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"

	"moat.dev/moat/internal/quarantine"
	"moat.dev/moat/internal/quarantine/qtest"
	"moat.dev/moat/internal/sink"
	"moat.dev/moat/internal/users"
	"moat.dev/moat/internal/verdict"
)

const password = "correct horse battery"

var pwHashOnce = sync.OnceValue(func() string {
	h, err := users.HashPassword(password)
	if err != nil {
		panic(err)
	}
	return h
})

type tenv struct {
	srv  *httptest.Server
	q    *quarantine.Store
	us   *users.Store
	sink *sink.Server
	ids  map[string]string // name -> entry id
}

func newTEnv(t *testing.T) *tenv {
	t.Helper()
	ctx := context.Background()
	db := qtest.DB(t)
	sk, err := sink.Start(sink.Config{Maildir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sk.Close() })
	qc := quarantine.DefaultConfig()
	qc.Dir = t.TempDir()
	qc.BaseURL = "http://127.0.0.1"
	q, err := quarantine.New(qc, quarantine.Deps{DB: db, Enqueuer: &qtest.SMTPEnqueuer{Addr: sk.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := users.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	us := users.New(db)
	for _, u := range []*users.User{
		{Name: "alice", Role: users.EndUser, Addresses: []string{"alice@a.example", "ali@a.example"}},
		{Name: "bob", Role: users.EndUser, Addresses: []string{"bob@a.example"}},
		{Name: "adm-a", Role: users.DomainAdmin, Domains: []string{"a.example"}},
		{Name: "partner", Role: users.PartnerAdmin, Partner: "p1"},
		{Name: "root", Role: users.SiteAdmin},
	} {
		if err := us.CreateWithHash(ctx, u, pwHashOnce()); err != nil {
			t.Fatal(err)
		}
	}
	us.SetPartnerDomains(ctx, "p1", []string{"b.example"})
	cfg := DefaultConfig()
	cfg.CookieSecure = false
	h, err := New(cfg, Deps{Quarantine: q, Users: us, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	e := &tenv{srv: srv, q: q, us: us, sink: sk, ids: map[string]string{}}
	hold := func(key, rcpt, subject, raw string) {
		id, err := q.Hold(ctx, &quarantine.Entry{From: "sender@spam.example", Rcpts: []string{rcpt}, Subject: subject, Score: 8.5,
			Action: "quarantine", Reasons: []verdict.Symbol{{Name: "BAYES_SPAM", Score: 6, Detail: "p=0.99"}}}, strings.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		e.ids[key] = id + "-1"
	}
	hold("alice", "alice@a.example", "Alice secret offer", "From: S <sender@spam.example>\r\nSubject: Alice secret offer\r\nContent-Type: text/plain\r\n\r\nHello Alice\r\n")
	hold("ali", "ali@a.example", "Second address", "Subject: Second address\r\n\r\nhi\r\n")
	hold("bob", "bob@a.example", "Bob private", "Subject: Bob private\r\n\r\nBob body\r\n")
	hold("carol", "carol@b.example", "Carol at b", "Subject: Carol at b\r\n\r\nbody\r\n")
	hold("html", "alice@a.example", "Fancy html", "Subject: Fancy html\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"+
		"--XX\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><head><script>alert(1)</script><meta http-equiv=refresh content=\"0;url=https://evil.example/\"></head>"+
		"<body onload=\"steal()\"><p>Visible <b>text</b></p><img src=\"https://tracker.example/p.gif\"><a href=\"https://evil.example/\">click</a></body></html>\r\n"+
		"--XX\r\nContent-Type: application/x-msdownload; name=\"run.exe\"\r\nContent-Disposition: attachment; filename=\"run.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--XX--\r\n")
	return e
}

type client struct {
	t *testing.T
	c *http.Client
	e *tenv
}

func (e *tenv) client(t *testing.T) *client {
	jar, _ := cookiejar.New(nil)
	return &client{t: t, e: e, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

func (c *client) get(path string) (*http.Response, string) {
	c.t.Helper()
	resp, err := c.c.Get(c.e.srv.URL + path)
	if err != nil {
		c.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func (c *client) post(path string, v url.Values) (*http.Response, string) {
	c.t.Helper()
	resp, err := c.c.PostForm(c.e.srv.URL+path, v)
	if err != nil {
		c.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func csrfOf(t *testing.T, body string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF token in page:\n%s", body)
	}
	return m[1]
}

func (c *client) login(name, pw string) *http.Response {
	c.t.Helper()
	_, body := c.get("/login")
	resp, _ := c.post("/login", url.Values{"csrf": {csrfOf(c.t, body)}, "name": {name}, "password": {pw}, "next": {"/quarantine"}})
	return resp
}

// page returns a logged-in page and its CSRF token.
func (c *client) page(path string) (int, string, string) {
	c.t.Helper()
	resp, body := c.get(path)
	tok := ""
	if m := csrfRE.FindStringSubmatch(body); m != nil {
		tok = m[1]
	}
	return resp.StatusCode, body, tok
}

func TestLoginAndSecurityHeaders(t *testing.T) {
	t.Parallel()
	e := newTEnv(t)
	c := e.client(t)
	resp, _ := c.get("/quarantine")
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/login?next=") {
		t.Fatalf("anonymous list: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	for _, h := range []struct{ k, v string }{
		{"Content-Security-Policy", "default-src 'self'"}, {"Content-Security-Policy", "frame-ancestors 'none'"},
		{"X-Content-Type-Options", "nosniff"}, {"Referrer-Policy", "no-referrer"},
	} {
		if !strings.Contains(resp.Header.Get(h.k), h.v) {
			t.Errorf("%s = %q, want %q", h.k, resp.Header.Get(h.k), h.v)
		}
	}
	if r := c.login("alice", "wrong password"); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("bad password: %d", r.StatusCode)
	}
	r := c.login("Alice", password)
	if r.StatusCode != http.StatusSeeOther || r.Header.Get("Location") != "/quarantine" {
		t.Fatalf("login: %d %s", r.StatusCode, r.Header.Get("Location"))
	}
	var sc *http.Cookie
	for _, ck := range r.Cookies() {
		if ck.Name == "moat_session" {
			sc = ck
		}
	}
	if sc == nil || !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode {
		t.Errorf("session cookie: %+v", sc)
	}
	code, body, tok := c.page("/quarantine")
	if code != 200 || !strings.Contains(body, "Alice secret offer") || !strings.Contains(body, "Second address") || strings.Contains(body, "Bob private") {
		t.Errorf("alice's list (%d) wrong:\n%s", code, body)
	}
	if !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
		t.Error("no CSP")
	}
	// Logout needs the CSRF token and ends the session.
	c.post("/logout", url.Values{"csrf": {tok}})
	if resp, _ := c.get("/quarantine"); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("after logout: %d", resp.StatusCode)
	}
}

func TestSecureCookieConfig(t *testing.T) {
	t.Parallel()
	e := newTEnv(t)
	cfg := DefaultConfig()
	h, err := New(cfg, Deps{Quarantine: e.q, Users: e.us})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/login", nil))
	ck := rec.Result().Cookies()
	if len(ck) != 1 || !ck[0].Secure || !strings.HasPrefix(ck[0].Name, "__Host-") {
		t.Errorf("default cookies not Secure/__Host-: %+v", ck)
	}
}

func TestLoginRateLimit(t *testing.T) {
	t.Parallel()
	e := newTEnv(t)
	c := e.client(t)
	for i := 0; i < 5; i++ {
		if r := c.login("bob", "nope-nope"); r.StatusCode != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d", i, r.StatusCode)
		}
	}
	r := c.login("bob", password)
	if r.StatusCode != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" {
		t.Fatalf("6th attempt with the right password: %d, want 429 with Retry-After", r.StatusCode)
	}
	// Per account: another user from the same IP is limited too (same IP),
	// and the limiter keys accounts independently of IPs.
	l := newLimiter(2, time.Minute, time.Now)
	l.fail("ip:1", "user:x")
	l.fail("ip:2", "user:x")
	if l.blocked("ip:3", "user:x") == 0 {
		t.Error("account not limited across IPs")
	}
	if l.blocked("ip:1", "user:y") != 0 {
		t.Error("IP with one failure limited")
	}
}

func TestCSRF(t *testing.T) {
	t.Parallel()
	e := newTEnv(t)
	c := e.client(t)
	// Login without the double-submit token.
	if r, _ := c.post("/login", url.Values{"name": {"bob"}, "password": {password}}); r.StatusCode != http.StatusForbidden {
		t.Errorf("login without CSRF: %d", r.StatusCode)
	}
	c.login("bob", password)
	id := e.ids["bob"]
	for _, v := range []url.Values{{}, {"csrf": {"deadbeef"}}} {
		if r, _ := c.post("/quarantine/"+id+"/release", v); r.StatusCode != http.StatusForbidden {
			t.Errorf("release with csrf %v: %d, want 403", v, r.StatusCode)
		}
	}
	if g, _ := e.q.Get(context.Background(), id); g.State != quarantine.Held {
		t.Errorf("state after refused CSRF: %s", g.State)
	}
	// GET cannot change state.
	if r, _ := c.get("/quarantine/" + id + "/release"); r.StatusCode == http.StatusOK || r.StatusCode == http.StatusSeeOther {
		t.Errorf("GET release: %d", r.StatusCode)
	}
}

func TestOpenRedirectRefused(t *testing.T) {
	t.Parallel()
	for _, next := range []string{"https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)", "evil", "/%0d%0aSet-Cookie:x", "\\\\evil"} {
		if got := safeNext(next); got != "/quarantine" && next != "/%0d%0aSet-Cookie:x" {
			t.Errorf("safeNext(%q) = %q", next, got)
		}
	}
	if got := safeNext("/quarantine/x?y=1"); got != "/quarantine/x?y=1" {
		t.Errorf("local next refused: %q", got)
	}
	e := newTEnv(t)
	c := e.client(t)
	_, body := c.get("/login?next=" + url.QueryEscape("//evil.example/"))
	if strings.Contains(body, "evil.example") {
		t.Error("login page echoes the foreign next")
	}
	resp, _ := c.post("/login", url.Values{"csrf": {csrfOf(t, body)}, "name": {"bob"}, "password": {password}, "next": {"https://evil.example/"}})
	if loc := resp.Header.Get("Location"); loc != "/quarantine" {
		t.Errorf("redirect after login to %q", loc)
	}
}

func TestAuthorizationByObject(t *testing.T) {
	t.Parallel()
	e := newTEnv(t)
	ctx := context.Background()
	bob := e.client(t)
	bob.login("bob", password)
	_, _, tok := bob.page("/quarantine")
	aliceID := e.ids["alice"]
	for _, p := range []string{"/quarantine/" + aliceID, "/quarantine/" + aliceID + "/body", "/quarantine/nonexistent-1"} {
		if r, body := bob.get(p); r.StatusCode != http.StatusNotFound || strings.Contains(body, "Alice secret offer") {
			t.Errorf("bob GET %s: %d", p, r.StatusCode)
		}
	}
	for _, a := range []string{"release", "delete", "spam", "block"} {
		if r, _ := bob.post("/quarantine/"+aliceID+"/"+a, url.Values{"csrf": {tok}}); r.StatusCode != http.StatusNotFound {
			t.Errorf("bob %s alice's message: %d, want 404", a, r.StatusCode)
		}
	}
	// Bulk with someone else's ID does nothing to it.
	bob.post("/quarantine/bulk", url.Values{"csrf": {tok}, "action": {"delete"}, "id": {aliceID, e.ids["bob"]}})
	if g, _ := e.q.Get(ctx, aliceID); g.State != quarantine.Held {
		t.Errorf("alice's message after bob's bulk: %s", g.State)
	}
	if g, _ := e.q.Get(ctx, e.ids["bob"]); g.State != quarantine.Deleted {
		t.Errorf("bob's own message after bulk delete: %s", g.State)
	}
	// Domain admin of a.example: sees a.example, not b.example.
	adm := e.client(t)
	adm.login("adm-a", password)
	_, body, _ := adm.page("/quarantine")
	if !strings.Contains(body, "Alice secret offer") || strings.Contains(body, "Carol at b") {
		t.Errorf("domain admin list wrong:\n%s", body)
	}
	if r, _ := adm.get("/quarantine/" + e.ids["carol"]); r.StatusCode != http.StatusNotFound {
		t.Errorf("domain admin sees other domain: %d", r.StatusCode)
	}
	// Filtering by a recipient outside the scope shows nothing.
	if _, body, _ := adm.page("/quarantine?rcpt=carol@b.example"); strings.Contains(body, "Carol at b") {
		t.Error("rcpt filter escapes the scope")
	}
	// Partner admin of p1 (b.example) sees carol only.
	p := e.client(t)
	p.login("partner", password)
	if _, body, _ := p.page("/quarantine"); !strings.Contains(body, "Carol at b") || strings.Contains(body, "Alice secret offer") {
		t.Errorf("partner list wrong")
	}
	// Site admin sees all.
	root := e.client(t)
	root.login("root", password)
	if _, body, _ := root.page("/quarantine"); !strings.Contains(body, "Carol at b") || !strings.Contains(body, "Alice secret offer") {
		t.Errorf("site admin list wrong")
	}
}

func TestPreviewIsSafe(t *testing.T) {
	t.Parallel()
	e := newTEnv(t)
	c := e.client(t)
	c.login("alice", password)
	id := e.ids["html"]
	code, body, _ := c.page("/quarantine/" + id)
	if code != 200 {
		t.Fatalf("preview: %d", code)
	}
	for _, want := range []string{"Visible text", "run.exe", "application/x-msdownload", `sandbox=""`, "BAYES_SPAM"} {
		if !strings.Contains(body, want) {
			t.Errorf("preview lacks %q", want)
		}
	}
	if strings.Contains(body, "<script>alert") || strings.Contains(body, "tracker.example") {
		t.Error("preview page carries active content")
	}
	resp, frame := c.get("/quarantine/" + id + "/body")
	csp := resp.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "sandbox") || !strings.Contains(csp, "img-src data:") {
		t.Errorf("frame CSP %q", csp)
	}
	for _, bad := range []string{"<script", "alert(1)", "onload", "http-equiv", "tracker.example", "evil.example"} {
		if strings.Contains(strings.ToLower(frame), bad) {
			t.Errorf("frame contains %q:\n%s", bad, frame)
		}
	}
	if !strings.Contains(frame, "<b>text</b>") {
		t.Errorf("frame lost harmless markup:\n%s", frame)
	}
	// The attachment is not downloadable: no route serves it.
	if r, _ := c.get("/quarantine/" + id + "/attachment/0"); r.StatusCode != http.StatusNotFound {
		t.Errorf("attachment route: %d", r.StatusCode)
	}
}

func TestActionsAndFlash(t *testing.T) {
	t.Parallel()
	e := newTEnv(t)
	ctx := context.Background()
	c := e.client(t)
	c.login("alice", password)
	_, _, tok := c.page("/quarantine/" + e.ids["alice"])
	r, _ := c.post("/quarantine/"+e.ids["alice"]+"/release", url.Values{"csrf": {tok}, "allow": {"1"}})
	if r.StatusCode != http.StatusSeeOther {
		t.Fatalf("release: %d", r.StatusCode)
	}
	if !e.sink.Wait(1, 10*time.Second) {
		t.Fatal("released message did not arrive")
	}
	if k, _ := e.q.Prefs.Lookup(ctx, "alice@a.example", "sender@spam.example"); k != quarantine.Allow {
		t.Errorf("allow sender not stored: %q", k)
	}
	_, body, _ := c.page("/quarantine")
	if !strings.Contains(body, "1 message(s) released") {
		t.Errorf("no flash after release:\n%s", body)
	}
	if _, body, _ := c.page("/quarantine"); strings.Contains(body, "released.") {
		t.Error("flash shown twice")
	}
	// Report spam and bulk release of the rest.
	c.post("/quarantine/"+e.ids["html"]+"/spam", url.Values{"csrf": {tok}})
	if g, _ := e.q.Get(ctx, e.ids["html"]); g.State != quarantine.Deleted {
		t.Errorf("after spam: %s", g.State)
	}
	c.post("/quarantine/bulk", url.Values{"csrf": {tok}, "action": {"release"}, "id": {e.ids["ali"], e.ids["alice"]}, "return": {"/quarantine?q=x"}})
	if g, _ := e.q.Get(ctx, e.ids["ali"]); g.State != quarantine.Released {
		t.Errorf("bulk release: %s", g.State)
	}
	_, body, _ = c.page("/quarantine")
	if !strings.Contains(body, "1 message(s) released") || !strings.Contains(body, "1 message(s) were already released") {
		t.Errorf("bulk flash wrong:\n%s", body)
	}
	if !strings.Contains(body, "Nothing held") {
		t.Errorf("empty state missing:\n%s", body)
	}
	// Search and history.
	if _, body, _ := c.page("/quarantine?state=all&q=Second"); !strings.Contains(body, "Second address") || strings.Contains(body, "Fancy html") {
		t.Error("search with state=all wrong")
	}
}

func TestDigestLinkFlow(t *testing.T) {
	t.Parallel()
	e := newTEnv(t)
	ctx := context.Background()
	tok := e.q.SignLink(quarantine.Link{Action: quarantine.LinkReleaseTeach, EntryID: e.ids["bob"], Rcpt: "bob@a.example", Expires: time.Now().Add(time.Hour)})
	c := e.client(t) // not logged in
	r, body := c.get("/l/" + tok)
	if r.StatusCode != 200 || !strings.Contains(body, "Please confirm") || !strings.Contains(body, "Bob private") {
		t.Fatalf("confirm page: %d\n%s", r.StatusCode, body)
	}
	if g, _ := e.q.Get(ctx, e.ids["bob"]); g.State != quarantine.Held {
		t.Fatal("GET of the link changed state")
	}
	// POST without the form's CSRF cookie/field is refused.
	if r, _ := e.client(t).post("/l/"+tok, url.Values{}); r.StatusCode != http.StatusForbidden {
		t.Errorf("link POST without csrf: %d", r.StatusCode)
	}
	r, body = c.post("/l/"+tok, url.Values{"csrf": {csrfOf(t, body)}})
	if r.StatusCode != 200 || !strings.Contains(body, "Done") {
		t.Fatalf("link POST: %d\n%s", r.StatusCode, body)
	}
	if !e.sink.Wait(1, 10*time.Second) {
		t.Fatal("message not delivered")
	}
	if g, _ := e.q.Get(ctx, e.ids["bob"]); g.State != quarantine.Released {
		t.Errorf("state after link: %s", g.State)
	}
	// Again: refused.
	r, body = c.get("/l/" + tok)
	if r.StatusCode != http.StatusForbidden || !strings.Contains(body, "already been used") {
		t.Errorf("reused link GET: %d", r.StatusCode)
	}
	_, b2 := c.get("/login")
	if r, _ := c.post("/l/"+tok, url.Values{"csrf": {csrfOf(t, b2)}}); r.StatusCode != http.StatusForbidden {
		t.Errorf("reused link POST: %d", r.StatusCode)
	}
	// Altered to another message: refused.
	alt := strings.Replace(tok, tok[5:9], "AAAA", 1)
	if r, _ := c.get("/l/" + alt); r.StatusCode != http.StatusForbidden {
		t.Errorf("altered link: %d", r.StatusCode)
	}
	if e.sink.Count() != 1 {
		t.Errorf("sink got %d messages, want 1", e.sink.Count())
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for key, mut := range map[string]func(*Config){
		"listen":             func(c *Config) { c.Listen = "nope" },
		"session_ttl":        func(c *Config) { c.SessionTTL = 0 },
		"login_max_failures": func(c *Config) { c.LoginMaxFailures = 0 },
		"page_size":          func(c *Config) { c.PageSize = 1 },
		"title":              func(c *Config) { c.Title = " " },
	} {
		c := DefaultConfig()
		mut(&c)
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), key+":") {
			t.Errorf("%s: %v", key, err)
		}
	}
}

func FuzzPreview(f *testing.F) {
	f.Add("Subject: x\r\n\r\nbody")
	f.Add("Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: text/html\r\n\r\n<script>x</script><b onclick=y>t</b>\r\n--a--\r\n")
	f.Fuzz(func(t *testing.T, raw string) {
		p := parsePreview(strings.NewReader(raw))
		out := sanitizeHTML(p.HTML + raw)
		z := html.NewTokenizer(strings.NewReader(out))
		for {
			tt := z.Next()
			if tt == html.ErrorToken {
				return
			}
			if tt != html.StartTagToken && tt != html.SelfClosingTagToken {
				continue
			}
			tk := z.Token()
			switch tk.DataAtom {
			case atom.Script, atom.Iframe, atom.Object, atom.Embed, atom.Meta, atom.Base, atom.Link, atom.Form:
				t.Fatalf("active element %q survived in %q", tk.Data, out)
			}
			for _, a := range tk.Attr {
				k := strings.ToLower(a.Key)
				if strings.HasPrefix(k, "on") || k == "href" || k == "srcset" || k == "src" && !strings.HasPrefix(strings.ToLower(strings.TrimSpace(a.Val)), "data:image/") {
					t.Fatalf("attribute %s=%q survived in %q", a.Key, a.Val, out)
				}
			}
		}
	})
}
