package api

import (
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"moat.dev/moat/internal/tracking"
)

var errNoTracking = &httpError{status: http.StatusServiceUnavailable, msg: "message tracking is not enabled"}

// searchMessages: ?queue_id= ?from= ?rcpt= (substrings, case-insensitive)
// ?ip= ?since= ?until= ?action= ?limit= ?offset=.
func (a *API) searchMessages(w http.ResponseWriter, r *http.Request, p *principal) {
	if a.deps.Tracker == nil {
		a.fail(w, r, errNoTracking)
		return
	}
	q, err := a.trackingQuery(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	scoped, domains, err := a.scope(r.Context(), p)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	q.Scoped, q.Domains = scoped, domains
	limit := q.Limit
	q.Limit++
	ms, err := a.deps.Tracker.Search(r.Context(), q)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	out := list[tracking.Message]{Items: []tracking.Message{}}
	if len(ms) > limit {
		ms = ms[:limit]
		out.NextOffset = q.Offset + limit
	}
	set := toSet(domains)
	needle := strings.ToLower(q.Rcpt)
	for _, m := range ms {
		m = redactMessage(m, scoped, set)
		// The tracker matches ?rcpt= against every recipient of a message,
		// the other tenants' too: keep a message only if one of the
		// caller's own recipients matches, or ?rcpt= would tell a scoped
		// caller who else a shared message went to.
		if scoped && needle != "" && !slices.ContainsFunc(m.Rcpts, func(a string) bool { return strings.Contains(strings.ToLower(a), needle) }) {
			continue
		}
		out.Items = append(out.Items, m)
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) trackingQuery(r *http.Request) (tracking.Query, error) {
	v := r.URL.Query()
	var q tracking.Query
	var err error
	if q.Limit, q.Offset, err = a.page(r); err != nil {
		return q, err
	}
	now := a.now()
	if q.Since, err = parseTime("since", v.Get("since"), now); err != nil {
		return q, err
	}
	if q.Until, err = parseTime("until", v.Get("until"), now); err != nil {
		return q, err
	}
	q.QueueID, q.From, q.Rcpt = v.Get("queue_id"), v.Get("from"), v.Get("rcpt")
	for name, s := range map[string]string{"queue_id": q.QueueID, "from": q.From, "rcpt": q.Rcpt} {
		if len(s) > 320 {
			return q, badRequest("%s: at most 320 characters", name)
		}
	}
	if ip := v.Get("ip"); ip != "" {
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			return q, badRequest("ip: %q is not an IP address", ip)
		}
		q.ClientIP = addr.Unmap().String()
	}
	if act := v.Get("action"); act != "" {
		if !slices.Contains(tracking.Actions, act) {
			return q, badRequest("action: %q is not one of %s", act, strings.Join(tracking.Actions, ", "))
		}
		q.Action = act
	}
	return q, nil
}

// redactMessage drops other tenants' recipients and their delivery events.
func redactMessage(m tracking.Message, scoped bool, set map[string]bool) tracking.Message {
	if !scoped {
		return m
	}
	keep := func(rcpt string) bool { return set[tracking.DomainOf(rcpt)] }
	m.Rcpts = slices.DeleteFunc(slices.Clone(m.Rcpts), func(s string) bool { return !keep(s) })
	m.Deliveries = slices.DeleteFunc(slices.Clone(m.Deliveries), func(e tracking.Event) bool { return !keep(e.Rcpt) })
	m.Status = slices.DeleteFunc(slices.Clone(m.Status), func(s tracking.RcptStatus) bool { return !keep(s.Rcpt) })
	return m
}

type messageDetail struct {
	Message tracking.Message `json:"message"`
	Events  []tracking.Event `json:"events"`
}

func (a *API) getMessage(w http.ResponseWriter, r *http.Request, p *principal) {
	if a.deps.Tracker == nil {
		a.fail(w, r, errNoTracking)
		return
	}
	scoped, domains, err := a.scope(r.Context(), p)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	id := r.PathValue("id")
	m, err := a.deps.Tracker.Message(r.Context(), id, scoped, domains)
	if errors.Is(err, tracking.ErrNotFound) {
		writeError(w, http.StatusNotFound, "message not found")
		return
	}
	if err != nil {
		a.internal(w, r, err)
		return
	}
	evs, err := a.deps.Tracker.Events(r.Context(), id)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	set := toSet(domains)
	if scoped {
		evs = slices.DeleteFunc(evs, func(e tracking.Event) bool {
			return (e.Rcpt != "" && !set[tracking.DomainOf(e.Rcpt)]) || (e.Domain != "" && !set[e.Domain])
		})
	}
	writeJSON(w, http.StatusOK, messageDetail{Message: redactMessage(*m, scoped, set), Events: evs})
}

// stats: ?since= (default 24h ago) ?until= (default now) ?bucket= (default
// 1h, at least 1m).
func (a *API) stats(w http.ResponseWriter, r *http.Request, p *principal) {
	if a.deps.Tracker == nil {
		a.fail(w, r, errNoTracking)
		return
	}
	v := r.URL.Query()
	now := a.now()
	since, err := parseTime("since", v.Get("since"), now)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if since.IsZero() {
		since = now.Add(-24 * time.Hour)
	}
	until, err := parseTime("until", v.Get("until"), now)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if until.IsZero() {
		until = now
	}
	bucket := time.Hour
	if s := v.Get("bucket"); s != "" {
		if bucket, err = time.ParseDuration(s); err != nil || bucket < time.Minute {
			a.fail(w, r, badRequest("bucket: %q must be a duration of at least 1m, like 1h", s))
			return
		}
	}
	if !since.Before(until) {
		a.fail(w, r, badRequest("since: must be before until"))
		return
	}
	if n := until.Sub(since.Truncate(bucket)) / bucket; n >= tracking.MaxBuckets {
		a.fail(w, r, badRequest("bucket: %s over this range gives %d buckets; at most %d", bucket, n+1, tracking.MaxBuckets))
		return
	}
	scoped, domains, err := a.scope(r.Context(), p)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	st, err := a.deps.Tracker.Stats(r.Context(), tracking.StatsQuery{Since: since, Until: until, Bucket: bucket, Scoped: scoped, Domains: domains})
	if err != nil {
		a.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}
