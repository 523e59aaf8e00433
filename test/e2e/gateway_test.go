package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"moat.dev/moat/internal/sink"
)

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

func domainYAML(name, backend string, extra string) string {
	return fmt.Sprintf("  - name: %s\n    backends: [%q]\n    recipients:\n      mode: any\n%s", name, backend, extra)
}

const testMsg = "From: Sender <someone@sender.test>\r\nTo: alice@example.test\r\nSubject: hello\r\nMessage-ID: <%s@sender.test>\r\n\r\nbody line one\r\n%s\r\n.leading dot line\r\n"

// TestRelayByteExact: a message accepted by Moat arrives at the backend
// byte-exact behind Moat's Received and pass-mark fields, and the mark
// verifies for that recipient only.
func TestRelayByteExact(t *testing.T) {
	backend := startSink(t, sink.Config{})
	g := newGateway(t, "queue:\n  min_backoff: 1s\ndomains:\n"+domainYAML("example.test", backend.Addr(), ""))
	g.Start()
	msg := fmt.Sprintf(testMsg, "m1", "ünïcode 8bit line")
	reply, err := send(g.SMTP, "someone@sender.test", []string{"alice@example.test"}, msg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(reply, "queued as") {
		t.Fatalf("reply %q has no queue ID", reply)
	}
	if !backend.Wait(1, 20*time.Second) {
		t.Fatal("message not delivered to the backend")
	}
	env, raw, err := sink.ReadFile(backend.Messages()[0])
	if err != nil {
		t.Fatal(err)
	}
	if env.From != "someone@sender.test" || len(env.Rcpts) != 1 || env.Rcpts[0] != "alice@example.test" {
		t.Fatalf("envelope %+v", env)
	}
	if !bytes.HasSuffix(raw, []byte(msg)) {
		t.Fatalf("body not byte-exact:\n%q", raw)
	}
	added := string(raw[:len(raw)-len(msg)])
	if !strings.HasPrefix(added, "Received: from client.sender.test") || !strings.Contains(added, "X-Moat-Pass: v=1;") ||
		!strings.Contains(added, queueID(reply)) {
		t.Fatalf("added fields wrong:\n%s", added)
	}
	secret := filepath.Join(g.dir, "secret.hex")
	out, code := g.moat("pass-secret", "--config", g.cfgPath, "example.test")
	if code != 0 {
		t.Fatalf("pass-secret: %d %s", code, out)
	}
	os.WriteFile(secret, []byte(out), 0o600)
	if out, code := runMoat(t, string(raw), "verify-pass", "--secret-file", secret, "--rcpt", "alice@example.test"); code != 0 {
		t.Fatalf("verify-pass genuine: exit %d: %s", code, out)
	}
	if out, code := runMoat(t, string(raw), "verify-pass", "--secret-file", secret, "--rcpt", "bob@example.test"); code != 1 {
		t.Fatalf("verify-pass other recipient: exit %d: %s", code, out)
	}
	altered := strings.Replace(string(raw), "body line one", "body line 1", 1)
	if out, code := runMoat(t, altered, "verify-pass", "--secret-file", secret, "--rcpt", "alice@example.test"); code != 1 {
		t.Fatalf("verify-pass altered: exit %d: %s", code, out)
	}
	if out, code := runMoat(t, msg, "verify-pass", "--config", g.cfgPath, "--rcpt", "alice@example.test"); code != 1 {
		t.Fatalf("verify-pass unmarked: exit %d: %s", code, out)
	}
}

// TestHeaderlessMessage: a message with no header section (accepted SMTP:
// "x" then the dot) got 250, so it is delivered, marked: Moat's fields,
// the empty line the message lacked, then the message as sent.
func TestHeaderlessMessage(t *testing.T) {
	backend := startSink(t, sink.Config{})
	g := newGateway(t, "queue:\n  min_backoff: 1s\ndomains:\n"+domainYAML("example.test", backend.Addr(), ""))
	g.Start()
	msg := "Just a body line, no header\r\n\r\nmore\r\n"
	reply, err := send(g.SMTP, "someone@sender.test", []string{"alice@example.test"}, msg)
	if err != nil || !strings.Contains(reply, "queued as") {
		t.Fatalf("reply %q, %v", reply, err)
	}
	if !backend.Wait(1, 20*time.Second) {
		t.Fatal("a headerless message accepted with 250 was not delivered")
	}
	_, raw, err := sink.ReadFile(backend.Messages()[0])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(raw, []byte("\r\n\r\n"+msg)) || !bytes.Contains(raw, []byte("X-Moat-Pass: v=1;")) {
		t.Fatalf("delivered:\n%q", raw)
	}
	out, code := g.moat("pass-secret", "--config", g.cfgPath, "example.test")
	if code != 0 {
		t.Fatalf("pass-secret: %d %s", code, out)
	}
	secret := filepath.Join(g.dir, "secret.hex")
	os.WriteFile(secret, []byte(out), 0o600)
	if out, code := runMoat(t, string(raw), "verify-pass", "--secret-file", secret, "--rcpt", "alice@example.test"); code != 0 {
		t.Fatalf("verify-pass: exit %d: %s", code, out)
	}
}

// TestNotAnOpenRelay: through the whole binary, mail for other domains is
// refused with 550 5.7.1 and never queued.
func TestNotAnOpenRelay(t *testing.T) {
	backend := startSink(t, sink.Config{})
	g := newGateway(t, "domains:\n"+domainYAML("example.test", backend.Addr(), ""))
	g.Start()
	for _, rcpt := range []string{"victim@elsewhere.test", "victim%elsewhere.test@example.test", "victim@[127.0.0.1]", "@example.test:victim@elsewhere.test"} {
		_, err := send(g.SMTP, "spammer@sender.test", []string{rcpt}, "Subject: x\r\n\r\nx\r\n")
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code/100 != 5 {
			t.Errorf("RCPT %s: got %v, want a 5xx refusal", rcpt, err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if backend.Count() != 0 {
		t.Fatalf("%d messages relayed", backend.Count())
	}
}

// TestBackendDownThenUp: with the backend down the message waits in the
// queue (moat queue list shows it); when the backend is back, "retry
// --domain" delivers it at once.
func TestBackendDownThenUp(t *testing.T) {
	backendAddr := freeAddr(t) // nothing listens yet
	g := newGateway(t, "queue:\n  min_backoff: 1h\n  max_backoff: 2h\ndomains:\n"+domainYAML("example.test", backendAddr, ""))
	g.Start()
	reply, err := send(g.SMTP, "someone@sender.test", []string{"alice@example.test"}, fmt.Sprintf(testMsg, "m2", "x"))
	if err != nil {
		t.Fatal(err)
	}
	id := queueID(reply)
	waitFor(t, "the queue to show the deferred message", 15*time.Second, func() bool {
		out, _ := g.moat("queue", "list", "--config", g.cfgPath)
		return strings.Contains(out, id) && strings.Contains(out, "alice@example.test")
	})
	backend := startSink(t, sink.Config{Addr: backendAddr})
	out, code := g.moat("queue", "retry", "--domain", "example.test", "--config", g.cfgPath)
	if code != 0 {
		t.Fatalf("queue retry --domain: exit %d: %s", code, out)
	}
	if !backend.Wait(1, 20*time.Second) {
		t.Fatal("not delivered after the backend came back")
	}
	waitFor(t, "the queue to empty", 10*time.Second, func() bool {
		out, _ := g.moat("queue", "list", "--config", g.cfgPath)
		return !strings.Contains(out, id)
	})
}

// TestPermanentFailureDSN: a backend that refuses a recipient with 5xx after
// Moat accepted the message yields exactly one RFC 3464 DSN to the sender.
func TestPermanentFailureDSN(t *testing.T) {
	backend := startSink(t, sink.Config{RejectRcpt: "^nobody@"})
	senderBackend := startSink(t, sink.Config{})
	g := newGateway(t, "domains:\n"+domainYAML("example.test", backend.Addr(), "")+domainYAML("sender.test", senderBackend.Addr(), ""))
	g.Start()
	if _, err := send(g.SMTP, "someone@sender.test", []string{"nobody@example.test", "alice@example.test"}, fmt.Sprintf(testMsg, "m3", "x")); err != nil {
		t.Fatal(err)
	}
	if !backend.Wait(1, 20*time.Second) {
		t.Fatal("the valid recipient got nothing")
	}
	if !senderBackend.Wait(1, 20*time.Second) {
		t.Fatal("no DSN arrived")
	}
	time.Sleep(time.Second)
	if n := senderBackend.Count(); n != 1 {
		t.Fatalf("%d DSNs, want exactly 1", n)
	}
	env, raw, _ := sink.ReadFile(senderBackend.Messages()[0])
	if env.From != "" || env.Rcpts[0] != "someone@sender.test" {
		t.Fatalf("DSN envelope %+v (want null sender to someone@sender.test)", env)
	}
	for _, want := range []string{"multipart/report", "report-type=delivery-status", "Final-Recipient: rfc822; nobody@example.test", "Action: failed", "Status: 5.1.1"} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("DSN lacks %q", want)
		}
	}
	if bytes.Contains(raw, []byte("Final-Recipient: rfc822; alice@example.test")) {
		t.Error("DSN lists the delivered recipient")
	}
}

// TestCrashSafety kills moat serve with SIGKILL while it accepts and relays,
// restarts it, and checks that every message that got 250 arrives.
func TestCrashSafety(t *testing.T) {
	// The backend comes up only once messages are queued, so the kill
	// lands while messages are being accepted, queued and relayed at once.
	backendAddr := freeAddr(t)
	g := newGateway(t, "queue:\n  min_backoff: 1s\n  max_backoff: 2s\ndomains:\n"+domainYAML("example.test", backendAddr, ""))
	g.Start()

	var mu sync.Mutex
	accepted := map[string]bool{}
	var seq atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				tag := fmt.Sprintf("crash-%d", seq.Add(1))
				if _, err := send(g.SMTP, "someone@sender.test", []string{"alice@example.test"}, fmt.Sprintf(testMsg, tag, "X-Tag "+tag)); err == nil {
					mu.Lock()
					accepted[tag] = true
					mu.Unlock()
				}
			}
		}()
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(accepted)
	}
	waitFor(t, "messages to be queued", 30*time.Second, func() bool { return count() >= 60 })
	backend := startSink(t, sink.Config{Addr: backendAddr})
	waitFor(t, "deliveries to start", 30*time.Second, func() bool { return backend.Count() > 0 })
	waitFor(t, "more messages to be accepted", 30*time.Second, func() bool { return count() >= 120 })
	g.Kill()
	close(stop)
	wg.Wait()
	mu.Lock()
	n := len(accepted)
	mu.Unlock()
	t.Logf("killed with %d messages accepted, %d delivered so far", n, backend.Count())
	g.Start()
	delivered := func() (map[string]int, error) {
		got := map[string]int{}
		for _, p := range backend.Messages() {
			_, raw, err := sink.ReadFile(p)
			if err != nil {
				return nil, err
			}
			i := bytes.Index(raw, []byte("X-Tag "))
			if i < 0 {
				return nil, fmt.Errorf("%s: no tag", p)
			}
			end := bytes.IndexByte(raw[i:], '\r')
			got[string(raw[i+6:i+end])]++
		}
		return got, nil
	}
	waitFor(t, "every accepted message to arrive", 60*time.Second, func() bool {
		got, err := delivered()
		if err != nil {
			t.Fatal(err)
		}
		for tag := range accepted {
			if got[tag] == 0 {
				return false
			}
		}
		return true
	})
	got, _ := delivered()
	dups := 0
	for _, c := range got {
		if c > 1 {
			dups += c - 1
		}
	}
	t.Logf("all %d accepted messages delivered; %d duplicates; %d delivered in total", n, dups, backend.Count())
	if dups > n/20+1 {
		t.Errorf("%d duplicates for %d messages: too many", dups, n)
	}
}

// TestConfigErrors: a malformed config exits 2 with a message naming the key.
func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{
		"unknown key":     "hostname: x\nbogus_key: 1\n",
		"bad domain":      "domains:\n  - name: 'not a domain'\n    backends: ['127.0.0.1:25']\n",
		"bad backend":     "domains:\n  - name: example.test\n    backends: ['127.0.0.1:99999']\n",
		"bad policy mode": "policy:\n  layers:\n    dnsbl:\n      mode: maybe\n",
		"yaml syntax":     "domains: [\n",
	}
	wants := map[string]string{
		"unknown key": "bogus_key", "bad domain": "domains[0]", "bad backend": "backends[0]", "bad policy mode": "layers.dnsbl.mode", "yaml syntax": "line",
	}
	for name, body := range cases {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".yaml")
		os.WriteFile(p, []byte(body), 0o644)
		out, code := runMoat(t, "", "config", "check", p)
		if code != 2 || !strings.Contains(out, wants[name]) {
			t.Errorf("%s: exit %d, output %q; want exit 2 naming %q", name, code, out, wants[name])
		}
		if _, code := runMoat(t, "", "serve", "--config", p); code != 2 {
			t.Errorf("%s: serve exit %d, want 2", name, code)
		}
	}
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("domains:\n  - name: example.test\n    backends: ['127.0.0.1:2526']\n"), 0o644)
	if out, code := runMoat(t, "", "config", "check", good); code != 0 {
		t.Errorf("good config: exit %d: %s", code, out)
	}
}

// TestExampleConfigIsValid keeps the shipped example config loadable.
func TestExampleConfigIsValid(t *testing.T) {
	if out, code := runMoat(t, "", "config", "check", "../../examples/moat.yaml"); code != 0 {
		t.Fatalf("examples/moat.yaml: exit %d: %s", code, out)
	}
}

// TestSwaks sends with a real third-party client, pipelined.
func TestSwaks(t *testing.T) {
	swaks := requireTool(t, "swaks")
	backend := startSink(t, sink.Config{})
	g := newGateway(t, "domains:\n"+domainYAML("example.test", backend.Addr(), ""))
	g.Start()
	host, port, _ := strings.Cut(g.SMTP, ":")
	out, err := exec.Command(swaks, "--server", host, "--port", port, "--from", "someone@sender.test", "--to", "alice@example.test",
		"--pipeline", "--helo", "client.sender.test", "--header", "Subject: swaks test", "--body", "hello from swaks").CombinedOutput()
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "250 2.0.0") {
		t.Fatalf("no 250 2.0.0 in swaks transcript:\n%s", out)
	}
	if !backend.Wait(1, 20*time.Second) {
		t.Fatal("swaks message not delivered")
	}
}

// TestAllowlistedIPBypassesBlocklist: a client listed in a DNS blocklist
// is refused (554 5.7.1), and recovered by allowlisting its address, the
// way an admin answers a blocklist false positive; the allowlist lifts
// the listing but not recipient verification.
func TestAllowlistedIPBypassesBlocklist(t *testing.T) {
	backend := startSink(t, sink.Config{})
	zones := "  dnsbl:\n    zones:\n      - {zone: bl.test, weight: 3}\n"
	for _, allow := range []bool{false, true} {
		lists := ""
		if allow {
			lists = "  lists:\n    allow_ips: [127.0.0.1/32]\n"
		}
		g := newGateway(t, zones+lists+fmt.Sprintf("domains:\n  - name: example.test\n    backends: [%q]\n    recipients:\n      list: [alice]\n", backend.Addr()))
		g.DNS.Add(t, "2.0.0.127.bl.test. 300 IN A 127.0.0.2") // the self-test entry
		g.DNS.Add(t, "1.0.0.127.bl.test. 300 IN A 127.0.0.2") // the client
		g.Start()
		reply, err := send(g.SMTP, "someone@sender.test", []string{"alice@example.test"}, fmt.Sprintf(testMsg, "bl", "listed client"))
		if !allow {
			if err == nil || !strings.Contains(err.Error(), "554") || !strings.Contains(err.Error(), "bl.test") {
				t.Fatalf("listed client: reply %q, err %v; want 554 naming bl.test", reply, err)
			}
			g.Stop()
			continue
		}
		if err != nil || !strings.Contains(reply, "queued as") {
			t.Fatalf("allowlisted client: reply %q, err %v; want it accepted", reply, err)
		}
		if _, err := send(g.SMTP, "someone@sender.test", []string{"nobody@example.test"}, fmt.Sprintf(testMsg, "bl2", "x")); err == nil || !strings.Contains(err.Error(), "550") {
			t.Fatalf("allowlisted client, unknown user: %v; want 550", err)
		}
	}
}
