package web

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/audit"
	"moat.dev/moat/internal/milter"
	"moat.dev/moat/internal/quarantine"
	"moat.dev/moat/internal/quarantine/qtest"
	"moat.dev/moat/internal/tracking"
	"moat.dev/moat/internal/users"
)

// consoleEnv is a UI with all console pages: a planted audit report, real
// bypass statistics (milter.Stats) and a real Tracker fed through its slog
// Handler, in one SQLite database.
type consoleEnv struct {
	srv *httptest.Server
	tr  *tracking.Tracker
}

type consoleOpts struct {
	report   *audit.Report
	auditErr error
	bypass   []milter.Report
	noAudit  bool
	noBypass bool
	noTrack  bool
	logTxns  func(log *slog.Logger)
	extra    []*users.User
}

func newConsole(t testing.TB, o consoleOpts) *consoleEnv {
	t.Helper()
	ctx := context.Background()
	db := qtest.DB(t)
	qc := quarantine.DefaultConfig()
	qc.Dir = t.TempDir()
	q, err := quarantine.New(qc, quarantine.Deps{DB: db, Enqueuer: &qtest.SMTPEnqueuer{Addr: "127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := users.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	us := users.New(db)
	for _, u := range append([]*users.User{
		{Name: "alice", Role: users.EndUser, Addresses: []string{"alice@a.example"}},
		{Name: "adm-a", Role: users.DomainAdmin, Domains: []string{"a.example"}},
		{Name: "partner", Role: users.PartnerAdmin, Partner: "p1"},
		{Name: "root", Role: users.SiteAdmin},
	}, o.extra...) {
		if err := us.CreateWithHash(ctx, u, pwHashOnce()); err != nil {
			t.Fatal(err)
		}
	}
	if err := us.SetPartnerDomains(ctx, "p1", []string{"b.example"}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	deps := Deps{Quarantine: q, Users: us, Logger: slog.New(slog.DiscardHandler), BypassSince: now.Add(-72 * time.Hour)}
	if !o.noAudit {
		deps.Audit = func() (*audit.Report, time.Time, error) {
			at := time.Time{}
			if o.report != nil {
				at = o.report.Started.Add(o.report.Duration)
			}
			return o.report, at, o.auditErr
		}
	}
	if !o.noBypass {
		st, err := milter.NewStats(prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range o.bypass {
			st.Record(r)
		}
		deps.Bypass = st.Domains
	}
	env := &consoleEnv{}
	if !o.noTrack {
		tcfg := tracking.DefaultConfig()
		tr, err := tracking.New(ctx, tcfg, db, "sqlite", nil, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		tr.Start(ctx)
		t.Cleanup(func() { tr.Close() })
		if o.logTxns != nil {
			o.logTxns(slog.New(tracking.Handler(slog.DiscardHandler, tr)))
		}
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := tr.Flush(fctx); err != nil {
			t.Fatal(err)
		}
		deps.Tracking = tr
		env.tr = tr
	}
	cfg := DefaultConfig()
	cfg.CookieSecure = false
	h, err := New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	env.srv = httptest.NewServer(h)
	t.Cleanup(env.srv.Close)
	return env
}

func (e *consoleEnv) login(t *testing.T, name string) *client {
	t.Helper()
	c := (&tenv{srv: e.srv}).client(t)
	if r := c.login(name, password); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("login %s: %d", name, r.StatusCode)
	}
	return c
}

// plantedReport has a critical and a warning finding for a.example (one
// with markup in it), an info-only b.example and an unauditable c.example.
func plantedReport() *audit.Report {
	return &audit.Report{Started: time.Now().Add(-2 * time.Hour), Duration: 3 * time.Second, Probed: true, Domains: []*audit.DomainReport{
		{Domain: "b.example", Findings: []audit.Finding{{Severity: audit.Info, Kind: audit.KindPassMark, Subject: "b-canary-subject",
			Explanation: "The backend refused the unmarked canary.", Fix: "Nothing to do."}}},
		{Domain: "a.example", Findings: []audit.Finding{
			{Severity: audit.Warning, Kind: audit.KindGuessableName, Subject: "mail.a.example",
				Explanation: "mail.a.example points at the backend; spammers try such names.", Fix: "Remove the A record of mail.a.example."},
			{Severity: audit.Critical, Kind: audit.KindMXLeak, Subject: "backup.isp.example (MX 100)",
				Explanation: `Spammers use the lowest-priority MX <script>alert("pwn")</script>.`,
				Fix:         "Remove the MX record:\n  a.example. IN MX 100 backup.isp.example."},
		}, Probes: []audit.Probe{{Target: "192.0.2.25:25", Outcome: audit.OutcomeAccepted, Reply: "250 2.1.5 Ok"}}},
		{Domain: "c.example", Error: "c-dns-failure: SERVFAIL"},
	}}
}

func plantedBypass() []milter.Report {
	now := time.Now()
	return []milter.Report{
		{Domain: "a.example", Events: []milter.Event{
			{ClientIP: "203.0.113.5", Time: now.Add(-3 * time.Hour), Reason: "missing"},
			{ClientIP: "203.0.113.5", Time: now.Add(-time.Hour), Reason: "missing"},
			{ClientIP: "203.0.113.9", Time: now.Add(-30 * time.Minute), Reason: "forged"},
		}},
		{Domain: "c.example", Events: []milter.Event{{ClientIP: "198.51.100.77", Time: now, Reason: "missing"}}},
	}
}

// logTraffic logs what the SMTP server and the queue log for four
// messages, as they do in production.
func logTraffic(log *slog.Logger) {
	txn := func(qid, ip, from string, rcpts []string, outcome, reply, action string, score float64, syms []string, reason string) {
		log.With("conn_id", "c-"+qid, "ip", ip).Info(tracking.TxnMessage, "queue_id", qid, "helo", "mx."+qid+".test", "from", from,
			"rcpts", rcpts, "refused_rcpts", 0, "size", int64(2048), "outcome", outcome, "reply", reply,
			"action", action, "score", score, "symbols", syms, "reason", reason)
	}
	deliver := func(qid, rcpt, outcome, reply, host string) {
		lvl := slog.LevelInfo
		if outcome != "delivered" {
			lvl = slog.LevelWarn
		}
		log.With("queue_id", qid, "domain", tracking.DomainOf(rcpt)).Log(context.Background(), lvl, "queue: "+outcome,
			"rcpt", rcpt, "reply", reply, "host", host, "attempts", 1)
	}
	txn("QA1REJ", "198.51.100.1", "spammer@bad.test", []string{"user@a.example"}, "rejected", "550 5.7.1 Message refused by policy",
		"reject", 3, []string{"DNSBL_ZEN"}, "dnsbl: listed in zen.example")
	txn("QA2DEL", "192.0.2.44", "friend@good.test", []string{"bob@a.example"}, "queued", "250 2.0.0 Ok: queued as QA2DEL",
		"deliver", 0.5, []string{"SPF_PASS"}, "")
	deliver("QA2DEL", "bob@a.example", "deferred", "451 4.3.0 backend busy", "10.0.0.5:25")
	deliver("QA2DEL", "bob@a.example", "delivered", "250 2.0.0 ok backend-queued-777", "10.0.0.5:25")
	txn("QB1TAG", "192.0.2.99", "news@list.test", []string{"carol@b.example"}, "tagged", "250 2.0.0 Ok: queued as QB1TAG",
		"tag", 6.5, []string{"BAYES_SPAM", "URIBL_BLACK"}, "score 6.5 >= tag 5")
	deliver("QB1TAG", "carol@b.example", "delivered", "250 ok carol-secret-reply", "10.9.9.9:25")
	txn("QMULTI", "192.0.2.10", "both@x.test", []string{"alice@a.example", "carol@b.example"}, "queued", "250 2.0.0 Ok: queued as QMULTI",
		"deliver", 1, nil, "")
	deliver("QMULTI", "alice@a.example", "delivered", "250 ok alice-reply", "10.0.0.5:25")
	deliver("QMULTI", "carol@b.example", "delivered", "250 ok carol-multi-reply", "10.9.9.9:25")
}

func fullConsole(t *testing.T) *consoleEnv {
	return newConsole(t, consoleOpts{report: plantedReport(), bypass: plantedBypass(), logTxns: logTraffic})
}

func TestConsoleEndUsersGet404(t *testing.T) {
	t.Parallel()
	e := fullConsole(t)
	alice := e.login(t, "alice")
	for _, p := range []string{"/leakage", "/tracking", "/tracking?rcpt=a.example", "/tracking/QA1REJ", "/tracking/QMULTI", "/stats", "/stats?range=7d"} {
		r, body := alice.get(p)
		if r.StatusCode != http.StatusNotFound {
			t.Errorf("end user GET %s: %d, want 404", p, r.StatusCode)
		}
		for _, leak := range []string{"203.0.113.5", "QA1REJ", "backup.isp.example", "alice-reply"} {
			if strings.Contains(body, leak) {
				t.Errorf("end user GET %s shows %q", p, leak)
			}
		}
	}
	_, body, _ := alice.page("/quarantine")
	for _, l := range []string{`href="/leakage"`, `href="/tracking"`, `href="/stats"`} {
		if strings.Contains(body, l) {
			t.Errorf("end user's page has nav link %s", l)
		}
	}
	// Anonymous: sent to the login page, like the quarantine.
	anon := (&tenv{srv: e.srv}).client(t)
	if r, _ := anon.get("/leakage"); r.StatusCode != http.StatusSeeOther || !strings.HasPrefix(r.Header.Get("Location"), "/login") {
		t.Errorf("anonymous /leakage: %d %s", r.StatusCode, r.Header.Get("Location"))
	}
}

func TestConsoleHiddenWithoutDeps(t *testing.T) {
	t.Parallel()
	e := newConsole(t, consoleOpts{noAudit: true, noBypass: true, noTrack: true})
	root := e.login(t, "root")
	for _, p := range []string{"/leakage", "/tracking", "/tracking/X", "/stats"} {
		if r, _ := root.get(p); r.StatusCode != http.StatusNotFound {
			t.Errorf("site admin GET %s without deps: %d, want 404", p, r.StatusCode)
		}
	}
	if _, body, _ := root.page("/quarantine"); strings.Contains(body, `class="mainnav"`) {
		t.Error("console nav shown without console pages")
	}
	// Tracking only: leakage stays hidden, tracking shows, and so do their links.
	e = newConsole(t, consoleOpts{noAudit: true, noBypass: true})
	root = e.login(t, "root")
	if r, _ := root.get("/leakage"); r.StatusCode != http.StatusNotFound {
		t.Errorf("/leakage without audit and bypass: %d", r.StatusCode)
	}
	code, body, _ := root.page("/tracking")
	if code != 200 || strings.Contains(body, `href="/leakage"`) || !strings.Contains(body, `href="/stats"`) {
		t.Errorf("tracking-only console: %d, nav wrong", code)
	}
}

var domainSectionRE = regexp.MustCompile(`<section class="card domain domain-(\w+)" id="domain-([a-z0-9.-]+)"`)

// domainSections returns the domains on a leakage page with their status,
// in page order.
func domainSections(body string) [][2]string {
	var out [][2]string
	for _, m := range domainSectionRE.FindAllStringSubmatch(body, -1) {
		out = append(out, [2]string{m[2], m[1]})
	}
	return out
}

func TestLeakagePage(t *testing.T) {
	t.Parallel()
	e := fullConsole(t)
	root := e.login(t, "root")
	code, body, _ := root.page("/leakage")
	if code != 200 {
		t.Fatalf("leakage: %d", code)
	}
	got := domainSections(body)
	want := [][2]string{{"a.example", "risk"}, {"c.example", "risk"}, {"b.example", "clean"}}
	if len(got) != len(want) {
		t.Fatalf("domains on page: %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("domain %d: %v, want %v (risky first, most critical first)", i, got[i], want[i])
		}
	}
	// The findings with explanation and exact fix, grouped by severity
	// (critical before warning), the probe, and the bypass monitoring.
	a := body[strings.Index(body, `id="domain-a.example"`):strings.Index(body, `id="domain-c.example"`)]
	for _, s := range []string{"backup.isp.example (MX 100)", "Remove the MX record:\n  a.example. IN MX 100 backup.isp.example.",
		"mail.a.example points at the backend", "Remove the A record of mail.a.example.", "mx_leak", "guessable_name",
		"192.0.2.25:25", "250 2.1.5 Ok", ">3</span> unmarked messages reached the backend", "203.0.113.5", "203.0.113.9"} {
		if !strings.Contains(a, s) {
			t.Errorf("a.example section lacks %q", s)
		}
	}
	if ic, iw := strings.Index(a, "sev-group sev-critical"), strings.Index(a, "sev-group sev-warning"); ic < 0 || iw < 0 || ic > iw {
		t.Errorf("severity groups out of order: critical at %d, warning at %d", ic, iw)
	}
	if i5, i9 := strings.Index(a, "203.0.113.5"), strings.Index(a, "203.0.113.9"); i5 > i9 {
		t.Error("top clients not ordered by count")
	}
	// Escaping: the finding's markup is text, not an element.
	if strings.Contains(body, `<script>alert("pwn")`) || !strings.Contains(body, `&lt;script&gt;alert(&#34;pwn&#34;)&lt;/script&gt;`) {
		t.Error("finding text not HTML-escaped")
	}
	if !strings.Contains(body, "c-dns-failure: SERVFAIL") || !strings.Contains(body, "198.51.100.77") {
		t.Error("c.example: audit error or bypass missing")
	}
	if !strings.Contains(body, "No unmarked messages reached the backend") {
		t.Error("b.example: no clean bypass state")
	}
	for _, s := range []string{`id="tile-risk"`, ">2</span><span class=\"tile-label\">domains at risk", "with reachability probes", `aria-current="page">Leakage`} {
		if !strings.Contains(body, s) {
			t.Errorf("page lacks %q", s)
		}
	}
	// Filters.
	if _, body, _ := root.page("/leakage?risk=1"); len(domainSections(body)) != 2 {
		t.Errorf("risk filter: %v", domainSections(body))
	}
	if _, body, _ := root.page("/leakage?domain=b.ex"); len(domainSections(body)) != 1 || domainSections(body)[0][0] != "b.example" {
		t.Errorf("domain filter: %v", domainSections(body))
	}
}

func TestLeakageScoping(t *testing.T) {
	t.Parallel()
	e := fullConsole(t)
	for _, tc := range []struct {
		user    string
		want    [][2]string
		visible []string
		hidden  []string
	}{
		{"adm-a", [][2]string{{"a.example", "risk"}}, []string{"backup.isp.example", "203.0.113.5"},
			[]string{"b-canary-subject", "c-dns-failure", "198.51.100.77", "c.example", "b.example"}},
		{"partner", [][2]string{{"b.example", "clean"}}, []string{"b-canary-subject"},
			[]string{"backup.isp.example", "203.0.113.5", "c-dns-failure", "198.51.100.77", "a.example"}},
	} {
		c := e.login(t, tc.user)
		code, body, _ := c.page("/leakage")
		if code != 200 {
			t.Fatalf("%s: %d", tc.user, code)
		}
		if got := domainSections(body); len(got) != len(tc.want) || got[0] != tc.want[0] {
			t.Errorf("%s sees domains %v, want %v", tc.user, got, tc.want)
		}
		for _, s := range tc.visible {
			if !strings.Contains(body, s) {
				t.Errorf("%s does not see %q", tc.user, s)
			}
		}
		for _, s := range tc.hidden {
			if strings.Contains(body, s) {
				t.Errorf("%s sees %q", tc.user, s)
			}
		}
		// A domain filter cannot widen the scope.
		if _, body, _ := c.page("/leakage?domain=c.example"); strings.Contains(body, "c-dns-failure") {
			t.Errorf("%s: filter escapes the scope", tc.user)
		}
	}
}

func TestLeakageAuditStates(t *testing.T) {
	t.Parallel()
	// No audit yet, a domain admin's domain without data: shown, grey.
	e := newConsole(t, consoleOpts{noTrack: true})
	adm := e.login(t, "adm-a")
	_, body, _ := adm.page("/leakage")
	if got := domainSections(body); len(got) != 1 || got[0] != [2]string{"a.example", "unknown"} {
		t.Errorf("no audit yet: %v", got)
	}
	if !strings.Contains(body, "has not run yet") {
		t.Error("no 'has not run yet' notice")
	}
	// The last run failed: the error text (resolver details) is not shown.
	e = newConsole(t, consoleOpts{noTrack: true, report: plantedReport(), auditErr: errors.New("secret-resolver-detail 10.1.2.3:53")})
	root := e.login(t, "root")
	_, body, _ = root.page("/leakage")
	if !strings.Contains(body, `id="audit-failed"`) || strings.Contains(body, "secret-resolver-detail") {
		t.Error("audit failure: notice missing or error text shown")
	}
	if len(domainSections(body)) != 3 {
		t.Error("the last report is not shown after a failed run")
	}
	// Bypass monitoring only: a domain without bypasses is clean, one with
	// bypasses red.
	e = newConsole(t, consoleOpts{noTrack: true, noAudit: true, bypass: plantedBypass()})
	root = e.login(t, "root")
	_, body, _ = root.page("/leakage")
	if got := domainSections(body); len(got) != 2 || got[0][1] != "risk" || got[1][1] != "risk" {
		t.Errorf("bypass only: %v", got)
	}
	adm = e.login(t, "partner")
	if _, body, _ = adm.page("/leakage"); len(domainSections(body)) != 1 || domainSections(body)[0] != [2]string{"b.example", "clean"} {
		t.Errorf("bypass only, partner: %v", domainSections(body))
	}
}

var qidRE = regexp.MustCompile(`href="/tracking/([A-Za-z0-9.-]+)"`)

func qids(body string) []string {
	var out []string
	for _, m := range qidRE.FindAllStringSubmatch(body, -1) {
		out = append(out, m[1])
	}
	return out
}

func TestTrackingPages(t *testing.T) {
	t.Parallel()
	e := fullConsole(t)
	root := e.login(t, "root")
	for _, tc := range []struct {
		query string
		want  string
	}{
		{"", "QMULTI QB1TAG QA2DEL QA1REJ"},
		{"?rcpt=a.example", "QMULTI QA2DEL QA1REJ"},
		{"?from=SPAMMER", "QA1REJ"},
		{"?ip=192.0.2.99", "QB1TAG"},
		{"?action=rejected", "QA1REJ"},
		{"?id=QA2DEL", "QA2DEL"},
		{"?since=" + url.QueryEscape(time.Now().Add(time.Hour).Format("2006-01-02T15:04")), ""},
		{"?until=" + url.QueryEscape(time.Now().AddDate(0, 0, 1).Format("2006-01-02")), "QMULTI QB1TAG QA2DEL QA1REJ"},
	} {
		code, body, _ := root.page("/tracking" + tc.query)
		if code != 200 {
			t.Fatalf("tracking%s: %d", tc.query, code)
		}
		// Messages logged in one batch share a timestamp only by chance;
		// compare as sets.
		got := strings.Join(sortedCopy(qids(body)), " ")
		if want := strings.Join(sortedCopy(strings.Fields(tc.want)), " "); got != want {
			t.Errorf("tracking%s: %q, want %q", tc.query, got, want)
		}
	}
	for _, bad := range []string{"?ip=not-an-ip", "?since=yesterday", "?action=exploded"} {
		code, body, _ := root.page("/tracking" + bad)
		if code != 200 || !strings.Contains(body, `flash flash-error`) || len(qids(body)) != 0 {
			t.Errorf("tracking%s: %d, want the form with an error and no results", bad, code)
		}
	}
	// Detail: envelope, checks, per-recipient status and the timeline with
	// the backend's replies.
	code, body, _ := root.page("/tracking/QA2DEL")
	if code != 200 {
		t.Fatalf("detail: %d", code)
	}
	for _, s := range []string{"friend@good.test", "bob@a.example", "192.0.2.44", "SPF_PASS", "Received over SMTP: delivered",
		"Delivery deferred", "451 4.3.0 backend busy", "Delivery delivered", "250 2.0.0 ok backend-queued-777", "10.0.0.5:25",
		"250 2.0.0 Ok: queued as QA2DEL"} {
		if !strings.Contains(body, s) {
			t.Errorf("detail lacks %q", s)
		}
	}
	if i, j := strings.Index(body, "Delivery deferred"), strings.Index(body, "Delivery delivered"); i < 0 || i > j {
		t.Error("timeline not in order")
	}
	_, body, _ = root.page("/tracking/QA1REJ")
	for _, s := range []string{"dnsbl: listed in zen.example", "550 5.7.1 Message refused by policy", "DNSBL_ZEN", "rejected"} {
		if !strings.Contains(body, s) {
			t.Errorf("rejected detail lacks %q", s)
		}
	}
	if r, _ := root.get("/tracking/NOPE"); r.StatusCode != http.StatusNotFound {
		t.Errorf("unknown queue id: %d", r.StatusCode)
	}
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func TestTrackingScoping(t *testing.T) {
	t.Parallel()
	e := fullConsole(t)
	adm := e.login(t, "adm-a")
	_, body, _ := adm.page("/tracking")
	if got := strings.Join(sortedCopy(qids(body)), " "); got != "QA1REJ QA2DEL QMULTI" {
		t.Errorf("domain admin sees %q", got)
	}
	// A search for the other domain's recipient finds nothing.
	if _, body, _ := adm.page("/tracking?rcpt=carol"); len(qids(body)) != 0 {
		t.Errorf("domain admin finds %v for carol@b.example", qids(body))
	}
	if r, body := adm.get("/tracking/QB1TAG"); r.StatusCode != http.StatusNotFound || strings.Contains(body, "carol-secret-reply") {
		t.Errorf("domain admin GET other domain's message: %d", r.StatusCode)
	}
	// A message to both domains: only its own recipient and delivery.
	code, body, _ := adm.page("/tracking/QMULTI")
	if code != 200 || !strings.Contains(body, "alice-reply") || strings.Contains(body, "carol-multi-reply") || strings.Contains(body, "carol@b.example") {
		t.Errorf("domain admin's view of a shared message (%d) shows the other domain or lacks its own", code)
	}
	p := e.login(t, "partner")
	_, body, _ = p.page("/tracking")
	if got := strings.Join(sortedCopy(qids(body)), " "); got != "QB1TAG QMULTI" {
		t.Errorf("partner sees %q", got)
	}
	if r, _ := p.get("/tracking/QA1REJ"); r.StatusCode != http.StatusNotFound {
		t.Errorf("partner GET a.example message: %d", r.StatusCode)
	}
}

var barRE = regexp.MustCompile(`<th>(\w+)</th>\s*<td class="bar-cell"><span class="bar act-bg-\w+ w-(\d+)"></span></td>\s*<td class="num">(\d+)</td>`)

func bars(body string) map[string]string {
	out := map[string]string{}
	i := strings.Index(body, `id="action-bars"`)
	if i < 0 {
		return out
	}
	sec := body[i:]
	sec = sec[:strings.Index(sec, "</table>")]
	for _, m := range barRE.FindAllStringSubmatch(sec, -1) {
		out[m[1]] = m[3] + "@" + m[2]
	}
	return out
}

func TestStatsPage(t *testing.T) {
	t.Parallel()
	e := fullConsole(t)
	root := e.login(t, "root")
	for _, rng := range []string{"", "?range=7d"} {
		code, body, _ := root.page("/stats" + rng)
		if code != 200 {
			t.Fatalf("stats%s: %d", rng, code)
		}
		// count@width: 2 delivered is the largest bar (100%), 1 is 50%.
		got := bars(body)
		for k, v := range map[string]string{"delivered": "2@100", "tagged": "1@50", "rejected": "1@50", "quarantined": "0@0"} {
			if got[k] != v {
				t.Errorf("stats%s: %s = %q, want %q (all %v)", rng, k, got[k], v, got)
			}
		}
		if !strings.Contains(body, "<code>dnsbl</code>") || !strings.Contains(body, "a.example") {
			t.Errorf("stats%s: top reject reason missing", rng)
		}
		// Every chart column carries only class-based sizes (CSP).
		if strings.Contains(body, "style=") {
			t.Errorf("stats%s uses an inline style", rng)
		}
		if n := strings.Count(body, `<div class="col"`); n < 24 || n > 30 {
			t.Errorf("stats%s: %d chart columns", rng, n)
		}
	}
	// Scoped: partner (b.example) sees the tagged message and the shared
	// one, not a.example's reject.
	p := e.login(t, "partner")
	_, body, _ := p.page("/stats")
	got := bars(body)
	if got["tagged"] != "1@100" || got["delivered"] != "1@100" || got["rejected"] != "0@0" || strings.Contains(body, "<code>dnsbl</code>") {
		t.Errorf("partner stats: %v", got)
	}
}
