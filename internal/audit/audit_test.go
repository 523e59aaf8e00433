package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"moat.dev/moat/internal/passmark"
	"moat.dev/moat/internal/testutil/dnstest"
)

// testBackend is a real SMTP server on a loopback address.
type testBackend struct {
	rcpt func(to string) error             // nil: accept
	data func(to []string, b []byte) error // nil: accept
	mu   sync.Mutex
	msgs [][]byte
}

type testSession struct {
	b  *testBackend
	to []string
}

func (s *testSession) Reset()                               { s.to = nil }
func (s *testSession) Logout() error                        { return nil }
func (s *testSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *testSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.b.rcpt != nil {
		if err := s.b.rcpt(to); err != nil {
			return err
		}
	}
	s.to = append(s.to, to)
	return nil
}
func (s *testSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if s.b.data != nil {
		if err := s.b.data(s.to, b); err != nil {
			return err
		}
	}
	s.b.mu.Lock()
	s.b.msgs = append(s.b.msgs, b)
	s.b.mu.Unlock()
	return nil
}

func (b *testBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.msgs)
}

var errRelayDenied = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relay access denied"}

// listenSamePort listens on the same free port on every given loopback IP.
func listenSamePort(t *testing.T, ips ...string) (int, []net.Listener) {
	t.Helper()
	for attempt := 0; attempt < 20; attempt++ {
		first, err := net.Listen("tcp", net.JoinHostPort(ips[0], "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := first.Addr().(*net.TCPAddr).Port
		lns := []net.Listener{first}
		ok := true
		for _, ip := range ips[1:] {
			ln, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
			if err != nil {
				ok = false
				break
			}
			lns = append(lns, ln)
		}
		if ok {
			return port, lns
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	t.Fatal("no common free port")
	return 0, nil
}

func serveSMTP(t *testing.T, ln net.Listener, b *testBackend) {
	s := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &testSession{b: b}, nil }))
	s.Domain = "backend.test"
	s.ReadTimeout = 10 * time.Second
	s.WriteTimeout = 10 * time.Second
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
}

var secret = []byte("partial-test-domain-secret-0123456789")

type world struct {
	dns      *dnstest.Server
	port     int
	leaky    *testBackend // 127.0.0.2: accepts everything
	locked   *testBackend // 127.0.0.4: refuses RCPT
	enforcer *testBackend // 127.0.0.5: accepts RCPT, refuses unmarked mail at DATA
	other    *testBackend // 127.0.0.6: answers SMTP, refuses RCPT
	cfg      Config
}

// newWorld starts the DNS zones and SMTP servers with one planted leak per
// domain. 127.0.0.3 (guess.test's backend) has nothing listening: closed.
func newWorld(t *testing.T) *world {
	w := &world{}
	w.dns = dnstest.Start(t,
		"mx1.moat.test. 300 IN A 127.0.0.10",
		// mxleak.test: a low-priority MX pointing at the backend.
		"mxleak.test. 300 IN MX 10 mx1.moat.test.",
		"mxleak.test. 300 IN MX 50 backup.mxleak.test.",
		"backup.mxleak.test. 300 IN A 127.0.0.2",
		// guess.test: mail.guess.test points at the backend; smtp.guess.test at
		// another SMTP server.
		"guess.test. 300 IN MX 10 mx1.moat.test.",
		"mail.guess.test. 300 IN A 127.0.0.3",
		"smtp.guess.test. 300 IN CNAME other.isp.test.",
		"other.isp.test. 300 IN A 127.0.0.6",
		// clean.test: only Moat; web server on the apex; SPF names the backend.
		"clean.test. 300 IN MX 10 mx1.moat.test.",
		"clean.test. 300 IN A 127.0.0.9",
		"www.clean.test. 300 IN A 127.0.0.9",
		"webmail.clean.test. 300 IN CNAME mx1.moat.test.",
		`clean.test. 300 IN TXT "v=spf1 ip4:127.0.0.4 include:spf.isp.test -all"`,
		`spf.isp.test. 300 IN TXT "v=spf1 a:out.isp.test ip4:198.51.100.0/24 ~all"`,
		"out.isp.test. 300 IN A 127.0.0.8",
		// partial.test: clean DNS, but jc.test (not on Moat) shares its backend.
		"partial.test. 300 IN MX 10 mx1.moat.test.",
		"mbox.isp.test. 300 IN A 127.0.0.5",
		"jc.test. 300 IN MX 10 mbox.isp.test.",
		// broken.test: its server fails.
		"broken.test. 300 IN MX 10 mx1.moat.test.",
	)
	w.dns.Fail("broken.test.", dns.RcodeServerFailure)
	var lns []net.Listener
	w.port, lns = listenSamePort(t, "127.0.0.2", "127.0.0.4", "127.0.0.5", "127.0.0.6")
	w.leaky = &testBackend{}
	w.locked = &testBackend{rcpt: func(string) error { return errRelayDenied }}
	w.enforcer = &testBackend{rcpt: func(to string) error {
		if strings.HasSuffix(to, "@partial.test") || strings.HasSuffix(to, "@jc.test") {
			return nil
		}
		return errRelayDenied
	}, data: func(to []string, b []byte) error {
		if _, err := passmark.VerifyMessage(secret, b, to, passmark.Options{}); err != nil {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "no valid pass mark"}
		}
		return nil
	}}
	w.other = &testBackend{rcpt: func(string) error { return errRelayDenied }}
	for i, b := range []*testBackend{w.leaky, w.locked, w.enforcer, w.other} {
		serveSMTP(t, lns[i], b)
	}
	w.cfg = DefaultConfig()
	w.cfg.Gateway = Gateway{Hostnames: []string{"mx1.moat.test"}, Addresses: []string{"127.0.0.10"}}
	w.cfg.Resolver = w.dns.Addr
	w.cfg.SMTPPort = w.port
	w.cfg.ProbePorts = nil
	w.cfg.SourceAddress = "127.0.0.1"
	w.cfg.Timeout = 5 * time.Second
	w.cfg.NeighbourDomains = []string{"jc.test"}
	w.cfg.Routes = map[string]Route{
		"mxleak.test":  {Backends: []Backend{{Host: "127.0.0.2", Port: w.port}}},
		"guess.test":   {Backends: []Backend{{Host: "127.0.0.3", Port: w.port}}},
		"clean.test":   {Backends: []Backend{{Host: "127.0.0.4", Port: w.port}}},
		"partial.test": {Backends: []Backend{{Host: "mbox.isp.test", Port: w.port}}},
		"broken.test":  {Backends: []Backend{{Host: "127.0.0.4", Port: w.port}}},
	}
	return w
}

// kinds returns "severity/kind subject-prefix" of a domain's findings, sorted.
func kinds(d *DomainReport) []string {
	var out []string
	for _, f := range d.Findings {
		out = append(out, f.Severity.String()+"/"+f.Kind)
	}
	sort.Strings(out)
	return out
}

func byDomain(t *testing.T, r *Report) map[string]*DomainReport {
	m := map[string]*DomainReport{}
	for _, d := range r.Domains {
		m[d.Domain] = d
	}
	return m
}

func TestAuditDNSOnly(t *testing.T) {
	w := newWorld(t)
	rep, err := Run(context.Background(), w.cfg, []string{"mxleak.test", "guess.test", "clean.test", "partial.test"})
	if err != nil {
		t.Fatal(err)
	}
	got := byDomain(t, rep)
	want := map[string][]string{
		"mxleak.test":  {"critical/mx_leak"},
		"guess.test":   {"warning/guessable_name"},
		"clean.test":   {"info/spf_reveals"}, // its SPF names the backend
		"partial.test": {"warning/partial_domain"},
	}
	for d, k := range want {
		if g := kinds(got[d]); !slices.Equal(g, k) {
			t.Errorf("%s: findings %v, want %v\n%+v", d, g, k, got[d].Findings)
		}
	}
	f := got["mxleak.test"].Findings[0]
	if !strings.Contains(f.Subject, "MX 50 backup.mxleak.test (127.0.0.2)") || !strings.Contains(f.Fix, "mxleak.test. IN MX 50 backup.mxleak.test.") {
		t.Errorf("mx leak finding: %+v", f)
	}
	if f := got["guess.test"].Findings[0]; !strings.HasPrefix(f.Subject, "mail.guess.test (127.0.0.3)") {
		t.Errorf("guess finding: %+v", f)
	}
	if f := got["partial.test"].Findings[0]; f.Subject != "jc.test" || !strings.Contains(f.Fix, "moat milter") {
		t.Errorf("partial finding: %+v", f)
	}
	// The SPF record of clean.test names its backend and (one include level
	// down) out.isp.test: both are candidates; the /24 is not.
	var cands []string
	for _, c := range got["clean.test"].Candidates {
		cands = append(cands, c.Addr)
	}
	for _, want := range []string{"127.0.0.4", "127.0.0.8", "127.0.0.9"} {
		if !slices.Contains(cands, want) {
			t.Errorf("clean.test candidates %v lack %s", cands, want)
		}
	}
	if len(got["clean.test"].Probes) != 0 {
		t.Errorf("probed without --probe: %+v", got["clean.test"].Probes)
	}
	if rep.ExitCode() != 1 {
		t.Errorf("exit code %d, want 1", rep.ExitCode())
	}
	if w.leaky.count()+w.enforcer.count() != 0 {
		t.Error("messages delivered without --send-canary")
	}
}

func TestAuditProbe(t *testing.T) {
	w := newWorld(t)
	w.cfg.Probe = true
	rep, err := Run(context.Background(), w.cfg, []string{"mxleak.test", "guess.test", "clean.test", "partial.test"})
	if err != nil {
		t.Fatal(err)
	}
	got := byDomain(t, rep)
	want := map[string][]string{
		"mxleak.test": {"critical/direct_reachable", "critical/mx_leak"},
		// mail. -> the backend, which refuses connections (locked); smtp.
		// answers SMTP but refuses the domain: neither is a leak.
		"guess.test":   {"info/guessable_name", "info/guessable_name"},
		"clean.test":   {"info/spf_reveals"},
		"partial.test": {"critical/direct_reachable", "warning/partial_domain"},
	}
	for d, k := range want {
		if g := kinds(got[d]); !slices.Equal(g, k) {
			t.Errorf("%s: findings %v, want %v\n%+v\n%+v", d, g, k, got[d].Findings, got[d].Probes)
		}
	}
	var smtpName bool
	for _, f := range got["guess.test"].Findings {
		if strings.HasPrefix(f.Subject, "smtp.guess.test (127.0.0.6)") {
			smtpName = true
		}
	}
	if !smtpName {
		t.Errorf("smtp.guess.test answering SMTP not reported: %+v", got["guess.test"].Findings)
	}
	outcomes := map[string]string{}
	for _, d := range rep.Domains {
		for _, p := range d.Probes {
			outcomes[p.Target] = p.Outcome
		}
	}
	port := fmt.Sprint(w.port)
	for target, want := range map[string]string{
		"127.0.0.2:" + port: OutcomeAccepted,
		"127.0.0.3:" + port: OutcomeConnectFailed,
		"127.0.0.4:" + port: OutcomeRcptRefused,
		"127.0.0.5:" + port: OutcomeAccepted,
		"127.0.0.6:" + port: OutcomeRcptRefused,
	} {
		if outcomes[target] != want {
			t.Errorf("probe %s: %q, want %q", target, outcomes[target], want)
		}
	}
	if n := w.leaky.count() + w.enforcer.count() + w.locked.count(); n != 0 {
		t.Errorf("probe without canary sent %d messages (must never send DATA)", n)
	}
}

func TestAuditCanary(t *testing.T) {
	w := newWorld(t)
	w.cfg.Probe = true
	w.cfg.SendCanary = true
	w.cfg.NeighbourDomains = nil
	rep, err := Run(context.Background(), w.cfg, []string{"mxleak.test", "partial.test"})
	if err != nil {
		t.Fatal(err)
	}
	got := byDomain(t, rep)
	if g, k := kinds(got["mxleak.test"]), []string{"critical/mx_leak", "critical/passmark_enforced"}; !slices.Equal(g, k) {
		t.Errorf("mxleak.test: %v, want %v", g, k)
	}
	if g, k := kinds(got["partial.test"]), []string{"info/passmark_enforced"}; !slices.Equal(g, k) {
		t.Errorf("partial.test: %v, want %v\n%+v", g, k, got["partial.test"].Probes)
	}
	if w.leaky.count() != 1 || w.enforcer.count() != 0 {
		t.Fatalf("canaries delivered: leaky %d enforcer %d", w.leaky.count(), w.enforcer.count())
	}
	msg := w.leaky.msgs[0]
	if !bytes.Contains(msg, []byte("Subject: [MOAT AUDIT CANARY]")) || !bytes.Contains(msg, []byte("X-Moat-Pass: v=1; d=mxleak.test")) {
		t.Errorf("canary not labelled / no forged mark:\n%s", msg)
	}
	if _, err := passmark.VerifyMessage(secret, msg, []string{"postmaster@mxleak.test"}, passmark.Options{}); !errors.Is(err, passmark.ErrForged) {
		t.Errorf("canary mark verify: %v, want ErrForged", err)
	}
	if rep.ExitCode() != 1 {
		t.Errorf("exit %d", rep.ExitCode())
	}
}

func TestAuditFromMoatAddress(t *testing.T) {
	w := newWorld(t)
	w.cfg.Probe = true
	w.cfg.Gateway.Addresses = append(w.cfg.Gateway.Addresses, "127.0.0.1")
	rep, err := Run(context.Background(), w.cfg, []string{"mxleak.test"})
	if err != nil {
		t.Fatal(err)
	}
	if g, k := kinds(rep.Domains[0]), []string{"critical/mx_leak", "info/probe_inconclusive"}; !slices.Equal(g, k) {
		t.Errorf("findings %v, want %v", g, k)
	}
}

func TestAuditDNSFailure(t *testing.T) {
	w := newWorld(t)
	rep, err := Run(context.Background(), w.cfg, []string{"clean.test", "broken.test", "nonexistent.test"})
	if err != nil {
		t.Fatal(err)
	}
	got := byDomain(t, rep)
	if got["broken.test"].Error == "" || got["nonexistent.test"].Error == "" || got["clean.test"].Error != "" {
		t.Errorf("errors: %q %q %q", got["broken.test"].Error, got["nonexistent.test"].Error, got["clean.test"].Error)
	}
	if rep.ExitCode() != 2 {
		t.Errorf("exit %d, want 2", rep.ExitCode())
	}

	// No DNS server at all: the audit cannot run.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := pc.LocalAddr().String()
	pc.Close()
	w.cfg.Resolver = dead
	w.cfg.Timeout = 200 * time.Millisecond
	if _, err := Run(context.Background(), w.cfg, []string{"clean.test"}); err == nil {
		t.Error("Run with unreachable DNS succeeded")
	}
}

func TestReportOutput(t *testing.T) {
	w := newWorld(t)
	rep, err := Run(context.Background(), w.cfg, []string{"mxleak.test", "clean.test"})
	if err != nil {
		t.Fatal(err)
	}
	var plain, color, js bytes.Buffer
	rep.WriteText(&plain, false)
	rep.WriteText(&color, true)
	if strings.Contains(plain.String(), "\x1b[") || !strings.Contains(color.String(), "\x1b[31m") {
		t.Error("colour handling wrong")
	}
	for _, s := range []string{"mxleak.test\n", "CRITICAL", "[mx_leak]", "clean.test\n  OK no leaks found", "2 domain(s) audited: 1 critical, 0 warning"} {
		if !strings.Contains(plain.String(), s) {
			t.Errorf("text report lacks %q:\n%s", s, plain.String())
		}
	}
	if err := rep.WriteJSON(&js); err != nil || !strings.Contains(js.String(), `"severity": "critical"`) {
		t.Errorf("json: %v\n%s", err, js.String())
	}
}

func TestParseSPFTerm(t *testing.T) {
	for _, tc := range []struct {
		term    string
		hints   int
		include string
		lookups int
	}{
		{"ip4:192.0.2.1", 1, "", 0},
		{"+ip6:2001:db8::1", 1, "", 0},
		{"ip4:192.0.2.0/24", 0, "", 0},
		{"-ip4:192.0.2.1", 0, "", 0},
		{"a", 0, "", 1},
		{"a:mail.example.com/24", 0, "", 1},
		{"mx", 0, "", 1},
		{"include:_spf.example.net", 0, "_spf.example.net", 0},
		{"redirect=_spf.example.net", 0, "_spf.example.net", 0},
		{"exists:%{i}.example.com", 0, "", 0},
		{"~all", 0, "", 0},
	} {
		h, inc, l := parseSPFTerm(tc.term, "example.com")
		if len(h) != tc.hints || inc != tc.include || len(l) != tc.lookups {
			t.Errorf("%s: %v %q %v", tc.term, h, inc, l)
		}
	}
}

func FuzzParseSPFTerm(f *testing.F) {
	for _, s := range []string{"ip4:1.2.3.4", "a:x/24", "mx", "include:x", "redirect=y", "-all", "+", "ip6:::1/128"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if s == "" {
			return
		}
		parseSPFTerm(s, "example.com")
	})
}
