package sink

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.Maildir == "" && !cfg.NoStore {
		cfg.Maildir = t.TempDir()
	}
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

const body = "From: a@example.net\r\nSubject: test\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nnot the end\r\nlast line\r\n"

func TestStoreByteExact(t *testing.T) {
	s := start(t, Config{})
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 2; i++ { // two messages on one connection
		if err := c.SendMail("a@example.net", []string{"x@example.com", "y@example.com"}, strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
	}
	if s.Count() != 2 || s.Accepts() != 1 {
		t.Fatalf("count=%d accepts=%d, want 2 and 1", s.Count(), s.Accepts())
	}
	for _, p := range s.Messages() {
		env, msg, err := ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(msg) != body {
			t.Fatalf("stored message differs:\n%q\nwant\n%q", msg, body)
		}
		if env.From != "a@example.net" || strings.Join(env.Rcpts, ",") != "x@example.com,y@example.com" || env.TLS != "" {
			t.Fatalf("envelope %+v", env)
		}
	}
	if m := s.Messages(); m[0] == m[1] {
		t.Fatal("two messages share a file name")
	}
}

func TestRejectAndTempfail(t *testing.T) {
	s := start(t, Config{RejectRcpt: `^bad@`})
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("a@example.net", nil); err != nil {
		t.Fatal(err)
	}
	var se *smtp.SMTPError
	if err := c.Rcpt("bad@example.com", nil); !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
		t.Fatalf("reject-rcpt: %v", err)
	}
	if err := c.Rcpt("good@example.com", nil); err != nil {
		t.Fatal(err)
	}

	tf := start(t, Config{TempFail: true, NoStore: true})
	c2, err := smtp.Dial(tf.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	err = c2.SendMail("a@example.net", []string{"x@example.com"}, strings.NewReader(body))
	if !errors.As(err, &se) || se.Code != 451 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 0}) {
		t.Fatalf("tempfail: %v", err)
	}
	if tf.Count() != 0 {
		t.Fatal("tempfail sink counted a message")
	}
}

// TestXClient drives the protocol by hand: XCLIENT resets to the greeting
// stage, XFORWARD answers 250, both are recorded.
func TestXClient(t *testing.T) {
	s := start(t, Config{XClient: true})
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	tc := textproto.NewConn(nc)
	expect := func(code int) string {
		t.Helper()
		_, msg, err := tc.ReadResponse(code)
		if err != nil {
			t.Fatalf("want %d: %v", code, err)
		}
		return msg
	}
	cmd := func(code int, line string) string {
		t.Helper()
		tc.PrintfLine("%s", line)
		return expect(code)
	}
	expect(220)
	if ext := cmd(250, "EHLO moat.test"); !strings.Contains(ext, "XCLIENT") || !strings.Contains(ext, "XFORWARD") {
		t.Fatalf("EHLO: %s", ext)
	}
	cmd(220, "XCLIENT ADDR=192.0.2.1 NAME=mx.example.net HELO=helo+2Bplus PROTO=ESMTP")
	cmd(503, "MAIL FROM:<a@example.net>") // must EHLO again
	cmd(250, "EHLO moat.test")
	cmd(250, "XFORWARD ADDR=192.0.2.9 NAME=[UNAVAILABLE]")
	cmd(250, "MAIL FROM:<a@example.net>")
	cmd(250, "RCPT TO:<x@example.com>")
	cmd(354, "DATA")
	cmd(250, "Subject: x\r\n\r\nhi\r\n.")
	cmd(221, "QUIT")
	env, msg, err := ReadFile(s.Messages()[0])
	if err != nil {
		t.Fatal(err)
	}
	if env.XClient != `ADDR="192.0.2.1" NAME="mx.example.net" HELO="helo+plus" PROTO="ESMTP"` {
		t.Fatalf("XClient %q", env.XClient)
	}
	if env.XForward != `ADDR="192.0.2.9" NAME="[UNAVAILABLE]"` {
		t.Fatalf("XForward %q", env.XForward)
	}
	if string(msg) != "Subject: x\r\n\r\nhi\r\n" {
		t.Fatalf("msg %q", msg)
	}
	d := s.Deliveries()[0]
	if d.XClient["HELO"] != "helo+plus" || d.XForward["ADDR"] != "192.0.2.9" {
		t.Fatalf("delivery %+v", d)
	}
}

func TestSTARTTLSAndNoStore(t *testing.T) {
	cert := selfSigned(t)
	s := start(t, Config{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, NoStore: true, NoSMTPUTF8: true})
	c, err := smtp.DialStartTLS(s.Addr(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, _ := c.Extension("SMTPUTF8"); ok {
		t.Fatal("SMTPUTF8 advertised with NoSMTPUTF8")
	}
	if err := c.SendMail("a@example.net", []string{"x@example.com"}, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if s.Count() != 1 || len(s.Messages()) != 0 || !s.Deliveries()[0].TLS {
		t.Fatalf("count=%d messages=%v deliveries=%+v", s.Count(), s.Messages(), s.Deliveries())
	}
	if !s.Wait(1, time.Second) {
		t.Fatal("Wait(1) false after one message")
	}
}

func TestStartErrors(t *testing.T) {
	if _, err := Start(Config{}); err == nil {
		t.Fatal("no maildir and store: want error")
	}
	if _, err := Start(Config{NoStore: true, RejectRcpt: "("}); err == nil {
		t.Fatal("bad regexp: want error")
	}
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sink.moat.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// dotStuff is the transparency procedure of RFC 5321 4.5.2 plus the
// terminator, for CRLF-terminated input.
func dotStuff(msg []byte) []byte {
	var b bytes.Buffer
	for _, line := range bytes.SplitAfter(msg, []byte("\r\n")) {
		if len(line) > 0 && line[0] == '.' {
			b.WriteByte('.')
		}
		b.Write(line)
	}
	b.WriteString(".\r\n")
	return b.Bytes()
}

func FuzzCopyData(f *testing.F) {
	f.Add([]byte(body))
	f.Add([]byte(".\r\n.\r\n"))
	f.Add([]byte("a\nb\r\n.x"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		// Normalise to what an SMTP client sends: CRLF lines, final CRLF.
		msg = bytes.ReplaceAll(bytes.ReplaceAll(msg, []byte("\r"), nil), []byte("\n"), []byte("\r\n"))
		if len(msg) > 0 && !bytes.HasSuffix(msg, []byte("\r\n")) {
			msg = append(msg, '\r', '\n')
		}
		var out bytes.Buffer
		r := bufio.NewReaderSize(bytes.NewReader(append(dotStuff(msg), "NEXT"...)), 16)
		_, tooBig, err := copyData(&out, r, 1<<20)
		if err != nil || tooBig {
			t.Fatalf("copyData: %v %v", err, tooBig)
		}
		if !bytes.Equal(out.Bytes(), msg) {
			t.Fatalf("round trip:\n%q\n%q", out.Bytes(), msg)
		}
		rest, _ := io.ReadAll(r)
		if string(rest) != "NEXT" {
			t.Fatalf("read past terminator: rest %q", rest)
		}
	})
}

func FuzzParse(f *testing.F) {
	f.Add("ADDR=1.2.3.4 NAME=a+2Bb", "<a@b> SIZE=1 BODY=8BITMIME", []byte("Return-Path: <a>\r\nX-Sink-Id: 1\r\nx"))
	f.Fuzz(func(t *testing.T, attrs, path string, file []byte) {
		parseAttrs(attrs)
		parsePath(path)
		Split(file)
	})
}
