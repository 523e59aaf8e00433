package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"moat.dev/moat/internal/sink"
)

const gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// TestGTUBE: by default GTUBE is refused at the end of DATA with 550 5.7.1
// (no bounce); a domain whose policy only tags gets it delivered with
// [SPAM] and SpamAssassin-compatible fields; ham arrives untouched but for
// Moat's fields.
func TestGTUBE(t *testing.T) {
	strict := startSink(t, sink.Config{})
	lenient := startSink(t, sink.Config{})
	g := newGateway(t, "domains:\n"+domainYAML("example.test", strict.Addr(), "")+
		domainYAML("tagonly.test", lenient.Addr(), "    policy:\n      quarantine_score: 2000\n      reject_score: 3000\n"))
	g.Start()
	msg := "From: s@sender.test\r\nTo: alice@example.test\r\nSubject: test\r\n\r\n" + gtube + "\r\n"
	_, err := send(g.SMTP, "s@sender.test", []string{"alice@example.test"}, msg)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
		t.Fatalf("GTUBE to a default domain: got %v, want 550 5.7.1", err)
	}
	if _, err := send(g.SMTP, "s@sender.test", []string{"bob@tagonly.test"}, strings.Replace(msg, "alice@example.test", "bob@tagonly.test", 1)); err != nil {
		t.Fatalf("GTUBE to a tag-only domain: %v", err)
	}
	if !lenient.Wait(1, 20*time.Second) {
		t.Fatal("tagged GTUBE not delivered")
	}
	_, raw, _ := sink.ReadFile(lenient.Messages()[0])
	for _, want := range []string{"Subject: [SPAM] test", "X-Spam-Flag: YES", "X-Spam-Status: Yes, score=", "tests=", "GTUBE"} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("tagged message lacks %q:\n%s", want, raw)
		}
	}
	ham := fmt.Sprintf(testMsg, "ham1", "see you at lunch")
	if _, err := send(g.SMTP, "s@sender.test", []string{"alice@example.test"}, ham); err != nil {
		t.Fatal(err)
	}
	if !strict.Wait(1, 20*time.Second) {
		t.Fatal("ham not delivered")
	}
	_, raw, _ = sink.ReadFile(strict.Messages()[0])
	if !bytes.HasSuffix(raw, []byte(ham)) || bytes.Contains(raw, []byte("[SPAM]")) {
		t.Fatalf("ham altered:\n%s", raw)
	}
}

var quarantineID = regexp.MustCompile(`(?m)^([0-9A-Za-z_-]+-\d+)\s`)

// TestQuarantineRelease: a message scoring into the quarantine is held
// (250), listed by `moat quarantine list`, and `release` delivers it
// through the queue to the backend.
func TestQuarantineRelease(t *testing.T) {
	backend := startSink(t, sink.Config{})
	g := newGateway(t, "domains:\n"+domainYAML("example.test", backend.Addr(),
		"    policy:\n      quarantine_score: 900\n      reject_score: 3000\n"))
	g.Start()
	msg := "From: s@sender.test\r\nTo: alice@example.test\r\nSubject: held for review\r\n\r\n" + gtube + "\r\n"
	if _, err := send(g.SMTP, "s@sender.test", []string{"alice@example.test"}, msg); err != nil {
		t.Fatalf("quarantined mail must get 250: %v", err)
	}
	var id, out string
	defer func() {
		if t.Failed() {
			t.Logf("last quarantine list:\n%s", out)
		}
	}()
	waitFor(t, "the message in the quarantine", 10*time.Second, func() bool {
		out, _ = g.moat("quarantine", "--config", g.cfgPath, "list")
		if m := quarantineID.FindStringSubmatch(out); m != nil && strings.Contains(out, "held for review") {
			id = m[1]
			return true
		}
		return false
	})
	time.Sleep(300 * time.Millisecond)
	if backend.Count() != 0 {
		t.Fatal("quarantined message was delivered")
	}
	if out, code := g.moat("quarantine", "--config", g.cfgPath, "release", id); code != 0 {
		t.Fatalf("release %s: exit %d: %s", id, code, out)
	}
	if !backend.Wait(1, 20*time.Second) {
		t.Fatal("released message not delivered")
	}
	_, raw, _ := sink.ReadFile(backend.Messages()[0])
	if !bytes.HasSuffix(raw, []byte(msg[strings.Index(msg, "\r\n\r\n"):])) {
		t.Fatalf("released message body changed:\n%s", raw)
	}
}
