// Package dmarc evaluates DMARC (RFC 7489) at the end of DATA: it reads
// the SPF result (tx.Report.Result("spf"), "spf=pass smtp.mailfrom=D") and
// the DKIM results ("dkim=pass header.d=D"), checks identifier alignment
// (relaxed or strict) with the RFC 5322.From domain, and applies the
// domain owner's policy as far as the site allows: p=reject becomes a hard
// 550 5.7.1 (when the layer's mode is reject; the policy package turns it
// into 4xx or a score in tempfail/flag mode), p=quarantine a Quarantine
// verdict, p=none only a symbol.
//
// Symbols: DMARC_PASS, DMARC_FAIL_REJECT, DMARC_FAIL_QUARANTINE,
// DMARC_FAIL_NONE, DMARC_NONE (no record), DMARC_PERMERROR (no/multiple
// From domains).
package dmarc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/mail"
	"regexp"
	"strings"

	"github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/publicsuffix"

	"moat.dev/moat/internal/check/dkim"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/message/shared"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/verdict"
)

// Resolver is the DNS the check needs; *dnsx.Client implements it.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// Config is the DMARC check's configuration.
type Config struct {
	// HonorReject: a failing message from a p=reject domain is refused
	// (550 5.7.1). When false it is quarantined instead.
	HonorReject bool `yaml:"honor_reject"`
	// HonorQuarantine: a failing message from a p=quarantine domain is
	// quarantined. When false it only scores.
	HonorQuarantine bool `yaml:"honor_quarantine"`
	// Scores of the symbols.
	PassScore      float64 `yaml:"pass_score"`
	FailScore      float64 `yaml:"fail_score"`      // p=reject or p=quarantine, not honoured
	FailNoneScore  float64 `yaml:"fail_none_score"` // p=none
	PermErrorScore float64 `yaml:"permerror_score"` // no or several From domains
}

// DefaultConfig returns the defaults: honour both policies.
func DefaultConfig() Config {
	return Config{HonorReject: true, HonorQuarantine: true, PassScore: -0.1, FailScore: 3, FailNoneScore: 0.5, PermErrorScore: 1}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	for name, v := range map[string]float64{"pass_score": c.PassScore, "fail_score": c.FailScore, "fail_none_score": c.FailNoneScore, "permerror_score": c.PermErrorScore} {
		if v < -100 || v > 100 {
			return fmt.Errorf("%s: must be between -100 and 100", name)
		}
	}
	return nil
}

// Deps are the check's collaborators.
type Deps struct {
	Resolver Resolver     // required
	Log      *slog.Logger // required
}

// Check is the DMARC DataChecker (tier 2).
type Check struct {
	cfg Config
	res Resolver
	log *slog.Logger
}

var (
	_ pipeline.DataChecker = (*Check)(nil)
	_ pipeline.Tier2       = (*Check)(nil)
)

// New builds the check.
func New(cfg Config, deps Deps) (*Check, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Resolver == nil || deps.Log == nil {
		return nil, errors.New("dmarc: Resolver and Log are required")
	}
	return &Check{cfg: cfg, res: deps.Resolver, log: deps.Log}, nil
}

// Name implements pipeline.Check.
func (c *Check) Name() string { return "dmarc" }

// Tier2 marks the check as reading SPF and DKIM results.
func (c *Check) Tier2() {}

var replyReject = verdict.Reply{Code: 550, Enhanced: [3]int{5, 7, 1}, Text: "Message rejected by the sender domain's DMARC policy"}

// OrgDomain returns the organizational domain (public suffix + 1).
func OrgDomain(d string) string {
	d = strings.TrimSuffix(strings.ToLower(d), ".")
	if o, err := publicsuffix.EffectiveTLDPlusOne(d); err == nil {
		return o
	}
	return d
}

// Aligned reports identifier alignment of a with the From domain.
func Aligned(from, a string, mode dmarc.AlignmentMode) bool {
	from, a = strings.ToLower(strings.TrimSuffix(from, ".")), strings.ToLower(strings.TrimSuffix(a, "."))
	if a == "" || from == "" {
		return false
	}
	if mode == dmarc.AlignmentStrict {
		return from == a
	}
	return OrgDomain(from) == OrgDomain(a)
}

// fromDomains returns the distinct RFC5322.From domains of the From
// field values, and a reason when there is not exactly one From field
// with exactly one domain.
func fromDomains(froms []string) ([]string, string) {
	var doms []string
	seen := map[string]bool{}
	add := func(d string) {
		d = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
		if d != "" && !seen[d] {
			seen[d] = true
			doms = append(doms, d)
		}
	}
	for _, f := range froms {
		addrs, err := mail.ParseAddressList(f)
		if err != nil || len(addrs) == 0 {
			// Salvage every domain an unparseable field names: a reader
			// may well display one of them.
			for _, m := range salvageDomain.FindAllStringSubmatch(f, -1) {
				add(m[1])
			}
			continue
		}
		for _, a := range addrs {
			_, d, _ := strings.Cut(a.Address, "@")
			add(d)
		}
	}
	switch {
	case len(froms) != 1:
		return doms, fmt.Sprintf("%d From fields", len(froms))
	case len(doms) == 0:
		return nil, "From without a domain"
	case len(doms) > 1:
		return doms, "From with several domains"
	}
	return doms, ""
}

var salvageDomain = regexp.MustCompile(`@([A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+)\.?`)

// spfPass returns the SPF-authenticated domain when SPF passed.
func spfPass(auth []string) string {
	for _, a := range auth {
		f := strings.Fields(a)
		if len(f) < 2 || f[0] != "spf=pass" {
			continue
		}
		for _, kv := range f[1:] {
			if d, ok := strings.CutPrefix(kv, "smtp.mailfrom="); ok {
				return strings.ToLower(d)
			}
			if d, ok := strings.CutPrefix(kv, "smtp.helo="); ok {
				return strings.ToLower(d)
			}
		}
	}
	return ""
}

func authOf(tx *pipeline.Txn, check string) []string {
	if tx == nil {
		return nil
	}
	if tx.Report != nil {
		if r, ok := tx.Report.Result(check); ok {
			return r.Auth
		}
	}
	if tx.Conn != nil && tx.Conn.Report != nil {
		if r, ok := tx.Conn.Report.Result(check); ok {
			return r.Auth
		}
	}
	return nil
}

// CheckData implements pipeline.DataChecker.
func (c *Check) CheckData(ctx context.Context, tx *pipeline.Txn, pm *pipeline.Message) verdict.Result {
	// The From fields are read from the raw header with a lenient scan:
	// the parsed pm.Header (net/textproto) drops fields written with the
	// obsolete "From :" syntax (obs-from, RFC 5322 4.5.2, which readers still
	// display) and everything after a malformed line, and a From field
	// DMARC does not see is a DMARC bypass.
	froms, err := rawFroms(pm)
	if err != nil && pm.Header == nil {
		return verdict.Result{Err: fmt.Errorf("dmarc: open message: %w", err)}
	}
	if len(froms) == 0 && pm.Header != nil {
		for _, v := range pm.Header.Values("From") {
			froms = append(froms, decodeHeader(v))
		}
	}
	return c.Evaluate(ctx, froms, authOf(tx, "spf"), authOf(tx, "dkim"))
}

// maxHeaderScan bounds the header bytes rawFroms reads.
const maxHeaderScan = 1 << 20

// rawFroms returns the decoded values of every From field of the raw
// header of pm, unfolded. Field names are matched case-insensitively with
// white space before the colon allowed (obs-optional); lines that are not
// fields are skipped, not taken as the end of the header.
func rawFroms(pm *pipeline.Message) ([]string, error) {
	if pm.Open == nil {
		return nil, nil
	}
	rc, err := shared.Open(pm)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	br := bufio.NewReader(io.LimitReader(rc, maxHeaderScan))
	var froms []string
	var cur *strings.Builder // the From field being unfolded, nil if none
	flush := func() {
		if cur != nil {
			froms = append(froms, decodeHeader(strings.TrimSpace(cur.String())))
			cur = nil
		}
	}
	for {
		line, err := br.ReadString('\n')
		l := strings.TrimRight(line, "\r\n")
		if l == "" && (err == nil || line != "") {
			break // the empty line ending the header
		}
		if l != "" && (l[0] == ' ' || l[0] == '\t') {
			if cur != nil {
				cur.WriteString(" ")
				cur.WriteString(strings.TrimSpace(l))
			}
		} else {
			flush()
			if name, val, ok := strings.Cut(l, ":"); ok && strings.EqualFold(strings.TrimRight(name, " \t"), "From") {
				cur = &strings.Builder{}
				cur.WriteString(val)
			}
		}
		if err != nil {
			break
		}
	}
	flush()
	return froms, nil
}

func decodeHeader(v string) string {
	if plainHeaderValue(v) {
		return v // what parsing it as a header would give, without the parse
	}
	m := message.ParseBytes([]byte("From: "+v+"\r\n\r\n"), message.Limits{MaxParts: 1, MaxDepth: 1, MaxDecodedBytes: 1, MaxRawBody: 1})
	return m.Get("From")
}

// plainHeaderValue reports whether v has nothing a header parse would
// change: no encoded words, no control characters, no surrounding space,
// only printable ASCII.
func plainHeaderValue(v string) bool {
	if v == "" || v[0] == ' ' || v[len(v)-1] == ' ' || strings.Contains(v, "=?") {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c >= 0x7f {
			return false
		}
	}
	return true
}

// lookup finds the DMARC record for the From domain, falling back to the
// organizational domain (whose sp= then applies).
func (c *Check) lookup(ctx context.Context, from string) (*dmarc.Record, bool, error) {
	opts := &dmarc.LookupOptions{LookupTXT: dkim.LookupTXTFunc(ctx, c.res)}
	rec, err := dmarc.LookupWithOptions(from, opts)
	if err == nil {
		return rec, false, nil
	}
	if !errors.Is(err, dmarc.ErrNoPolicy) {
		return nil, false, err
	}
	org := OrgDomain(from)
	if org == from {
		return nil, false, dmarc.ErrNoPolicy
	}
	rec, err = dmarc.LookupWithOptions(org, opts)
	return rec, true, err
}

// Evaluate applies DMARC to a message given its From field values and the
// SPF and DKIM Authentication-Results entries.
//
// With several From fields or several From domains (a form RFC 5322
// forbids, used to show readers a spoofed domain), each domain is
// evaluated and the strictest failing outcome applies (RFC 7489 6.6.1);
// when none fails with a quarantine or reject policy, the result is
// permerror.
func (c *Check) Evaluate(ctx context.Context, froms, spfAuth, dkimAuth []string) verdict.Result {
	doms, why := fromDomains(froms)
	permerror := verdict.Result{Auth: []string{"dmarc=permerror"},
		Symbols: []verdict.Symbol{{Name: "DMARC_PERMERROR", Score: c.cfg.PermErrorScore, Detail: why}}}
	if len(doms) == 0 {
		return permerror
	}
	if why == "" {
		return c.evaluate(ctx, doms[0], spfAuth, dkimAuth)
	}
	var worst verdict.Result
	rank := 0
	for _, d := range doms {
		r := c.evaluate(ctx, d, spfAuth, dkimAuth)
		if k := severity(r); k > rank {
			worst, rank = r, k
		}
	}
	if rank < 2 {
		return permerror // nothing stricter than permerror's score
	}
	for i := range worst.Symbols {
		worst.Symbols[i].Detail += " (" + why + ")"
	}
	return worst
}

// severity ranks the outcome of one From domain: 0 for pass, none or
// permerror, then fail with p=none, fail scored only, temperror,
// quarantine, reject.
func severity(r verdict.Result) int {
	switch {
	case r.Hard != nil && r.Hard.Action == verdict.Reject:
		return 5
	case r.Hard != nil && r.Hard.Action == verdict.Quarantine:
		return 4
	case r.Err != nil:
		return 3
	case len(r.Symbols) > 0 && r.Symbols[0].Name == "DMARC_FAIL_QUARANTINE":
		return 2
	case len(r.Symbols) > 0 && r.Symbols[0].Name == "DMARC_FAIL_NONE":
		return 1
	}
	return 0
}

// tempAligned reports whether an SPF or DKIM identity aligned with from
// had a temporary error: it might have passed.
func tempAligned(from string, rec *dmarc.Record, spfAuth, dkimAuth []string) bool {
	for _, a := range spfAuth {
		f := strings.Fields(a)
		if len(f) < 2 || f[0] != "spf=temperror" {
			continue
		}
		for _, kv := range f[1:] {
			d, ok := strings.CutPrefix(kv, "smtp.mailfrom=")
			if !ok {
				d, ok = strings.CutPrefix(kv, "smtp.helo=")
			}
			if ok && Aligned(from, d, rec.SPFAlignment) {
				return true
			}
		}
	}
	for _, a := range dkimAuth {
		f := strings.Fields(a)
		if len(f) < 2 || f[0] != "dkim=temperror" {
			continue
		}
		for _, kv := range f[1:] {
			if d, ok := strings.CutPrefix(kv, "header.d="); ok && Aligned(from, d, rec.DKIMAlignment) {
				return true
			}
		}
	}
	return false
}

// evaluate applies DMARC for one From domain.
func (c *Check) evaluate(ctx context.Context, from string, spfAuth, dkimAuth []string) verdict.Result {
	rec, inherited, err := c.lookup(ctx, from)
	switch {
	case errors.Is(err, dmarc.ErrNoPolicy):
		return verdict.Result{Auth: []string{"dmarc=none header.from=" + from},
			Symbols: []verdict.Symbol{{Name: "DMARC_NONE", Score: 0}}}
	case dmarc.IsTempFail(err):
		return verdict.Result{Auth: []string{"dmarc=temperror header.from=" + from},
			Err: fmt.Errorf("dmarc: lookup for %s: %w", from, err)}
	case err != nil:
		return verdict.Result{Auth: []string{"dmarc=permerror header.from=" + from},
			Symbols: []verdict.Symbol{{Name: "DMARC_PERMERROR", Score: c.cfg.PermErrorScore, Detail: err.Error()}}}
	}
	pass := false
	if d := spfPass(spfAuth); d != "" && Aligned(from, d, rec.SPFAlignment) {
		pass = true
	}
	for _, d := range dkim.Passed(dkimAuth) {
		if Aligned(from, d, rec.DKIMAlignment) {
			pass = true
		}
	}
	if pass {
		return verdict.Result{Auth: []string{"dmarc=pass header.from=" + from},
			Symbols: []verdict.Symbol{{Name: "DMARC_PASS", Score: c.cfg.PassScore}}}
	}
	p := rec.Policy
	if inherited && rec.SubdomainPolicy != "" {
		p = rec.SubdomainPolicy
	}
	// pct < 100: the owner asks that only part of failing mail get the
	// policy; Moat applies the next milder policy to all of it instead of
	// sampling (RFC 7489 6.6.4), so the outcome is deterministic.
	if rec.Percent != nil && *rec.Percent < 100 {
		switch p {
		case dmarc.PolicyReject:
			p = dmarc.PolicyQuarantine
		case dmarc.PolicyQuarantine:
			p = dmarc.PolicyNone
		}
	}
	// An aligned identity that failed only temporarily might pass on a
	// retry: no permanent verdict from it (temperror, RFC 7489 11.2), the
	// policy's on_error decides (451 by default) instead of a 550.
	if (p == dmarc.PolicyReject || p == dmarc.PolicyQuarantine && c.cfg.HonorQuarantine) && tempAligned(from, rec, spfAuth, dkimAuth) {
		return verdict.Result{Auth: []string{"dmarc=temperror header.from=" + from},
			Err: fmt.Errorf("dmarc: %s (p=%s): an aligned SPF or DKIM identity had a temporary error", from, p)}
	}
	res := verdict.Result{Auth: []string{fmt.Sprintf("dmarc=fail (p=%s) header.from=%s", p, from)}}
	detail := fmt.Sprintf("From domain %s not aligned with a passing SPF or DKIM identity", from)
	switch {
	case p == dmarc.PolicyReject && c.cfg.HonorReject:
		res.Symbols = []verdict.Symbol{{Name: "DMARC_FAIL_REJECT", Score: c.cfg.FailScore, Detail: detail}}
		res.Hard = &verdict.Verdict{Action: verdict.Reject, Reply: replyReject, Reason: "dmarc p=reject: " + detail}
	case (p == dmarc.PolicyReject || p == dmarc.PolicyQuarantine) && (c.cfg.HonorQuarantine || p == dmarc.PolicyReject):
		res.Symbols = []verdict.Symbol{{Name: "DMARC_FAIL_QUARANTINE", Score: c.cfg.FailScore, Detail: detail}}
		res.Hard = &verdict.Verdict{Action: verdict.Quarantine, Reason: "dmarc p=" + string(p) + ": " + detail}
	case p == dmarc.PolicyReject || p == dmarc.PolicyQuarantine:
		res.Symbols = []verdict.Symbol{{Name: "DMARC_FAIL_QUARANTINE", Score: c.cfg.FailScore, Detail: detail}}
	default:
		res.Symbols = []verdict.Symbol{{Name: "DMARC_FAIL_NONE", Score: c.cfg.FailNoneScore, Detail: detail}}
	}
	return res
}
