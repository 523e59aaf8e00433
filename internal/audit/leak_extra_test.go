package audit

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"moat.dev/moat/internal/testutil/dnstest"
)

// extraScenarios are leaks found by a black-box run of `moat audit`: a
// subdomain's own MX to the backend, a wildcard MX, an MX host that is
// partly Moat (Moat's IPv4 plus the backend's IPv6), a backend sharing
// Moat's address, and a domain whose name servers do not answer at all.
func extraScenarios(w *scenarioWorld) []scenario {
	p := w.port
	open := []Backend{{Host: "127.0.0.2", Port: p}}
	locked := []Backend{{Host: "127.0.0.4", Port: p}}
	mbox := []Backend{{Host: "mbox.isp.test", Port: p}}
	moatMX := func(d string) string { return d + ". 300 IN MX 10 mx1.moat.test." }
	var dead *zoneServer
	return []scenario{
		{name: "subdomain with its own MX to the backend", route: mbox, exit: 1, leaks: []string{"critical/mx_leak"},
			records: []string{moatMX("submx.test"), "lists.submx.test. 300 IN MX 10 mbox.isp.test.", "mbox.isp.test. 300 IN A 127.0.0.2"},
			check: func(t *testing.T, d *DomainReport) {
				f := findingOf(d, KindMXLeak)
				if !strings.HasPrefix(f.Subject, "MX of lists.submx.test: 10 mbox.isp.test (127.0.0.2)") || f.Record != "lists.submx.test. IN MX 10 mbox.isp.test." ||
					!strings.Contains(f.Evidence, "route backend mbox.isp.test") || !strings.Contains(f.Fix, "mx1.moat.test") {
					t.Errorf("subdomain MX finding: %+v", f)
				}
			}},
		{name: "guessable name with only an MX to the backend", route: open, exit: 1, leaks: []string{"critical/mx_leak"},
			records: []string{moatMX("submx2.test"), "mail.submx2.test. 300 IN MX 10 127.0.0.2."}},
		{name: "subdomain MX to the locked backend, probed", route: locked, probe: true, exit: 0, infos: []string{"info/mx_leak"},
			records: []string{moatMX("submx3.test"), "lists.submx3.test. 300 IN MX 10 box.isp.test.", "box.isp.test. 300 IN A 127.0.0.4"}},
		{name: "wildcard MX to the backend", route: open, exit: 1, leaks: []string{"critical/mx_leak"},
			records: []string{moatMX("wmx.test"), "*.wmx.test. 300 IN MX 10 box.wmx-isp.test.", "box.wmx-isp.test. 300 IN A 127.0.0.2"},
			check: func(t *testing.T, d *DomainReport) {
				if f := findingOf(d, KindMXLeak); !strings.HasPrefix(f.Subject, "MX of *.wmx.test:") || !strings.Contains(f.Fix, `"*.wmx.test. IN MX 10 box.wmx-isp.test."`) {
					t.Errorf("wildcard MX finding: %+v", f)
				}
			}},
		{name: "clean: subdomains with MX at Moat or hosted elsewhere", route: open, exit: 0,
			records: []string{moatMX("subclean.test"), "lists.subclean.test. 300 IN MX 10 mx2.moat.test.", "news.subclean.test. 300 IN MX 10 mx.provider.test.",
				"mx.provider.test. 300 IN A 127.0.0.6", "mail.subclean.test. 300 IN A 127.0.0.10"}},
		{name: "MX host partly Moat: an AAAA to the backend", route: open, exit: 1, leaks: []string{"critical/mx_leak"},
			records: []string{"mixed.test. 300 IN MX 10 mx.mixed.test.", "mx.mixed.test. 300 IN A 127.0.0.10", "mx.mixed.test. 300 IN AAAA 2001:db8::25"},
			check: func(t *testing.T, d *DomainReport) {
				f := findingOf(d, KindMXLeak)
				if f.Address != "2001:db8::25" || !strings.Contains(f.Fix, `"mx.mixed.test. IN AAAA 2001:db8::25"`) || strings.Contains(f.Fix, "IN MX") {
					t.Errorf("mixed MX finding: %+v", f)
				}
			}},
		{name: "SPF include that fails: a hint, not a gap", route: open, exit: 0, infos: []string{"info/spf_reveals"},
			records: []string{moatMX("spfinc.test"), `spfinc.test. 300 IN TXT "v=spf1 include:_spf.broken-provider.test ip4:127.0.0.10 -all"`},
			setup:   func(z *zoneServer) { z.setFail("_spf.broken-provider.test", dns.RcodeRefused) }},
		{name: "own SPF record unreadable, no probe: a hint, not a gap", route: open, exit: 0, infos: []string{"info/spf_reveals"},
			records: []string{moatMX("spfown.test")},
			setup:   func(z *zoneServer) { z.setFailType("spfown.test", dns.TypeTXT, dns.RcodeServerFailure) }},
		{name: "own SPF record unreadable, probing: its hints were not probed", route: locked, probe: true, exit: 2, leaks: []string{"warning/could_not_check"},
			records: []string{moatMX("spfown2.test")},
			setup:   func(z *zoneServer) { z.setFailType("spfown2.test", dns.TypeTXT, dns.RcodeServerFailure) }},
		{name: "route backend on Moat's own address", route: []Backend{{Host: "127.0.0.10", Port: p}}, exit: 2, leaks: []string{"warning/could_not_check"},
			records: []string{moatMX("gwback.test")}},
		{name: "timeout: the domain's name servers never answer", route: locked, exit: 2, leaks: []string{"warning/could_not_check", "warning/could_not_check"},
			records: []string{moatMX("deadzone.test")},
			setup: func(z *zoneServer) {
				dead = z
				z.setDrop("deadzone.test")
				for _, g := range DefaultGuessNames {
					z.setDrop(g + ".deadzone.test")
				}
			},
			check: func(t *testing.T, d *DomainReport) {
				// One round of timeouts, not one per guessable name.
				if n := dead.count("mail.deadzone.test", dns.TypeA); n != 0 {
					t.Errorf("asked for mail.deadzone.test %d times after the zone timed out", n)
				}
				if d.Status != StatusIncomplete || !strings.Contains(findingOfSubject(d, "names under deadzone.test").Explanation, "NOT known to be clean") {
					t.Errorf("dead zone report: %+v", d)
				}
			}},
	}
}

func findingOfSubject(d *DomainReport, prefix string) *Finding {
	for i := range d.Findings {
		if strings.HasPrefix(d.Findings[i].Subject, prefix) {
			return &d.Findings[i]
		}
	}
	return &Finding{}
}

// TestAuditWildcardLiteral: a DNS server that does not synthesise wildcard
// answers (dnstest) still answers for the name "*.DOMAIN": the wildcard A
// and the wildcard MX to the backend are found there.
func TestAuditWildcardLiteral(t *testing.T) {
	z := dnstest.Start(t,
		"mx1.moat.test. 300 IN A 127.0.0.10",
		"wlit.test. 300 IN MX 10 mx1.moat.test.",
		"*.wlit.test. 300 IN A 127.0.0.2",
		"wmxlit.test. 300 IN MX 10 mx1.moat.test.",
		"*.wmxlit.test. 300 IN MX 10 127.0.0.2.",
	)
	cfg := DefaultConfig()
	cfg.Gateway = Gateway{Hostnames: []string{"mx1.moat.test"}, Addresses: []string{"127.0.0.10"}}
	cfg.Resolver = z.Addr
	cfg.Timeout = 2 * time.Second
	cfg.Routes = map[string]Route{
		"wlit.test":   {Backends: []Backend{{Host: "127.0.0.2", Port: 25}}},
		"wmxlit.test": {Backends: []Backend{{Host: "127.0.0.2", Port: 25}}},
	}
	rep, err := Run(context.Background(), cfg, []string{"wlit.test", "wmxlit.test"})
	if err != nil {
		t.Fatal(err)
	}
	got := byDomain(t, rep)
	if f := findingOf(got["wlit.test"], KindGuessableName); f == nil || f.Severity != Warning || !strings.HasPrefix(f.Subject, "*.wlit.test (127.0.0.2)") || !strings.HasPrefix(f.Evidence, "*.wlit.test -> 127.0.0.2") {
		t.Errorf("wildcard A: %+v", got["wlit.test"].Findings)
	}
	if f := findingOf(got["wmxlit.test"], KindMXLeak); f == nil || f.Severity != Critical || !strings.HasPrefix(f.Subject, "MX of *.wmxlit.test:") {
		t.Errorf("wildcard MX: %+v", got["wmxlit.test"].Findings)
	}
	if rep.ExitCode() != 1 {
		t.Errorf("exit %d", rep.ExitCode())
	}
}
