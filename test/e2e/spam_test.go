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

// TestReports: people forward spam to spam-report@ their domain. A report
// from a user of the domain, sent from the domain's own servers (SPF
// pass), teaches the classifier (250, not relayed); one from a stranger
// or a forged sender is refused with 550 5.7.1; a report must travel
// alone (452 4.5.3 for a second recipient).
func TestReports(t *testing.T) {
	backend := startSink(t, sink.Config{})
	g := newGateway(t, "  bayes:\n    reports:\n      spam: spam-report\n      ham: ham-report\ndomains:\n"+
		fmt.Sprintf("  - name: example.test\n    backends: [%q]\n    recipients:\n      mode: table\n      list: [alice]\n", backend.Addr()))
	g.DNS.Add(t, `example.test. 300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"`)
	g.Start()
	orig := "From: Prize Dept <win@lottery.test>\r\nSubject: You have won\r\nDate: Mon, 23 Nov 2026 09:00:00 +0000\r\n\r\nClaim your prize of one million now.\r\n"
	report := "From: alice@example.test\r\nTo: spam-report@example.test\r\nSubject: Fwd: You have won\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nthis got through\r\n" +
		"--b\r\nContent-Type: message/rfc822\r\n\r\n" + orig + "--b--\r\n"
	reply, err := send(g.SMTP, "alice@example.test", []string{"spam-report@example.test"}, report)
	if err != nil || !strings.Contains(reply, "learned as spam") {
		t.Fatalf("report from alice: %q, %v", reply, err)
	}
	var se *smtp.SMTPError
	if _, err := send(g.SMTP, "mallory@example.test", []string{"spam-report@example.test"}, report); !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
		t.Fatalf("report from a non-user: %v, want 550 5.7.1", err)
	}
	if _, err := send(g.SMTP, "alice@sender.test", []string{"ham-report@example.test"}, report); !errors.As(err, &se) || se.Code != 550 {
		t.Fatalf("report from another domain: %v, want 550", err)
	}
	if _, err := send(g.SMTP, "alice@example.test", []string{"spam-report@example.test", "alice@example.test"}, report); !errors.As(err, &se) || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 5, 3}) {
		t.Fatalf("report with a second recipient: %v, want 452 4.5.3", err)
	}
	out, _ := runMoat(t, orig, "classify", "--config", g.cfgPath, "--user", "alice@example.test")
	if !strings.Contains(out, "0 ham, 1 spam learned") {
		t.Fatalf("the report did not teach the model:\n%s", out)
	}
	time.Sleep(200 * time.Millisecond)
	if backend.Count() != 0 {
		t.Fatal("a report was relayed to the backend")
	}
}

// TestUserThresholds: a recipient's own tag threshold (set with moat
// quarantine thresholds) tags mail (with the domain's subject tag)
// the domain's threshold lets through;
// another recipient of the same domain keeps the domain's; and a
// transaction mixing the two defers the second with 452 4.5.3, so each
// gets its own decision.
func TestUserThresholds(t *testing.T) {
	backend := startSink(t, sink.Config{})
	g := newGateway(t, "domains:\n"+domainYAML("example.test", backend.Addr(), "    policy:\n      subject_tag: \"[JUNK]\"\n"))
	if out, code := g.moat("quarantine", "--config", g.cfgPath, "thresholds", "alice@example.test", "--tag", "0.5"); code != 0 || !strings.Contains(out, "tag=0.5") {
		t.Fatalf("setting alice's threshold: exit %d: %s", code, out)
	}
	g.Start()
	// No Date field: NO_DATE, 1 point. Under alice's 0.5, not under the domain's 5.
	msg := func(to string) string {
		return "From: someone@sender.test\r\nTo: " + to + "\r\nSubject: hello\r\nMessage-ID: <t1@sender.test>\r\n\r\nhello there\r\n"
	}
	for _, to := range []string{"alice@example.test", "bob@example.test"} {
		if _, err := send(g.SMTP, "someone@sender.test", []string{to}, msg(to)); err != nil {
			t.Fatalf("to %s: %v", to, err)
		}
	}
	var se *smtp.SMTPError
	_, err := send(g.SMTP, "someone@sender.test", []string{"alice@example.test", "bob@example.test"}, msg("alice@example.test"))
	if !errors.As(err, &se) || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 5, 3}) {
		t.Fatalf("mixed transaction: %v, want bob deferred with 452 4.5.3", err)
	}
	if !backend.Wait(2, 20*time.Second) {
		t.Fatalf("%d of 2 messages delivered", backend.Count())
	}
	tagged := map[string]bool{}
	for _, f := range backend.Messages() {
		env, raw, err := sink.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, rc := range env.Rcpts {
			tagged[rc] = bytes.Contains(raw, []byte("Subject: [JUNK] hello")) && bytes.Contains(raw, []byte("X-Spam-Status: Yes, score=1.0 required=0.5"))
		}
	}
	if !tagged["alice@example.test"] || tagged["bob@example.test"] || len(tagged) != 2 {
		t.Fatalf("tagged per recipient: %v; want alice only", tagged)
	}
}
