package app

import (
	"context"
	"fmt"
	"moat.dev/moat/internal/policy"
	"slices"
	"strings"

	"moat.dev/moat/internal/check/attach"
	"moat.dev/moat/internal/check/bayes"
	"moat.dev/moat/internal/check/botnet"
	"moat.dev/moat/internal/check/clamav"
	"moat.dev/moat/internal/check/dkim"
	"moat.dev/moat/internal/check/dmarc"
	"moat.dev/moat/internal/check/dnsbl"
	"moat.dev/moat/internal/check/greylist"
	"moat.dev/moat/internal/check/helo"
	"moat.dev/moat/internal/check/lists"
	"moat.dev/moat/internal/check/rdns"
	"moat.dev/moat/internal/check/recipient"
	"moat.dev/moat/internal/check/rules"
	"moat.dev/moat/internal/check/spf"
	"moat.dev/moat/internal/check/uribl"
	"moat.dev/moat/internal/classify"
	"moat.dev/moat/internal/dnsx"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/pipeline"
	"moat.dev/moat/internal/relay"
	"moat.dev/moat/internal/reports"
	"moat.dev/moat/internal/verdict"
)

// buildChecks is Moat's plugin table: the checks in the order they run
// within each phase (checks of one phase run in parallel; this order is
// the order of their results in headers and logs). Order is data, here, in
// one place. Whether each runs, and what its findings do, is policy.
func (a *App) buildChecks(ctx context.Context) ([]pipeline.Check, error) {
	cc := a.cfg.Checks
	res := a.resolver
	var checks []pipeline.Check
	add := func(name string, c pipeline.Check, err error) error {
		if err != nil {
			return fmt.Errorf("checks.%s: %w", name, err)
		}
		checks = append(checks, c)
		return nil
	}
	// Cheap, local lists first: an allow or block decides before DNS.
	l, err := lists.New(cc.Lists, lists.Deps{Source: listSource{a}})
	if err := add("lists", l, err); err != nil {
		return nil, err
	}
	// Layer 1: reverse DNS.
	r, err := rdns.New(cc.RDNS, rdns.Deps{Resolver: res})
	if err := add("rdns", r, err); err != nil {
		return nil, err
	}
	// Layer 2: DNS blocklists, with their self-test loop.
	bl, err := dnsbl.New(cc.DNSBL, dnsbl.Deps{Resolver: res, Log: a.log.With("check", "dnsbl"), Metrics: a.reg})
	if err := add("dnsbl", bl, err); err != nil {
		return nil, err
	}
	a.background = append(a.background, bl.Run)
	// Layer 4: botnet/zombie signs and HELO sanity (connection stage).
	bn, err := botnet.New(cc.Botnet, botnet.Deps{Resolver: res, Log: a.log.With("check", "botnet")})
	if err := add("botnet", bn, err); err != nil {
		return nil, err
	}
	h, err := helo.New(cc.HELO, helo.Deps{IsCustomerDomain: a.isCustomerDomain, Resolver: res})
	if err := add("helo", h, err); err != nil {
		return nil, err
	}
	// SPF at MAIL.
	sp, err := spf.New(cc.SPF, spf.Deps{Resolver: res})
	if err := add("spf", sp, err); err != nil {
		return nil, err
	}
	// Layer 3: recipient verification at RCPT.
	rc, err := recipient.New(cc.Recipient, recipient.Deps{Recipients: recipient.StoreRecipients{S: a.store}, Callout: a.callout})
	if err := add("recipient", rc, err); err != nil {
		return nil, err
	}
	// Greylisting (off unless enabled), after the score is known.
	gl, err := greylist.New(cc.Greylist, greylist.Deps{Store: &greylist.SQLStore{DB: a.store.DB(), Driver: a.store.Driver()}, Resolver: res})
	if err := add("greylist", gl, err); err != nil {
		return nil, err
	}
	// Layer 7: attachments and viruses (DATA).
	at, err := attach.New(cc.Attach, a.log.With("check", "attach"), a.reg, nil)
	if err := add("attach", at, err); err != nil {
		return nil, err
	}
	cl, err := clamav.New(cc.ClamAV, a.log.With("check", "clamav"), a.reg)
	if err := add("clamav", cl, err); err != nil {
		return nil, err
	}
	a.closers = append(a.closers, cl)
	a.clamav = cl
	// Layer 6: spam. Authentication first (DMARC, tier 2, reads SPF and
	// DKIM), then URI blocklists, the rules (tier 2: meta rules read other
	// symbols) and the statistical classifier.
	dk, err := dkim.New(cc.DKIM, dkim.Deps{Resolver: res, Log: a.log.With("check", "dkim")})
	if err := add("dkim", dk, err); err != nil {
		return nil, err
	}
	dm, err := dmarc.New(cc.DMARC, dmarc.Deps{Resolver: res, Log: a.log.With("check", "dmarc")})
	if err := add("dmarc", dm, err); err != nil {
		return nil, err
	}
	ub, err := uribl.New(cc.URIBL, uribl.Deps{Resolver: res, Log: a.log.With("check", "uribl"), Registerer: a.reg})
	if err := add("uribl", ub, err); err != nil {
		return nil, err
	}
	if r, ok := any(ub).(interface{ Run(context.Context) }); ok {
		a.background = append(a.background, r.Run)
	}
	ru, err := rules.New(cc.Rules, rules.Deps{Log: a.log.With("check", "rules"), Registerer: a.reg})
	if err := add("rules", ru, err); err != nil {
		return nil, err
	}
	if err := classify.MigrateDriver(ctx, a.store.DB(), a.store.Driver()); err != nil {
		return nil, fmt.Errorf("classifier tables: %w", err)
	}
	tokens := classify.NewSQLStoreWith(a.store.DB(), classify.SQLStoreOptions{Driver: a.store.Driver()})
	by, err := bayes.New(cc.Bayes, bayes.Deps{Store: tokens, Log: a.log.With("check", "bayes"), Registerer: a.reg})
	if err := add("bayes", by, err); err != nil {
		return nil, err
	}
	a.closers = append(a.closers, by) // after the store's closer: drains autolearn first
	a.learner = learner{by.Classifier()}
	// The learning addresses: a report's sender must be a user of the
	// domain, as the recipient check knows users.
	verify := func(ctx context.Context, tx *pipeline.Txn, addr pipeline.Address) (bool, error) {
		res := rc.CheckRcpt(ctx, tx, &pipeline.Rcpt{Addr: addr, Domain: strings.ToLower(addr.Domain), Report: &verdict.Report{}})
		return res.Err == nil && res.Hard == nil, res.Err
	}
	if a.reports, err = reports.New(cc.Bayes.Reports, reports.Deps{Classifier: by.Classifier(), Verify: verify, Log: a.log.With("component", "reports")}); err != nil {
		return nil, err
	}
	// The policy's layer names are these checks: a policy can set each
	// one and nothing else (policy.Validate refuses other names).
	var names []string
	for _, c := range checks {
		names = append(names, c.Name())
	}
	if !slices.Equal(names, policy.LayerNames) {
		return nil, fmt.Errorf("internal: checks %v differ from policy.LayerNames %v", names, policy.LayerNames)
	}
	return checks, nil
}

// callout asks a domain's backend whether it knows a recipient.
func (a *App) callout(ctx context.Context, domain, rcpt string) (verdict.Reply, error) {
	route, err := a.route(ctx, domain)
	if err != nil {
		return verdict.Reply{}, err
	}
	return relay.Callout(ctx, route, "", rcpt)
}

var _ dnsx.Resolver = (*dnsx.Client)(nil)

// learner teaches the classifier from people's corrections: a quarantine
// release is a ham lesson, "report spam" a spam lesson.
type learner struct{ c *classify.Classifier }

func (l learner) Learn(ctx context.Context, raw []byte, spam bool, user string) error {
	lab := classify.Ham
	if spam {
		lab = classify.Spam
	}
	_, err := l.c.Correct(ctx, user, message.ParseBytes(raw, message.DefaultLimits()), lab)
	return err
}

func (l learner) Score(ctx context.Context, raw []byte, user string) (float64, error) {
	r, err := l.c.Classify(ctx, user, message.ParseBytes(raw, message.DefaultLimits()), false)
	return r.Prob, err
}
