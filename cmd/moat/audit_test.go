package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"moat.dev/moat/internal/audit"
	"moat.dev/moat/internal/testutil/dnstest"
)

type auditSession struct{ deny bool }

func (s *auditSession) Reset()                               {}
func (s *auditSession) Logout() error                        { return nil }
func (s *auditSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *auditSession) Rcpt(string, *smtp.RcptOptions) error {
	if s.deny {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "go through the MX"}
	}
	return nil
}
func (s *auditSession) Data(io.Reader) error {
	return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "the audit must not send DATA"}
}

func auditSMTP(t *testing.T, deny bool) (string, int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &auditSession{deny: deny}, nil }))
	s.Domain = "backend.test"
	s.ReadTimeout, s.WriteTimeout = 5*time.Second, 5*time.Second
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	a := ln.Addr().(*net.TCPAddr)
	return a.IP.String(), a.Port
}

type auditJSON struct {
	Status   string `json:"status"`
	ExitCode int    `json:"exit_code"`
	Error    string `json:"error"`
	Domains  []struct {
		Domain   string `json:"domain"`
		Status   string `json:"status"`
		Findings []struct {
			Severity, Kind, Subject, Record, Address, Evidence, Fix, Lockdown string
		} `json:"findings"`
	} `json:"domains"`
}

func TestAuditCommand(t *testing.T) {
	openIP, openPort := auditSMTP(t, false)
	lockedIP, lockedPort := auditSMTP(t, true)
	z := dnstest.Start(t,
		"mx1.moat.test. 300 IN A 127.0.0.10",
		"clean.test. 300 IN MX 10 mx1.moat.test.",
		"leaky.test. 300 IN MX 10 mx1.moat.test.",
		"leaky.test. 300 IN MX 90 fallback.isp.test.",
		"fallback.isp.test. 300 IN A 192.0.2.77",
		"broken.test. 300 IN MX 10 mx1.moat.test.",
	)
	z.Fail("broken.test.", dns.RcodeServerFailure)
	base := []string{"--gateway-host", "mx1.moat.test", "--gateway-ip", "127.0.0.10", "--resolver", z.Addr, "--timeout", "2s", "--json"}
	run := func(args ...string) (int, auditJSON, string) {
		var out, errb bytes.Buffer
		code := runAudit(args, &out, &errb)
		var j auditJSON
		if out.Len() > 0 {
			if err := json.Unmarshal(out.Bytes(), &j); err != nil {
				t.Errorf("%v: output is not JSON: %v\n%s", args, err, out.String())
			}
		}
		return code, j, errb.String()
	}
	for _, tc := range []struct {
		name   string
		args   []string
		exit   int
		status string
		kind   string // a finding kind that must be present
	}{
		{"clean, DNS only", append(base, "clean.test"), 0, "clean", ""},
		{"clean, probed, backend refuses", append(base, "--probe", "--probe-port", "0", "--smtp-port", fmt.Sprint(lockedPort), "--backend", fmt.Sprintf("%s:%d", lockedIP, lockedPort), "clean.test"), 0, "clean", ""},
		{"low-priority MX", append(base, "leaky.test"), 1, "leaks", "mx_leak"},
		{"backend accepts directly", append(base, "--probe", "--probe-port", "0", "--smtp-port", fmt.Sprint(openPort), "--backend", fmt.Sprintf("%s:%d", openIP, openPort), "clean.test"), 1, "leaks", "direct_reachable"},
		{"flags after the domain", append([]string{"leaky.test"}, base...), 1, "leaks", "mx_leak"},
		{"SERVFAIL", append(base, "broken.test"), 2, "could_not_check", "could_not_check"},
		{"SERVFAIL and a leak", append(base, "broken.test", "leaky.test"), 1, "leaks", "mx_leak"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, j, stderr := run(tc.args...)
			if code != tc.exit || j.Status != tc.status || j.ExitCode != tc.exit {
				t.Fatalf("exit %d status %q (json exit %d), want %d %q; stderr %s", code, j.Status, j.ExitCode, tc.exit, tc.status, stderr)
			}
			if tc.kind == "" {
				return
			}
			for _, d := range j.Domains {
				for _, f := range d.Findings {
					if f.Kind == tc.kind && f.Fix != "" && f.Evidence != "" {
						if tc.kind == "direct_reachable" && (!strings.Contains(f.Evidence, "RCPT TO:<postmaster@clean.test>") || !strings.Contains(f.Lockdown, "moat lockdown")) {
							t.Errorf("direct finding lacks transcript/lockdown: %+v", f)
						}
						return
					}
				}
			}
			t.Errorf("no %s finding with fix and evidence: %+v", tc.kind, j.Domains)
		})
	}
	// Usage and configuration errors: exit 2, a JSON error object.
	for _, args := range [][]string{
		{"--json"},
		{"--no-such-flag", "x.test"},
		{"--json", "--resolver", z.Addr, "x.test"},                                       // no gateway
		{"--json", "--gateway-ip", "not-an-ip", "--resolver", z.Addr, "x.test"},          // bad address
		{"--json", "--gateway-ip", "127.0.0.10", "--probe-port", "x", "x.test"},          // bad port
		{"--json", "--gateway-ip", "127.0.0.10", "--backend", "h:99999", "clean.test"},   // bad backend
		{"--json", "--gateway-ip", "127.0.0.10", "--send-canary", "clean.test"},          // canary needs probe
		{"--json", "--gateway-host", "nx.moat.test", "--resolver", z.Addr, "clean.test"}, // Moat's own host unresolvable
	} {
		code, j, stderr := run(args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
		if len(args) > 2 && j.Status != "error" || stderr == "" {
			t.Errorf("%v: json %+v stderr %q", args, j, stderr)
		}
	}
}

// TestAuditConfigDomains: `moat audit --config FILE` with no domain named
// audits every domain the configuration routes (README's deployment
// step 2); a configuration without domains is an error naming it.
func TestAuditConfigDomains(t *testing.T) {
	z := dnstest.Start(t,
		"mx1.moat.test. 300 IN A 127.0.0.10",
		"clean.test. 300 IN MX 10 mx1.moat.test.",
		"leaky.test. 300 IN MX 10 mx1.moat.test.",
		"leaky.test. 300 IN MX 90 mbox.isp.test.",
		"mbox.isp.test. 300 IN A 192.0.2.77",
	)
	dir := t.TempDir()
	write := func(name, domains string) string {
		p := filepath.Join(dir, name)
		conf := fmt.Sprintf("hostname: mx1.moat.test\ndata_dir: %s\ngateway:\n  hostnames: [mx1.moat.test]\n  addresses: [127.0.0.10]\naudit:\n  resolver: %q\n  timeout: 2s\n%s", filepath.Join(dir, "data-"+name), z.Addr, domains)
		if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	both := write("both.yaml", "domains:\n  - name: leaky.test\n    backends: [\"mbox.isp.test:25\"]\n  - name: clean.test\n    backends: [\"192.0.2.80:25\"]\n")
	var out, errb bytes.Buffer
	code := runAudit([]string{"--config", both, "--json"}, &out, &errb)
	var j auditJSON
	if err := json.Unmarshal(out.Bytes(), &j); err != nil {
		t.Fatalf("output is not JSON: %v\n%s\nstderr %s", err, out.String(), errb.String())
	}
	var got []string
	for _, d := range j.Domains {
		got = append(got, d.Domain+"="+d.Status)
	}
	if code != 1 || strings.Join(got, " ") != "clean.test=clean leaky.test=leaks" {
		t.Fatalf("exit %d, domains %q; want 1 and both configured domains audited (clean.test=clean leaky.test=leaks); stderr %s", code, got, errb.String())
	}
	none := write("none.yaml", "")
	out.Reset()
	errb.Reset()
	if code := runAudit([]string{"--config", none, "--json"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "configures no domains") || !strings.Contains(out.String(), `"status":"error"`) {
		t.Fatalf("no domains configured: exit %d, stderr %q, stdout %q; want 2 and an error naming the problem", code, errb.String(), out.String())
	}
}

// TestMilterSecrets: with a configuration, the milter protects the
// configured domains only; a --secret-file domain is protected too; any
// other domain has no secret, so its mail passes.
func TestMilterSecrets(t *testing.T) {
	lc := &leakageConfig{Secret: func(d string) []byte { return []byte("derived:" + d) }}
	lc.Audit.Routes = map[string]audit.Route{"protected.test": {}}
	secretOf := milterSecrets(lc, map[string][]byte{"file.test": []byte("from-file")})
	for d, want := range map[string]string{"protected.test": "derived:protected.test", "file.test": "from-file", "other.test": ""} {
		if got := string(secretOf(d)); got != want {
			t.Errorf("%s: secret %q, want %q", d, got, want)
		}
	}
}
