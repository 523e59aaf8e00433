package tracking

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// TxnMessage is the message of the SMTP server's one line per transaction.
const TxnMessage = "smtp transaction"

// Handler returns a slog.Handler that passes every record to next and, for
// records at level Info or above that carry a queue_id attribute (in the
// record or added with Logger.With, outside any group), hands a compact
// Event to t without blocking. Transaction lines without a queue ID (the
// client never reached DATA) are tracked under a synthetic ID made from the
// conn_id. With t == nil, Handler returns next.
func Handler(next slog.Handler, t *Tracker) slog.Handler {
	if t == nil {
		return next
	}
	return &handler{next: next, t: t}
}

type handler struct {
	next    slog.Handler
	t       *Tracker
	attrs   []slog.Attr // top-level attributes added with WithAttrs
	grouped bool        // a group is open: later attributes are not top-level
	group   string      // the open groups, dot-separated
}

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.next.Enabled(ctx, l)
}

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	var err error
	if h.next.Enabled(ctx, r.Level) {
		err = h.next.Handle(ctx, r)
	}
	if r.Level >= slog.LevelInfo {
		h.capture(r)
	}
	return err
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	n := &handler{next: h.next.WithAttrs(as), t: h.t, attrs: h.attrs, grouped: h.grouped, group: h.group}
	if !h.grouped && len(as) > 0 {
		n.attrs = append(h.attrs[:len(h.attrs):len(h.attrs)], as...)
	}
	return n
}

func (h *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	g := name
	if h.group != "" {
		g = h.group + "." + name
	}
	return &handler{next: h.next.WithGroup(name), t: h.t, attrs: h.attrs, grouped: true, group: g}
}

// capture builds the event. The common case, a record without queue_id,
// costs one scan of the attributes and no allocation.
func (h *handler) capture(r slog.Record) {
	found := false
	for _, a := range h.attrs {
		if a.Key == "queue_id" {
			found = true
			break
		}
	}
	if !found && !h.grouped {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "queue_id" {
				found = true
				return false
			}
			return true
		})
	}
	if !found && r.Message != TxnMessage {
		return
	}
	b := builder{e: &Event{Time: r.Time, Level: r.Level.String(), Msg: r.Message, Kind: KindLog}}
	if b.e.Time.IsZero() {
		b.e.Time = time.Now()
	}
	for _, a := range h.attrs {
		b.add("", a)
	}
	r.Attrs(func(a slog.Attr) bool {
		if h.grouped {
			b.detailAttr(h.group, a)
		} else {
			b.add("", a)
		}
		return true
	})
	e := b.finish()
	if e == nil {
		return
	}
	h.t.offer(e)
}

const maxDetail = 1024

type builder struct {
	e      *Event
	ti     txnInfo
	detail strings.Builder
}

func (b *builder) add(prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if prefix != "" || v.Kind() == slog.KindGroup {
		b.detailAttr(prefix, slog.Attr{Key: a.Key, Value: v})
		return
	}
	s := func() string { return clip(valueString(v), 512) }
	if b.e.Msg != TxnMessage {
		// The transaction line's own keys mean nothing special on other
		// lines ("queue: DSN queued" action=failed, "quarantined"
		// score=11, "relay: delivered" rcpts=1): keep them in Detail
		// instead of dropping them with the unused txnInfo.
		switch a.Key {
		case "conn_id", "ip", "helo", "from", "rcpts", "refused", "symbols", "size", "score", "action", "reason":
			b.detailAttr("", slog.Attr{Key: a.Key, Value: v})
			return
		}
	}
	switch a.Key {
	case "queue_id":
		b.e.QueueID = clip(valueString(v), 128)
	case "conn_id":
		b.ti.connID = clip(valueString(v), 128)
	case "ip":
		b.ti.ip = clip(valueString(v), 64)
	case "helo":
		b.ti.helo = s()
	case "from":
		b.ti.from = s()
	case "rcpts":
		b.ti.rcpts = stringList(v, 1000)
	case "refused": // "addr: reply" per refused recipient (smtpd)
		for _, r := range stringList(v, 100) {
			if addr, _, ok := strings.Cut(r, ": "); ok && strings.Contains(addr, "@") {
				b.ti.refused = append(b.ti.refused, addr)
			}
		}
		b.detailAttr("", slog.Attr{Key: a.Key, Value: v})
	case "symbols":
		b.ti.symbols = stringList(v, 200)
	case "size":
		if v.Kind() == slog.KindInt64 {
			b.ti.size = v.Int64()
		}
	case "score":
		switch v.Kind() {
		case slog.KindFloat64:
			b.ti.score = v.Float64()
		case slog.KindInt64:
			b.ti.score = float64(v.Int64())
		}
	case "outcome":
		b.e.Outcome = clip(valueString(v), 64)
	case "action":
		b.ti.action = clip(valueString(v), 64)
	case "reason":
		b.ti.reason = s()
	case "reply":
		b.e.Reply = s()
	case "rcpt":
		b.e.Rcpt = s()
	case "host":
		b.e.Host = s()
	case "domain":
		b.e.Domain = clip(normDomain(valueString(v)), 255)
	default:
		b.detailAttr("", slog.Attr{Key: a.Key, Value: v})
	}
}

func (b *builder) detailAttr(prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	key := a.Key
	if prefix != "" {
		key = prefix + "." + key
	}
	if v.Kind() == slog.KindGroup {
		for _, g := range v.Group() {
			b.detailAttr(key, g)
		}
		return
	}
	if b.detail.Len() >= maxDetail {
		return
	}
	if b.detail.Len() > 0 {
		b.detail.WriteByte(' ')
	}
	b.detail.WriteString(key)
	b.detail.WriteByte('=')
	b.detail.WriteString(strconv.Quote(clip(valueString(v), 256)))
}

// finish classifies the event; nil means it is not about a message.
func (b *builder) finish() *Event {
	e := b.e
	e.Detail = clip(b.detail.String(), maxDetail)
	if e.Msg == TxnMessage {
		e.Kind = KindTxn
		b.ti.outcome = e.Outcome
		b.ti.reply = e.Reply
		raw := b.ti.action // the policy's action, if a decision was made
		b.ti.action = normAction(e.Outcome, e.Reply)
		if raw != "" && b.detail.Len() < maxDetail {
			e.Detail = strings.TrimSpace(e.Detail + " policy_action=" + strconv.Quote(raw))
		}
		if e.QueueID == "" {
			if b.ti.connID == "" {
				return nil
			}
			e.QueueID = b.ti.connID + "." + strconv.FormatInt(e.Time.UnixMicro(), 36)
		}
		ti := b.ti
		e.txn = &ti
		return e
	}
	if e.QueueID == "" {
		return nil
	}
	if rest, ok := strings.CutPrefix(e.Msg, "queue: "); ok && e.Rcpt != "" {
		switch rest {
		case "delivered", "deferred", "failed", "expired":
			e.Kind = KindDelivery
			e.Outcome = rest
		}
	}
	if e.Domain == "" && e.Rcpt != "" {
		e.Domain = DomainOf(e.Rcpt)
	}
	return e
}

// normAction maps the SMTP server's transaction outcome to the actions
// statistics count: delivered, tagged, quarantined, rejected, tempfailed,
// abandoned.
func normAction(outcome, reply string) string {
	switch outcome {
	case "queued":
		return "delivered"
	case "tagged", "quarantined", "rejected", "tempfailed":
		return outcome
	case "dropped":
		return "rejected"
	case "no_data":
		switch {
		case strings.HasPrefix(reply, "5"):
			return "rejected"
		case strings.HasPrefix(reply, "4"):
			return "tempfailed"
		}
		return "abandoned"
	}
	return outcome
}

// reasonKey reduces a decision's reason (or, without one, the reply) to a
// short key that groups well: the deciding check ("dnsbl"), "score", or the
// enhanced status code of the reply ("5.1.1").
func reasonKey(action, reason, reply string) string {
	switch action {
	case "rejected", "tempfailed", "quarantined", "tagged":
	default:
		return ""
	}
	if strings.HasPrefix(reason, "score ") {
		return "score"
	}
	if i := strings.Index(reason, ":"); i > 0 && i <= 40 && !strings.ContainsAny(reason[:i], " \t") {
		return reason[:i]
	}
	if reason != "" && len(reason) <= 40 {
		return reason
	}
	f := strings.Fields(reply)
	if len(f) >= 2 && len(f[1]) >= 5 && f[1][1] == '.' {
		return f[1]
	}
	if len(f) >= 1 {
		return f[0]
	}
	return ""
}

func valueString(v slog.Value) string {
	switch v.Kind() {
	case slog.KindString:
		return v.String()
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return x.Error()
		case fmt.Stringer:
			return x.String()
		case []string:
			return strings.Join(x, ",")
		}
	}
	return v.String()
}

func stringList(v slog.Value, max int) []string {
	var in []string
	if v.Kind() == slog.KindAny {
		switch x := v.Any().(type) {
		case []string:
			in = x
		case []any:
			for _, y := range x {
				in = append(in, fmt.Sprint(y))
			}
		}
	}
	if in == nil {
		if s := valueString(v); s != "" {
			in = strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
		}
	}
	if len(in) > max {
		in = in[:max]
	}
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = clip(s, 512)
	}
	return out
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Do not split a UTF-8 sequence.
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}
