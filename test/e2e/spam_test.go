package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// TestAutolearn: the classifier learns by itself from the mail flow. A
// clean message (score 0 from every other layer) is a ham lesson and says
// autolearn=ham in X-Spam-Status; a message a local rule scores 16 is a
// spam lesson, refused with 550 5.7.1 all the same; GTUBE is never
// learned. The site model's counts are read back with moat classify.
func TestAutolearn(t *testing.T) {
	backend := startSink(t, sink.Config{})
	dir := t.TempDir()
	local := filepath.Join(dir, "local.rules")
	if err := os.WriteFile(local, []byte("body MOAT_E2E_BLATANT /blatant-e2e-marker/\nscore MOAT_E2E_BLATANT 16\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	g := newGateway(t, fmt.Sprintf("  rules:\n    local_files: [%q]\ndomains:\n", local)+domainYAML("example.test", backend.Addr(), ""))
	g.Start()
	msg := func(id, subject, body string) string {
		return "From: Sender <someone@sender.test>\r\nTo: alice@example.test\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n" +
			"Message-ID: <" + id + "@sender.test>\r\nSubject: " + subject + "\r\n\r\n" + body + "\r\n"
	}
	ham := msg("al1", "lunch on friday", "Shall we meet at noon at the usual place?")
	if _, err := send(g.SMTP, "someone@sender.test", []string{"alice@example.test"}, ham); err != nil {
		t.Fatal(err)
	}
	if !backend.Wait(1, 20*time.Second) {
		t.Fatal("ham not delivered")
	}
	_, raw, _ := sink.ReadFile(backend.Messages()[0])
	if !regexp.MustCompile(`X-Spam-Status: No, score=0\.0 required=5\.0 tests=[^\r]*\s+autolearn=ham`).Match(raw) {
		t.Fatalf("clean message not autolearned as ham:\n%s", raw)
	}
	spam := msg("al2", "offer", "blatant-e2e-marker and more")
	var se *smtp.SMTPError
	if _, err := send(g.SMTP, "someone@sender.test", []string{"alice@example.test"}, spam); !errors.As(err, &se) || se.Code != 550 {
		t.Fatalf("score 16: got %v, want 550", err)
	}
	if _, err := send(g.SMTP, "someone@sender.test", []string{"alice@example.test"}, msg("al3", "test", gtube)); !errors.As(err, &se) || se.Code != 550 {
		t.Fatalf("GTUBE: got %v, want 550", err)
	}
	var out string
	waitFor(t, "the site model to hold 1 ham and 1 spam", 10*time.Second, func() bool {
		out, _ = runMoat(t, ham, "classify", "--config", g.cfgPath)
		return strings.Contains(out, "(1 ham, 1 spam learned)")
	})
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
