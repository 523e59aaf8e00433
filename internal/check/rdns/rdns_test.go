package rdns

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/testutil/dnstest"
	"moat.dev/moat/internal/verdict"
)

func setup(t *testing.T) (*dnstest.Server, *dnsx.Client) {
	srv := dnstest.Start(t,
		"10.0.0.127.in-addr.arpa. 300 IN PTR mail.good.example.",
		"mail.good.example. 300 IN A 127.0.0.10",
		"11.0.0.127.in-addr.arpa. 300 IN PTR liar.example.",
		"liar.example. 300 IN A 192.0.2.1",
		"13.0.0.127.in-addr.arpa. 300 IN PTR broken.example.",
		"14.0.0.127.in-addr.arpa. 300 IN PTR slow.example.",
		"17.0.0.127.in-addr.arpa. 300 IN PTR bad\\(name.example.",
		"bad\\(name.example. 300 IN A 127.0.0.17",
	)
	srv.Fail("broken.example", dns.RcodeServerFailure)
	srv.Fail("15.0.0.127.in-addr.arpa", dns.RcodeServerFailure)
	srv.Delay("16.0.0.127.in-addr.arpa", 2*time.Second)
	cfg := dnsx.DefaultConfig()
	cfg.Resolvers = []string{srv.Addr}
	cfg.Timeout = 400 * time.Millisecond
	cfg.Attempts = 2
	r, err := dnsx.New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return srv, r
}

func conn(ip string) *pipeline.Conn {
	return &pipeline.Conn{IP: netip.MustParseAddr(ip), Report: &verdict.Report{}}
}

func TestRDNS(t *testing.T) {
	_, r := setup(t)
	chk, err := New(DefaultConfig(), Deps{Resolver: r})
	if err != nil {
		t.Fatal(err)
	}
	rejectNone := DefaultConfig()
	rejectNone.RejectNone = true
	chkReject, _ := New(rejectNone, Deps{Resolver: r})

	cases := []struct {
		name    string
		chk     *Check
		ip      string
		layer   policy.Layer
		action  verdict.Action
		symbol  string
		code    int
		confirm bool
	}{
		{"confirmed", chk, "127.0.0.10", policy.Layer{}, verdict.NoOpinion, "", 0, true},
		{"not confirmed", chk, "127.0.0.11", policy.Layer{}, verdict.NoOpinion, SymNotFCrDNS, 0, false},
		{"none scores", chk, "127.0.0.12", policy.Layer{}, verdict.NoOpinion, SymNone, 0, false},
		{"none rejects", chkReject, "127.0.0.12", policy.Layer{}, verdict.Reject, SymNone, 550, false},
		{"none flag mode", chkReject, "127.0.0.12", policy.Layer{Mode: policy.ModeFlag}, verdict.NoOpinion, SymNone, 0, false},
		{"none observe", chkReject, "127.0.0.12", policy.Layer{Observe: true}, verdict.NoOpinion, "", 0, false},
		{"none tempfail mode", chkReject, "127.0.0.12", policy.Layer{Mode: policy.ModeTempfail}, verdict.TempFail, SymNone, 450, false},
		// Forward lookup fails: cannot tell, tempfail (never "not confirmed").
		{"forward servfail", chk, "127.0.0.13", policy.Layer{}, verdict.TempFail, "", 451, false},
		{"ptr servfail", chk, "127.0.0.15", policy.Layer{}, verdict.TempFail, "", 451, false},
		{"ptr timeout", chk, "127.0.0.16", policy.Layer{}, verdict.TempFail, "", 451, false},
		{"ptr timeout ignored", chk, "127.0.0.16", policy.Layer{OnError: "ignore"}, verdict.NoOpinion, "", 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pol := policy.Default()
			pol.Layers["rdns"] = tc.layer
			run := pipeline.NewRunner([]pipeline.Check{tc.chk}, func(string) *policy.Policy { return pol }, 5*time.Second)
			c := conn(tc.ip)
			d := run.Conn(context.Background(), c)
			if d.Action != tc.action {
				t.Fatalf("action %v (%s), want %v", d.Action, d.Reason, tc.action)
			}
			if tc.code != 0 && d.Reply.Code != tc.code {
				t.Fatalf("reply %v, want %d", d.Reply, tc.code)
			}
			var got string
			for _, s := range d.Counted {
				got = s.Name
			}
			if got != tc.symbol {
				t.Fatalf("symbol %q, want %q (%v)", got, tc.symbol, d.Counted)
			}
			if tc.layer.Observe && len(d.Observed) == 0 {
				t.Fatal("observe mode reported nothing")
			}
			name, confirmed, err := Name(context.Background(), c, nil)
			if confirmed != tc.confirm {
				t.Fatalf("Name = %q %v %v, want confirmed %v", name, confirmed, err, tc.confirm)
			}
			// The connection carries the confirmed name (for Received and
			// XCLIENT NAME), and nothing for an unconfirmed one.
			if want := map[bool]string{true: name, false: ""}[tc.confirm]; c.ClientName() != want {
				t.Fatalf("ClientName = %q, want %q", c.ClientName(), want)
			}
		})
	}
}

// TestIPRev: the check reports iprev for Authentication-Results (RFC 8601
// 2.7.3): pass with the confirmed name, fail, or temperror.
func TestIPRev(t *testing.T) {
	_, r := setup(t)
	chk, err := New(DefaultConfig(), Deps{Resolver: r})
	if err != nil {
		t.Fatal(err)
	}
	for ip, want := range map[string]string{
		"127.0.0.10": "iprev=pass policy.iprev=127.0.0.10 (",
		"127.0.0.11": "iprev=fail policy.iprev=127.0.0.11",
		"127.0.0.12": "iprev=fail policy.iprev=127.0.0.12",
		"127.0.0.15": "iprev=temperror policy.iprev=127.0.0.15",
	} {
		res := chk.CheckConn(context.Background(), conn(ip))
		if len(res.Auth) != 1 || !strings.HasPrefix(res.Auth[0], want) {
			t.Errorf("%s: Auth %q, want %q...", ip, res.Auth, want)
		}
	}
}

// A PTR name that forward-confirms but is no host name (DNS allows any
// bytes) is not put on the connection: it would end up in a header field.
func TestClientNameSyntax(t *testing.T) {
	_, r := setup(t)
	c := conn("127.0.0.17")
	name, ok, err := Name(context.Background(), c, r)
	if err != nil || !ok || name == "" {
		t.Fatalf("Name = %q %v %v, want a confirmed odd name", name, ok, err)
	}
	if c.ClientName() != "" {
		t.Fatalf("ClientName = %q, want none", c.ClientName())
	}
	for n, want := range map[string]bool{"mail.example.com": true, "a_b-c.d9": true, "": false, "a..b": false, "a b": false, "a(b": false, ".a": false} {
		if hostnameSyntax(n) != want {
			t.Errorf("hostnameSyntax(%q) = %v", n, !want)
		}
	}
}

// The future is shared: a second reader does not query again.
func TestFutureShared(t *testing.T) {
	srv, r := setup(t)
	chk, _ := New(DefaultConfig(), Deps{Resolver: r})
	c := conn("127.0.0.10")
	Start(c, r)
	chk.CheckConn(context.Background(), c)
	q := srv.QueryCount()
	name, ok, err := Name(context.Background(), c, r)
	if err != nil || !ok || name != "mail.good.example" {
		t.Fatalf("Name = %q %v %v", name, ok, err)
	}
	if srv.QueryCount() != q {
		t.Fatal("Name queried DNS again")
	}
}
