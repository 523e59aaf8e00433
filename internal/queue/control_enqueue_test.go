package queue

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestClientEnqueue: a message handed over by another process reaches the
// running daemon's deliverer, and without a daemon it waits in the spool
// for the next start.
func TestClientEnqueue(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.SpoolDir = dir
	var mu sync.Mutex
	var got []string
	d := DelivererFunc(func(ctx context.Context, del *Delivery) []Result {
		mu.Lock()
		got = append(got, del.Rcpts...)
		mu.Unlock()
		out := make([]Result, len(del.Rcpts))
		for i, r := range del.Rcpts {
			out[i] = Result{Rcpt: r}
			out[i].Reply.Code = 250
		}
		return out
	})
	env := func(rcpt string) *Envelope {
		return &Envelope{From: "a@b.example", Rcpts: []RcptState{{Addr: rcpt, Domain: "example.com"}}}
	}
	// Lay the spool out, then no daemon: direct.
	q0, err := Open(cfg, d, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	q0.Close()
	id, err := NewClient(dir).Enqueue(env("first@example.com"), strings.NewReader("Subject: x\r\n\r\nx\r\n"))
	if err != nil || !ValidID(id) {
		t.Fatalf("direct enqueue: %q %v", id, err)
	}
	q, err := Open(cfg, d, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- q.Run(ctx) }()
	// With the daemon running: through control/.
	id2, err := NewClient(dir).Enqueue(env("second@example.com"), strings.NewReader("Subject: y\r\n\r\ny\r\n"))
	if err != nil || !ValidID(id2) || id2 == id {
		t.Fatalf("enqueue via daemon: %q %v", id2, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivered %v", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	q.Close()
}
