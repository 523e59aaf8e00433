package postfixtest

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

const msg = "From: a@sender.example\r\nTo: alice@example.com\r\nSubject: hi\r\n\r\nhello\r\n"

func TestDeliverRejectAndTLS(t *testing.T) {
	pf := Start(t, Options{
		Domains:    []string{"example.com", "example.org"},
		Recipients: []string{"alice@example.com", "bob"},
		TLS:        true,
	})
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(pf.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(pem)
	c, err := smtp.DialStartTLS(pf.Addr, &tls.Config{RootCAs: pool, ServerName: pf.Hostname})
	if err != nil {
		t.Fatalf("STARTTLS with the instance's certificate: %v", err)
	}
	defer c.Close()
	if err := c.Mail("a@sender.example", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("nobody@example.com", nil); err == nil {
		t.Fatal("unknown recipient accepted")
	} else {
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
			t.Fatalf("unknown recipient: got %v, want 550 5.1.1", err)
		}
	}
	if err := c.Rcpt("someone@elsewhere.example", nil); err == nil {
		t.Fatal("relay to a foreign domain accepted")
	}
	for _, r := range []string{"alice@example.com", "bob@example.org"} {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatalf("RCPT %s: %v", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(msg))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	c.Quit()

	pf.WaitMessages(t, 2, 30*time.Second)
	for _, r := range []string{"alice@example.com", "bob@example.org"} {
		files := pf.Messages(r)
		if len(files) != 1 {
			t.Fatalf("%s: %d messages, want 1", r, len(files))
		}
		b, _ := os.ReadFile(files[0])
		if !strings.Contains(string(b), "hello") || !strings.Contains(string(b), "by backend.moat.test (Postfix) with ESMTPS") {
			t.Fatalf("%s: unexpected message:\n%s", r, b)
		}
	}
}

func TestXClientAndParallelInstances(t *testing.T) {
	a := Start(t, Options{Recipients: []string{"alice"}, XClientHosts: []string{"127.0.0.1"}})
	b := Start(t, Options{Recipients: []string{"alice"}})
	if a.Addr == b.Addr || a.Dir == b.Dir {
		t.Fatal("instances share an address or directory")
	}
	for _, in := range []*Instance{a, b} {
		c, err := smtp.Dial(in.Addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Hello("client.test"); err != nil {
			t.Fatal(err)
		}
		ok, _ := c.Extension("XCLIENT")
		if ok != (in == a) {
			t.Fatalf("%s: XCLIENT advertised=%v", in.Addr, ok)
		}
		if err := c.SendMail("x@sender.example", []string{"alice@example.com"}, strings.NewReader(msg)); err != nil {
			t.Fatal(err)
		}
		c.Close()
		got := in.WaitMessages(t, 1, 30*time.Second)
		if len(got) != 1 || got[0] != in.Messages("alice")[0] {
			t.Fatalf("%s: messages %v", in.Addr, got)
		}
	}
	a.Stop()
	if _, err := smtp.Dial(a.Addr); err == nil {
		t.Fatal("instance still answers after Stop")
	}
}
