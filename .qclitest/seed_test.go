package main

import (
	"os"
	"strings"
	"testing"

	"moat.dev/moat/internal/queue"
)

func TestSeed(t *testing.T) {
	dir := os.Getenv("SEED")
	if dir == "" {
		t.Skip()
	}
	cfg := queue.DefaultConfig()
	cfg.SpoolDir = dir
	q, err := queue.Open(cfg, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	q.Enqueue(&queue.Envelope{From: "alice@sender.test", Rcpts: []queue.RcptState{{Addr: "bob@a.test", Domain: "a.test"}, {Addr: "carol@b.test", Domain: "b.test", Status: "failed", Attempts: 3, LastReply: "550 5.1.1 no such user", Host: "mx.b.test"}}}, strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
	q.Enqueue(&queue.Envelope{From: "", Rcpts: []queue.RcptState{{Addr: "dan@c.test", Domain: "c.test"}}}, strings.NewReader("Subject: y\r\n\r\nhi\r\n"))
}
