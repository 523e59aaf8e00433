package pipeline

import (
	"context"
	"fmt"
	"sync"
	"time"

	"moat.dev/moat/internal/policy"
	"moat.dev/moat/internal/verdict"
)

// PolicySource returns the policy of a customer domain; "" asks for the
// site policy. It must never return nil.
type PolicySource func(domain string) *policy.Policy

// Runner runs the checks of each phase in parallel, each under a deadline
// and with panic recovery, and asks the policy for a decision.
type Runner struct {
	conn    []ConnChecker
	helo    []HeloChecker
	mail    []MailChecker
	rcpt    []RcptChecker
	data1   []DataChecker
	data2   []DataChecker
	observe []DataObserver
	policy  PolicySource
	timeout time.Duration
}

// NewRunner sorts checks by the phases they implement, keeping the given
// order (the order table lives in the app package).
func NewRunner(checks []Check, pol PolicySource, timeout time.Duration) *Runner {
	if timeout <= 0 {
		timeout = 20 * time.Second
	}
	r := &Runner{policy: pol, timeout: timeout}
	for _, c := range checks {
		if x, ok := c.(ConnChecker); ok {
			r.conn = append(r.conn, x)
		}
		if x, ok := c.(HeloChecker); ok {
			r.helo = append(r.helo, x)
		}
		if x, ok := c.(MailChecker); ok {
			r.mail = append(r.mail, x)
		}
		if x, ok := c.(RcptChecker); ok {
			r.rcpt = append(r.rcpt, x)
		}
		if x, ok := c.(DataChecker); ok {
			if o, ok := c.(DataObserver); ok {
				r.observe = append(r.observe, o)
			}
			if _, t2 := c.(Tier2); t2 {
				r.data2 = append(r.data2, x)
			} else {
				r.data1 = append(r.data1, x)
			}
		}
	}
	return r
}

// Policy returns the policy for a domain ("" for the site).
func (r *Runner) Policy(domain string) *policy.Policy { return r.policy(domain) }

// runAll runs the enabled checks of one phase concurrently under one
// deadline, the last of them in the calling goroutine (a phase with one
// check costs no goroutine), and waits for all of them: a check that
// ignores its context delays the phase either way.
func runAll[C Check](ctx context.Context, r *Runner, pol *policy.Policy, checks []C, rep *verdict.Report, call func(context.Context, C) verdict.Result) {
	last := -1
	for i, c := range checks {
		if pol.Enabled(c.Name()) {
			last = i
		}
	}
	if last < 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	run := func(c C) {
		res := func() (res verdict.Result) {
			defer func() {
				if p := recover(); p != nil {
					res = verdict.Result{Err: fmt.Errorf("panic: %v", p)}
				}
			}()
			return call(ctx, c)
		}()
		if res.Err == nil && ctx.Err() != nil {
			res.Err = fmt.Errorf("timed out after %v", r.timeout)
		}
		res.Check = c.Name()
		rep.Add(res)
	}
	var wg sync.WaitGroup
	for _, c := range checks[:last] {
		if !pol.Enabled(c.Name()) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			run(c)
		}()
	}
	run(checks[last])
	wg.Wait()
}

// Conn runs the connection checks. Only a Drop is meant to be applied now;
// everything else is held until RCPT.
func (r *Runner) Conn(ctx context.Context, c *Conn) policy.Decision {
	pol := r.policy("")
	runAll(ctx, r, pol, r.conn, c.Report, func(ctx context.Context, x ConnChecker) verdict.Result { return x.CheckConn(ctx, c) })
	return pol.Decide(c.Report.Results(), policy.Envelope)
}

// Helo runs the HELO checks (results held until RCPT).
func (r *Runner) Helo(ctx context.Context, c *Conn) policy.Decision {
	pol := r.policy("")
	runAll(ctx, r, pol, r.helo, c.Report, func(ctx context.Context, x HeloChecker) verdict.Result { return x.CheckHelo(ctx, c) })
	return pol.Decide(c.Report.Results(), policy.Envelope)
}

// Mail runs the MAIL checks (results held until RCPT).
func (r *Runner) Mail(ctx context.Context, tx *Txn) policy.Decision {
	pol := r.policy("")
	runAll(ctx, r, pol, r.mail, tx.Report, func(ctx context.Context, x MailChecker) verdict.Result { return x.CheckMail(ctx, tx) })
	return pol.Decide(append(tx.Conn.Report.Results(), tx.Report.Results()...), policy.Envelope)
}

// Rcpt runs the recipient checks for rc and decides, under the recipient
// domain's policy, over everything known so far (held connection, HELO and
// MAIL results included).
func (r *Runner) Rcpt(ctx context.Context, tx *Txn, rc *Rcpt) policy.Decision {
	pol := r.policy(rc.Domain)
	runAll(ctx, r, pol, r.rcpt, rc.Report, func(ctx context.Context, x RcptChecker) verdict.Result { return x.CheckRcpt(ctx, tx, rc) })
	all := append(tx.Conn.Report.Results(), tx.Report.Results()...)
	return pol.Decide(append(all, rc.Report.Results()...), policy.Envelope)
}

// Data runs the content checks in two tiers and decides under the policy
// of the transaction's domain (one policy group per transaction), with
// the recipients' own thresholds (Rcpt.Own).
func (r *Runner) Data(ctx context.Context, tx *Txn, m *Message) policy.Decision {
	domain := ""
	var own policy.Thresholds
	if len(tx.Rcpts) > 0 {
		domain, own = tx.Rcpts[0].Domain, tx.Rcpts[0].Own
	}
	pol := r.policy(domain).With(own)
	call := func(ctx context.Context, x DataChecker) verdict.Result { return x.CheckData(ctx, tx, m) }
	runAll(ctx, r, pol, r.data1, tx.Report, call)
	runAll(ctx, r, pol, r.data2, tx.Report, call)
	all := append(tx.Conn.Report.Results(), tx.Report.Results()...)
	for _, rc := range tx.Rcpts {
		all = append(all, rc.Report.Results()...)
	}
	dec := pol.Decide(all, policy.Content)
	dec.Autolearn = "no"
	for _, o := range r.observe {
		if !pol.Enabled(o.Name()) {
			continue
		}
		if a := o.Decided(ctx, tx, m, all, dec); a != "no" && a != "" {
			dec.Autolearn = a
		}
	}
	return dec
}
