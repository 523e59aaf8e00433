package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"moat.dev/moat/internal/check/bayes"
	"moat.dev/moat/internal/quarantine"
	"moat.dev/moat/internal/quarantine/qtest"
)

// runCaptured runs a command entry point with stdin from the given text
// (nil: a pipe nothing is ever written to, so a command that reads it
// blocks) and returns its exit code and stderr. It fails the test if the
// command does not return within 20s.
func runCaptured(t *testing.T, stdin *string, cmd func([]string) int, args ...string) (int, string) {
	t.Helper()
	ef, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	var in *os.File
	if stdin == nil {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		defer r.Close()
		in = r
	} else {
		p := filepath.Join(t.TempDir(), "stdin")
		if err := os.WriteFile(p, []byte(*stdin), 0o600); err != nil {
			t.Fatal(err)
		}
		if in, err = os.Open(p); err != nil {
			t.Fatal(err)
		}
		defer in.Close()
	}
	oldErr, oldIn, oldOut := os.Stderr, os.Stdin, os.Stdout
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	os.Stderr, os.Stdin, os.Stdout = ef, in, devnull
	done := make(chan int, 1)
	go func() { done <- cmd(args) }()
	var rc int
	select {
	case rc = <-done:
	case <-time.After(20 * time.Second):
		os.Stderr, os.Stdin, os.Stdout = oldErr, oldIn, oldOut
		t.Fatalf("%v: did not return (waiting on stdin?)", args)
	}
	os.Stderr, os.Stdin, os.Stdout = oldErr, oldIn, oldOut
	b, _ := os.ReadFile(ef.Name())
	return rc, string(b)
}

func strp(s string) *string { return &s }

func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		t.Errorf("%s was created by a command that failed", path)
	}
}

// Usage errors exit 2 naming the problem, before any file is created
// and without waiting on stdin.
func TestCLIUsageErrors(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "moat.yaml")
	data := filepath.Join(dir, "data")
	if err := os.WriteFile(cfg, []byte("data_dir: "+data+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		stdin *string
		cmd   func([]string) int
		args  []string
		want  string
	}{
		{"token: unquoted label", strp(""), cmdToken, []string{"create", "--config", cfg, "--role", "site", "--label", "ops", "team"}, `unexpected argument "team"`},
		{"token: bad role", strp(""), cmdToken, []string{"create", "--config", cfg, "--role", "bogus", "--label", "x"}, `--role: "bogus" is not one of`},
		{"pass-secret: not a domain", strp(""), cmdPassSecret, []string{"--config", cfg, "exmaple com"}, `"exmaple com" is not a valid domain name`},
		{"serve: extra argument", strp(""), cmdServe, []string{"--config", cfg, "extra"}, `unexpected argument "extra"`},
		{"config check: two files", strp(""), cmdConfig, []string{"check", cfg, "other.yaml"}, `unexpected argument "other.yaml"`},
		{"verify-pass: no key option", nil, cmdVerifyPass, []string{"--rcpt", "a@example.com"}, "usage: moat verify-pass"},
		{"verify-pass: extra argument", nil, cmdVerifyPass, []string{"--secret-file", "k", "message.eml"}, `unexpected argument "message.eml"`},
		{"classify: file argument", nil, cmdClassify, []string{"--db", filepath.Join(dir, "model.db"), "message.eml"}, `unexpected argument "message.eml"`},
		{"lockdown: newline in --domain", strp(""), cmdLockdown, []string{"--gateway-ip", "192.0.2.1", "--domain", "x\nflush ruleset"}, "is not a valid domain name"},
		{"lockdown: newline in --milter", strp(""), cmdLockdown, []string{"--format", "postfix", "--gateway-ip", "192.0.2.1", "--milter", "inet:127.0.0.1:1\nsmtpd_recipient_restrictions = permit"}, "--milter"},
		{"lockdown: extra argument", strp(""), cmdLockdown, []string{"--gateway-ip", "192.0.2.1", "extra"}, `unexpected argument "extra"`},
		{"lockdown: no gateway", strp(""), cmdLockdown, nil, "give --gateway-ip"},
		{"milter: extra argument", strp(""), cmdMilter, []string{"extra"}, `unexpected argument "extra"`},
		{"milter: bad domain", strp(""), cmdMilter, []string{"--domain", "a b", "--secret-file", "k"}, "is not a valid domain name"},
		{"sink: bad listen", strp(""), cmdSink, []string{"--listen", "127.0.0.1:99999", "--maildir", filepath.Join(dir, "sink")}, `--listen "127.0.0.1:99999"`},
		{"sink: bad regexp", strp(""), cmdSink, []string{"--reject-rcpt", "(", "--maildir", filepath.Join(dir, "sink")}, "--reject-rcpt"},
		{"sink: extra argument", strp(""), cmdSink, []string{"--maildir", filepath.Join(dir, "sink"), "extra"}, `unexpected argument "extra"`},
		{"bench: unknown profile", strp(""), cmdBench, []string{"--profiles", "core,bogus"}, `unknown profile "bogus"`},
		{"bench: no messages", strp(""), cmdBench, []string{"--messages", "0"}, "--messages 0"},
		{"bench: bad log level", strp(""), cmdBench, []string{"--log-level", "loud"}, "--log-level"},
		{"quarantine: missing --db", strp(""), cmdQuarantine, []string{"--db", filepath.Join(dir, "q.db"), "--dir", dir, "list"}, "--db " + filepath.Join(dir, "q.db")},
		{"quarantine: missing --dir", strp(""), cmdQuarantine, []string{"--db", cfg, "--dir", filepath.Join(dir, "qdir"), "list"}, "--dir " + filepath.Join(dir, "qdir")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc, errs := runCaptured(t, tc.stdin, tc.cmd, tc.args...)
			if rc != 2 || !strings.Contains(errs, tc.want) || strings.Contains(errs, "goroutine ") {
				t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, rc, errs, tc.want)
			}
		})
	}
	for _, p := range []string{data, filepath.Join(dir, "model.db"), filepath.Join(dir, "sink"), filepath.Join(dir, "q.db"), filepath.Join(dir, "qdir")} {
		mustNotExist(t, p)
	}
}

func TestAuditRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--gateway-ip", "192.0.2.1", "not a domain"}, `"not a domain" is not a valid domain name`},
		{[]string{"--gateway-ip", "192.0.2.1", "--backend", ":25", "example.com"}, `--backend ":25": missing host`},
		{[]string{"--gateway-ip", "192.0.2.1", "--source-ip", "nonsense", "example.com"}, "--source-ip: "},
		{[]string{"example.com"}, "give --gateway-host or --gateway-ip"},
	} {
		var out, errb bytes.Buffer
		if rc := runAudit(tc.args, &out, &errb); rc != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, rc, errb.String(), tc.want)
		}
	}
}

// moat classify scores with an existing model only: a mistyped --db must
// not create an empty one and call everything ham; nor is an empty
// message scored.
func TestClassifyRefusesMissingModelAndEmptyInput(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "typo.db")
	rc, errs := runCaptured(t, strp("Subject: x\n\nhello\n"), cmdClassify, "--db", missing)
	if rc != 1 || !strings.Contains(errs, "--db "+missing) {
		t.Errorf("missing model: exit %d, stderr %q", rc, errs)
	}
	mustNotExist(t, missing)
	db := filepath.Join(dir, "m.db")
	if rc, errs := runCaptured(t, strp(""), cmdLearn, "--db", db, "--ham", writeMsg(t, dir), "-q"); rc != 0 {
		t.Fatalf("learn: exit %d %s", rc, errs)
	}
	if rc, errs := runCaptured(t, strp(""), cmdClassify, "--db", db); rc != 1 || !strings.Contains(errs, "empty message") {
		t.Errorf("empty stdin: exit %d, stderr %q", rc, errs)
	}
	if rc, errs := runCaptured(t, strp("Subject: x\n\nhello\n"), cmdClassify, "--db", db); rc != 0 {
		t.Errorf("classify: exit %d, stderr %q", rc, errs)
	}
}

func writeMsg(t *testing.T, dir string) string {
	p := filepath.Join(dir, "one.eml")
	if err := os.WriteFile(p, []byte("Subject: one\n\nhello there\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// moat queue --config uses the configured queue.spool_dir, as serve does.
func TestQueueConfigSpoolDir(t *testing.T) {
	qc, ids := testSpool(t)
	cfg := filepath.Join(t.TempDir(), "moat.yaml")
	if err := os.WriteFile(cfg, []byte("data_dir: "+t.TempDir()+"\nqueue:\n  spool_dir: "+qc.SpoolDir+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := queueCLI(t, "--config", cfg, "list")
	if code != 0 || !strings.Contains(out, ids[0]) {
		t.Errorf("list --config: exit %d\n%s%s", code, out, errs)
	}
}

func TestQuarantineCLIRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	db := qtest.DB(t)
	lr, err := newCLILearner(ctx, db, "sqlite", bayes.DefaultConfig().Classifier)
	if err != nil {
		t.Fatal(err)
	}
	cfg := quarantine.DefaultConfig()
	cfg.Dir = t.TempDir()
	q, err := quarantine.New(cfg, quarantine.Deps{DB: db, Driver: "sqlite", Learner: lr})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"list", "--state", "bogus"}, `--state "bogus"`},
		{[]string{"list", "--limit", "0"}, "--limit 0"},
		{[]string{"list", "extra"}, `unexpected argument "extra"`},
		{[]string{"thresholds", "a@b.example", "--clear", "--tag", "1"}, "--clear takes no thresholds"},
		{[]string{"thresholds", "nobody"}, `"nobody" is not an address`},
		{[]string{"user", "add", "bad name", "--role", "site_admin"}, "is not a user name"},
		{[]string{"user", "add", "dom", "--role", "domain_admin"}, "needs --domain"},
		{[]string{"user", "add", "dom", "--role", "domain_admin", "--domain", "a b"}, `--domain: "a b"`},
		{[]string{"user", "add", "u", "--role", "user", "--address", "nobody"}, `--address: "nobody"`},
		{[]string{"user", "add", "u", "--role", "user", "--domain", "a.example", "--address", "u@a.example"}, "--domain is for --role domain_admin"},
		{[]string{"user", "del"}, "usage: moat quarantine user del"},
		{[]string{"user", "passwd"}, "usage: moat quarantine user passwd"},
		{[]string{"partner", "p", "a b"}, `"a b" is not a valid domain name`},
	} {
		var out, errb bytes.Buffer
		if rc := runQuarantine(ctx, q, db, "sqlite", tc.args, strings.NewReader("pw-123456789\n"), &out, &errb); rc != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, rc, errb.String(), tc.want)
		}
	}
	var out, errb bytes.Buffer
	if rc := runQuarantine(ctx, q, db, "sqlite", []string{"user", "del", "ghost"}, nil, &out, &errb); rc != 1 || !strings.Contains(errb.String(), `user "ghost": no such user`) {
		t.Errorf("del unknown user: exit %d, stderr %q", rc, errb.String())
	}
	if rc := runQuarantine(ctx, q, db, "sqlite", []string{"user", "add", "ann", "--role", "domain_admin", "--domain", "A.example"}, strings.NewReader("pw-123456789\n"), &out, &errb); rc != 0 {
		t.Errorf("valid domain_admin refused: %s", errb.String())
	}
}
