package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"

	"moat.dev/moat/internal/classify"
	"moat.dev/moat/internal/message"
	"moat.dev/moat/internal/sink"
	"moat.dev/moat/internal/testutil/pgtest"
)

// postgresDB creates an empty database on the server named by
// MOAT_TEST_POSTGRES (dropped at the test's end) and returns its DSN.
func postgresDB(t *testing.T) string {
	t.Helper()
	return pgtest.Open(t).Fresh(t, "moat_e2e")
}

// pgMail is a message of a spam or ham vocabulary, distinct by n.
func pgMail(spam bool, n int, to string) string {
	subject, body := "project meeting notes", "hi team, the budget review and the agenda for thursday's project meeting are attached, thanks"
	if spam {
		subject, body = "cheap pills winner", "click now: cheap pills, casino prize and free money for the winner, limited offer, unsubscribe"
	}
	return fmt.Sprintf("From: s@sender.test\r\nTo: %s\r\nSubject: %s %d\r\nMessage-ID: <pg%v%d@sender.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n%s (ref %d)\r\n",
		to, subject, n, spam, n, body, n)
}

// TestPostgresGateway runs the gateway on the PostgreSQL store: domains and
// recipients, the classifier's model (trained in the shared database by
// another process, as a second node or moat learn would), message
// tracking and the admin API, the quarantine and its release.
func TestPostgresGateway(t *testing.T) {
	dsn := postgresDB(t)
	backend := startSink(t, sink.Config{})
	g := newGateway(t, fmt.Sprintf("store:\n  driver: postgres\n  dsn: %q\n", dsn)+
		"domains:\n"+domainYAML("example.test", backend.Addr(), "    policy:\n      quarantine_score: 900\n      reject_score: 3000\n"))
	// A small site model (the harness writes the checks: key).
	yml, err := os.ReadFile(g.cfgPath)
	if err != nil || !bytes.Contains(yml, []byte("\nchecks:\n")) {
		t.Fatalf("config: %v\n%s", err, yml)
	}
	yml = bytes.Replace(yml, []byte("\nchecks:\n"), []byte("\nchecks:\n  bayes:\n    classifier:\n      algorithm: logreg\n      min_ham: 10\n      min_spam: 10\n"), 1)
	if err := os.WriteFile(g.cfgPath, yml, 0o644); err != nil {
		t.Fatal(err)
	}
	g.Start()

	// Train the model in the database the running gateway reads.
	ctx := context.Background()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := classify.MigrateDriver(ctx, db, "postgres"); err != nil {
		t.Fatal(err)
	}
	cfg := classify.DefaultConfig()
	cfg.Algorithm, cfg.MinHam, cfg.MinSpam = "logreg", 10, 10
	trainer, err := classify.New(cfg, classify.NewSQLStoreWith(db, classify.SQLStoreOptions{Driver: "postgres"}))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 15 {
		for _, spam := range []bool{false, true} {
			label := classify.Ham
			if spam {
				label = classify.Spam
			}
			m := message.ParseBytes([]byte(pgMail(spam, i, "alice@example.test")), message.DefaultLimits())
			if _, err := trainer.Learn(ctx, "", m, label); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Ham and spam through the gateway, scored by that model.
	replies := map[bool]string{}
	for _, spam := range []bool{false, true} {
		reply, err := send(g.SMTP, "s@sender.test", []string{"alice@example.test"}, pgMail(spam, 100, "alice@example.test"))
		if err != nil {
			t.Fatalf("spam=%v: %v", spam, err)
		}
		replies[spam] = queueID(reply)
	}
	if !backend.Wait(2, 20*time.Second) {
		t.Fatalf("%d of 2 messages delivered", backend.Count())
	}
	var spamSeen int
	for _, f := range backend.Messages() {
		_, raw, _ := sink.ReadFile(f)
		if bytes.Contains(raw, []byte("cheap pills winner 100")) {
			spamSeen++
		} else if bytes.Contains(raw, []byte("X-Spam-Flag: YES")) {
			t.Errorf("ham tagged:\n%s", raw)
		}
	}
	if spamSeen != 1 {
		t.Fatalf("%d spam messages delivered, want 1", spamSeen)
	}

	// Tracking and the admin API, on the same database: the classifier's
	// verdicts (BAYES_*) are among the tracked symbols.
	tok, code := g.moat("token", "create", "--config", g.cfgPath, "--role", "site", "--label", "e2e")
	if code != 0 {
		t.Fatalf("token create: %s", tok)
	}
	tok = strings.TrimSpace(tok[strings.LastIndex(strings.TrimSpace(tok), "\n")+1:])
	var found struct {
		Items []struct {
			QueueID string   `json:"queue_id"`
			Symbols []string `json:"symbols"`
		} `json:"items"`
	}
	waitFor(t, "both messages tracked", 10*time.Second, func() bool {
		req, _ := http.NewRequest("GET", "http://"+g.HTTP+"/api/v1/messages?rcpt=alice@example.test", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		found.Items = nil
		if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&found) != nil {
			t.Fatalf("GET /api/v1/messages: %s", resp.Status)
		}
		n := 0
		for _, it := range found.Items {
			if it.QueueID == replies[false] || it.QueueID == replies[true] {
				n++
			}
		}
		return n == 2
	})
	for _, it := range found.Items {
		bayes := ""
		for _, s := range it.Symbols {
			if strings.HasPrefix(s, "BAYES_") {
				bayes = s
			}
		}
		switch it.QueueID {
		case replies[true]:
			if !strings.HasPrefix(bayes, "BAYES_9") {
				t.Errorf("spam tracked with symbols %v", it.Symbols)
			}
		case replies[false]:
			if !strings.HasPrefix(bayes, "BAYES_0") {
				t.Errorf("ham tracked with symbols %v", it.Symbols)
			}
		}
	}

	// The quarantine: held (250), listed, released to the backend.
	held := "From: s@sender.test\r\nTo: alice@example.test\r\nSubject: held on postgres\r\n\r\n" + gtube + "\r\n"
	if _, err := send(g.SMTP, "s@sender.test", []string{"alice@example.test"}, held); err != nil {
		t.Fatalf("quarantined mail must get 250: %v", err)
	}
	var id, out string
	waitFor(t, "the message in the quarantine", 10*time.Second, func() bool {
		out, _ = g.moat("quarantine", "--config", g.cfgPath, "list")
		if m := quarantineID.FindStringSubmatch(out); m != nil && strings.Contains(out, "held on postgres") {
			id = m[1]
			return true
		}
		return false
	})
	before, err := trainer.Totals(ctx, "alice@example.test")
	if err != nil {
		t.Fatal(err)
	}
	if out, code := g.moat("quarantine", "--config", g.cfgPath, "release", id, "--teach"); code != 0 {
		t.Fatalf("release %s: exit %d: %s", id, code, out)
	}
	// --teach taught the shared model one more ham.
	if after, err := trainer.Totals(ctx, "alice@example.test"); err != nil || after.Ham != before.Ham+1 {
		t.Errorf("release --teach: ham %d -> %d (%v), want +1", before.Ham, after.Ham, err)
	}
	if !backend.Wait(3, 20*time.Second) {
		t.Fatal("released message not delivered")
	}
	released := false
	for _, f := range backend.Messages() {
		_, raw, _ := sink.ReadFile(f)
		released = released || bytes.Contains(raw, []byte("held on postgres"))
	}
	if !released {
		t.Fatal("the released message is not among the deliveries")
	}
}
