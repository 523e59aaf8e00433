package tracking

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/net/idna"
)

// Query selects messages. Empty fields match everything.
type Query struct {
	QueueID  string
	From     string // substring of the envelope sender, case-insensitive
	Rcpt     string // substring of any recipient, case-insensitive
	ClientIP string // exact
	Since    time.Time
	Until    time.Time // exclusive
	Action   string    // delivered, tagged, quarantined, rejected, tempfailed, abandoned
	Limit    int       // default 100, at most 1000
	Offset   int
	// Scoped restricts the result to messages with a recipient in one of
	// Domains (an empty list then matches nothing). Unscoped queries see
	// everything.
	Scoped  bool
	Domains []string
}

// Message summarises one queue ID.
type Message struct {
	QueueID   string    `json:"queue_id"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	ConnID    string    `json:"conn_id,omitempty"`
	ClientIP  string    `json:"client_ip,omitempty"`
	Helo      string    `json:"helo,omitempty"`
	From      string    `json:"from"`
	Rcpts     []string  `json:"rcpts"`
	Size      int64     `json:"size"`
	// Action is the final action of the transaction: delivered (accepted
	// clean and queued), tagged, quarantined, rejected, tempfailed or
	// abandoned (no DATA); "" if the transaction line was not seen.
	Action  string   `json:"action"`
	Outcome string   `json:"outcome,omitempty"` // the SMTP server's raw outcome
	Score   float64  `json:"score"`
	Symbols []string `json:"symbols"`
	Reason  string   `json:"reason,omitempty"`
	Reply   string   `json:"reply,omitempty"`
	// Deliveries are the delivery attempts, oldest first.
	Deliveries []Event `json:"deliveries"`
	// Status is each recipient's latest delivery outcome.
	Status []RcptStatus `json:"status"`
}

// RcptStatus is the latest delivery state of one recipient.
type RcptStatus struct {
	Rcpt    string    `json:"rcpt"`
	Outcome string    `json:"outcome"` // delivered, deferred, failed, expired
	Reply   string    `json:"reply,omitempty"`
	Host    string    `json:"host,omitempty"`
	Time    time.Time `json:"time"`
}

// ErrNotFound is returned by Message for an unknown queue ID.
var ErrNotFound = errors.New("tracking: no such message")

func micros(t time.Time) int64 { return t.UnixMicro() }

func fromMicros(v int64) time.Time { return time.UnixMicro(v).UTC() }

// likeEscape makes s a LIKE substring pattern with \ as the escape.
func likeEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return "%" + r.Replace(strings.ToLower(s)) + "%"
}

// scopeClause restricts messages (alias m) to recipients in domains.
func scopeClause(domains []string, args *[]any) string {
	if len(domains) == 0 {
		return "1 = 0"
	}
	ph := make([]string, len(domains))
	for i, d := range domains {
		ph[i] = "?"
		*args = append(*args, strings.ToLower(d))
	}
	return `EXISTS (SELECT 1 FROM tracking_rcpts sr WHERE sr.queue_id = m.queue_id AND sr.domain IN (` + strings.Join(ph, ", ") + `))`
}

// Search returns the messages matching q, newest first.
func (t *Tracker) Search(ctx context.Context, q Query) ([]Message, error) {
	var where []string
	var args []any
	if q.QueueID != "" {
		c, a := queueIDIn("m.queue_id", q.QueueID)
		where, args = append(where, c), append(args, a...)
	}
	if q.From != "" {
		where, args = append(where, `LOWER(m.from_addr) LIKE ? ESCAPE '\'`), append(args, likeEscape(q.From))
	}
	if q.Rcpt != "" {
		alt := idnAlternate(q.Rcpt)
		if alt == "" {
			where = append(where, `EXISTS (SELECT 1 FROM tracking_rcpts rr WHERE rr.queue_id = m.queue_id AND rr.rcpt LIKE ? ESCAPE '\')`)
			args = append(args, likeEscape(q.Rcpt))
		} else {
			where = append(where, `EXISTS (SELECT 1 FROM tracking_rcpts rr WHERE rr.queue_id = m.queue_id AND (rr.rcpt LIKE ? ESCAPE '\' OR rr.rcpt LIKE ? ESCAPE '\'))`)
			args = append(args, likeEscape(q.Rcpt), likeEscape(alt))
		}
	}
	if q.ClientIP != "" {
		where, args = append(where, "m.client_ip = ?"), append(args, q.ClientIP)
	}
	if !q.Since.IsZero() {
		where, args = append(where, "m.first_seen >= ?"), append(args, micros(q.Since))
	}
	if !q.Until.IsZero() {
		where, args = append(where, "m.first_seen < ?"), append(args, micros(q.Until))
	}
	if q.Action != "" {
		where, args = append(where, "m.action = ?"), append(args, q.Action)
	}
	if q.Scoped {
		where = append(where, scopeClause(q.Domains, &args))
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 1000)
	sqlq := `SELECT m.queue_id, m.first_seen, m.last_seen, m.conn_id, m.client_ip, m.helo, m.from_addr, m.size,
		m.action, m.outcome, m.score, m.symbols, m.reason, m.reply FROM tracking_messages m`
	if len(where) > 0 {
		sqlq += " WHERE " + strings.Join(where, " AND ")
	}
	sqlq += fmt.Sprintf(" ORDER BY m.first_seen DESC, m.queue_id LIMIT %d OFFSET %d", limit, max(q.Offset, 0))
	rows, err := t.db.QueryContext(ctx, t.q(sqlq), args...)
	if err != nil {
		return nil, fmt.Errorf("tracking: search: %w", err)
	}
	var out []Message
	idx := map[string]int{}
	for rows.Next() {
		var m Message
		var first, last int64
		var syms string
		if err := rows.Scan(&m.QueueID, &first, &last, &m.ConnID, &m.ClientIP, &m.Helo, &m.From, &m.Size,
			&m.Action, &m.Outcome, &m.Score, &syms, &m.Reason, &m.Reply); err != nil {
			rows.Close()
			return nil, err
		}
		m.FirstSeen, m.LastSeen = fromMicros(first), fromMicros(last)
		m.Symbols = strings.Fields(syms)
		if m.Symbols == nil {
			m.Symbols = []string{}
		}
		m.Rcpts, m.Deliveries, m.Status = []string{}, []Event{}, []RcptStatus{}
		idx[m.QueueID] = len(out)
		out = append(out, m)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return out, nil
	}
	ids := make([]any, 0, len(out))
	ph := make([]string, 0, len(out))
	for _, m := range out {
		ids, ph = append(ids, m.QueueID), append(ph, "?")
	}
	in := "(" + strings.Join(ph, ", ") + ")"
	rows, err = t.db.QueryContext(ctx, t.q(`SELECT queue_id, rcpt FROM tracking_rcpts WHERE queue_id IN `+in+` ORDER BY queue_id, rcpt`), ids...)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var id, r string
		if err := rows.Scan(&id, &r); err != nil {
			rows.Close()
			return nil, err
		}
		m := &out[idx[id]]
		m.Rcpts = append(m.Rcpts, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	evs, err := t.events(ctx, `queue_id IN `+in+` AND kind = '`+KindDelivery+`'`, ids)
	if err != nil {
		return nil, err
	}
	for _, e := range evs {
		m := &out[idx[e.QueueID]]
		m.Deliveries = append(m.Deliveries, e)
	}
	for i := range out {
		out[i].Status = status(out[i].Deliveries)
	}
	return out, nil
}

func status(deliveries []Event) []RcptStatus {
	last := map[string]int{}
	var out []RcptStatus
	for _, e := range deliveries {
		k := strings.ToLower(e.Rcpt)
		s := RcptStatus{Rcpt: e.Rcpt, Outcome: e.Outcome, Reply: e.Reply, Host: e.Host, Time: e.Time}
		if i, ok := last[k]; ok {
			out[i] = s
			continue
		}
		last[k] = len(out)
		out = append(out, s)
	}
	if out == nil {
		out = []RcptStatus{}
	}
	return out
}

// Message returns one message by queue ID (ErrNotFound), restricted like
// Search when scoped.
func (t *Tracker) Message(ctx context.Context, queueID string, scoped bool, domains []string) (*Message, error) {
	ms, err := t.Search(ctx, Query{QueueID: queueID, Limit: 1, Scoped: scoped, Domains: domains})
	if err != nil {
		return nil, err
	}
	if len(ms) == 0 {
		return nil, ErrNotFound
	}
	return &ms[0], nil
}

// Events returns every event recorded for queueID, oldest first. Like
// Search, it accepts the queue ID in any case.
func (t *Tracker) Events(ctx context.Context, queueID string) ([]Event, error) {
	c, a := queueIDIn("queue_id", queueID)
	return t.events(ctx, c, a)
}

// queueIDIn matches a queue ID typed in any case. Queue IDs are upper
// case (Crockford base32) and the synthetic IDs of transactions without
// one are lower case: trying the typed, upper and lower forms keeps the
// index usable, where LOWER(queue_id) would scan the table.
func queueIDIn(col, id string) (string, []any) {
	forms := []any{id}
	for _, f := range []string{strings.ToUpper(id), strings.ToLower(id)} {
		if !slices.Contains(forms, any(f)) {
			forms = append(forms, f)
		}
	}
	return col + " IN (?" + strings.Repeat(", ?", len(forms)-1) + ")", forms
}

// idnAlternate returns the other spelling of the domain part of a
// recipient search (A-labels for U-labels and back), or "" when there is
// none: recipients are recorded as the client wrote them, so
// info@bücher.example and info@xn--bcher-kva.example are the same
// mailbox. Without an "@" the whole needle is taken as a domain.
func idnAlternate(needle string) string {
	local, dom := "", needle
	if i := strings.LastIndexByte(needle, '@'); i >= 0 {
		local, dom = needle[:i+1], needle[i+1:]
	}
	if dom == "" {
		return ""
	}
	var alt string
	var err error
	if strings.Contains(strings.ToLower(dom), "xn--") {
		alt, err = idna.ToUnicode(strings.ToLower(dom))
	} else if strings.IndexFunc(dom, func(r rune) bool { return r >= 0x80 }) >= 0 {
		alt, err = idnaLookup.ToASCII(dom)
	} else {
		return ""
	}
	if err != nil || alt == "" || strings.EqualFold(alt, dom) {
		return ""
	}
	return local + alt
}

func (t *Tracker) events(ctx context.Context, where string, args []any) ([]Event, error) {
	rows, err := t.db.QueryContext(ctx, t.q(`SELECT queue_id, ts, level, kind, msg, rcpt, domain, host, outcome, reply, detail
		FROM tracking_events WHERE `+where+` ORDER BY ts, seq`), args...)
	if err != nil {
		return nil, fmt.Errorf("tracking: events: %w", err)
	}
	defer rows.Close()
	out := []Event{}
	for rows.Next() {
		var e Event
		var ts int64
		if err := rows.Scan(&e.QueueID, &ts, &e.Level, &e.Kind, &e.Msg, &e.Rcpt, &e.Domain, &e.Host, &e.Outcome, &e.Reply, &e.Detail); err != nil {
			return nil, err
		}
		e.Time = fromMicros(ts)
		out = append(out, e)
	}
	return out, rows.Err()
}

// Actions are the transaction actions Stats counts, in display order.
var Actions = []string{"delivered", "tagged", "quarantined", "rejected", "tempfailed", "abandoned"}

// StatsQuery selects the statistics.
type StatsQuery struct {
	Since, Until time.Time     // Until zero = now
	Bucket       time.Duration // bucket width, e.g. 1h; >= 1s
	TopReasons   int           // reasons kept per domain; default 10
	// Scoped/Domains restrict to messages with a recipient in Domains.
	Scoped  bool
	Domains []string
}

// Stats are counts over a time range.
type Stats struct {
	Since   time.Time        `json:"since"`
	Until   time.Time        `json:"until"`
	Bucket  string           `json:"bucket"`
	Totals  map[string]int64 `json:"totals"` // per action
	Buckets []Bucket         `json:"buckets"`
	// Deliveries counts delivery attempts by outcome (delivered,
	// deferred, failed, expired).
	Deliveries map[string]int64 `json:"deliveries"`
	// Reasons lists, per recipient domain, the most frequent reasons for
	// rejected and tempfailed transactions, most frequent first.
	Reasons map[string][]ReasonCount `json:"reasons"`
}

// Bucket is the counts per action of one time slice.
type Bucket struct {
	Start  time.Time        `json:"start"`
	Counts map[string]int64 `json:"counts"`
}

// ReasonCount is one reason and how often it decided.
type ReasonCount struct {
	Reason string `json:"reason"`
	Count  int64  `json:"count"`
}

// MaxBuckets bounds the number of buckets a Stats query may produce.
const MaxBuckets = 2000

// Stats counts transactions per action per bucket, delivery outcomes, and
// the top reject reasons per domain in [Since, Until).
func (t *Tracker) Stats(ctx context.Context, q StatsQuery) (*Stats, error) {
	if q.Until.IsZero() {
		q.Until = t.now()
	}
	if q.Bucket < time.Second {
		return nil, errors.New("bucket: must be >= 1s")
	}
	if !q.Since.Before(q.Until) {
		return nil, errors.New("since: must be before until")
	}
	if n := q.Until.Sub(q.Since) / q.Bucket; n >= MaxBuckets {
		return nil, fmt.Errorf("bucket: range/bucket gives %d buckets, at most %d allowed", n+1, MaxBuckets)
	}
	if q.TopReasons <= 0 {
		q.TopReasons = 10
	}
	since := q.Since.Truncate(q.Bucket)
	width := q.Bucket.Microseconds()
	st := &Stats{Since: since.UTC(), Until: q.Until.UTC(), Bucket: q.Bucket.String(),
		Totals: map[string]int64{}, Deliveries: map[string]int64{}, Reasons: map[string][]ReasonCount{}}
	for _, a := range Actions {
		st.Totals[a] = 0
	}
	for b := since; b.Before(q.Until); b = b.Add(q.Bucket) {
		c := map[string]int64{}
		for _, a := range Actions {
			c[a] = 0
		}
		st.Buckets = append(st.Buckets, Bucket{Start: b.UTC(), Counts: c})
	}

	// Per action per bucket.
	args := []any{micros(since), width, micros(since), micros(q.Until)}
	where := "m.has_txn = 1 AND m.first_seen >= ? AND m.first_seen < ?"
	if q.Scoped {
		where += " AND " + scopeClause(q.Domains, &args)
	}
	rows, err := t.db.QueryContext(ctx, t.q(`SELECT (m.first_seen - CAST(? AS BIGINT)) / CAST(? AS BIGINT), m.action, COUNT(*)
		FROM tracking_messages m WHERE `+where+` GROUP BY 1, 2`), args...)
	if err != nil {
		return nil, fmt.Errorf("tracking: stats: %w", err)
	}
	for rows.Next() {
		var b, n int64
		var action string
		if err := rows.Scan(&b, &action, &n); err != nil {
			rows.Close()
			return nil, err
		}
		st.Totals[action] += n
		if b >= 0 && b < int64(len(st.Buckets)) {
			st.Buckets[b].Counts[action] += n
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}

	// Delivery outcomes.
	args = []any{micros(since), micros(q.Until)}
	where = "e.kind = '" + KindDelivery + "' AND e.ts >= ? AND e.ts < ?"
	if q.Scoped {
		where += " AND " + strings.Replace(domainIn(q.Domains, &args), "DOMAIN", "e.domain", 1)
	}
	if err := t.scanCounts(ctx, `SELECT e.outcome, COUNT(*) FROM tracking_events e WHERE `+where+` GROUP BY e.outcome`, args,
		func(k string, n int64) { st.Deliveries[k] = n }); err != nil {
		return nil, err
	}

	// Top reasons per domain.
	args = []any{micros(since), micros(q.Until)}
	where = "m.action IN ('rejected', 'tempfailed') AND m.first_seen >= ? AND m.first_seen < ? AND m.reason_key <> ''"
	if q.Scoped {
		where += " AND " + strings.Replace(domainIn(q.Domains, &args), "DOMAIN", "r.domain", 1)
	}
	rows, err = t.db.QueryContext(ctx, t.q(`SELECT r.domain, m.reason_key, COUNT(DISTINCT m.queue_id)
		FROM tracking_messages m JOIN tracking_rcpts r ON r.queue_id = m.queue_id
		WHERE `+where+` GROUP BY r.domain, m.reason_key`), args...)
	if err != nil {
		return nil, fmt.Errorf("tracking: stats: %w", err)
	}
	for rows.Next() {
		var d, k string
		var n int64
		if err := rows.Scan(&d, &k, &n); err != nil {
			rows.Close()
			return nil, err
		}
		st.Reasons[d] = append(st.Reasons[d], ReasonCount{Reason: k, Count: n})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for d, rs := range st.Reasons {
		sort.Slice(rs, func(i, j int) bool {
			if rs[i].Count != rs[j].Count {
				return rs[i].Count > rs[j].Count
			}
			return rs[i].Reason < rs[j].Reason
		})
		if len(rs) > q.TopReasons {
			rs = rs[:q.TopReasons]
		}
		st.Reasons[d] = rs
	}
	return st, nil
}

func domainIn(domains []string, args *[]any) string {
	if len(domains) == 0 {
		return "1 = 0"
	}
	ph := make([]string, len(domains))
	for i, d := range domains {
		ph[i] = "?"
		*args = append(*args, strings.ToLower(d))
	}
	return "DOMAIN IN (" + strings.Join(ph, ", ") + ")"
}

func (t *Tracker) scanCounts(ctx context.Context, q string, args []any, f func(string, int64)) error {
	rows, err := t.db.QueryContext(ctx, t.q(q), args...)
	if err != nil {
		return fmt.Errorf("tracking: stats: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		var n int64
		if err := rows.Scan(&k, &n); err != nil {
			return err
		}
		f(k, n)
	}
	return rows.Err()
}
