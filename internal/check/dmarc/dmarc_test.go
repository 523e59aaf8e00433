package dmarc

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/textproto"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dmarc"
	"github.com/miekg/dns"

	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/testutil/dnstest"
	"moat.dev/moat/internal/testutil/dnsxtest"
	"moat.dev/moat/internal/verdict"
)

func TestAligned(t *testing.T) {
	cases := []struct {
		from, id string
		mode     dmarc.AlignmentMode
		want     bool
	}{
		{"example.com", "example.com", dmarc.AlignmentStrict, true},
		{"example.com", "mail.example.com", dmarc.AlignmentStrict, false},
		{"example.com", "mail.example.com", dmarc.AlignmentRelaxed, true},
		{"news.example.com", "bounce.example.com", dmarc.AlignmentRelaxed, true},
		{"example.co.uk", "other.co.uk", dmarc.AlignmentRelaxed, false},
		{"a.example.co.uk", "b.example.co.uk", dmarc.AlignmentRelaxed, true},
		{"example.com", "example.net", dmarc.AlignmentRelaxed, false},
		{"Example.COM.", "example.com", dmarc.AlignmentStrict, true},
		{"example.com", "", dmarc.AlignmentRelaxed, false},
	}
	for _, c := range cases {
		if got := Aligned(c.from, c.id, c.mode); got != c.want {
			t.Errorf("Aligned(%q, %q, %q) = %v", c.from, c.id, c.mode, got)
		}
	}
}

func newCheck(t *testing.T, cfg Config, records ...string) (*Check, *dnstest.Server) {
	srv := dnstest.Start(t, records...)
	cl := dnsxtest.Client(t, srv.Addr, func(c *dnsx.Config) { c.CacheSize, c.Attempts = 0, 1 })
	c, err := New(cfg, Deps{Resolver: cl, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return c, srv
}

func txWith(spf, dkim []string) *pipeline.Txn {
	rep := &verdict.Report{}
	rep.Add(verdict.Result{Check: "spf", Auth: spf})
	rep.Add(verdict.Result{Check: "dkim", Auth: dkim})
	return &pipeline.Txn{Report: rep}
}

func msgFrom(from string) *pipeline.Message {
	h := textproto.MIMEHeader{}
	h.Add("From", from)
	return &pipeline.Message{Header: h, Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("")), nil }}
}

func TestEvaluate(t *testing.T) {
	c, srv := newCheck(t, DefaultConfig(),
		`_dmarc.reject.example. 300 IN TXT "v=DMARC1; p=reject; adkim=s"`,
		`_dmarc.quar.example. 300 IN TXT "v=DMARC1; p=quarantine"`,
		`_dmarc.none.example. 300 IN TXT "v=DMARC1; p=none"`,
		`_dmarc.org.example. 300 IN TXT "v=DMARC1; p=none; sp=reject"`,
		`_dmarc.pct.example. 300 IN TXT "v=DMARC1; p=reject; pct=50"`,
	)
	ctx := context.Background()
	cases := []struct {
		name      string
		from      string
		spf, dkim []string
		wantSym   string
		wantHard  verdict.Action
		wantAuth  string
	}{
		{"spf aligned relaxed", "a@reject.example", []string{"spf=pass smtp.mailfrom=bounce.reject.example"}, nil, "DMARC_PASS", 0, "dmarc=pass header.from=reject.example"},
		{"dkim strict misaligned", "a@reject.example", []string{"spf=fail smtp.mailfrom=reject.example"}, []string{"dkim=pass header.d=mail.reject.example"}, "DMARC_FAIL_REJECT", verdict.Reject, "dmarc=fail (p=reject) header.from=reject.example"},
		{"dkim strict aligned", "A <a@reject.example>", nil, []string{"dkim=fail header.d=x.example", "dkim=pass header.d=reject.example"}, "DMARC_PASS", 0, "dmarc=pass"},
		{"spf pass other domain", "a@quar.example", []string{"spf=pass smtp.mailfrom=spammer.example"}, nil, "DMARC_FAIL_QUARANTINE", verdict.Quarantine, "dmarc=fail (p=quarantine)"},
		{"p=none", "a@none.example", nil, nil, "DMARC_FAIL_NONE", 0, "dmarc=fail (p=none)"},
		{"no record", "a@norecord.example", nil, nil, "DMARC_NONE", 0, "dmarc=none header.from=norecord.example"},
		{"subdomain policy", "a@sub.org.example", nil, nil, "DMARC_FAIL_REJECT", verdict.Reject, "dmarc=fail (p=reject) header.from=sub.org.example"},
		{"org p=none", "a@org.example", nil, nil, "DMARC_FAIL_NONE", 0, "dmarc=fail (p=none)"},
		{"pct downgrades", "a@pct.example", nil, nil, "DMARC_FAIL_QUARANTINE", verdict.Quarantine, "(p=quarantine)"},
		{"two domains", "a@none.example, b@other.example", nil, nil, "DMARC_PERMERROR", 0, "dmarc=permerror"},
		{"encoded From", "=?utf-8?q?J=C3=BCrgen?= <j@quar.example>", []string{"spf=pass smtp.mailfrom=quar.example"}, nil, "DMARC_PASS", 0, "dmarc=pass header.from=quar.example"},
	}
	for _, tc := range cases {
		r := c.CheckData(ctx, txWith(tc.spf, tc.dkim), msgFrom(tc.from))
		if r.Err != nil || len(r.Symbols) != 1 || r.Symbols[0].Name != tc.wantSym || len(r.Auth) != 1 || !strings.Contains(r.Auth[0], tc.wantAuth) {
			t.Errorf("%s: %+v", tc.name, r)
			continue
		}
		var hard verdict.Action
		if r.Hard != nil {
			hard = r.Hard.Action
		}
		if hard != tc.wantHard {
			t.Errorf("%s: hard %v, want %v", tc.name, hard, tc.wantHard)
		}
	}

	// p=reject → 550 5.7.1 in reject mode, 4xx in tempfail mode, score in flag mode.
	r := c.CheckData(ctx, txWith(nil, nil), msgFrom("a@reject.example"))
	r.Check = "dmarc"
	pol := policy.Default()
	d := pol.Decide([]verdict.Result{r}, policy.Content)
	if d.Action != verdict.Reject || d.Reply.Code != 550 || d.Reply.Enhanced != [3]int{5, 7, 1} {
		t.Errorf("reject mode: %+v", d)
	}
	pol.Layers["dmarc"] = policy.Layer{Mode: policy.ModeTempfail}
	if d := pol.Decide([]verdict.Result{r}, policy.Content); d.Action != verdict.TempFail || d.Reply.Code != 450 {
		t.Errorf("tempfail mode: %+v", d)
	}
	pol.Layers["dmarc"] = policy.Layer{Mode: policy.ModeFlag}
	if d := pol.Decide([]verdict.Result{r}, policy.Content); d.Action != verdict.NoOpinion || d.Score != 3 {
		t.Errorf("flag mode: %+v", d)
	}

	// Site policy: do not honour reject → quarantine.
	c.cfg.HonorReject = false
	r = c.CheckData(ctx, txWith(nil, nil), msgFrom("a@reject.example"))
	if r.Hard == nil || r.Hard.Action != verdict.Quarantine {
		t.Errorf("honor_reject=false: %+v", r)
	}

	// DNS failure → Err (the policy's on_error decides).
	srv.Fail("_dmarc.quar.example", dns.RcodeServerFailure)
	r = c.CheckData(ctx, txWith(nil, nil), msgFrom("a@quar.example"))
	if r.Err == nil || !strings.HasPrefix(r.Auth[0], "dmarc=temperror") {
		t.Errorf("servfail: %+v", r)
	}
}

// decodeHeader's fast path gives what the full header parse gives.
func TestDecodeHeaderFastPathMatchesParse(t *testing.T) {
	slow := func(v string) string {
		m := message.ParseBytes([]byte("From: "+v+"\r\n\r\n"), message.Limits{MaxParts: 1, MaxDepth: 1, MaxDecodedBytes: 1, MaxRawBody: 1})
		return m.Get("From")
	}
	for _, v := range []string{
		"Alice <alice@example.com>", "alice@example.com", `"Bob, Jr." <bob@example.org>`,
		"=?utf-8?q?J=C3=B6rg?= <j@example.de>", " padded@example.com ", "tab\there@example.com",
		"Jörg <j@example.de>", "a\x00b@example.com", "", "x",
	} {
		if got, want := decodeHeader(v), slow(v); got != want {
			t.Errorf("decodeHeader(%q) = %q, want %q", v, got, want)
		}
	}
}

// rawMsg is a spooled message whose parsed header is what net/textproto
// made of it (as smtpd builds it).
func rawMsg(raw string) *pipeline.Message {
	raw = strings.ReplaceAll(raw, "\n", "\r\n")
	h := textproto.MIMEHeader{}
	if hdr, _, ok := strings.Cut(raw, "\r\n\r\n"); ok {
		tr := textproto.NewReader(bufio.NewReader(strings.NewReader(hdr + "\r\n\r\n")))
		h, _ = tr.ReadMIMEHeader()
	}
	return &pipeline.Message{Header: h, Size: int64(len(raw)), Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(raw)), nil }}
}

// A spoofed p=reject From domain cannot escape DMARC by a second From
// field, a second address, an unparseable From or the obsolete "From :"
// syntax (RFC 7489 6.6.1: the strictest policy of the From domains).
func TestSeveralFromDomainsStrictestPolicy(t *testing.T) {
	c, _ := newCheck(t, DefaultConfig(),
		`_dmarc.reject.example. 300 IN TXT "v=DMARC1; p=reject"`,
		`_dmarc.quar.example. 300 IN TXT "v=DMARC1; p=quarantine"`,
		`_dmarc.none.example. 300 IN TXT "v=DMARC1; p=none"`,
	)
	ctx := context.Background()
	spf := []string{"spf=none smtp.mailfrom=attacker.example"}
	cases := []struct {
		name, raw string
		want      verdict.Action // 0: no hard verdict
		wantSym   string
	}{
		{"two From fields, same domain", "From: CEO <ceo@reject.example>\nFrom: CEO <ceo@reject.example>\nSubject: x\n\nbody\n", verdict.Reject, "DMARC_FAIL_REJECT"},
		{"two From fields", "From: x@attacker.example\nFrom: CEO <ceo@reject.example>\n\nbody\n", verdict.Reject, "DMARC_FAIL_REJECT"},
		{"two addresses", "From: CEO <ceo@reject.example>, x@attacker.example\n\nbody\n", verdict.Reject, "DMARC_FAIL_REJECT"},
		{"unparseable", "From: ceo@reject.example (CEO\n\nbody\n", verdict.Reject, "DMARC_FAIL_REJECT"},
		{"obs-from", "Subject: x\nFrom : CEO <ceo@reject.example>\n\nbody\n", verdict.Reject, "DMARC_FAIL_REJECT"},
		{"folded", "From: CEO\n <ceo@reject.example>\n\nbody\n", verdict.Reject, "DMARC_FAIL_REJECT"},
		{"quarantine and none", "From: a@none.example, b@quar.example\n\nbody\n", verdict.Quarantine, "DMARC_FAIL_QUARANTINE"},
		{"none and no record", "From: a@none.example\nFrom: b@other.example\n\nbody\n", 0, "DMARC_PERMERROR"},
		{"no From", "Subject: x\n\nFrom: ceo@reject.example\n", 0, "DMARC_PERMERROR"},
	}
	for _, tc := range cases {
		r := c.CheckData(ctx, txWith(spf, nil), rawMsg(tc.raw))
		var got verdict.Action
		if r.Hard != nil {
			got = r.Hard.Action
		}
		if r.Err != nil || got != tc.want || len(r.Symbols) != 1 || r.Symbols[0].Name != tc.wantSym {
			t.Errorf("%s: %+v", tc.name, r)
		}
	}
	// Several From fields of a passing domain stay a permerror, not a pass.
	r := c.CheckData(ctx, txWith([]string{"spf=pass smtp.mailfrom=reject.example"}, nil), rawMsg("From: a@reject.example\nFrom: b@reject.example\n\nx\n"))
	if r.Hard != nil || len(r.Symbols) != 1 || r.Symbols[0].Name != "DMARC_PERMERROR" {
		t.Errorf("two From fields, passing: %+v", r)
	}
}

// An aligned DKIM or SPF identity whose check failed temporarily (key or
// SPF record lookup SERVFAIL) gives dmarc=temperror and an error for the
// policy's on_error, not a permanent 550 from p=reject.
func TestAlignedTempErrorIsNotReject(t *testing.T) {
	c, _ := newCheck(t, DefaultConfig(),
		`_dmarc.reject.example. 300 IN TXT "v=DMARC1; p=reject"`,
		`_dmarc.none.example. 300 IN TXT "v=DMARC1; p=none"`,
	)
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		spf, dkim []string
	}{
		{"dkim temperror", []string{"spf=fail smtp.mailfrom=reject.example"}, []string{"dkim=temperror header.d=reject.example header.i=@reject.example"}},
		{"spf temperror", []string{"spf=temperror smtp.mailfrom=bounce.reject.example"}, []string{"dkim=none"}},
	} {
		r := c.CheckData(ctx, txWith(tc.spf, tc.dkim), msgFrom("a@reject.example"))
		if r.Err == nil || r.Hard != nil || len(r.Auth) != 1 || !strings.HasPrefix(r.Auth[0], "dmarc=temperror") {
			t.Errorf("%s: %+v", tc.name, r)
		}
	}
	// A temperror of an unaligned identity changes nothing.
	r := c.CheckData(ctx, txWith([]string{"spf=fail smtp.mailfrom=reject.example"}, []string{"dkim=temperror header.d=other.example"}), msgFrom("a@reject.example"))
	if r.Hard == nil || r.Hard.Action != verdict.Reject {
		t.Errorf("unaligned temperror: %+v", r)
	}
	// p=none: nothing to defer.
	r = c.CheckData(ctx, txWith(nil, []string{"dkim=temperror header.d=none.example"}), msgFrom("a@none.example"))
	if r.Err != nil || len(r.Symbols) != 1 || r.Symbols[0].Name != "DMARC_FAIL_NONE" {
		t.Errorf("p=none temperror: %+v", r)
	}
}
