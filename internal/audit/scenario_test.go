package audit

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"
)

// gatewayOnly refuses RCPT from every client but Moat's address: a backend
// locked down at the MTA (5xx for non-gateway sources).
func serveGatewayOnly(t *testing.T, ln net.Listener, gw string, b *testBackend) {
	s := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		host, _, _ := net.SplitHostPort(c.Conn().RemoteAddr().String())
		if host == gw {
			return &testSession{b: b}, nil
		}
		return &testSession{b: &testBackend{rcpt: func(string) error { return errRelayDenied }}}, nil
	}))
	s.Domain = "locked.test"
	s.ReadTimeout = 10 * time.Second
	s.WriteTimeout = 10 * time.Second
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
}

type scenarioWorld struct {
	zone     *zoneServer
	port     int // the "port 25" of every test server
	port2    int // 127.0.0.7 listens only here (a route port)
	port3    int // 127.0.0.8 listens only here (an extra probe port)
	v6       bool
	open     *testBackend // 127.0.0.2 and, if available, [::1]: accepts everything
	locked   *testBackend // 127.0.0.4: 5xx to everyone but the gateway
	gateway  *testBackend // 127.0.0.10: Moat itself, accepts everything
	other    *testBackend // 127.0.0.6: another server, refuses RCPT
	portOnly *testBackend // 127.0.0.7:port2 and 127.0.0.8:port3
	cfg      Config
}

// newScenarioWorld starts real SMTP servers on loopback. 127.0.0.3 has
// nothing listening (a backend locked by refusing connections).
func newScenarioWorld(t *testing.T) *scenarioWorld {
	w := &scenarioWorld{}
	ips := []string{"127.0.0.2", "127.0.0.4", "127.0.0.6", "127.0.0.10"}
	if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
		ln.Close()
		w.v6 = true
		ips = append(ips, "::1")
	}
	var lns []net.Listener
	w.port, lns = listenSamePort(t, ips...)
	w.open = &testBackend{}
	w.locked = &testBackend{}
	w.gateway = &testBackend{}
	w.other = &testBackend{rcpt: func(string) error { return errRelayDenied }}
	serveSMTP(t, lns[0], w.open)
	serveGatewayOnly(t, lns[1], "127.0.0.10", w.locked)
	serveSMTP(t, lns[2], w.other)
	serveSMTP(t, lns[3], w.gateway)
	if w.v6 {
		serveSMTP(t, lns[4], w.open)
	}
	w.portOnly = &testBackend{}
	for _, ip := range []string{"127.0.0.7", "127.0.0.8"} {
		ln, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		serveSMTP(t, ln, w.portOnly)
		if ip == "127.0.0.7" {
			w.port2 = ln.Addr().(*net.TCPAddr).Port
		} else {
			w.port3 = ln.Addr().(*net.TCPAddr).Port
		}
	}
	w.cfg = DefaultConfig()
	w.cfg.Gateway = Gateway{Hostnames: []string{"mx1.moat.test", "mx2.moat.test"}, Addresses: []string{"127.0.0.10"}}
	w.cfg.SMTPPort = w.port
	w.cfg.ProbePorts = []int{w.port3}
	w.cfg.SourceAddress = "127.0.0.1"
	w.cfg.Timeout = 2 * time.Second
	return w
}

type scenario struct {
	name    string
	records []string
	route   []Backend // nil: no route
	probe   bool
	setup   func(z *zoneServer)
	v6      bool     // needs ::1
	leaks   []string // severity/kind of every warning and critical finding, sorted
	infos   []string // info findings that must be present
	exit    int
	check   func(t *testing.T, d *DomainReport)
}

// gw are the zone records of Moat's own hosts.
var gwRecords = []string{
	"mx1.moat.test. 300 IN A 127.0.0.10",
	"mx2.moat.test. 300 IN A 127.0.0.10",
}

func findingOf(d *DomainReport, kind string) *Finding {
	for i := range d.Findings {
		if d.Findings[i].Kind == kind {
			return &d.Findings[i]
		}
	}
	return nil
}

func scenarios(w *scenarioWorld) []scenario {
	p := w.port
	open := []Backend{{Host: "127.0.0.2", Port: p}}
	locked := []Backend{{Host: "127.0.0.4", Port: p}}
	closed := []Backend{{Host: "127.0.0.3", Port: p}}
	moatMX := func(d string) string { return d + ". 300 IN MX 10 mx1.moat.test." }
	var out []scenario
	// --- MX leaks, DNS only and probed.
	for _, probe := range []bool{false, true} {
		leakDirect := []string{"critical/mx_leak"}
		if probe {
			leakDirect = []string{"critical/direct_reachable", "critical/mx_leak"}
		}
		tag := fmt.Sprintf("-probe=%v", probe)
		out = append(out,
			scenario{name: "low-priority MX to the backend" + tag, probe: probe, route: open, exit: 1, leaks: leakDirect,
				records: []string{moatMX("lowmx.test"), "lowmx.test. 300 IN MX 50 backup.lowmx.test.", "backup.lowmx.test. 300 IN A 127.0.0.2"},
				check: func(t *testing.T, d *DomainReport) {
					f := findingOf(d, KindMXLeak)
					if f.Record != "lowmx.test. IN MX 50 backup.lowmx.test." || f.Address != "127.0.0.2" || !strings.Contains(f.Evidence, "route backend 127.0.0.2") || !strings.Contains(f.Fix, "Delete the record") {
						t.Errorf("mx_leak finding: %+v", f)
					}
				}},
			scenario{name: "MX by an IP-sharing name" + tag, probe: probe, route: []Backend{{Host: "mbox.isp.test", Port: p}}, exit: 1, leaks: leakDirect,
				records: []string{moatMX("ipshare.test"), "ipshare.test. 300 IN MX 20 relay.elsewhere.test.", "relay.elsewhere.test. 300 IN A 127.0.0.2", "mbox.isp.test. 300 IN A 127.0.0.2"},
				check: func(t *testing.T, d *DomainReport) {
					if f := findingOf(d, KindMXLeak); !strings.Contains(f.Evidence, "route backend mbox.isp.test") {
						t.Errorf("evidence does not name the backend: %+v", f)
					}
				}},
			scenario{name: "MX target is a CNAME to the backend" + tag, probe: probe, route: open, exit: 1, leaks: leakDirect,
				records: []string{moatMX("mxcname.test"), "mxcname.test. 300 IN MX 20 alias.mxcname.test.", "alias.mxcname.test. 300 IN CNAME hop.isp.test.", "hop.isp.test. 300 IN CNAME mbox.isp.test.", "mbox.isp.test. 300 IN A 127.0.0.2"},
				check: func(t *testing.T, d *DomainReport) {
					f := findingOf(d, KindMXLeak)
					if !strings.Contains(f.Evidence, "alias.mxcname.test -> hop.isp.test (CNAME) -> mbox.isp.test (CNAME) -> 127.0.0.2") || !strings.Contains(f.Explanation, "CNAME") {
						t.Errorf("CNAME chain not shown: %+v", f)
					}
				}},
			scenario{name: "MX target is an IP literal" + tag, probe: probe, route: open, exit: 1, leaks: leakDirect,
				records: []string{moatMX("mxliteral.test"), "mxliteral.test. 300 IN MX 20 127.0.0.2."}},
		)
	}
	out = append(out,
		scenario{name: "MX to a non-Moat host that refuses mail", probe: true, route: locked, exit: 1, leaks: []string{"critical/mx_leak"},
			records: []string{moatMX("othermx.test"), "othermx.test. 300 IN MX 20 mx.otherisp.test.", "mx.otherisp.test. 300 IN A 127.0.0.6"}},
		scenario{name: "dangling MX", route: locked, exit: 1, leaks: []string{"warning/mx_leak"},
			records: []string{moatMX("dangling.test"), "dangling.test. 300 IN MX 20 gone.nowhere.test."}},
		scenario{name: "only the backend as MX", route: open, exit: 1, leaks: []string{"critical/mx_leak", "critical/not_routed"},
			records: []string{"onlybackend.test. 300 IN MX 10 mbox.isp.test.", "mbox.isp.test. 300 IN A 127.0.0.2"}},
		scenario{name: "no MX, apex A is the backend", route: open, exit: 1, leaks: []string{"critical/not_routed", "warning/guessable_name"},
			records: []string{"nomx.test. 300 IN A 127.0.0.2"}},
		scenario{name: "null MX alone", exit: 0, infos: []string{"info/null_mx", "info/no_route"},
			records: []string{"nullmx.test. 300 IN MX 0 ."}},
		scenario{name: "null MX with a leaking MX", route: open, exit: 1, leaks: []string{"critical/mx_leak"}, infos: []string{"info/null_mx"},
			records: []string{"nullmix.test. 300 IN MX 0 .", moatMX("nullmix.test"), "nullmix.test. 300 IN MX 20 backup.nullmix.test.", "backup.nullmix.test. 300 IN A 127.0.0.2"}},
		scenario{name: "MX CNAME to Moat", route: locked, probe: true, exit: 0, infos: []string{"info/mx_invalid"},
			records: []string{"cnamemoat.test. 300 IN MX 10 in.cnamemoat.test.", "in.cnamemoat.test. 300 IN CNAME mx1.moat.test."}},
	)
	// --- Guessable names: every label, through A, CNAME chains and AAAA.
	for i, label := range []string{"mail", "smtp", "mx", "mx1", "mx2", "exchange", "owa", "webmail", "remote", "relay", "mailhost", "email", "imap", "pop", "autodiscover"} {
		d := "g-" + label + ".test"
		fq := label + "." + d
		var recs []string
		switch i % 3 {
		case 0:
			recs = []string{fq + ". 300 IN A 127.0.0.2"}
		case 1:
			recs = []string{fq + ". 300 IN CNAME a.hosting.test.", "a.hosting.test. 300 IN CNAME mbox.isp.test.", "mbox.isp.test. 300 IN A 127.0.0.2"}
		case 2:
			recs = []string{fq + ". 300 IN AAAA 2001:db8::25", "mbox6.isp.test. 300 IN A 127.0.0.3", "mbox6.isp.test. 300 IN AAAA 2001:db8::25"}
		}
		route := open
		if i%3 == 2 {
			route = []Backend{{Host: "mbox6.isp.test", Port: p}}
		}
		want := fq
		out = append(out, scenario{name: "guessable " + label, route: route, exit: 1, leaks: []string{"warning/guessable_name"},
			records: append([]string{moatMX(d)}, recs...),
			check: func(t *testing.T, d *DomainReport) {
				if f := findingOf(d, KindGuessableName); !strings.HasPrefix(f.Subject, want+" (") || f.Record == "" || f.Evidence == "" {
					t.Errorf("guessable finding: %+v", f)
				}
			}})
	}
	out = append(out,
		scenario{name: "guessable mail. probed", probe: true, route: open, exit: 1, leaks: []string{"critical/direct_reachable", "warning/guessable_name"},
			records: []string{moatMX("gprobe.test"), "mail.gprobe.test. 300 IN A 127.0.0.2"}},
		scenario{name: "apex A is the backend", route: open, exit: 1, leaks: []string{"warning/guessable_name"},
			records: []string{moatMX("apex.test"), "apex.test. 300 IN A 127.0.0.2"},
			check: func(t *testing.T, d *DomainReport) {
				if f := findingOf(d, KindGuessableName); !strings.HasPrefix(f.Subject, "apex.test (apex A/AAAA)") || f.Record != "apex.test. IN A 127.0.0.2" {
					t.Errorf("apex finding: %+v", f)
				}
			}},
		scenario{name: "wildcard to the backend", route: open, exit: 1, leaks: []string{"warning/guessable_name"},
			records: []string{moatMX("wild.test"), "*.wild.test. 300 IN A 127.0.0.2"},
			check: func(t *testing.T, d *DomainReport) {
				if f := findingOf(d, KindGuessableName); !strings.HasPrefix(f.Subject, "*.wild.test (") {
					t.Errorf("wildcard finding: %+v", f)
				}
			}},
		scenario{name: "wildcard CNAME to the backend, probed", probe: true, route: open, exit: 1, leaks: []string{"critical/direct_reachable", "warning/guessable_name"},
			records: []string{moatMX("wildc.test"), "*.wildc.test. 300 IN CNAME mbox.isp.test.", "mbox.isp.test. 300 IN A 127.0.0.2"}},
		scenario{name: "guessable name to another host that accepts the domain", probe: true, route: closed, exit: 1,
			leaks:   []string{"critical/direct_reachable", "warning/guessable_name"},
			records: []string{moatMX("accepts.test"), "smtp.accepts.test. 300 IN A 127.0.0.2"},
			check: func(t *testing.T, d *DomainReport) {
				if f := findingOf(d, KindGuessableName); !strings.HasPrefix(f.Subject, "smtp.accepts.test (127.0.0.2)") {
					t.Errorf("finding: %+v", f)
				}
			}},
		scenario{name: "guessable name to a server refusing the domain", probe: true, route: locked, exit: 0, infos: []string{"info/guessable_name"},
			records: []string{moatMX("refuses.test"), "smtp.refuses.test. 300 IN A 127.0.0.6"}},
		scenario{name: "guessable name to the locked backend, probed", probe: true, route: locked, exit: 0, infos: []string{"info/guessable_name"},
			records: []string{moatMX("lockedname.test"), "mail.lockedname.test. 300 IN A 127.0.0.4"}},
		scenario{name: "guessable name to the locked backend, DNS only", route: locked, exit: 1, leaks: []string{"warning/guessable_name"},
			records: []string{moatMX("lockedname2.test"), "mail.lockedname2.test. 300 IN A 127.0.0.4"}},
	)
	// --- The backend reachable directly.
	out = append(out,
		scenario{name: "backend accepts on port 25", probe: true, route: open, exit: 1, leaks: []string{"critical/direct_reachable"},
			records: []string{moatMX("direct.test")},
			check: func(t *testing.T, d *DomainReport) {
				f := findingOf(d, KindDirect)
				if f.Address != fmt.Sprintf("127.0.0.2:%d", w.port) || !strings.Contains(f.Evidence, "C: RCPT TO:<postmaster@direct.test>") ||
					!strings.Contains(f.Evidence, "C: QUIT") || strings.Contains(f.Evidence, "DATA") ||
					!strings.Contains(f.Lockdown, "moat lockdown --format nftables --gateway-ip 127.0.0.10 ") ||
					!strings.Contains(d.Lockdown, "127.0.0.10") || !strings.Contains(d.Lockdown, fmt.Sprint(w.port)) {
					t.Errorf("direct finding: %+v\nlockdown:\n%s", f, d.Lockdown)
				}
			}},
		scenario{name: "backend accepts on its route port only", probe: true, route: []Backend{{Host: "127.0.0.7", Port: w.port2}}, exit: 1, leaks: []string{"critical/direct_reachable"},
			records: []string{moatMX("routeport.test")},
			check: func(t *testing.T, d *DomainReport) {
				if f := findingOf(d, KindDirect); f.Address != fmt.Sprintf("127.0.0.7:%d", w.port2) {
					t.Errorf("direct finding: %+v", f)
				}
			}},
		scenario{name: "backend accepts on an extra probe port (587-like)", probe: true, route: []Backend{{Host: "127.0.0.8", Port: p}}, exit: 1, leaks: []string{"critical/direct_reachable"},
			records: []string{moatMX("subm.test")},
			check: func(t *testing.T, d *DomainReport) {
				if f := findingOf(d, KindDirect); f.Address != fmt.Sprintf("127.0.0.8:%d", w.port3) {
					t.Errorf("direct finding: %+v", f)
				}
			}},
	)
	// --- IPv6.
	out = append(out,
		scenario{name: "AAAA of a guessable name to an open IPv6 backend", v6: true, probe: true, route: locked, exit: 1,
			leaks:   []string{"critical/direct_reachable", "warning/guessable_name"},
			records: []string{moatMX("v6.test"), "mail.v6.test. 300 IN A 127.0.0.4", "mail.v6.test. 300 IN AAAA ::1"},
			check: func(t *testing.T, d *DomainReport) {
				if f := findingOf(d, KindDirect); f.Address != fmt.Sprintf("[::1]:%d", w.port) || !strings.Contains(f.Explanation, "IPv6") {
					t.Errorf("direct finding: %+v", f)
				}
			}},
		scenario{name: "backend name with an open AAAA, IPv4 locked", v6: true, probe: true, route: []Backend{{Host: "mbox.v6b.test", Port: p}}, exit: 1,
			leaks:   []string{"critical/direct_reachable"},
			records: []string{moatMX("v6b.test"), "mbox.v6b.test. 300 IN A 127.0.0.4", "mbox.v6b.test. 300 IN AAAA ::1"}},
	)
	// --- SPF.
	out = append(out,
		scenario{name: "SPF names the locked backend", probe: true, route: locked, exit: 0, infos: []string{"info/spf_reveals"},
			records: []string{moatMX("spf.test"), `spf.test. 300 IN TXT "v=spf1 ip4:127.0.0.4 include:_spf.isp.test -all"`, `_spf.isp.test. 300 IN TXT "v=spf1 a:out.isp.test ip4:198.51.100.0/24 ~all"`, "out.isp.test. 300 IN A 127.0.0.9"},
			check: func(t *testing.T, d *DomainReport) {
				if !slices.ContainsFunc(d.Candidates, func(c Candidate) bool { return c.Addr == "127.0.0.9" }) {
					t.Errorf("SPF include host not a candidate: %+v", d.Candidates)
				}
			}},
		scenario{name: "SPF a/mx name the open backend", route: open, exit: 1, leaks: []string{"critical/mx_leak"}, infos: []string{"info/spf_reveals"},
			records: []string{moatMX("spfa.test"), "spfa.test. 300 IN MX 30 box.spfa.test.", "box.spfa.test. 300 IN A 127.0.0.2", `spfa.test. 300 IN TXT "v=spf1 mx -all"`}},
	)
	// --- Clean.
	out = append(out,
		scenario{name: "clean: backend refuses non-gateway clients", probe: true, route: locked, exit: 0,
			records: []string{moatMX("clean.test"), "clean.test. 300 IN MX 20 mx2.moat.test.", "clean.test. 300 IN A 127.0.0.9", "www.clean.test. 300 IN A 127.0.0.9",
				"webmail.clean.test. 300 IN CNAME mx1.moat.test.", `clean.test. 300 IN TXT "v=spf1 ip4:198.51.100.0/24 -all"`},
			check: func(t *testing.T, d *DomainReport) {
				for _, pr := range d.Probes {
					if strings.HasPrefix(pr.Target, "127.0.0.10:") {
						t.Errorf("probed Moat itself: %+v", pr)
					}
				}
				if d.Status != StatusClean {
					t.Errorf("status %q", d.Status)
				}
			}},
		scenario{name: "clean: backend refuses connections", probe: true, route: closed, exit: 0,
			records: []string{moatMX("clean2.test"), "clean2.test. 300 IN MX 20 mx2.moat.test."}},
		scenario{name: "clean: DNS only", route: locked, exit: 0,
			records: []string{moatMX("clean3.test"), "www.clean3.test. 300 IN A 127.0.0.9"}},
	)
	// --- DNS failures: could not check, never clean.
	out = append(out,
		scenario{name: "SERVFAIL on the MX", route: locked, exit: 2, leaks: []string{"warning/could_not_check", "warning/could_not_check"}, infos: []string{"info/spf_reveals"}, // MX, A/AAAA; TXT (SPF hints, no probe)
			records: []string{moatMX("servfail.test")},
			setup:   func(z *zoneServer) { z.setFail("servfail.test", dns.RcodeServerFailure) },
			check: func(t *testing.T, d *DomainReport) {
				if d.Error == "" || d.Status != StatusIncomplete {
					t.Errorf("error %q status %q", d.Error, d.Status)
				}
			}},
		scenario{name: "SERVFAIL on a guessable name", route: locked, exit: 2, leaks: []string{"warning/could_not_check"},
			records: []string{moatMX("guessfail.test")},
			setup:   func(z *zoneServer) { z.setFail("mail.guessfail.test", dns.RcodeServerFailure) }},
		scenario{name: "timeout on a guessable name", route: locked, exit: 2, leaks: []string{"warning/could_not_check"},
			records: []string{moatMX("timeout.test")},
			setup:   func(z *zoneServer) { z.setDrop("smtp.timeout.test") }},
		scenario{name: "SERVFAIL on an MX target", route: locked, exit: 2, leaks: []string{"warning/could_not_check"},
			records: []string{moatMX("mxfail.test"), "mxfail.test. 300 IN MX 20 mx.broken.test."},
			setup:   func(z *zoneServer) { z.setFail("mx.broken.test", dns.RcodeServerFailure) }},
		scenario{name: "leak plus a failed lookup", route: open, exit: 1, leaks: []string{"critical/mx_leak", "warning/could_not_check"},
			records: []string{moatMX("leakfail.test"), "leakfail.test. 300 IN MX 50 b.leakfail.test.", "b.leakfail.test. 300 IN A 127.0.0.2"},
			setup:   func(z *zoneServer) { z.setFail("mail.leakfail.test", dns.RcodeServerFailure) }},
		scenario{name: "domain does not exist", route: locked, exit: 2},
	)
	return out
}

func domainOf(s scenario) string {
	for _, r := range s.records {
		if f := strings.Fields(r); len(f) > 3 && f[3] == "MX" || len(f) > 3 && f[3] == "A" && strings.Count(f[0], ".") == 2 {
			return strings.TrimSuffix(f[0], ".")
		}
	}
	return "nonexistent.test"
}

// TestAuditScenarios plants one leak (or none) per domain in a real DNS
// server and real SMTP servers on loopback, and checks that the audit
// reports exactly the planted leaks, with the exit code.
func TestAuditScenarios(t *testing.T) {
	w := newScenarioWorld(t)
	for _, s := range append(scenarios(w), extraScenarios(w)...) {
		t.Run(s.name, func(t *testing.T) {
			if s.v6 && !w.v6 {
				t.Skip("no IPv6 loopback")
			}
			z := startZone(t, append(append([]string(nil), gwRecords...), s.records...)...)
			if s.setup != nil {
				s.setup(z)
			}
			cfg := w.cfg
			cfg.Resolver = z.Addr
			cfg.Probe = s.probe
			cfg.Timeout = 2 * time.Second
			if strings.HasPrefix(s.name, "timeout") {
				cfg.Timeout = 300 * time.Millisecond
			}
			domain := domainOf(s)
			if s.route != nil {
				cfg.Routes = map[string]Route{domain: {Backends: s.route}}
			}
			before := w.open.count() + w.locked.count() + w.gateway.count() + w.other.count() + w.portOnly.count()
			rep, err := Run(context.Background(), cfg, []string{domain})
			if err != nil {
				t.Fatal(err)
			}
			d := rep.Domains[0]
			var leaks, infos []string
			for _, f := range d.Findings {
				k := f.Severity.String() + "/" + f.Kind
				if f.Severity == Info {
					infos = append(infos, k)
				} else {
					leaks = append(leaks, k)
				}
			}
			sort.Strings(leaks)
			if !slices.Equal(leaks, s.leaks) {
				t.Errorf("%s: findings %v, want %v", domain, leaks, s.leaks)
			}
			for _, want := range s.infos {
				if !slices.Contains(infos, want) {
					t.Errorf("%s: info findings %v lack %s", domain, infos, want)
				}
			}
			if rep.ExitCode() != s.exit {
				t.Errorf("%s: exit %d, want %d (status %s)", domain, rep.ExitCode(), s.exit, rep.Status)
			}
			if s.check != nil && !t.Failed() {
				s.check(t, d)
			}
			if t.Failed() {
				for _, f := range d.Findings {
					t.Logf("  %s/%s %s | %s | %s", f.Severity, f.Kind, f.Subject, f.Evidence, f.Explanation)
				}
				for _, p := range d.Probes {
					t.Logf("  probe %s %s %s", p.Target, p.Outcome, p.Reply)
				}
			}
			if after := w.open.count() + w.locked.count() + w.gateway.count() + w.other.count() + w.portOnly.count(); after != before {
				t.Errorf("the probe delivered %d message(s): it must never send DATA", after-before)
			}
			for _, f := range d.Findings {
				if f.leak() && (f.Fix == "" || f.Explanation == "") {
					t.Errorf("finding without fix/explanation: %+v", f)
				}
			}
			for _, p := range d.Probes {
				ap, err := netip.ParseAddrPort(p.Target)
				if err == nil && ap.Addr() == netip.MustParseAddr("127.0.0.10") {
					t.Errorf("probed Moat's own address %s", p.Target)
				}
			}
		})
	}
}
