package smtpd

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func runSwaks(t *testing.T, e *testEnv, args ...string) (string, error) {
	t.Helper()
	swaks := needTool(t, "swaks")
	host, port, _ := net.SplitHostPort(e.addr)
	base := []string{"--server", host, "--port", port, "--ehlo", "swaks.test", "--timeout", "20"}
	out, err := exec.Command(swaks, append(base, args...)...).CombinedOutput()
	return string(out), err
}

func TestSwaks(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxMessageSize = 2 << 20 })
	bigFile := filepath.Join(t.TempDir(), "big.txt")
	// About 1.95 MiB: near the 2 MiB limit set above.
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("b", 76)+"\r\n", 26_000)
	if err := os.WriteFile(bigFile, []byte(big), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"plain", []string{"--from", "a@sender.test", "--to", "b@customer.example"}},
		{"pipelined", []string{"--pipeline", "--from", "a@sender.test", "--to", "b@customer.example,c@other.example"}},
		// swaks cannot declare SMTPUTF8, so its UTF-8 goes in the content
		// (a UTF-8 address without SMTPUTF8 is refused, below).
		{"utf8 content", []string{"--from", "a@sender.test", "--to", "b@customer.example", "--header", "Subject: Grüße aus Köln", "--body", "Ünïcödé body ✓"}},
		{"large", []string{"--from", "a@sender.test", "--to", "b@customer.example", "--data", bigFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(e.spool.ids())
			out, err := runSwaks(t, e, tc.args...)
			if err != nil {
				t.Fatalf("swaks: %v\n%s", err, tail(out))
			}
			ids := e.spool.ids()
			if len(ids) != before+1 {
				t.Fatalf("committed %d, want %d\n%s", len(ids), before+1, tail(out))
			}
			if !strings.Contains(out, "250 2.0.0 Ok: queued as "+ids[len(ids)-1]) {
				t.Fatalf("queue ID not in swaks output:\n%s", tail(out))
			}
		})
	}
	// A relay attempt through swaks: refused, nothing queued.
	before := len(e.spool.ids())
	out, err := runSwaks(t, e, "--from", "a@sender.test", "--to", "b@victim.example")
	if err == nil || !strings.Contains(out, "550 5.7.1 Relaying denied") {
		t.Fatalf("relay through swaks: %v\n%s", err, tail(out))
	}
	// RFC 6531: a UTF-8 address needs MAIL ... SMTPUTF8, which swaks
	// does not send.
	out, err = runSwaks(t, e, "--from", "jörg@sender.test", "--to", "müller@bücher.example")
	if err == nil || !strings.Contains(out, "553 5.6.7") {
		t.Fatalf("UTF-8 address without SMTPUTF8: %v\n%s", err, tail(out))
	}
	if n := len(e.spool.ids()); n != before {
		t.Fatalf("%d committed after refusals", n-before)
	}
}

func tail(s string) string {
	if len(s) > 3000 {
		return "..." + s[len(s)-3000:]
	}
	return s
}
