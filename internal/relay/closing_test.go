package relay

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"moat.dev/moat/internal/passmark"
	"moat.dev/moat/internal/sink"
)

// startClosingBackend runs a backend that greets and answers EHLO (with
// PIPELINING when pipelining is set), then answers 421 to the command
// starting with at ("MAIL", "RCPT" or "DATA") and closes the connection.
// Other commands get 250 (354 is never given). It counts connections.
func startClosingBackend(t *testing.T, pipelining bool, at string) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				io.WriteString(c, "220 closing.test ESMTP\r\n")
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					cmd := strings.ToUpper(strings.TrimSpace(line))
					switch {
					case strings.HasPrefix(cmd, "EHLO"):
						ext := "250-closing.test\r\n"
						if pipelining {
							ext += "250-PIPELINING\r\n"
						}
						io.WriteString(c, ext+"250 8BITMIME\r\n")
					case strings.HasPrefix(cmd, at):
						io.WriteString(c, "421 4.3.2 shutting down\r\n")
						return
					case strings.HasPrefix(cmd, "QUIT"):
						io.WriteString(c, "221 bye\r\n")
						return
					default:
						io.WriteString(c, "250 2.0.0 ok\r\n")
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), &conns
}

// A 421 from the first backend before the message is handed over (to
// MAIL, RCPT or DATA) closes the channel like a 421 greeting: the next
// backend gets the message in the same attempt, whether or not the first
// offers PIPELINING. It used to be a deferral for a backend without
// PIPELINING (and at DATA for any backend), retried on the same backend.
func TestReply421BeforeDataFailsOver(t *testing.T) {
	for _, pipelining := range []bool{false, true} {
		for _, at := range []string{"MAIL", "RCPT", "DATA"} {
			name := at
			if pipelining {
				name += "/pipelining"
			}
			t.Run(name, func(t *testing.T) {
				bad, _ := startClosingBackend(t, pipelining, at)
				s := startSink(t, sink.Config{})
				r := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(bad), backendOf(s.Addr())}}})
				res := r.Deliver(context.Background(), delivery(original, "bob@example.com"))
				wantResults(t, res, map[string]string{"bob@example.com": "250"})
				if s.Count() != 1 || res[0].Host != s.Addr() {
					t.Fatalf("sink count %d, host %s", s.Count(), res[0].Host)
				}
				// Alone, it is a temporary failure with the backend's reply.
				r2 := newRelay(t, testConfig(), map[string]*Route{"example.com": {Backends: []Backend{backendOf(bad)}}})
				wantResults(t, r2.Deliver(context.Background(), delivery(original, "bob@example.com")), map[string]string{"bob@example.com": "421 4.3.2"})
			})
		}
	}
}

// A DSN to a customer domain comes as Domain "dsn:DOMAIN" over that
// domain's route: its pass mark names the route's domain (d=DOMAIN),
// whose secret signed it, so that it verifies from the site master key
// like any other mark. It used to say d=dsn:DOMAIN.
func TestPassMarkNamesRouteDomain(t *testing.T) {
	s := startSink(t, sink.Config{})
	for _, size := range []int{0, maxInMemory + 1} { // in-memory and streamed digest
		r := newRelay(t, testConfig(), map[string]*Route{"dsn:example.com": {Domain: "example.com", Backends: []Backend{backendOf(s.Addr())}, PassSecret: secret}})
		msg := original + strings.Repeat("x", size) + "\r\n"
		d := delivery(msg, "bob@example.com")
		d.Domain = "dsn:example.com"
		wantResults(t, r.Deliver(context.Background(), d), map[string]string{"bob@example.com": "250"})
	}
	for i, m := range s.Messages() {
		_, got, err := sink.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		p, err := passmark.VerifyMessage(secret, got, []string{"bob@example.com"}, passmark.Options{})
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if p.Domain != "example.com" {
			t.Fatalf("message %d: d=%s, want example.com", i, p.Domain)
		}
	}
}
