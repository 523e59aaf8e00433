package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"moat.dev/moat/internal/queue"
	"moat.dev/moat/internal/verdict"
)

func queueCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := runQueue(args, &out, &errb)
	return code, out.String(), errb.String()
}

func testSpool(t *testing.T) (queue.Config, []string) {
	cfg := queue.DefaultConfig()
	cfg.SpoolDir = filepath.Join(t.TempDir(), "spool")
	q, err := queue.Open(cfg, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var ids []string
	for _, rc := range []string{"bob@a.test", "carol@b.test"} {
		id, err := q.Enqueue(&queue.Envelope{From: "alice@sender.test", Rcpts: []queue.RcptState{{Addr: rc, Domain: strings.Split(rc, "@")[1]}}},
			strings.NewReader("Subject: hi\r\n\r\nbody\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return cfg, ids
}

func TestQueueCLIUsage(t *testing.T) {
	cfg, ids := testSpool(t)
	for _, args := range [][]string{
		{"--spool", cfg.SpoolDir},
		{"--spool", cfg.SpoolDir, "frobnicate"},
		{"--spool", cfg.SpoolDir, "show"},
		{"--spool", cfg.SpoolDir, "retry", ids[0], "--domain", "a.test"},
		{"--spool", cfg.SpoolDir, "--config", "x.yaml", "list"},
		{"--no-such-flag", "list"},
		{"--spool", filepath.Join(t.TempDir(), "missing"), "list"},
		{"--config", filepath.Join(t.TempDir(), "missing.yaml"), "list"},
	} {
		code, _, stderr := queueCLI(t, args...)
		if code != 2 || !strings.Contains(stderr, "moat queue") && !strings.Contains(stderr, "flag") {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr)
		}
	}
	code, _, stderr := queueCLI(t, "--spool", filepath.Join(t.TempDir(), "missing"), "list")
	if code != 2 || !strings.Contains(stderr, "spool_dir") {
		t.Errorf("missing spool: exit %d, %q", code, stderr)
	}
}

func TestQueueCLIDirect(t *testing.T) {
	cfg, ids := testSpool(t)
	code, out, _ := queueCLI(t, "list", "--spool", cfg.SpoolDir)
	if code != 0 || !strings.Contains(out, ids[0]) || !strings.Contains(out, "<bob@a.test>") || !strings.Contains(out, "2 message(s)") {
		t.Fatalf("list: exit %d\n%s", code, out)
	}
	code, out, _ = queueCLI(t, "--spool", cfg.SpoolDir, "--json", "list", "--domain", "b.test")
	var list []queue.Summary
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0].ID != ids[1] {
		t.Fatalf("list --json --domain: exit %d\n%s", code, out)
	}
	if code, out, _ = queueCLI(t, "--spool", cfg.SpoolDir, "show", strings.ToLower(ids[0])); code != 0 || !strings.Contains(out, "alice@sender.test") {
		t.Fatalf("show: exit %d\n%s", code, out)
	}
	if code, _, _ = queueCLI(t, "--spool", cfg.SpoolDir, "show", "0000000000000000"); code != 1 {
		t.Fatalf("show unknown: exit %d", code)
	}
	if code, out, _ = queueCLI(t, "--spool", cfg.SpoolDir, "retry", "--domain", "a.test"); code != 0 || !strings.HasPrefix(out, "1 message") {
		t.Fatalf("retry --domain: exit %d %q", code, out)
	}
	if code, _, _ = queueCLI(t, "--spool", cfg.SpoolDir, "delete", ids[0]); code != 0 {
		t.Fatalf("delete: exit %d", code)
	}
	if _, err := os.Stat(filepath.Join(cfg.SpoolDir, "ready", ids[0]+".eml")); !os.IsNotExist(err) {
		t.Fatalf("deleted message still there: %v", err)
	}
	if code, _, _ = queueCLI(t, "--spool", cfg.SpoolDir, "delete", ids[0]); code != 1 {
		t.Fatalf("delete again: exit %d", code)
	}
	if code, _, _ = queueCLI(t, "--spool", cfg.SpoolDir, "retry", "../../x"); code != 1 {
		t.Fatalf("retry bad id: exit %d", code)
	}
}

// TestQueueCLIWithDaemon: the spool is held by a running queue (as under
// moat serve); changes go through its control directory.
func TestQueueCLIWithDaemon(t *testing.T) {
	cfg, ids := testSpool(t)
	cfg.MinBackoff = queue.Duration(time.Hour)
	attempts := make(chan string, 10)
	d := queue.DelivererFunc(func(ctx context.Context, dl *queue.Delivery) []queue.Result {
		rc, err := dl.Open()
		if err == nil {
			io.Copy(io.Discard, rc)
			rc.Close()
		}
		attempts <- dl.Env.ID
		out := make([]queue.Result, len(dl.Rcpts))
		for i, r := range dl.Rcpts {
			out[i] = queue.Result{Rcpt: r, Reply: verdict.Reply{Code: 451, Enhanced: [3]int{4, 4, 1}, Text: "later"}}
		}
		return out
	})
	q, err := queue.Open(cfg, d, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	defer func() { cancel(); <-done; q.Close() }()
	<-attempts
	<-attempts

	if code, out, errs := queueCLI(t, "--spool", cfg.SpoolDir, "retry", ids[0]); code != 0 {
		t.Fatalf("retry via daemon: exit %d %q %q", code, out, errs)
	}
	select {
	case id := <-attempts:
		if id != ids[0] {
			t.Fatalf("retried %s, want %s", id, ids[0])
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no attempt after retry")
	}
	if code, _, _ := queueCLI(t, "--spool", cfg.SpoolDir, "delete", "0000000000000000"); code != 1 {
		t.Fatalf("delete unknown via daemon: exit %d", code)
	}
	if code, _, _ := queueCLI(t, "--spool", cfg.SpoolDir, "delete", ids[1]); code != 0 {
		t.Fatalf("delete via daemon: exit %d", code)
	}
	if _, err := q.Show(ids[1]); err == nil {
		t.Fatal("daemon still has the deleted message")
	}
	code, out, _ := queueCLI(t, "--spool", cfg.SpoolDir, "list")
	if code != 0 || !strings.Contains(out, ids[0]) || strings.Contains(out, ids[1]) || !strings.Contains(out, "451 4.4.1 later") {
		t.Fatalf("list via daemon: exit %d\n%s", code, out)
	}
}
