package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"moat.dev/moat/internal/sink"
	"moat.dev/moat/internal/testutil/clamdtest"
	"moat.dev/moat/internal/testutil/postfixtest"
)

// TestPostfixBackendWithMilter: a real Postfix is the customer's backend,
// running `moat milter`. Mail relayed through Moat arrives byte-exact with
// a pass mark that the milter accepts; the same message sent straight to
// the backend (a spammer using the low-priority MX) is refused.
func TestPostfixBackendWithMilter(t *testing.T) {
	requireTool(t, "postfix")
	milterAddr := freeAddr(t)
	pf := postfixtest.Start(t, postfixtest.Options{
		Domains:       []string{"example.test"},
		Recipients:    []string{"alice"},
		Milter:        "inet:" + milterAddr,
		XClientHosts:  []string{"127.0.0.1"},
		XForwardHosts: []string{"127.0.0.1"},
	})
	g := newGateway(t, "domains:\n"+domainYAML("example.test", pf.Addr, ""))
	g.Start()
	secret, code := g.moat("pass-secret", "--config", g.cfgPath, "example.test")
	if code != 0 {
		t.Fatalf("pass-secret: %s", secret)
	}
	secretFile := filepath.Join(g.dir, "example.test.secret")
	os.WriteFile(secretFile, []byte(secret), 0o600)
	milter := exec.Command(moatBin, "milter", "--listen", milterAddr, "--secret-file", secretFile, "--domain", "example.test")
	mlog := &syncBuffer{}
	milter.Stdout, milter.Stderr = mlog, mlog
	if err := milter.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		milter.Process.Kill()
		milter.Wait()
		if t.Failed() {
			t.Logf("milter log:\n%s", mlog)
		}
	}()
	waitFor(t, "the milter to listen", 10*time.Second, func() bool {
		c, err := smtpDialRaw(milterAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	msg := fmt.Sprintf(testMsg, "pf1", "through moat")
	if _, err := send(g.SMTP, "someone@sender.test", []string{"alice@example.test"}, msg); err != nil {
		t.Fatal(err)
	}
	got := pf.WaitMessages(t, 1, 30*time.Second)
	raw, err := os.ReadFile(got[0])
	if err != nil {
		t.Fatal(err)
	}
	// Postfix (a local client to it) adds a Date field; the body and the
	// fields sent must arrive unchanged.
	lf := bytes.ReplaceAll(raw, []byte("\r\n"), []byte("\n"))
	sentHead, sentBody, _ := strings.Cut(strings.ReplaceAll(msg, "\r\n", "\n"), "\n\n")
	if !bytes.HasSuffix(lf, []byte("\n\n"+sentBody)) || !bytes.Contains(lf, []byte(sentHead)) {
		t.Fatalf("message changed on the way:\n%s", raw)
	}
	if !bytes.Contains(raw, []byte("X-Moat-Pass:")) {
		t.Fatalf("no pass mark at the backend:\n%s", raw)
	}
	// The backend's own Received names the real client (XCLIENT).
	if !bytes.Contains(raw, []byte("client.sender.test")) {
		t.Errorf("backend does not see the original HELO:\n%s", raw)
	}

	// Straight to the backend, bypassing Moat: refused by the milter.
	_, err = send(pf.Addr, "spammer@sender.test", []string{"alice@example.test"}, fmt.Sprintf(testMsg, "pf2", "bypass"))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 {
		t.Fatalf("direct delivery to the backend: got %v, want 550", err)
	}
	time.Sleep(500 * time.Millisecond)
	if n := len(pf.AllMessages()); n != 1 {
		t.Fatalf("backend has %d messages, want 1", n)
	}
}

// TestVirusRefusedInSession: an infected message is refused at the end of
// DATA with 554 5.7.1 naming the signature, and never reaches the backend.
func TestVirusRefusedInSession(t *testing.T) {
	backend := startSink(t, sink.Config{})
	g := newGateway(t, "domains:\n"+domainYAML("example.test", backend.Addr(), ""))
	g.Start()
	body := "From: x@sender.test\r\nTo: alice@example.test\r\nSubject: invoice\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/octet-stream; name=eicar.com.txt\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		b64lines(clamdtest.EICAR) + "--b--\r\n"
	_, err := send(g.SMTP, "x@sender.test", []string{"alice@example.test"}, body)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 554 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) || !strings.Contains(se.Message, "Eicar") {
		t.Fatalf("got %v, want 554 5.7.1 naming the signature", err)
	}
	// A clean one passes, with the scanner's header.
	if _, err := send(g.SMTP, "x@sender.test", []string{"alice@example.test"}, fmt.Sprintf(testMsg, "v2", "clean")); err != nil {
		t.Fatal(err)
	}
	if !backend.Wait(1, 20*time.Second) {
		t.Fatal("clean message not delivered")
	}
	time.Sleep(300 * time.Millisecond)
	if backend.Count() != 1 {
		t.Fatalf("backend got %d messages; the infected one must never arrive", backend.Count())
	}
	_, raw, _ := sink.ReadFile(backend.Messages()[0])
	if !bytes.Contains(raw, []byte("X-Moat-Virus: clean")) {
		t.Errorf("no X-Moat-Virus header:\n%s", raw)
	}
}

// TestRecipientCalloutToPostfix: a domain verified by callout asks the real
// backend at RCPT: an unknown user is refused with 550 5.1.1 during the
// session (no backscatter), a known one is accepted; with the backend down
// the answer is 450 4.1.1, never a wrong 550.
func TestRecipientCalloutToPostfix(t *testing.T) {
	requireTool(t, "postfix")
	pf := postfixtest.Start(t, postfixtest.Options{Domains: []string{"example.test"}, Recipients: []string{"alice"}})
	g := newGateway(t, fmt.Sprintf("domains:\n  - name: example.test\n    backends: [%q]\n    recipients:\n      mode: callout\n", pf.Addr))
	g.Start()
	_, err := send(g.SMTP, "s@sender.test", []string{"nobody@example.test"}, "Subject: x\r\n\r\nx\r\n")
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
		t.Fatalf("unknown user: got %v, want 550 5.1.1", err)
	}
	if _, err := send(g.SMTP, "s@sender.test", []string{"alice@example.test"}, fmt.Sprintf(testMsg, "co1", "x")); err != nil {
		t.Fatalf("known user: %v", err)
	}
	pf.WaitMessages(t, 1, 30*time.Second)
	pf.Stop()
	_, err = send(g.SMTP, "s@sender.test", []string{"carol@example.test"}, "Subject: x\r\n\r\nx\r\n")
	if !errors.As(err, &se) || se.Code != 450 {
		t.Fatalf("backend down: got %v, want 450 4.1.1", err)
	}
}
