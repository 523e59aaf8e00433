package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestLearnClassifyCLI(t *testing.T) {
	const corpus = "/work/shared/corpus/spamassassin-2002.tar.gz"
	if _, err := os.Stat(corpus); err != nil {
		t.Skip("corpus not available")
	}
	dir := t.TempDir()
	db := filepath.Join(dir, "m.db")
	msgDir := filepath.Join(dir, "one")
	os.MkdirAll(msgDir, 0o755)
	one := filepath.Join(msgDir, "1.eml")
	os.WriteFile(one, []byte("From: a@b.example\r\nSubject: hello\r\n\r\nhello world\r\n"), 0o644)
	if rc := cmdLearn([]string{"--db", db, "--ham", one, "-q"}); rc != 0 {
		t.Fatalf("learn --ham: rc %d", rc)
	}
	if rc := cmdLearn([]string{"--db", db, "--spam", one, "-q"}); rc != 0 {
		t.Fatalf("learn --spam (move): rc %d", rc)
	}
	c, closeDB, err := openClassifier(context.Background(), db, "")
	if err != nil {
		t.Fatal(err)
	}
	tot, err := c.Totals(context.Background(), "")
	closeDB()
	if err != nil || tot.Ham != 0 || tot.Spam != 1 {
		t.Fatalf("after ham then spam lesson of the same message: %+v %v", tot, err)
	}
	if rc := cmdLearn([]string{"--db", db, "--mode", "bogus", "--ham", one}); rc != 2 {
		t.Fatalf("bad mode: rc %d", rc)
	}
	if rc := cmdLearn([]string{"--db", db}); rc != 2 {
		t.Fatalf("no source: rc %d", rc)
	}
	in, _ := os.Open(one)
	defer in.Close()
	old := os.Stdin
	os.Stdin = in
	defer func() { os.Stdin = old }()
	if rc := cmdClassify([]string{"--db", db, "--explain"}); rc != 0 {
		t.Fatalf("classify: rc %d", rc)
	}
	if rc := cmdEval([]string{"--corpus", corpus, "--print-order"}); rc != 0 {
		t.Fatalf("eval --print-order: rc %d", rc)
	}
}
