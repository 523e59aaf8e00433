package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/passmark"
	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/sink"
)

var secret = passmark.DomainSecret([]byte("master key for tests"), "example.com")

const original = "From: Alice <alice@sender.example>\r\nTo: bob@example.com\r\nSubject: quarterly report\r\n" +
	"Date: Mon, 20 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@sender.example>\r\n\r\n" +
	"Hello Bob,\r\n.a line starting with a dot\r\n..two dots\r\n\r\n-- \r\nAlice\r\n"

const prepend = "Authentication-Results: moat.test; spf=pass smtp.mailfrom=sender.example\r\nX-Spam-Score: 0.5\r\n"

func testConfig() Config {
	c := DefaultConfig()
	c.Hostname = "moat.test"
	c.ConnectTimeout = 5 * time.Second
	c.GreetingTimeout = 10 * time.Second
	c.CommandTimeout = 10 * time.Second
	c.DataTimeout = 10 * time.Second
	return c
}

// newRelay builds a relay whose routes map domains to routes.
func newRelay(t testing.TB, cfg Config, routes map[string]*Route) *Relay {
	t.Helper()
	src := func(ctx context.Context, domain string) (*Route, error) {
		if r, ok := routes[domain]; ok {
			return r, nil
		}
		return nil, fmt.Errorf("%s: %w", domain, ErrNoRoute)
	}
	r, err := New(cfg, src, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func backendOf(addr string) Backend {
	h, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return Backend{Host: h, Port: n}
}

func delivery(msg string, rcpts ...string) *queue.Delivery {
	return &queue.Delivery{
		Env: &queue.Envelope{
			ID: "Q1A2B3C", From: "alice@sender.example", Size: int64(len(msg)), Prepend: prepend,
			Client: queue.ClientInfo{IP: "192.0.2.7", Helo: "mx.sender.example", PTR: "mail.sender.example", Proto: "ESMTP"},
		},
		Domain: "example.com",
		Rcpts:  rcpts,
		Open:   func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(msg)), nil },
	}
}

func startSink(t testing.TB, cfg sink.Config) *sink.Server {
	t.Helper()
	if cfg.Maildir == "" && !cfg.NoStore {
		cfg.Maildir = t.TempDir()
	}
	s, err := sink.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// skipField removes the first header field (with its continuation lines)
// if it has the given name, and reports whether it did.
func skipField(b []byte, name string) ([]byte, bool) {
	if !bytes.HasPrefix(b, []byte(name+": ")) {
		return b, false
	}
	for {
		i := bytes.Index(b, []byte("\r\n"))
		if i < 0 {
			return nil, true
		}
		b = b[i+2:]
		if len(b) == 0 || (b[0] != ' ' && b[0] != '\t') {
			return b, true
		}
	}
}

func wantResults(t *testing.T, res []queue.Result, want map[string]string) {
	t.Helper()
	if len(res) != len(want) {
		t.Fatalf("%d results, want %d: %+v", len(res), len(want), res)
	}
	for _, r := range res {
		w, ok := want[r.Rcpt]
		if !ok {
			t.Fatalf("result for unexpected recipient %q", r.Rcpt)
		}
		got := fmt.Sprintf("%d %d.%d.%d", r.Reply.Code, r.Reply.Enhanced[0], r.Reply.Enhanced[1], r.Reply.Enhanced[2])
		if !strings.HasPrefix(got, w) {
			t.Fatalf("%s: got %s (%s), want %s", r.Rcpt, got, r.Reply.Text, w)
		}
		if r.Permanent != (r.Reply.Code/100 == 5) {
			t.Fatalf("%s: Permanent=%v for %d", r.Rcpt, r.Permanent, r.Reply.Code)
		}
	}
}

func TestDeliverToSinkExactWithPassMark(t *testing.T) {
	s := startSink(t, sink.Config{})
	r := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(s.Addr())}, PassSecret: secret}})
	res := r.Deliver(context.Background(), delivery(original, "bob@example.com"))
	wantResults(t, res, map[string]string{"bob@example.com": "250 2.0.0"})
	if res[0].Host != s.Addr() {
		t.Fatalf("Host %q, want %q", res[0].Host, s.Addr())
	}
	env, got, err := sink.ReadFile(s.Messages()[0])
	if err != nil {
		t.Fatal(err)
	}
	if env.From != "alice@sender.example" || env.Rcpts[0] != "bob@example.com" {
		t.Fatalf("envelope %+v", env)
	}
	if !bytes.HasPrefix(got, []byte("Received: from mx.sender.example (mail.sender.example [192.0.2.7])\r\n\tby moat.test (Moat) with ESMTP id Q1A2B3C\r\n\tfor <bob@example.com>; ")) {
		t.Fatalf("Received field:\n%s", got)
	}
	rest, ok := skipField(got, "Received")
	if !ok {
		t.Fatal("no Received")
	}
	rest, ok = skipField(rest, passmark.Field)
	if !ok {
		t.Fatalf("no pass mark after Received:\n%s", rest)
	}
	if !bytes.HasPrefix(rest, []byte(prepend)) {
		t.Fatalf("prepend block missing:\n%s", rest)
	}
	if string(rest[len(prepend):]) != original {
		t.Fatalf("body differs:\n%q\nwant\n%q", rest[len(prepend):], original)
	}
	if _, err := passmark.VerifyMessage(secret, got, []string{"bob@example.com"}, passmark.Options{}); err != nil {
		t.Fatalf("pass mark does not verify for the recipient: %v", err)
	}
	if _, err := passmark.VerifyMessage(secret, got, []string{"carol@example.com"}, passmark.Options{}); !errors.Is(err, passmark.ErrRecipient) {
		t.Fatalf("pass mark for another recipient: %v, want ErrRecipient", err)
	}
	altered := bytes.Replace(got, []byte("Hello Bob"), []byte("Hello Rob"), 1)
	if _, err := passmark.VerifyMessage(secret, altered, []string{"bob@example.com"}, passmark.Options{}); !errors.Is(err, passmark.ErrAltered) {
		t.Fatalf("altered message: %v, want ErrAltered", err)
	}
}

func TestSubjectPrefix(t *testing.T) {
	s := startSink(t, sink.Config{})
	r := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(s.Addr())}, PassSecret: secret}})
	d := delivery(original, "bob@example.com")
	d.Env.SubjectPrefix = "[SPAM] "
	d2 := delivery("From: a@b.example\r\n\r\nno subject\r\n", "bob@example.com")
	d2.Env.SubjectPrefix = "[SPAM] "
	for _, dd := range []*queue.Delivery{d, d2} {
		wantResults(t, r.Deliver(context.Background(), dd), map[string]string{"bob@example.com": "250"})
	}
	m := s.Messages()
	_, got, _ := sink.ReadFile(m[0])
	if !bytes.Contains(got, []byte("\r\nSubject: [SPAM] quarterly report\r\n")) {
		t.Fatalf("subject not prefixed:\n%s", got)
	}
	if _, err := passmark.VerifyMessage(secret, got, []string{"bob@example.com"}, passmark.Options{}); err != nil {
		t.Fatalf("pass mark over the prefixed subject: %v", err)
	}
	_, got, _ = sink.ReadFile(m[1])
	if !bytes.HasSuffix(got, []byte("From: a@b.example\r\nSubject: [SPAM]\r\n\r\nno subject\r\n")) {
		t.Fatalf("subject not added:\n%s", got)
	}
}

func TestFailoverToSecondBackend(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens here now: connection refused
	s := startSink(t, sink.Config{})
	r := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(dead), backendOf(s.Addr())}}})
	res := r.Deliver(context.Background(), delivery(original, "bob@example.com", "carol@example.com"))
	wantResults(t, res, map[string]string{"bob@example.com": "250", "carol@example.com": "250"})
	if res[0].Host != s.Addr() || s.Count() != 1 {
		t.Fatalf("host %s count %d", res[0].Host, s.Count())
	}

	// All backends dead: a synthesised temporary reply.
	r2 := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(dead)}}})
	res = r2.Deliver(context.Background(), delivery(original, "bob@example.com"))
	wantResults(t, res, map[string]string{"bob@example.com": "451 4.4.1"})
	if res[0].Host != dead {
		t.Fatalf("Host %q", res[0].Host)
	}
	// Unknown domain: temporary, never a bounce.
	d := delivery(original, "x@unknown.example")
	d.Domain = "unknown.example"
	wantResults(t, r2.Deliver(context.Background(), d), map[string]string{"x@unknown.example": "451 4.4.4"})
}

func TestGreeting4xxFailsOver(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "421 4.3.2 busy, try later\r\n")
			c.Close()
		}
	}()
	s := startSink(t, sink.Config{})
	r := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(ln.Addr().String()), backendOf(s.Addr())}}})
	wantResults(t, r.Deliver(context.Background(), delivery(original, "bob@example.com")), map[string]string{"bob@example.com": "250"})
	r2 := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(ln.Addr().String())}}})
	wantResults(t, r2.Deliver(context.Background(), delivery(original, "bob@example.com")), map[string]string{"bob@example.com": "421 4.3.2"})
}

func TestPerRecipientPermanentAndTemporary(t *testing.T) {
	s := startSink(t, sink.Config{RejectRcpt: "^nobody@"})
	r := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(s.Addr())}}})
	res := r.Deliver(context.Background(), delivery(original, "nobody@example.com", "bob@example.com"))
	wantResults(t, res, map[string]string{"nobody@example.com": "550 5.1.1", "bob@example.com": "250 2.0.0"})
	if !res[0].Permanent || res[1].Permanent {
		t.Fatalf("Permanent flags: %+v", res)
	}
	if env, _, _ := sink.ReadFile(s.Messages()[0]); strings.Join(env.Rcpts, ",") != "bob@example.com" {
		t.Fatalf("delivered to %v", env.Rcpts)
	}
	// Every recipient refused: no DATA, no message.
	wantResults(t, r.Deliver(context.Background(), delivery(original, "nobody@example.com")), map[string]string{"nobody@example.com": "550 5.1.1"})
	if s.Count() != 1 {
		t.Fatalf("count %d", s.Count())
	}

	tf := startSink(t, sink.Config{TempFail: true, NoStore: true})
	r2 := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(tf.Addr())}}})
	res = r2.Deliver(context.Background(), delivery(original, "bob@example.com", "carol@example.com"))
	wantResults(t, res, map[string]string{"bob@example.com": "451 4.3.0", "carol@example.com": "451 4.3.0"})
}

func TestSMTPUTF8Required(t *testing.T) {
	s := startSink(t, sink.Config{NoSMTPUTF8: true})
	r := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(s.Addr())}}})
	d := delivery(original, "bob@example.com")
	d.Env.SMTPUTF8 = true
	wantResults(t, r.Deliver(context.Background(), d), map[string]string{"bob@example.com": "554 5.6.7"})
	s2 := startSink(t, sink.Config{})
	r2 := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(s2.Addr())}}})
	d.Env.EightBit = true
	wantResults(t, r2.Deliver(context.Background(), d), map[string]string{"bob@example.com": "250"})
	if del := s2.Deliveries()[0]; !del.SMTPUTF8 || !del.EightBit {
		t.Fatalf("MAIL parameters not passed: %+v", del)
	}
}

func TestConnectionReuse(t *testing.T) {
	s := startSink(t, sink.Config{})
	reg := prometheus.NewRegistry()
	r, err := New(testConfig(), func(ctx context.Context, d string) (*Route, error) {
		return &Route{Backends: []Backend{backendOf(s.Addr())}}, nil
	}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i := 0; i < 3; i++ {
		wantResults(t, r.Deliver(context.Background(), delivery(original, "bob@example.com")), map[string]string{"bob@example.com": "250"})
	}
	if s.Count() != 3 || s.Accepts() != 1 {
		t.Fatalf("messages %d over %d connections, want 3 over 1", s.Count(), s.Accepts())
	}
	// A backend that closed the idle connection: the relay redials.
	s.Close()
	s2, err := sink.Start(sink.Config{Addr: s.Addr(), NoStore: true})
	if err != nil {
		t.Skipf("cannot rebind %s: %v", s.Addr(), err)
	}
	defer s2.Close()
	wantResults(t, r.Deliver(context.Background(), delivery(original, "bob@example.com")), map[string]string{"bob@example.com": "250"})
	if s2.Count() != 1 {
		t.Fatalf("redial: count %d", s2.Count())
	}
	mfs, _ := reg.Gather()
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	for _, want := range []string{"moat_relay_recipients_total", "moat_relay_delivery_seconds", "moat_relay_connections_open", "moat_relay_connections_total"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Fatalf("metric %s missing from %v", want, names)
		}
	}
}

func TestConcurrencyLimit(t *testing.T) {
	s := startSink(t, sink.Config{NoStore: true})
	r := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(s.Addr())}, MaxConns: 2}})
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.Deliver(context.Background(), delivery(original, "bob@example.com"))
		}()
	}
	wg.Wait()
	if s.Count() != 20 || s.Accepts() > 2 {
		t.Fatalf("%d messages over %d connections; want 20 over at most 2", s.Count(), s.Accepts())
	}
}

func selfSigned(t *testing.T, dir string) (tls.Certificate, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "backend.test"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage:  x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "ca.pem")
	os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, path
}

func TestTLSPolicies(t *testing.T) {
	plain := startSink(t, sink.Config{})
	cfg := testConfig()
	r := newRelay(t, cfg, map[string]*Route{"example.com": {Backends: []Backend{backendOf(plain.Addr())}, TLS: TLSRequired}})
	wantResults(t, r.Deliver(context.Background(), delivery(original, "bob@example.com")), map[string]string{"bob@example.com": "451 4.7.10"})
	if plain.Count() != 0 {
		t.Fatal("delivered in plaintext despite tls: required")
	}

	cert, caFile := selfSigned(t, t.TempDir())
	secure := startSink(t, sink.Config{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	route := &Route{Backends: []Backend{backendOf(secure.Addr())}, TLS: TLSRequired}
	// Verification on, CA unknown: temporary failure.
	r = newRelay(t, cfg, map[string]*Route{"example.com": route})
	wantResults(t, r.Deliver(context.Background(), delivery(original, "bob@example.com")), map[string]string{"bob@example.com": "451 4.7.5"})
	// With the CA file: verified TLS.
	cfg.TLSCAFile = caFile
	r = newRelay(t, cfg, map[string]*Route{"example.com": route})
	wantResults(t, r.Deliver(context.Background(), delivery(original, "bob@example.com")), map[string]string{"bob@example.com": "250"})
	// Opportunistic: TLS used without verification.
	r = newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(secure.Addr())}}})
	wantResults(t, r.Deliver(context.Background(), delivery(original, "bob@example.com")), map[string]string{"bob@example.com": "250"})
	for _, d := range secure.Deliveries() {
		if !d.TLS {
			t.Fatal("message delivered without TLS")
		}
	}
	if secure.Count() != 2 {
		t.Fatalf("count %d", secure.Count())
	}
}

// recorder is a raw SMTP peer that records the exact DATA bytes.
type recorder struct {
	ln   net.Listener
	mu   sync.Mutex
	data [][]byte
	cmds []string
}

func startRecorder(t *testing.T) *recorder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go rec.serve(c)
		}
	}()
	return rec
}

func (rec *recorder) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	io.WriteString(c, "220 recorder ESMTP\r\n")
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		rec.mu.Lock()
		rec.cmds = append(rec.cmds, line)
		rec.mu.Unlock()
		switch strings.ToUpper(strings.Fields(line + " x")[0]) {
		case "EHLO":
			io.WriteString(c, "250-recorder\r\n250-8BITMIME\r\n250 PIPELINING\r\n")
		case "DATA":
			io.WriteString(c, "354 go\r\n")
			var buf []byte
			for !bytes.HasSuffix(buf, []byte("\r\n.\r\n")) {
				b, err := br.ReadByte()
				if err != nil {
					return
				}
				buf = append(buf, b)
			}
			rec.mu.Lock()
			rec.data = append(rec.data, buf)
			rec.mu.Unlock()
			io.WriteString(c, "250 2.0.0 ok\r\n")
		case "QUIT":
			io.WriteString(c, "221 2.0.0 bye\r\n")
			return
		default:
			io.WriteString(c, "250 2.0.0 ok\r\n")
		}
	}
}

func TestNoSmuggling(t *testing.T) {
	rec := startRecorder(t)
	r := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(rec.ln.Addr().String())}}})
	hostile := "Subject: smuggle\n\nline one\n.\nMAIL FROM:<evil@x>\r\n" + // bare LF dot line
		"a\r.\rRCPT TO:<victim@x>\r\n" + // bare CR dot line
		"b\r\n.\n" + // CRLF . LF
		"c\n.\r\n" + // LF . CRLF
		".\r\n" + // a real-looking terminator in the middle
		"end without newline"
	d := delivery(hostile, "bob@example.com")
	d.Env.Prepend = "X-Check: one\nX-Other: two\r"
	wantResults(t, r.Deliver(context.Background(), d), map[string]string{"bob@example.com": "250"})
	rec.mu.Lock()
	data := rec.data[0]
	rec.mu.Unlock()
	body := data[:len(data)-len(".\r\n")]
	for i, b := range body {
		if b == '\r' && (i+1 >= len(body) || body[i+1] != '\n') {
			t.Fatalf("bare CR at %d in %q", i, body)
		}
		if b == '\n' && (i == 0 || body[i-1] != '\r') {
			t.Fatalf("bare LF at %d in %q", i, body)
		}
	}
	// The only line that is exactly "." is the terminator.
	for _, l := range strings.Split(string(body), "\r\n") {
		if l == "." {
			t.Fatalf("unstuffed dot line inside the message: %q", body)
		}
	}
	if !bytes.Contains(body, []byte("\r\nline one\r\n..\r\nMAIL FROM:<evil@x>\r\na\r\n..\r\nRCPT TO:<victim@x>\r\nb\r\n..\r\nc\r\n..\r\n..\r\nend without newline\r\n")) {
		t.Fatalf("normalised body not as expected:\n%q", body)
	}
	if !bytes.Contains(body, []byte("X-Check: one\r\nX-Other: two\r\n")) {
		t.Fatalf("prepend not normalised: %q", body)
	}

	// NUL: permanent 5.6.0, nothing transmitted.
	before := len(rec.cmds)
	wantResults(t, r.Deliver(context.Background(), delivery("Subject: x\r\n\r\nnul\x00byte\r\n", "bob@example.com")),
		map[string]string{"bob@example.com": "554 5.6.0"})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, c := range rec.cmds[before:] {
		if strings.HasPrefix(c, "DATA") {
			t.Fatal("DATA sent for a message with NUL")
		}
	}
}

func TestXForwardToSink(t *testing.T) {
	s := startSink(t, sink.Config{XClient: true})
	r := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(s.Addr())}}})
	d := delivery(original, "bob@example.com")
	d.Env.Client.PTR = ""
	wantResults(t, r.Deliver(context.Background(), d), map[string]string{"bob@example.com": "250"})
	env, _, _ := sink.ReadFile(s.Messages()[0])
	// The sink offers both; XCLIENT is preferred.
	if env.XClient != `ADDR="192.0.2.7" NAME="[UNAVAILABLE]" HELO="mx.sender.example" PROTO="ESMTP"` || env.XForward != "" {
		t.Fatalf("xclient %q xforward %q", env.XClient, env.XForward)
	}
	cfg := testConfig()
	cfg.ForwardClient = false
	s2 := startSink(t, sink.Config{XClient: true})
	r = newRelay(t, cfg, map[string]*Route{"example.com": {Backends: []Backend{backendOf(s2.Addr())}}})
	wantResults(t, r.Deliver(context.Background(), d), map[string]string{"bob@example.com": "250"})
	if env, _, _ := sink.ReadFile(s2.Messages()[0]); env.XClient != "" {
		t.Fatalf("forward_client=false sent XCLIENT: %q", env.XClient)
	}
}

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.Hostname = "bad name"
	c.DataTimeout = 0
	c.TLSCAFile = "/nonexistent"
	err := c.Validate()
	for _, key := range []string{"hostname:", "data_timeout:", "tls_ca_file:"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Fatalf("error %v does not name %s", err, key)
		}
	}
}

func BenchmarkRelay(b *testing.B) {
	s := startSink(b, sink.Config{NoStore: true})
	r := newRelay(b, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(s.Addr())}, PassSecret: secret}})
	msg := original + strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n", 60)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res := r.Deliver(context.Background(), delivery(msg, "bob@example.com"))
		if res[0].Reply.Code != 250 {
			b.Fatal(res[0].Reply)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
