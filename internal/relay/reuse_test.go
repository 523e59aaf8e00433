package relay

import (
	"context"
	"strings"
	"testing"

	"moat.dev/moat/internal/sink"
)

// TestReuseWithoutRSET: a completed transaction leaves the backend session
// clean, so the next message on the reused connection goes without RSET
// (one round trip less per message); DATA is pipelined with MAIL and RCPT.
func TestReuseWithoutRSET(t *testing.T) {
	rec := startRecorder(t)
	r := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(rec.ln.Addr().String())}}})
	for range 3 {
		wantResults(t, r.Deliver(context.Background(), delivery(original, "bob@example.com")), map[string]string{"bob@example.com": "250"})
	}
	rec.mu.Lock()
	cmds := strings.Join(rec.cmds, "")
	rec.mu.Unlock()
	if n := strings.Count(cmds, "EHLO "); n != 1 {
		t.Fatalf("%d EHLO: connection not reused:\n%s", n, cmds)
	}
	if strings.Contains(cmds, "RSET") {
		t.Fatalf("RSET after completed transactions:\n%s", cmds)
	}
	if n := strings.Count(cmds, "DATA\r\n"); n != 3 || len(rec.data) != 3 {
		t.Fatalf("%d DATA commands, %d messages:\n%s", n, len(rec.data), cmds)
	}
}

// TestRSETAfterRefusedRecipients: a transaction that ends without a
// message (every recipient refused) is reset before the connection is
// reused, and the next message is delivered on it.
func TestRSETAfterRefusedRecipients(t *testing.T) {
	s := startSink(t, sink.Config{RejectRcpt: "^nobody@"})
	r := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(s.Addr())}}})
	wantResults(t, r.Deliver(context.Background(), delivery(original, "nobody@example.com")), map[string]string{"nobody@example.com": "550 5.1.1"})
	wantResults(t, r.Deliver(context.Background(), delivery(original, "bob@example.com")), map[string]string{"bob@example.com": "250"})
	if s.Count() != 1 {
		t.Fatalf("backend has %d messages, want 1", s.Count())
	}
	if len(r.pools) != 1 {
		t.Fatalf("%d pools", len(r.pools))
	}
	for _, p := range r.pools {
		if len(p.idle) != 1 {
			t.Fatalf("%d idle connections, want the one reused", len(p.idle))
		}
	}
}
