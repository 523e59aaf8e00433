package spf

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/testutil/dnstest"
	"moat.dev/moat/internal/testutil/dnsxtest"
	"moat.dev/moat/internal/verdict"
)

func TestSPF(t *testing.T) {
	srv := dnstest.Start(t,
		`pass.example. 300 IN TXT "v=spf1 ip4:127.0.0.0/24 -all"`,
		`fail.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`,
		`soft.example. 300 IN TXT "v=spf1 ~all"`,
		`mx.example. 300 IN TXT "v=spf1 mx -all"`,
		`mx.example. 300 IN MX 10 smtp.mx.example.`,
		`smtp.mx.example. 300 IN A 127.0.0.5`,
		`perm.example. 300 IN TXT "v=spf1 bogus:x -all"`,
		`temp.example. 300 IN TXT "v=spf1 include:down.example -all"`,
		`helo.example. 300 IN TXT "v=spf1 a:helo.example -all"`,
		`helo.example. 300 IN A 127.0.0.5`,
		`loop.example. 300 IN TXT "v=spf1 include:loop.example -all"`,
	)
	srv.Fail("down.example", dns.RcodeServerFailure)
	r := dnsxtest.Client(t, srv.Addr, func(c *dnsx.Config) { c.Timeout, c.Attempts = time.Second, 2 })
	chk, err := New(DefaultConfig(), Deps{Resolver: r})
	if err != nil {
		t.Fatal(err)
	}
	strictCfg := DefaultConfig()
	strictCfg.TempErrorIsError = true
	strictCfg.RejectFail = true
	strict, _ := New(strictCfg, Deps{Resolver: r})
	cases := []struct {
		chk    *Check
		from   string
		sym    string
		auth   string
		action verdict.Action
		score  float64
	}{
		{chk, "a@pass.example", "SPF_PASS", "spf=pass smtp.mailfrom=pass.example", verdict.NoOpinion, 0},
		{chk, "a@Fail.Example", "SPF_FAIL", "spf=fail smtp.mailfrom=fail.example", verdict.NoOpinion, 3},
		{chk, "a@soft.example", "SPF_SOFTFAIL", "spf=softfail smtp.mailfrom=soft.example", verdict.NoOpinion, 1},
		{chk, "a@mx.example", "SPF_PASS", "spf=pass smtp.mailfrom=mx.example", verdict.NoOpinion, 0},
		{chk, "a@none.example", "SPF_NONE", "spf=none smtp.mailfrom=none.example", verdict.NoOpinion, 0},
		{chk, "a@perm.example", "SPF_PERMERROR", "spf=permerror smtp.mailfrom=perm.example", verdict.NoOpinion, 1},
		{chk, "a@loop.example", "SPF_PERMERROR", "spf=permerror smtp.mailfrom=loop.example", verdict.NoOpinion, 1},
		{chk, "a@temp.example", "SPF_TEMPERROR", "spf=temperror smtp.mailfrom=temp.example", verdict.NoOpinion, 0},
		{chk, "", "SPF_PASS", "spf=pass smtp.helo=helo.example", verdict.NoOpinion, 0},
		{strict, "a@temp.example", "SPF_TEMPERROR", "spf=temperror smtp.mailfrom=temp.example", verdict.TempFail, 0},
		{strict, "a@fail.example", "SPF_FAIL", "spf=fail smtp.mailfrom=fail.example", verdict.Reject, 3},
	}
	pol := policy.Default()
	for _, tc := range cases {
		run := pipeline.NewRunner([]pipeline.Check{tc.chk}, func(string) *policy.Policy { return pol }, 5*time.Second)
		c := &pipeline.Conn{IP: netip.MustParseAddr("127.0.0.5"), Helo: "helo.example", Report: &verdict.Report{}}
		tx := &pipeline.Txn{Conn: c, Report: &verdict.Report{}}
		if tc.from != "" {
			l, d, _ := cut(tc.from)
			tx.From = pipeline.Address{Raw: tc.from, Local: l, Domain: d}
		}
		d := run.Mail(context.Background(), tx)
		res, _ := tx.Report.Result("spf")
		if len(res.Symbols) != 1 || res.Symbols[0].Name != tc.sym || len(res.Auth) != 1 || res.Auth[0] != tc.auth {
			t.Errorf("%s: %+v, want %s / %s", tc.from, res, tc.sym, tc.auth)
		}
		if d.Action != tc.action || d.Score != tc.score {
			t.Errorf("%s: action %v score %v, want %v %v", tc.from, d.Action, d.Score, tc.action, tc.score)
		}
		if d.Action == verdict.Reject && d.Reply.Enhanced != [3]int{5, 7, 23} {
			t.Errorf("reply %v", d.Reply)
		}
	}
}

func cut(s string) (string, string, bool) {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '@' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func TestValidate(t *testing.T) {
	cfg := DefaultConfig()
	cfg.LookupLimit = 0
	if err := cfg.Validate(); err == nil {
		t.Fatal("lookup_limit 0 accepted")
	}
}
