package api

import (
	"errors"
	"net/http"
	"strings"

	"moat.dev/moat/internal/queue"
)

// QueueControl is the part of the queue the API steers; *queue.Queue
// implements it.
type QueueControl interface {
	List(f queue.Filter) []queue.Summary
	Show(id string) (queue.Summary, error) // queue.ErrNotFound
	RetryNow(id string) error              // queue.ErrNotFound, queue.ErrHeld
	RetryDomain(domain string) int
	Delete(id string) error // queue.ErrNotFound
	Hold(id string) error
	Release(id string) error
}

var _ QueueControl = (*queue.Queue)(nil)

var errNoQueue = &httpError{status: http.StatusServiceUnavailable, msg: "the queue is not available in this process"}

func rcptDomain(r *queue.RcptState) string {
	if r.Domain != "" {
		return strings.ToLower(r.Domain)
	}
	if i := strings.LastIndexByte(r.Addr, '@'); i >= 0 {
		return strings.ToLower(strings.Trim(r.Addr[i+1:], "<>"))
	}
	return ""
}

// inScope reports whether any (or, with all, every) recipient of s is in
// the caller's domains.
func inScope(s *queue.Summary, scoped bool, set map[string]bool, all bool) bool {
	if !scoped {
		return true
	}
	n := 0
	for i := range s.Rcpts {
		if set[rcptDomain(&s.Rcpts[i])] {
			n++
		}
	}
	if all {
		return n > 0 && n == len(s.Rcpts)
	}
	return n > 0
}

// redact drops the recipients of other tenants from a summary.
func redact(s queue.Summary, scoped bool, set map[string]bool) queue.Summary {
	if !scoped {
		return s
	}
	var keep []queue.RcptState
	for i := range s.Rcpts {
		if set[rcptDomain(&s.Rcpts[i])] {
			keep = append(keep, s.Rcpts[i])
		}
	}
	s.Rcpts = keep
	return s
}

func toSet(domains []string) map[string]bool {
	m := make(map[string]bool, len(domains))
	for _, d := range domains {
		m[strings.ToLower(d)] = true
	}
	return m
}

// listQueue: ?domain= (pending recipients in that domain), ?held=true,
// ?limit=, ?offset=.
func (a *API) listQueue(w http.ResponseWriter, r *http.Request, p *principal) {
	if a.deps.Queue == nil {
		a.fail(w, r, errNoQueue)
		return
	}
	limit, off, err := a.page(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	f := queue.Filter{HeldOnly: r.URL.Query().Get("held") == "true" || r.URL.Query().Get("held") == "1"}
	if dn := r.URL.Query().Get("domain"); dn != "" {
		if f.Domain, err = a.domainParam(r, p, dn); err != nil {
			a.fail(w, r, err)
			return
		}
	}
	scoped, domains, err := a.scope(r.Context(), p)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	set := toSet(domains)
	out := list[queue.Summary]{Items: []queue.Summary{}}
	n := 0
	for _, s := range a.deps.Queue.List(f) {
		if !inScope(&s, scoped, set, false) {
			continue
		}
		n++
		if n <= off {
			continue
		}
		if len(out.Items) == limit {
			out.NextOffset = off + limit
			break
		}
		out.Items = append(out.Items, redact(s, scoped, set))
	}
	writeJSON(w, http.StatusOK, out)
}

// queued loads a message the caller may see; with all, the caller must
// own every recipient (operations that affect all of them).
func (a *API) queued(r *http.Request, p *principal, all bool) (queue.Summary, bool, map[string]bool, error) {
	if a.deps.Queue == nil {
		return queue.Summary{}, false, nil, errNoQueue
	}
	s, err := a.deps.Queue.Show(r.PathValue("id"))
	if errors.Is(err, queue.ErrNotFound) {
		return s, false, nil, &httpError{status: http.StatusNotFound, msg: "message not found in the queue"}
	}
	if err != nil {
		return s, false, nil, err
	}
	scoped, domains, err := a.scope(r.Context(), p)
	if err != nil {
		return s, false, nil, err
	}
	set := toSet(domains)
	if !inScope(&s, scoped, set, false) {
		return s, false, nil, &httpError{status: http.StatusNotFound, msg: "message not found in the queue"}
	}
	if all && !inScope(&s, scoped, set, true) {
		return s, false, nil, &httpError{status: http.StatusForbidden, msg: "the message also has recipients outside your domains; ask the site administrator"}
	}
	return s, scoped, set, nil
}

func (a *API) showQueued(w http.ResponseWriter, r *http.Request, p *principal) {
	s, scoped, set, err := a.queued(r, p, false)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, redact(s, scoped, set))
}

func (a *API) queueOp(w http.ResponseWriter, r *http.Request, p *principal, all bool, action string, op func(string) error) {
	s, _, _, err := a.queued(r, p, all)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	switch err := op(s.ID); {
	case errors.Is(err, queue.ErrNotFound):
		writeError(w, http.StatusNotFound, "message not found in the queue")
		return
	case errors.Is(err, queue.ErrHeld):
		writeError(w, http.StatusConflict, "the message is on hold; release it first")
		return
	case err != nil:
		a.internal(w, r, err)
		return
	}
	a.audit(r, p, action, s.ID, "from="+s.From)
	if action == "queue.delete" {
		writeJSON(w, http.StatusNoContent, nil)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"queue_id": s.ID, "status": "ok"})
}

func (a *API) retryQueued(w http.ResponseWriter, r *http.Request, p *principal) {
	a.queueOp(w, r, p, false, "queue.retry", func(id string) error { return a.deps.Queue.RetryNow(id) })
}

func (a *API) holdQueued(w http.ResponseWriter, r *http.Request, p *principal) {
	a.queueOp(w, r, p, true, "queue.hold", func(id string) error { return a.deps.Queue.Hold(id) })
}

// releaseQueued undoes a hold. Like hold and delete it acts on every
// recipient, so it needs all of them in the caller's domains: a tenant
// must not lift a hold the site placed on a message that also goes to
// another tenant.
func (a *API) releaseQueued(w http.ResponseWriter, r *http.Request, p *principal) {
	a.queueOp(w, r, p, true, "queue.release", func(id string) error { return a.deps.Queue.Release(id) })
}

func (a *API) deleteQueued(w http.ResponseWriter, r *http.Request, p *principal) {
	a.queueOp(w, r, p, true, "queue.delete", func(id string) error { return a.deps.Queue.Delete(id) })
}

// retryDomain makes every pending recipient in ?domain= due now.
func (a *API) retryDomain(w http.ResponseWriter, r *http.Request, p *principal) {
	if a.deps.Queue == nil {
		a.fail(w, r, errNoQueue)
		return
	}
	dn := r.URL.Query().Get("domain")
	if dn == "" {
		writeError(w, http.StatusBadRequest, "domain: required (POST /queue/retry?domain=example.com)")
		return
	}
	name, err := a.domainParam(r, p, dn)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	n := a.deps.Queue.RetryDomain(name)
	a.audit(r, p, "queue.retry_domain", name, "")
	writeJSON(w, http.StatusOK, map[string]any{"domain": name, "messages": n})
}

// domainParam checks a ?domain= parameter: a site token may name any
// domain (mail may still be queued for a deleted one), others only their
// own.
func (a *API) domainParam(r *http.Request, p *principal, dn string) (string, error) {
	if p.kind == RoleSite {
		name := normName(dn)
		if !domainRE.MatchString(name) {
			return "", badRequest("domain: %q is not a valid domain name", dn)
		}
		return name, nil
	}
	d, err := a.domain(r.Context(), p, dn)
	if err != nil {
		return "", err
	}
	return d.Name, nil
}
