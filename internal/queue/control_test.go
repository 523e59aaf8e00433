package queue

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestControlDirect: no daemon holds the spool; the Client changes the
// files itself.
func TestControlDirect(t *testing.T) {
	cfg := testConfig(t)
	q, err := Open(cfg, nil, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	a := commit(t, q, "alice@sender.test", testMsg, "bob@a.test")
	b := commit(t, q, "alice@sender.test", testMsg, "carol@b.test", "dan@a.test")
	c := commit(t, q, "alice@sender.test", testMsg, "erin@c.test")
	q.Close()

	cl := NewClient(cfg.SpoolDir)
	list, err := cl.List(Filter{})
	if err != nil || len(list) != 3 || list[0].ID != a || list[2].ID != c {
		t.Fatalf("List = %v, %v", list, err)
	}
	if l, _ := cl.List(Filter{Domain: "a.test"}); len(l) != 2 {
		t.Fatalf("List(a.test) = %d messages", len(l))
	}
	if err := cl.Delete(a); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cfg.SpoolDir, "ready", a+".eml")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("deleted message still on disk: %v", err)
	}
	if err := cl.Delete(a); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete = %v", err)
	}
	if err := cl.RetryNow("../../etc/passwd"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("RetryNow(bad id) = %v", err)
	}
	if err := cl.Hold(b); err != nil {
		t.Fatal(err)
	}
	if s, err := cl.Show(b); err != nil || !s.Held {
		t.Fatalf("Show after hold = %+v, %v", s, err)
	}
	if _, err := os.Stat(filepath.Join(cfg.SpoolDir, "hold", b+".eml")); err != nil {
		t.Fatal(err)
	}
	if err := cl.RetryNow(b); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("RetryNow of held message = %v", err)
	}
	if n, err := cl.RetryDomain("c.test"); err != nil || n != 1 {
		t.Fatalf("RetryDomain = %d, %v", n, err)
	}
	if err := cl.Release(b); err != nil {
		t.Fatal(err)
	}
	if s, err := cl.Show(b); err != nil || s.Held {
		t.Fatalf("Show after release = %+v, %v", s, err)
	}
	// The lock is free again: the daemon can start.
	q, err = Open(cfg, nil, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	q.Close()
}

// TestControlViaDaemon: a running queue holds the lock; the Client goes
// through control/ and the daemon acts on its in-memory schedule.
func TestControlViaDaemon(t *testing.T) {
	cfg := testConfig(t)
	cfg.MinBackoff = Duration(time.Hour) // only a retry request brings a second attempt
	cfg.MaxBackoff = cfg.MinBackoff
	rec := newRecorder(func(a attempt) []Result { return reply(a, temp451) })
	r := start(t, cfg, rec, func(q *Queue) { q.ctlInterval = 20 * time.Millisecond })
	a := commit(t, r.Queue, "alice@sender.test", testMsg, "bob@a.test")
	b := commit(t, r.Queue, "alice@sender.test", testMsg, "carol@b.test")
	c := commit(t, r.Queue, "alice@sender.test", testMsg, "dan@b.test")
	attempts := func(id string) int {
		n := 0
		for _, at := range rec.snapshot() {
			if at.Env.ID == id {
				n++
			}
		}
		return n
	}
	waitFor(t, "first attempts", func() bool { return attempts(a) == 1 && attempts(b) == 1 && attempts(c) == 1 })

	cl := NewClient(cfg.SpoolDir)
	if l, err := cl.List(Filter{}); err != nil || len(l) != 3 {
		t.Fatalf("List while daemon runs = %d, %v", len(l), err)
	}
	if err := cl.RetryNow(a); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "retry of a", func() bool { return attempts(a) == 2 })
	if n, err := cl.RetryDomain("b.test"); err != nil || n != 2 {
		t.Fatalf("RetryDomain = %d, %v", n, err)
	}
	waitFor(t, "retry of b.test", func() bool { return attempts(b) == 2 && attempts(c) == 2 })
	if err := cl.Delete(b); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Show(b); !errors.Is(err, ErrNotFound) {
		t.Fatalf("daemon still has deleted message: %v", err)
	}
	if err := cl.Hold(c); err != nil {
		t.Fatal(err)
	}
	if s, _ := r.Show(c); !s.Held {
		t.Fatal("daemon did not hold the message")
	}
	if err := cl.Delete(newID(time.Now())); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Delete(unknown) via daemon = %v", err)
	}
	if err := cl.Release(c); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "attempt after release", func() bool { return attempts(c) == 3 })
	if attempts(a) != 2 || attempts(b) != 2 {
		t.Fatalf("unexpected attempts: a=%d b=%d", attempts(a), attempts(b))
	}
	if f := files(t, cfg, "control"); len(f) != 0 {
		t.Fatalf("control/ left with %v", f)
	}
}

// TestControlDaemonGone: the daemon stops while a request waits; the
// client then does the change itself.
func TestControlDaemonGone(t *testing.T) {
	cfg := testConfig(t)
	q, err := Open(cfg, nil, testLogger(t), nil) // holds the lock, never answers
	if err != nil {
		t.Fatal(err)
	}
	id := commit(t, q, "alice@sender.test", testMsg, "bob@a.test")
	done := make(chan error, 1)
	go func() { done <- NewClient(cfg.SpoolDir).Delete(id) }()
	waitFor(t, "request file", func() bool { return len(files(t, cfg, "control")) == 1 })
	q.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if f := files(t, cfg, "ready"); len(f) != 0 {
		t.Fatalf("ready/ = %v after delete", f)
	}
}

// TestShutdownGrace: Run waits for deliveries in flight, then cancels them;
// a cancelled attempt is not counted and the message stays queued.
func TestShutdownGrace(t *testing.T) {
	cfg := testConfig(t)
	cfg.ShutdownGrace = Duration(50 * time.Millisecond)
	started := make(chan struct{})
	d := DelivererFunc(func(ctx context.Context, dl *Delivery) []Result {
		close(started)
		<-ctx.Done() // a backend that hangs until cancelled
		return nil
	})
	q, err := Open(cfg, d, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	id := commit(t, q, "alice@sender.test", testMsg, "bob@a.test")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	<-started
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	q.Close()
	s, err := NewClient(cfg.SpoolDir).Show(id)
	if err != nil || s.Rcpts[0].Attempts != 0 || s.Rcpts[0].Status != StatusPending {
		t.Fatalf("after shutdown: %+v, %v", s, err)
	}
}
