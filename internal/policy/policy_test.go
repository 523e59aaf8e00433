package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"moat.dev/moat/internal/verdict"
)

func sym(check, name string, score float64) verdict.Result {
	return verdict.Result{Check: check, Symbols: []verdict.Symbol{{Name: name, Score: score}}}
}

func hard(check string, a verdict.Action, code int) verdict.Result {
	return verdict.Result{Check: check, Hard: &verdict.Verdict{Action: a, Reply: verdict.Reply{Code: code, Enhanced: [3]int{code / 100, 7, 1}, Text: "no"}, Reason: "because"}}
}

func TestDecide(t *testing.T) {
	cases := []struct {
		name    string
		pol     func(p *Policy)
		results []verdict.Result
		stage   Stage
		want    verdict.Action
		code    int
		score   float64
	}{
		{"nothing", nil, nil, Content, verdict.NoOpinion, 0, 0},
		{"tag", nil, []verdict.Result{sym("bayes", "BAYES_99", 6)}, Content, verdict.Tag, 0, 6},
		{"quarantine", nil, []verdict.Result{sym("bayes", "B", 6), sym("rules", "R", 5)}, Content, verdict.Quarantine, 0, 11},
		{"reject by score", nil, []verdict.Result{sym("rules", "GTUBE", 1000)}, Content, verdict.Reject, 550, 1000},
		{"envelope stage ignores tag", nil, []verdict.Result{sym("dnsbl", "X", 6)}, Envelope, verdict.NoOpinion, 0, 6},
		{"envelope stage reject threshold", nil, []verdict.Result{sym("dnsbl", "X", 16)}, Envelope, verdict.Reject, 550, 16},
		{"hard reject", nil, []verdict.Result{hard("recipient", verdict.Reject, 550)}, Envelope, verdict.Reject, 550, 0},
		{"tempfail mode", func(p *Policy) { p.Layers["recipient"] = Layer{Mode: ModeTempfail} },
			[]verdict.Result{hard("recipient", verdict.Reject, 550)}, Envelope, verdict.TempFail, 450, 0},
		{"flag mode scores", func(p *Policy) { p.Layers["dnsbl"] = Layer{Mode: ModeFlag, FlagScore: 7} },
			[]verdict.Result{hard("dnsbl", verdict.Reject, 554)}, Content, verdict.Tag, 0, 7},
		{"observe changes nothing", func(p *Policy) { p.Layers["dnsbl"] = Layer{Mode: ModeReject, Observe: true} },
			[]verdict.Result{hard("dnsbl", verdict.Reject, 554), sym("dnsbl", "X", 20)}, Content, verdict.NoOpinion, 0, 0},
		{"error tempfails", nil, []verdict.Result{{Check: "rdns", Err: errors.New("dns down")}}, Envelope, verdict.TempFail, 451, 0},
		{"DNS failure tempfails", nil, []verdict.Result{{Check: "dnsbl", Err: fmt.Errorf("dnsbl: %w", lookupErr(true))}}, Envelope, verdict.TempFail, 451, 0},
		{"a score at reject outranks a tempfail", nil, []verdict.Result{hard("clamav", verdict.TempFail, 451), sym("rules", "GTUBE", 1000)}, Content, verdict.Reject, 550, 1000},
		{"a score below reject does not", nil, []verdict.Result{hard("clamav", verdict.TempFail, 451), sym("rules", "R", 11)}, Content, verdict.TempFail, 451, 11},
		{"error ignored", func(p *Policy) { p.Layers["rdns"] = Layer{OnError: "ignore"} },
			[]verdict.Result{{Check: "rdns", Err: errors.New("dns down")}}, Envelope, verdict.NoOpinion, 0, 0},
		{"refuse quarantined", func(p *Policy) { p.QuarantineRefuse = true },
			[]verdict.Result{sym("bayes", "B", 11)}, Content, verdict.Quarantine, 550, 11},
		{"keep rejected", func(p *Policy) { p.KeepRejected = true },
			[]verdict.Result{sym("bayes", "B", 20)}, Content, verdict.Quarantine, 550, 20},
		{"keep rejected never keeps viruses", func(p *Policy) { p.KeepRejected = true },
			[]verdict.Result{hard("clamav", verdict.Reject, 554)}, Content, verdict.Reject, 554, 0},
		{"allowlisted IP lifts a blocklist reject", nil, []verdict.Result{sym("lists", "ALLOWLIST_IP", -100), hard("dnsbl", verdict.Reject, 554)}, Envelope, verdict.NoOpinion, 0, -100},
		{"allowlisted IP still meets unknown users", nil, []verdict.Result{sym("lists", "ALLOWLIST_IP", -100), hard("recipient", verdict.Reject, 550)}, Envelope, verdict.Reject, 550, -100},
		{"allowlisted IP still meets viruses", nil, []verdict.Result{sym("lists", "ALLOWLIST_IP", -100), hard("clamav", verdict.Reject, 554)}, Content, verdict.Reject, 554, -100},
		{"a sender allow lifts no blocklist reject", nil, []verdict.Result{sym("lists", "ALLOWLIST_SENDER", -100), hard("dnsbl", verdict.Reject, 554)}, Envelope, verdict.Reject, 554, -100},
		{"an observed allowlist lifts nothing", func(p *Policy) { p.Layers["lists"] = Layer{Mode: ModeReject, Observe: true} },
			[]verdict.Result{sym("lists", "ALLOWLIST_IP", -100), hard("dnsbl", verdict.Reject, 554)}, Envelope, verdict.Reject, 554, 0},
		{"a forged sender's allow counts for nothing", nil, []verdict.Result{sym("spf", "SPF_FAIL", 3), sym("lists", "ALLOWLIST_SENDER", -100), sym("bayes", "B", 20)}, Content, verdict.Reject, 550, 23},
		{"an allowlisted IP still counts with SPF failing", nil, []verdict.Result{sym("spf", "SPF_FAIL", 3), sym("lists", "ALLOWLIST_IP", -100), sym("bayes", "B", 20)}, Content, verdict.NoOpinion, 0, -77},
		{"allowlist outweighs", nil, []verdict.Result{sym("lists", "ALLOWLIST_IP", -100), sym("bayes", "B", 20)}, Content, verdict.NoOpinion, 0, -80},
	}
	for _, c := range cases {
		p := Default()
		if c.pol != nil {
			c.pol(p)
		}
		d := p.Decide(c.results, c.stage)
		if d.Action != c.want || d.Reply.Code != c.code || d.Score != c.score {
			t.Errorf("%s: got %v %d score %v (%s); want %v %d score %v", c.name, d.Action, d.Reply.Code, d.Score, d.Reason, c.want, c.code, c.score)
		}
	}
}

func TestAppealAndSoftBounce(t *testing.T) {
	p := Default()
	p.Appeal = "https://moat.example/appeal"
	d := p.Decide([]verdict.Result{hard("dnsbl", verdict.Reject, 554)}, Envelope)
	if want := "no; if this is an error contact https://moat.example/appeal"; d.Reply.Text != want {
		t.Fatalf("appeal: %q", d.Reply.Text)
	}
	if r := SoftBounce(d.Reply); r.Code != 454 || r.Enhanced[0] != 4 {
		t.Fatalf("soft bounce: %v", r)
	}
}

// lookupErr is a DNS lookup error as package dnsx reports one.
type lookupErr bool

func (e lookupErr) Error() string         { return "dns A x.test: servfail" }
func (e lookupErr) DNSLookupFailed() bool { return bool(e) }

// TestTempfailReplies: a failed DNS lookup says so (4.4.3); other
// failures of a check are 4.3.0; a lookup that found nothing is not a
// DNS failure.
func TestTempfailReplies(t *testing.T) {
	for err, want := range map[error][3]int{
		fmt.Errorf("rdns: %w", lookupErr(true)):  {4, 4, 3},
		fmt.Errorf("rdns: %w", lookupErr(false)): {4, 3, 0},
		errors.New("clamd: connection refused"):  {4, 3, 0},
	} {
		d := Default().Decide([]verdict.Result{{Check: "rdns", Err: err}}, Envelope)
		if d.Action != verdict.TempFail || d.Reply.Code != 451 || d.Reply.Enhanced != want {
			t.Errorf("%v: %v %d %v, want 451 %v", err, d.Action, d.Reply.Code, d.Reply.Enhanced, want)
		}
	}
}

func TestValidate(t *testing.T) {
	p := Default()
	p.Layers["dnsbl"] = Layer{Mode: "maybe"}
	if err := p.Validate(); err == nil {
		t.Fatal("bad mode accepted")
	}
	p = Default()
	p.TagScore = 20
	if err := p.Validate(); err == nil {
		t.Fatal("tag above reject accepted")
	}
	p = Default()
	p.Layers["dnbsl"] = Layer{Mode: ModeOff}
	if err := p.Validate(); err == nil || !strings.Contains(err.Error(), "layers.dnbsl: not a check") {
		t.Fatalf("a misspelt layer: %v, want an error naming it", err)
	}
	for _, name := range LayerNames {
		p = Default()
		p.Layers[name] = Layer{Mode: ModeFlag}
		if err := p.Validate(); err != nil {
			t.Errorf("layer %s: %v", name, err)
		}
	}
}
