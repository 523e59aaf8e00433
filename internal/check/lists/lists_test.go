package lists

import (
	"context"
	"net/netip"
	"strings"
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

// "*.example.com" and "*@example.com" were accepted by Validate and never
// matched; they are now the suffix and domain forms. An allowed sender
// address beats a blocked sender domain in a recipient's entries, as
// quarantine.Prefs.Lookup decides.
func TestWildcardsAndSpecificity(t *testing.T) {
	cfg := DefaultConfig()
	cfg.BlockHelos = []string{"*.wild-helo.example"}
	cfg.BlockSenders = []string{"*.wild.example", "*@wild2.example", "@*.wild3.example"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	src := memSource{
		"t.example": {{Kind: KindSender, Value: "@dblock.example"}},
		"alice@t.example": {
			{Kind: KindSender, Value: "@pblock.example"},
			{Kind: KindSender, Value: "boss@pblock.example", Allow: true},
			{Kind: KindSender, Value: "friend@dblock.example", Allow: true},
			{Kind: KindSender, Value: "spammer@ok.example"},
			{Kind: KindSender, Value: "@ok.example", Allow: true},
			{Kind: KindSender, Value: "*@star.example"},
		},
	}
	chk, err := New(cfg, Deps{Source: src})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cases := []struct {
		helo, from, rcpt string
		want             string // symbol, "" for none
	}{
		{"a.wild-helo.example", "x@y.example", "bob", "BLOCKLIST_HELO"},
		{"wild-helo.example", "x@y.example", "bob", "BLOCKLIST_HELO"},
		{"h.example", "x@a.wild.example", "bob", "BLOCKLIST_SENDER"},
		{"h.example", "x@wild2.example", "bob", "BLOCKLIST_SENDER"},
		{"h.example", "x@sub.wild3.example", "bob", "BLOCKLIST_SENDER"},
		{"h.example", "x@pblock.example", "alice", "BLOCKLIST_SENDER"},
		{"h.example", "Boss@pblock.example", "alice", "ALLOWLIST_SENDER"},
		{"h.example", "friend@dblock.example", "alice", "ALLOWLIST_SENDER"},
		{"h.example", "other@dblock.example", "alice", "BLOCKLIST_SENDER"},
		{"h.example", "spammer@ok.example", "alice", "BLOCKLIST_SENDER"},
		{"h.example", "x@ok.example", "alice", "ALLOWLIST_SENDER"},
		{"h.example", "x@star.example", "alice", "BLOCKLIST_SENDER"},
	}
	for _, tc := range cases {
		c := &pipeline.Conn{IP: netip.MustParseAddr("127.0.9.1"), Helo: tc.helo, Report: &verdict.Report{}}
		l, d, _ := cutAt(tc.from)
		tx := &pipeline.Txn{Conn: c, From: pipeline.Address{Local: l, Domain: d}, Report: &verdict.Report{}}
		rc := &pipeline.Rcpt{Addr: pipeline.Address{Local: tc.rcpt, Domain: "t.example"}, Domain: "t.example", Report: &verdict.Report{}}
		var got []verdict.Symbol
		for _, r := range []verdict.Result{chk.CheckHelo(ctx, c), chk.CheckMail(ctx, tx), chk.CheckRcpt(ctx, tx, rc)} {
			got = append(got, r.Symbols...)
			if strings.HasPrefix(tc.want, "BLOCKLIST") && len(r.Symbols) > 0 && r.Symbols[0].Name == tc.want && r.Hard == nil {
				t.Errorf("%s from %s: block without a hard verdict", tc.helo, tc.from)
			}
		}
		if len(got) != 1 || got[0].Name != tc.want {
			t.Errorf("helo %s from %s to %s: symbols %v, want [%s]", tc.helo, tc.from, tc.rcpt, got, tc.want)
		}
	}
	bad := DefaultConfig()
	bad.BlockSenders = []string{"spam*@example.com"}
	if err := bad.Validate(); err == nil {
		t.Fatal("an unsupported wildcard was accepted")
	}
}
