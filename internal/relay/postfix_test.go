package relay

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"moat.dev/moat/internal/passmark"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/testutil/postfixtest"
)

// TestPostfixBackend relays to a real Postfix that trusts us for XCLIENT:
// the message arrives byte-exact (Postfix stores LF line endings), the pass
// mark verifies, Postfix's own Received field names the original client,
// and an unknown mailbox is a permanent per-recipient failure.
func TestPostfixBackend(t *testing.T) {
	pf := postfixtest.Start(t, postfixtest.Options{
		Recipients:   []string{"bob@example.com", "carol@example.com"},
		XClientHosts: []string{"127.0.0.1"},
	})
	r := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(pf.Addr)}, PassSecret: secret}})
	res := r.Deliver(context.Background(), delivery(original, "bob@example.com", "nobody@example.com"))
	wantResults(t, res, map[string]string{"bob@example.com": "250 2.0.0", "nobody@example.com": "550 5.1.1"})

	// A second message from another client on the same (reused)
	// connection: XCLIENT must be applied afresh.
	d2 := delivery(original, "carol@example.com")
	d2.Env.ID = "Q2"
	d2.Env.Client = queue.ClientInfo{IP: "198.51.100.9", Helo: "other.example", Proto: "ESMTP"}
	wantResults(t, r.Deliver(context.Background(), d2), map[string]string{"carol@example.com": "250 2.0.0"})

	pf.WaitMessages(t, 2, 30*time.Second)
	check := func(rcpt, wantReceived string) {
		t.Helper()
		files := pf.Messages(rcpt)
		if len(files) != 1 {
			t.Fatalf("%s: %d messages", rcpt, len(files))
		}
		raw, err := os.ReadFile(files[0])
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(raw), wantReceived) {
			t.Fatalf("%s: Postfix's Received does not name the original client (%q):\n%s", rcpt, wantReceived, raw)
		}
		crlf := bytes.ReplaceAll(raw, []byte("\n"), []byte("\r\n"))
		if _, err := passmark.VerifyMessage(secret, crlf, []string{rcpt}, passmark.Options{}); err != nil {
			t.Fatalf("%s: pass mark: %v\n%s", rcpt, err, raw)
		}
		if _, err := passmark.VerifyMessage(secret, crlf, []string{"mallory@example.com"}, passmark.Options{}); err == nil {
			t.Fatalf("%s: pass mark verified for another recipient", rcpt)
		}
		wantTail := strings.ReplaceAll(prepend+original, "\r\n", "\n")
		if !strings.HasSuffix(string(raw), wantTail) {
			t.Fatalf("%s: message not byte-exact:\n%s", rcpt, raw)
		}
	}
	check("bob@example.com", "Received: from mx.sender.example (mail.sender.example [192.0.2.7])\n\tby backend.moat.test (Postfix)")
	check("carol@example.com", "Received: from other.example (unknown [198.51.100.9])\n\tby backend.moat.test (Postfix)")
}

func TestPostfixXForward(t *testing.T) {
	pf := postfixtest.Start(t, postfixtest.Options{Recipients: []string{"bob"}, XForwardHosts: []string{"127.0.0.1"}})
	r := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(pf.Addr)}}})
	wantResults(t, r.Deliver(context.Background(), delivery(original, "bob@example.com")), map[string]string{"bob@example.com": "250"})
	pf.WaitMessages(t, 1, 30*time.Second)
	// XFORWARD changes what Postfix logs (the client= of the queue file).
	if log := pf.Log(); !strings.Contains(log, "client=mail.sender.example[192.0.2.7]") {
		t.Fatalf("Postfix did not log the forwarded client:\n%s", log)
	}
}

func TestPostfixCallout(t *testing.T) {
	pf := postfixtest.Start(t, postfixtest.Options{Recipients: []string{"bob"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	route := &Route{Backends: []Backend{{Host: "127.0.0.1", Port: 1}, backendOf(pf.Addr)}} // first one dead
	rep, err := Callout(ctx, route, "", "bob@example.com")
	if err != nil || rep.Code != 250 {
		t.Fatalf("known recipient: %v %v", rep, err)
	}
	rep, err = Callout(ctx, route, "", "nobody@example.com")
	if err != nil || rep.Code != 550 || rep.Enhanced != [3]int{5, 1, 1} {
		t.Fatalf("unknown recipient: %v %v", rep, err)
	}
	if _, err := Callout(ctx, &Route{Backends: []Backend{{Host: "127.0.0.1", Port: 1}}}, "", "bob@example.com"); err == nil {
		t.Fatal("no backend answered but no error")
	}
	if log := pf.Log(); strings.Contains(log, "status=sent") {
		t.Fatalf("a callout delivered mail:\n%s", log)
	}
}
