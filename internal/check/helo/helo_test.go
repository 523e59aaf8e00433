package helo

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/testutil/dnstest"
	"moat.dev/moat/internal/verdict"
)

func TestHelo(t *testing.T) {
	srv := dnstest.Start(t,
		"7.0.0.127.in-addr.arpa. 300 IN PTR out.customer.example.",
		"out.customer.example. 300 IN A 127.0.0.7",
	)
	rcfg := dnsx.DefaultConfig()
	rcfg.Resolvers = []string{srv.Addr}
	r, _ := dnsx.New(rcfg, nil, nil)
	cfg := DefaultConfig()
	cfg.Hostnames = []string{"mx.moat.example"}
	cfg.ListenAddrs = []string{"192.0.2.25"}
	chk, err := New(cfg, Deps{Resolver: r, IsCustomerDomain: func(_ context.Context, d string) (bool, error) {
		return d == "customer.example", nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		helo, ip string
		sym      string
		action   verdict.Action
	}{
		{"mail.sender.example", "127.0.0.5", "", verdict.NoOpinion},
		{"Mail.Sender.Example.", "127.0.0.5", "", verdict.NoOpinion},
		{"[127.0.0.5]", "127.0.0.5", "", verdict.NoOpinion},
		{"[IPv6:2001:db8::1]", "2001:db8::1", "", verdict.NoOpinion},
		{"[127.0.0.6]", "127.0.0.5", SymIPMismatch, verdict.NoOpinion},
		{"127.0.0.5", "127.0.0.5", SymBareIP, verdict.NoOpinion},
		{"localhost", "127.0.0.5", SymNotFQDN, verdict.NoOpinion},
		{"bad_host!.example", "127.0.0.5", SymInvalid, verdict.NoOpinion},
		{"", "127.0.0.5", SymInvalid, verdict.NoOpinion},
		{"-x.example", "127.0.0.5", SymInvalid, verdict.NoOpinion},
		{"mx.moat.example", "127.0.0.5", SymForgedOurs, verdict.Reject},
		{"[192.0.2.25]", "127.0.0.5", SymForgedOurs, verdict.Reject},
		{"customer.example", "127.0.0.5", SymForgedOurs, verdict.Reject},
		// The customer's own confirmed outbound server may say its domain.
		{"customer.example", "127.0.0.7", "", verdict.NoOpinion},
	}
	pol := policy.Default()
	run := pipeline.NewRunner([]pipeline.Check{chk}, func(string) *policy.Policy { return pol }, 5*time.Second)
	for _, tc := range cases {
		c := &pipeline.Conn{IP: netip.MustParseAddr(tc.ip), Helo: tc.helo, Report: &verdict.Report{}}
		d := run.Helo(context.Background(), c)
		sym := ""
		for _, s := range d.Counted {
			sym = s.Name
		}
		if sym != tc.sym || d.Action != tc.action {
			t.Errorf("HELO %q from %s: %s %v, want %s %v", tc.helo, tc.ip, sym, d.Action, tc.sym, tc.action)
		}
		if d.Action == verdict.Reject && (d.Reply.Code != 550 || d.Reply.Enhanced != [3]int{5, 7, 1}) {
			t.Errorf("reply %v", d.Reply)
		}
	}
	// Flag mode: the forged HELO only scores.
	pol.Layers["helo"] = policy.Layer{Mode: policy.ModeFlag}
	c := &pipeline.Conn{IP: netip.MustParseAddr("127.0.0.5"), Helo: "mx.moat.example", Report: &verdict.Report{}}
	if d := run.Helo(context.Background(), c); d.Action != verdict.NoOpinion || d.Score != 5 {
		t.Errorf("flag mode: %v score %v", d.Action, d.Score)
	}
}

func TestValidate(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ListenAddrs = []string{"nope"}
	if err := cfg.Validate(); err == nil {
		t.Fatal("bad listen address accepted")
	}
}

func FuzzParseLiteral(f *testing.F) {
	f.Add("[1.2.3.4]")
	f.Add("[IPv6:::1]")
	f.Fuzz(func(t *testing.T, s string) {
		if a, ok := ParseLiteral(s); ok && !a.IsValid() {
			t.Fatal("invalid address accepted")
		}
	})
}
