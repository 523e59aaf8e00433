package lists

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/verdict"
)

type memSource map[string][]Entry // key: domain or rcpt

func (m memSource) ListEntries(_ context.Context, domain, rcpt string) ([]Entry, error) {
	return append(append([]Entry(nil), m[domain]...), m[rcpt]...), nil
}

// unknownUser stands in for the recipient layer: a hard 550.
type unknownUser struct{}

func (unknownUser) Name() string { return "recipient" }
func (unknownUser) CheckRcpt(_ context.Context, _ *pipeline.Txn, r *pipeline.Rcpt) verdict.Result {
	if r.Addr.Local != "ghost" {
		return verdict.Result{}
	}
	return verdict.Result{Hard: &verdict.Verdict{Action: verdict.Reject, Reply: verdict.Reply{Code: 550, Enhanced: [3]int{5, 1, 1}, Text: "User unknown"}}}
}

// spammy scores 20 at connect (over the reject score).
type spammy struct{}

func (spammy) Name() string { return "dnsbl" }
func (spammy) CheckConn(context.Context, *pipeline.Conn) verdict.Result {
	return verdict.Result{Symbols: []verdict.Symbol{{Name: "DNSBL_X", Score: 20}}}
}

func TestLists(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AllowIPs = []string{"127.0.1.0/24"}
	cfg.BlockIPs = []string{"127.0.2.5", "2001:db8::/32"}
	cfg.BlockHelos = []string{".spam.example"}
	cfg.AllowSenders = []string{"@partner.example"}
	cfg.BlockSenders = []string{"bad@evil.example", ".evil2.example"}
	src := memSource{
		"t.example":       {{Kind: KindSender, Value: "news.example", Allow: false}},
		"alice@t.example": {{Kind: KindIP, Value: "127.0.3.0/24", Allow: true}, {Kind: KindHelo, Value: "annoying.example"}},
	}
	chk, err := New(cfg, Deps{Source: src})
	if err != nil {
		t.Fatal(err)
	}
	pol := policy.Default()
	run := pipeline.NewRunner([]pipeline.Check{chk, unknownUser{}, spammy{}}, func(string) *policy.Policy { return pol }, 5*time.Second)
	cases := []struct {
		name, ip, helo, from, rcpt string
		action                     verdict.Action
		code                       int
		sym                        string
	}{
		{"spam rejected by score", "127.0.9.1", "h.example", "a@x.example", "bob", verdict.Reject, 550, ""},
		{"global allow ip delivers", "127.0.1.9", "h.example", "a@x.example", "bob", verdict.NoOpinion, 0, "ALLOWLIST_IP"},
		{"allow does not beat unknown user", "127.0.1.9", "h.example", "a@x.example", "ghost", verdict.Reject, 550, "ALLOWLIST_IP"},
		{"global block ip", "127.0.2.5", "h.example", "a@x.example", "bob", verdict.Reject, 550, "BLOCKLIST_IP"},
		{"block ipv6 cidr", "2001:db8::7", "h.example", "a@x.example", "bob", verdict.Reject, 550, "BLOCKLIST_IP"},
		{"block helo suffix", "127.0.9.1", "x.spam.example", "a@x.example", "bob", verdict.Reject, 550, "BLOCKLIST_HELO"},
		{"block sender address", "127.0.9.1", "h.example", "Bad@Evil.example", "bob", verdict.Reject, 550, "BLOCKLIST_SENDER"},
		{"block sender subdomain", "127.0.9.1", "h.example", "x@a.evil2.example", "bob", verdict.Reject, 550, "BLOCKLIST_SENDER"},
		{"allow sender domain", "127.0.9.1", "h.example", "x@partner.example", "bob", verdict.NoOpinion, 0, "ALLOWLIST_SENDER"},
		{"domain block sender", "127.0.9.1", "h.example", "x@news.example", "bob", verdict.Reject, 550, "BLOCKLIST_SENDER"},
		{"recipient allow ip", "127.0.3.3", "h.example", "a@x.example", "alice", verdict.NoOpinion, 0, "ALLOWLIST_IP"},
		{"recipient allow ip is personal", "127.0.3.3", "h.example", "a@x.example", "bob", verdict.Reject, 550, ""},
		{"recipient block helo", "127.0.3.3", "annoying.example", "a@x.example", "alice", verdict.Reject, 550, "BLOCKLIST_HELO"},
	}
	for _, tc := range cases {
		c := &pipeline.Conn{IP: netip.MustParseAddr(tc.ip), Helo: tc.helo, Report: &verdict.Report{}}
		ctx := context.Background()
		run.Conn(ctx, c)
		run.Helo(ctx, c)
		l, d, _ := cutAt(tc.from)
		tx := &pipeline.Txn{Conn: c, From: pipeline.Address{Local: l, Domain: d}, Report: &verdict.Report{}}
		run.Mail(ctx, tx)
		rc := &pipeline.Rcpt{Addr: pipeline.Address{Local: tc.rcpt, Domain: "t.example"}, Domain: "t.example", Report: &verdict.Report{}}
		dec := run.Rcpt(ctx, tx, rc)
		if dec.Action != tc.action || dec.Reply.Code != tc.code {
			t.Errorf("%s: %v %v (%s), want %v %d", tc.name, dec.Action, dec.Reply, dec.Reason, tc.action, tc.code)
		}
		found := tc.sym == ""
		for _, s := range dec.Counted {
			if s.Name == tc.sym {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: symbol %s missing from %v", tc.name, tc.sym, dec.Counted)
		}
	}
}

func cutAt(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '@' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func TestValidate(t *testing.T) {
	cfg := DefaultConfig()
	cfg.BlockIPs = []string{"1.2.3.4/99"}
	if err := cfg.Validate(); err == nil {
		t.Fatal("bad CIDR accepted")
	}
	cfg = DefaultConfig()
	cfg.AllowWeight = 5
	if err := cfg.Validate(); err == nil {
		t.Fatal("positive allow weight accepted")
	}
}
