package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"strings"
	"testing"

	"moat.dev/moat/internal/check/bayes"
	"moat.dev/moat/internal/quarantine"
	"moat.dev/moat/internal/quarantine/qtest"
	"moat.dev/moat/internal/sink"
	"moat.dev/moat/internal/users"
)

func TestQuarantineCLI(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testQuarantineCLI(t, qtest.DB(t), "sqlite") })
	t.Run("postgres", func(t *testing.T) { testQuarantineCLI(t, qtest.PostgresDB(t), "postgres") })
}

func testQuarantineCLI(t *testing.T, db *sql.DB, driver string) {
	ctx := context.Background()
	lr, err := newCLILearner(ctx, db, driver, bayes.DefaultConfig().Classifier)
	if err != nil {
		t.Fatal(err)
	}
	sk, err := sink.Start(sink.Config{Maildir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer sk.Close()
	cfg := quarantine.DefaultConfig()
	cfg.Dir = t.TempDir()
	q, err := quarantine.New(cfg, quarantine.Deps{DB: db, Driver: driver, Learner: lr, Enqueuer: &qtest.SMTPEnqueuer{Addr: sk.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	id, err := q.Hold(ctx, &quarantine.Entry{From: "s@x.example", Rcpts: []string{"a@a.example", "b@b.example"}, Subject: "Hello CLI", Score: 6},
		strings.NewReader("Subject: Hello CLI\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	run := func(stdin string, args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		rc := runQuarantine(ctx, q, db, driver, args, strings.NewReader(stdin), &out, &errb)
		return rc, out.String(), errb.String()
	}
	if rc, out, _ := run("", "list", "--domain", "a.example"); rc != 0 || !strings.Contains(out, id+"-1") || strings.Contains(out, id+"-2") {
		t.Errorf("list: %d\n%s", rc, out)
	}
	rc, out, _ := run("", "list", "--json")
	var es []quarantine.Entry
	if rc != 0 || json.Unmarshal([]byte(out), &es) != nil || len(es) != 2 {
		t.Errorf("list --json: %d %s", rc, out)
	}
	if rc, out, _ := run("", "show", id+"-2"); rc != 0 || !strings.Contains(out, "Hello CLI") || !strings.Contains(out, "held") {
		t.Errorf("show: %d\n%s", rc, out)
	}
	if rc, out, _ := run("", "show", id+"-2", "--raw"); rc != 0 || !strings.Contains(out, "body") {
		t.Errorf("show --raw: %d\n%s", rc, out)
	}
	if rc, _, errs := run("", "show", "nope"); rc != 1 || !strings.Contains(errs, "no such message") {
		t.Errorf("show missing: %d %s", rc, errs)
	}
	if rc, out, _ := run("", "release", id+"-1", "--teach"); rc != 0 || !strings.Contains(out, "released") {
		t.Errorf("release: %d %s", rc, out)
	}
	if !sk.Wait(1, 10e9) {
		t.Error("release did not deliver")
	}
	if tot, err := lr.c.Totals(ctx, "a@a.example"); err != nil || tot.Ham != 1 {
		t.Errorf("release --teach taught %+v, %v; want one ham", tot, err)
	}
	// Report spam: b's copy teaches b's model a spam lesson and goes.
	if rc, out, errs := run("", "spam", id+"-2"); rc != 0 || !strings.Contains(out, id+"-2 reported as spam") {
		t.Errorf("spam: %d %s %s", rc, out, errs)
	}
	if tot, err := lr.c.Totals(ctx, "b@b.example"); err != nil || tot.Spam != 1 {
		t.Errorf("spam taught %+v, %v; want one spam lesson", tot, err)
	}
	id2, err := q.Hold(ctx, &quarantine.Entry{From: "s@x.example", Rcpts: []string{"a@a.example", "b@b.example"}, Subject: "Again", Score: 6},
		strings.NewReader("Subject: Again\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	// A message ID acts on every copy still held.
	if rc, out, _ := run("", "delete", id2); rc != 0 || !strings.Contains(out, id2+"-1 deleted") || !strings.Contains(out, id2+"-2 deleted") {
		t.Errorf("delete by message id: %d %s", rc, out)
	}
	if rc, _, errs := run("", "spam", id2+"-1"); rc != 1 || !strings.Contains(errs, "no longer held") {
		t.Errorf("spam of a deleted copy: %d %s", rc, errs)
	}
	if rc, _, errs := run("pw-123456789\n", "user", "add", "root", "--role", "site_admin"); rc != 0 {
		t.Fatalf("user add: %s", errs)
	}
	us := users.NewDriver(db, driver)
	if _, err := us.Authenticate(ctx, "root", "pw-123456789"); err != nil {
		t.Errorf("created user cannot log in: %v", err)
	}
	if rc, out, _ := run("", "user", "list"); rc != 0 || !strings.Contains(out, "site_admin") {
		t.Errorf("user list: %s", out)
	}
	if rc, _, _ := run("", "user", "add", "x", "--role", "king"); rc != 1 {
		t.Errorf("bad role accepted")
	}
}
