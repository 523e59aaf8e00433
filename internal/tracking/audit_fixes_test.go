package tracking

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestIDNRecipients: a recipient written with U-labels (SMTPUTF8) belongs
// to the customer domain stored with A-labels, for scoped searches and
// statistics, even when no delivery event (which carries the queue's
// A-label domain) arrives in the same batch; a recipient search finds both
// spellings.
func TestIDNRecipients(t *testing.T) {
	ctx := context.Background()
	db, driver := openSQLite(t)
	tr := newTracker(t, db, driver, nil)
	tr.Start(ctx)
	log := slog.New(Handler(slog.DiscardHandler, tr))
	log.Info(TxnMessage, "conn_id", "c1", "queue_id", "QUNI", "from", "a@sender.test",
		"rcpts", []string{"info@Bücher.example"}, "outcome", "rejected", "reply", "550 5.7.1 Message refused by policy",
		"action", "reject", "reason", "score 1000 >= reject 15")
	flush(t, tr)
	log.Info(TxnMessage, "conn_id", "c2", "queue_id", "QASCII", "from", "a@sender.test",
		"rcpts", []string{"info@xn--bcher-kva.example"}, "outcome", "queued", "reply", "250 2.0.0 Ok")
	flush(t, tr)

	ms, err := tr.Search(ctx, Query{Scoped: true, Domains: []string{"xn--bcher-kva.example"}})
	if err != nil || len(ms) != 2 {
		t.Fatalf("scoped search: %d messages, %v", len(ms), err)
	}
	st, err := tr.Stats(ctx, StatsQuery{Since: time.Now().Add(-time.Hour), Bucket: time.Hour,
		Scoped: true, Domains: []string{"xn--bcher-kva.example"}})
	if err != nil || st.Totals["rejected"] != 1 || st.Totals["delivered"] != 1 {
		t.Fatalf("scoped stats: %+v, %v", st, err)
	}
	if rs := st.Reasons["xn--bcher-kva.example"]; len(rs) != 1 || rs[0].Reason != "score" {
		t.Errorf("reasons = %+v", st.Reasons)
	}
	for _, needle := range []string{"bücher", "xn--bcher-kva", "INFO@BÜCHER.EXAMPLE", "info@xn--bcher-kva.example"} {
		ms, err := tr.Search(ctx, Query{Rcpt: needle})
		if err != nil || len(ms) != 2 {
			t.Errorf("rcpt %q: %d messages, %v", needle, len(ms), err)
		}
	}
	for in, want := range map[string]string{"bücher.example": "xn--bcher-kva.example", "Example.COM.": "example.com", "": ""} {
		if got := normDomain(in); got != want {
			t.Errorf("normDomain(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestOtherLinesKeepTxnKeys: attributes named like the transaction line's
// (action, score, rcpts, ...) on other lines stay in the event's detail.
func TestOtherLinesKeepTxnKeys(t *testing.T) {
	ctx := context.Background()
	db, driver := openSQLite(t)
	tr := newTracker(t, db, driver, nil)
	tr.Start(ctx)
	log := slog.New(Handler(slog.DiscardHandler, tr))
	log.Info("queue: DSN queued", "queue_id", "QDSN", "dsn_id", "QNEW", "action", "failed", "to", "a@sender.test", "rcpts", 1)
	log.Info("quarantined", "queue_id", "QDSN", "quarantine_id", "x1", "score", 11.0)
	flush(t, tr)
	evs, err := tr.Events(ctx, "QDSN")
	if err != nil || len(evs) != 2 {
		t.Fatalf("events: %+v, %v", evs, err)
	}
	if d := evs[0].Detail; !strings.Contains(d, `action="failed"`) || !strings.Contains(d, `rcpts="1"`) || !strings.Contains(d, `dsn_id="QNEW"`) {
		t.Errorf("DSN detail = %s", d)
	}
	if d := evs[1].Detail; !strings.Contains(d, `score="11"`) {
		t.Errorf("quarantined detail = %s", d)
	}
}

// TestQueueIDAnyCase: a queue ID typed in lower case (or a synthetic one in
// upper case) is found, with its events.
func TestQueueIDAnyCase(t *testing.T) {
	ctx := context.Background()
	db, driver := openSQLite(t)
	tr := newTracker(t, db, driver, nil)
	tr.Start(ctx)
	log := slog.New(Handler(slog.DiscardHandler, tr))
	log.Info(TxnMessage, "conn_id", "c1", "queue_id", "1M852KATFD34GTS9", "rcpts", []string{"a@example.com"}, "outcome", "queued")
	log.Info("queue: delivered", "queue_id", "1M852KATFD34GTS9", "rcpt", "a@example.com", "reply", "250 ok")
	flush(t, tr)
	for _, id := range []string{"1M852KATFD34GTS9", "1m852katfd34gts9", "1m852KATFD34gts9"} {
		m, err := tr.Message(ctx, id, false, nil)
		if err != nil || m.QueueID != "1M852KATFD34GTS9" {
			t.Errorf("Message(%q) = %v, %v", id, m, err)
			continue
		}
		if evs, err := tr.Events(ctx, id); err != nil || len(evs) != 2 {
			t.Errorf("Events(%q) = %d, %v", id, len(evs), err)
		}
	}
}

// TestDomainOf: the API and the web UI scope tracked messages with
// DomainOf, so an IDN recipient's domain compares as the customer
// domain is stored (A-labels, lower case).
func TestDomainOf(t *testing.T) {
	for addr, want := range map[string]string{
		"info@Bücher.example":           "xn--bcher-kva.example",
		"<Bob@Example.COM>":             "example.com",
		" carol@xn--bcher-kva.example ": "xn--bcher-kva.example",
		"no-at-sign":                    "",
	} {
		if got := DomainOf(addr); got != want {
			t.Errorf("DomainOf(%q) = %q, want %q", addr, got, want)
		}
	}
}
