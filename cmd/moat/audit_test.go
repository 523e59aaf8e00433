package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

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
