package milter

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"

	"moat.dev/moat/internal/passmark"
	"moat.dev/moat/internal/testutil/postfixtest"
)

var testSecret = passmark.DomainSecret([]byte("master"), "protected.test")

func secrets(d string) []byte {
	if d == "protected.test" {
		return testSecret
	}
	return nil
}

func message(subject string) string {
	return "From: a@sender.test\r\nTo: u@protected.test\r\nSubject: " + subject + "\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <" + subject + "@sender.test>\r\n\r\nHello.\r\n"
}

func marked(t *testing.T, msg string, rcpts ...string) string {
	dg, err := passmark.Digest(strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	v := passmark.Sign(testSecret, passmark.Mark{Domain: "protected.test", ID: "Q1", Time: time.Now(), Rcpts: rcpts, Digest: dg})
	return passmark.Field + ": " + v + "\r\n" + msg
}

// sink is a go-smtp server standing for the final mailbox host.
type sinkBackend struct{ got chan []byte }
type sinkSession struct{ b *sinkBackend }

func (s *sinkSession) Reset()                               {}
func (s *sinkSession) Logout() error                        { return nil }
func (s *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err == nil {
		s.b.got <- b
	}
	return err
}

func startSink(t *testing.T) (string, chan []byte) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &sinkBackend{got: make(chan []byte, 10)}
	s := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &sinkSession{b}, nil }))
	s.Domain = "sink.test"
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return ln.Addr().String(), b.got
}

// send submits msg over SMTP from the local address src and returns the
// final reply error (nil: accepted).
func send(t *testing.T, addr, src string, rcpts []string, msg string) error {
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("a@sender.test", nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatal(err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, msg)
	err = w.Close()
	c.Quit()
	return err
}

func TestPostfixMilter(t *testing.T) {
	stats, err := NewStats(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(ReportHandler(secrets, stats.Record))
	defer api.Close()

	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Trusted = []string{"127.0.0.3/32"}
	cfg.StripMark = true
	cfg.ReportURL = api.URL + "/bypass"
	cfg.ReportInterval = time.Hour // flushed at Shutdown
	f, err := New(cfg, secrets, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(); err != nil {
		t.Fatal(err)
	}
	sinkAddr, got := startSink(t)
	// A private Postfix with the milter, relaying both domains to the sink.
	pf := postfixtest.Start(t, postfixtest.Options{
		RelayDomains: []string{"protected.test", "other.test"},
		RelayHost:    sinkAddr,
		Milter:       "inet:" + f.Addr().String(),
	}).Addr

	// 1. Unmarked, sent directly: refused with 550 5.7.1.
	err = send(t, pf, "127.0.0.1", []string{"u@protected.test"}, message("unmarked"))
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
		t.Fatalf("unmarked message: %v, want 550 5.7.1", err)
	}
	// 2. Forged mark for another recipient: refused too.
	if err := send(t, pf, "127.0.0.1", []string{"u@protected.test"}, marked(t, message("wrongrcpt"), "other@protected.test")); err == nil {
		t.Fatal("mark for another recipient accepted")
	}
	// 3. Valid mark: accepted, relayed, mark stripped.
	if err := send(t, pf, "127.0.0.1", []string{"u@protected.test"}, marked(t, message("good"), "u@protected.test")); err != nil {
		t.Fatalf("marked message: %v", err)
	}
	// 4. Unprotected domain: untouched. 5. Trusted client: accepted unmarked.
	if err := send(t, pf, "127.0.0.1", []string{"x@other.test"}, message("unprotected")); err != nil {
		t.Fatalf("unprotected domain: %v", err)
	}
	if err := send(t, pf, "127.0.0.3", []string{"u@protected.test"}, message("trusted")); err != nil {
		t.Fatalf("trusted client: %v", err)
	}
	subjects := map[string][]byte{}
	for len(subjects) < 3 {
		select {
		case m := <-got:
			for _, s := range []string{"good", "unprotected", "trusted"} {
				if bytes.Contains(m, []byte("Subject: "+s+"\r\n")) {
					subjects[s] = m
				}
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("relayed messages: got %d of 3", len(subjects))
		}
	}
	if bytes.Contains(subjects["good"], []byte("X-Moat-Pass")) {
		t.Errorf("pass mark not stripped:\n%s", subjects["good"])
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	st, ok := stats.Domain("protected.test")
	if !ok || st.Count != 2 || len(st.TopClients) != 1 || st.TopClients[0].IP != "127.0.0.1" || st.TopClients[0].Count != 2 {
		t.Errorf("bypass stats: %+v", st)
	}
}

func signedReport(t *testing.T, r Report, secret []byte) (*http.Request, []byte) {
	body, _ := jsonMarshal(r)
	req := httptest.NewRequest(http.MethodPost, "/bypass", bytes.NewReader(body))
	req.Header.Set(SignatureHeader, Sign(secret, body))
	return req, body
}

func TestReportHandler(t *testing.T) {
	var got []Report
	h := ReportHandler(secrets, func(r Report) { got = append(got, r) })
	ev := []Event{{ClientIP: "192.0.2.7", Time: time.Now(), Reason: "missing"}}
	good := Report{Version: 1, Domain: "protected.test", Sent: time.Now(), Nonce: "0123456789ab", Events: ev}
	for _, tc := range []struct {
		name   string
		r      Report
		secret []byte
		code   int
	}{
		{"good", good, testSecret, 204},
		{"replay", good, testSecret, 204}, // accepted, not recorded twice
		{"bad signature", func() Report { r := good; r.Nonce = "aaaaaaaaaaaa"; return r }(), []byte("wrong"), 401},
		{"stale", func() Report { r := good; r.Nonce = "bbbbbbbbbbbb"; r.Sent = time.Now().Add(-time.Hour); return r }(), testSecret, 401},
		{"unknown domain", func() Report { r := good; r.Domain = "other.test"; return r }(), testSecret, 403},
		{"no events", func() Report { r := good; r.Events = nil; return r }(), testSecret, 400},
		{"bad ip", func() Report {
			r := good
			r.Events = []Event{{ClientIP: "nope", Time: time.Now()}}
			return r
		}(), testSecret, 400},
	} {
		req, _ := signedReport(t, tc.r, tc.secret)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != tc.code {
			t.Errorf("%s: %d, want %d", tc.name, w.Code, tc.code)
		}
	}
	if len(got) != 1 {
		t.Errorf("sink got %d reports, want 1", len(got))
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/bypass", nil))
	if w.Code != 405 {
		t.Errorf("GET: %d", w.Code)
	}
}

func TestStatsTopClients(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := NewStats(reg)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var evs []Event
	for i := 0; i < maxClients+50; i++ {
		evs = append(evs, Event{ClientIP: fmt.Sprintf("10.0.%d.%d", i/256, i%256), Time: now})
	}
	for i := 0; i < 5; i++ {
		evs = append(evs, Event{ClientIP: "192.0.2.1", Time: now.Add(time.Minute)})
	}
	s.Record(Report{Domain: "protected.test", Events: evs})
	st, _ := s.Domain("protected.test")
	if st.Count != uint64(len(evs)) || st.TopClients[0].IP != "192.0.2.1" || st.TopClients[0].Count < 5 || !st.LastSeen.Equal(now.Add(time.Minute)) {
		t.Errorf("stats: count %d top %+v last %v", st.Count, st.TopClients[:2], st.LastSeen)
	}
	mfs, _ := reg.Gather()
	if len(mfs) != 1 || mfs[0].GetName() != "moat_bypass_messages_total" || mfs[0].Metric[0].GetCounter().GetValue() != float64(len(evs)) {
		t.Errorf("metric: %v", mfs)
	}
}

func FuzzParseReport(f *testing.F) {
	f.Add([]byte(`{"v":1,"domain":"example.com","sent":"2024-01-01T00:00:00Z","nonce":"0123456789ab","events":[{"client_ip":"192.0.2.1","time":"2024-01-01T00:00:00Z","reason":"missing"}]}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"v":1,"events":[{"client_ip":"::ffff:1.2.3.4"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseReport(b)
		if err != nil {
			return
		}
		if r.Domain == "" || len(r.Events) == 0 || len(r.Events) > MaxReportEvents {
			t.Fatalf("invalid report accepted: %+v", r)
		}
		// The handler path: a valid signature over the same bytes must verify.
		if !verifySig([]byte("k"), b, Sign([]byte("k"), b)) {
			t.Fatal("sign/verify mismatch")
		}
	})
}
