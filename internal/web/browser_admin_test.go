package web

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"moat.dev/moat/internal/audit"
	"moat.dev/moat/internal/milter"
)

// consoleReport is a realistic audit: one leaking domain, one with a
// warning, two clean ones.
func consoleReport() *audit.Report {
	return &audit.Report{Started: time.Now().Add(-95 * time.Minute), Duration: 41 * time.Second, Probed: true, Domains: []*audit.DomainReport{
		{Domain: "acme.example", Findings: []audit.Finding{
			{Severity: audit.Critical, Kind: audit.KindMXLeak, Subject: "mail.acme-isp.example (MX 100)",
				Explanation: "This MX is not Moat. Spammers ignore MX priorities and deliver to the lowest-priority MX on purpose, so its mail is never filtered.",
				Fix:         "Delete the record from the acme.example zone:\n  acme.example. 3600 IN MX 100 mail.acme-isp.example."},
			{Severity: audit.Critical, Kind: audit.KindDirect, Subject: "192.0.2.25:25",
				Explanation: "The backend accepted mail for acme.example from an address that is not Moat's: anyone can bypass the filter.",
				Fix:         "Allow port 25 on the backend only from Moat's addresses, e.g. with nftables:\n  nft add rule inet filter input tcp dport 25 ip saddr != { 198.51.100.10, 198.51.100.11 } reject"},
			{Severity: audit.Warning, Kind: audit.KindGuessableName, Subject: "mail.acme.example → 192.0.2.25",
				Explanation: "Spammers try well-known names such as mail., smtp. and mx. of a domain; this one points at the backend.",
				Fix:         "Remove the A record of mail.acme.example, or point it at a host that does not accept SMTP."},
		}, Probes: []audit.Probe{
			{Target: "192.0.2.25:25", Outcome: audit.OutcomeAccepted, Reply: "250 2.1.5 Ok"},
			{Target: "192.0.2.26:25", Outcome: audit.OutcomeConnectFailed, Reply: "connection refused"},
		}, Candidates: []audit.Candidate{{Addr: "192.0.2.25", Sources: []string{"route", "mail.acme.example"}}}},
		{Domain: "initech.example", Findings: []audit.Finding{
			{Severity: audit.Warning, Kind: audit.KindPartialDomain, Subject: "initech-legacy.example",
				Explanation: "Another domain on the same backend does not route through Moat, so the backend must accept mail from everyone.",
				Fix:         "Route initech-legacy.example through Moat too, then restrict the backend's port 25 to Moat."},
		}},
		{Domain: "globex.example", Findings: []audit.Finding{
			{Severity: audit.Info, Kind: audit.KindPassMark, Subject: "10.20.0.5:25",
				Explanation: "The backend refused an unmarked canary message at end of DATA: the pass mark is enforced.", Fix: "Nothing to do."},
		}},
		{Domain: "umbrella.example"},
	}}
}

func consoleBypass() []milter.Report {
	now := time.Now()
	var ev []milter.Event
	for i, ip := range []string{"203.0.113.45", "203.0.113.45", "203.0.113.45", "198.51.100.201", "198.51.100.201", "192.0.2.140"} {
		ev = append(ev, milter.Event{ClientIP: ip, Time: now.Add(-time.Duration(40+i*7) * time.Minute), Reason: "missing"})
	}
	return []milter.Report{{Domain: "acme.example", Events: ev},
		{Domain: "initech.example", Events: []milter.Event{{ClientIP: "203.0.113.45", Time: now.Add(-26 * time.Hour), Reason: "forged"}}}}
}

// TestBrowserConsole drives a real headless Chromium: a site admin logs
// in, opens the Leakage page (screenshot leakage.png), message tracking
// and statistics; the pages render under the strict CSP without errors.
func TestBrowserConsole(t *testing.T) {
	t.Parallel()
	bin := chromium(t)
	e := newConsole(t, consoleOpts{report: consoleReport(), bypass: consoleBypass(), logTxns: func(log *slog.Logger) {
		logTraffic(log)
	}})

	bctx := browser(t, bin)

	art := artifactDir(t)
	var leakShot, trackShot, statsShot []byte
	var riskClass, cleanClass chromedp.AttributeResult
	var fixText, navText, statsText string
	var barWidth float64
	err := chromedp.Do(bctx,
		chromedp.Navigate(e.srv.URL+"/leakage"),
		chromedp.WaitVisible(chromedp.CSS(`#login-form`)),
		chromedp.SendKeys(chromedp.CSS(`#name`), "root"),
		chromedp.SendKeys(chromedp.CSS(`#password`), password),
		chromedp.Click(chromedp.CSS(`#login-submit`)),
		chromedp.WaitVisible(chromedp.CSS(`section.domain`)),
		into(&riskClass, chromedp.AttributeValue(chromedp.CSS(`section.domain`), "class")),
		into(&cleanClass, chromedp.AttributeValue(chromedp.CSS(`section.domain:last-of-type`), "class")),
		into(&fixText, chromedp.Text(chromedp.CSS(`section.domain .fix pre`))),
		into(&navText, chromedp.Text(chromedp.CSS(`nav.mainnav`))),
		into(&leakShot, chromedp.FullScreenshot(100)),
		chromedp.Navigate(e.srv.URL+"/tracking/QA2DEL"),
		chromedp.WaitVisible(chromedp.CSS(`ol.timeline`)),
		into(&trackShot, chromedp.FullScreenshot(100)),
		chromedp.Navigate(e.srv.URL+"/stats"),
		chromedp.WaitVisible(chromedp.CSS(`.chart`)),
		into(&statsText, chromedp.Text(chromedp.CSS(`#action-bars`))),
		into(&barWidth, chromedp.Evaluate[float64](`document.querySelector('#action-bars .w-100').getBoundingClientRect().width`)),
		into(&statsShot, chromedp.FullScreenshot(100)),
	)
	saveShots(t, art, map[string][]byte{"leakage.png": leakShot, "tracking-message.png": trackShot, "stats.png": statsShot})
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	if !strings.Contains(riskClass.Value, "domain-risk") || !strings.Contains(cleanClass.Value, "domain-clean") {
		t.Errorf("first domain class %q, last %q", riskClass.Value, cleanClass.Value)
	}
	if !strings.Contains(fixText, "acme.example. 3600 IN MX 100 mail.acme-isp.example.") {
		t.Errorf("fix text: %q", fixText)
	}
	for _, l := range []string{"Quarantine", "Leakage", "Message tracking", "Statistics"} {
		if !strings.Contains(navText, l) {
			t.Errorf("nav %q lacks %q", navText, l)
		}
	}
	if !strings.Contains(statsText, "delivered") {
		t.Errorf("stats text: %q", statsText)
	}
	// The bars are sized by the stylesheet's classes (no inline styles
	// under the CSP): the largest bar has a real width.
	if barWidth < 50 {
		t.Errorf("largest stats bar is %.0f px wide", barWidth)
	}
}
