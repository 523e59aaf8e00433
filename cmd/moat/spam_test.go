package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"moat.dev/moat/internal/classify"
	"moat.dev/moat/internal/testutil/pgtest"
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

// TestLearnBatchCLI: moat learn --config learns a Maildir of real mail
// into the configured store (SQLite, and PostgreSQL when
// MOAT_TEST_POSTGRES is set), in batches; learning it again changes
// nothing; moat classify --config reads the same model.
func TestLearnBatchCLI(t *testing.T) {
	const corpus = "/work/shared/corpus/spamassassin-2002.tar.gz"
	if _, err := os.Stat(corpus); err != nil {
		t.Skip("corpus not available")
	}
	// A small labelled set: the first 30 ham and 30 spam of the corpus.
	dir := t.TempDir()
	n := map[classify.Label]int{}
	var one string
	err := classify.ReadSource(corpus, func(it classify.Item) error {
		if n[it.Label] >= 30 || it.Label == classify.Unknown {
			return nil
		}
		n[it.Label]++
		p := filepath.Join(dir, "set", it.Label.String(), "cur", fmt.Sprintf("%d.eml", n[it.Label]))
		if one == "" {
			one = p
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		return os.WriteFile(p, it.Data, 0o644)
	})
	if err != nil || n[classify.Ham] != 30 || n[classify.Spam] != 30 {
		t.Fatalf("corpus: %v %v", n, err)
	}
	for _, drv := range []string{"sqlite", "postgres"} {
		t.Run(drv, func(t *testing.T) {
			store := "store:\n  driver: sqlite\n  dsn: " + filepath.Join(t.TempDir(), "moat.db") + "\n"
			if drv == "postgres" {
				store = "store:\n  driver: postgres\n  dsn: " + postgresTestDB(t) + "\n"
			}
			cfgPath := filepath.Join(t.TempDir(), "moat.yaml")
			yaml := "data_dir: " + t.TempDir() + "\n" + store +
				"domains:\n  - name: a.example\n    backends: [mx.a.example]\n"
			if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			totals := func() classify.Totals {
				sc, cfg, ok := modelFromConfig("test", cfgPath)
				if !ok {
					t.Fatal("modelFromConfig")
				}
				c, closeDB, err := openModel(context.Background(), sc, "", cfg)
				if err != nil {
					t.Fatal(err)
				}
				defer closeDB()
				tot, err := c.Totals(context.Background(), "")
				if err != nil {
					t.Fatal(err)
				}
				return tot
			}
			var first classify.Totals
			for pass := 0; pass < 2; pass++ {
				for _, l := range []string{"ham", "spam"} {
					if rc := cmdLearn([]string{"--config", cfgPath, "--" + l, filepath.Join(dir, "set", l), "-q"}); rc != 0 {
						t.Fatalf("pass %d learn --%s: rc %d", pass, l, rc)
					}
				}
				// The corpus repeats a message or two (same fingerprint):
				// they count once.
				tot := totals()
				if pass == 0 {
					first = tot
				}
				if tot.Ham < 28 || tot.Spam < 28 || tot.Ham > 30 || tot.Spam > 30 || tot != first {
					t.Fatalf("pass %d: totals %+v (first pass %+v), want about 30 ham 30 spam, unchanged by the second pass", pass, tot, first)
				}
			}
			in, _ := os.Open(one)
			defer in.Close()
			old := os.Stdin
			os.Stdin = in
			defer func() { os.Stdin = old }()
			if rc := cmdClassify([]string{"--config", cfgPath}); rc != 0 {
				t.Fatalf("classify --config: rc %d", rc)
			}
		})
	}
}

// postgresTestDB returns the DSN of a fresh database on MOAT_TEST_POSTGRES's
// server (dropped at the end of t), skipping without it.
func postgresTestDB(t *testing.T) string {
	t.Helper()
	return pgtest.Open(t).Fresh(t, "moat_cli_learn")
}

// TestLearnInterleaves: with ham and spam sources, moat learn spreads the
// spam through the ham in proportion instead of learning one class after
// the other; --label-from-path does the same within one source.
func TestLearnInterleaves(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		class string
		n     int
	}{{"ham", 6}, {"spam", 3}} {
		d := filepath.Join(dir, c.class)
		os.MkdirAll(d, 0o755)
		for i := range c.n {
			body := fmt.Sprintf("From: a%d@b.example\r\nSubject: %s %d\r\n\r\n%s number %d\r\n", i, c.class, i, c.class, i)
			os.WriteFile(filepath.Join(d, fmt.Sprintf("%02d.eml", i)), []byte(body), 0o644)
		}
	}
	// The same messages as a .tar.gz (read once, from memory), plus a
	// member with no class in its path, which is skipped.
	tgz := filepath.Join(t.TempDir(), "c.tar.gz")
	{
		f, err := os.Create(tgz)
		if err != nil {
			t.Fatal(err)
		}
		zw := gzip.NewWriter(f)
		tw := tar.NewWriter(zw)
		add := func(name string, body []byte) {
			tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
			tw.Write(body)
		}
		for _, class := range []string{"ham", "spam"} {
			ents, _ := os.ReadDir(filepath.Join(dir, class))
			for _, e := range ents {
				b, _ := os.ReadFile(filepath.Join(dir, class, e.Name()))
				add("c/"+class+"/"+e.Name(), b)
			}
		}
		add("c/other/x.eml", []byte("Subject: x\r\n\r\nx\r\n"))
		if err := errors.Join(tw.Close(), zw.Close(), f.Close()); err != nil {
			t.Fatal(err)
		}
	}
	for _, srcs := range [][]learnSource{
		{{filepath.Join(dir, "ham"), classify.Ham, false}, {filepath.Join(dir, "spam"), classify.Spam, false}},
		{{dir, classify.Ham, true}, {dir, classify.Spam, true}},
		{{tgz, classify.Ham, true}, {tgz, classify.Spam, true}},
	} {
		var seq string
		err := interleave(context.Background(), srcs, func(it classify.Item, l classify.Label) error {
			if want := filepath.Base(filepath.Dir(it.Name)); want != l.String() {
				t.Errorf("%s learned as %s", it.Name, l)
			}
			if !bytes.Contains(it.Data, []byte("Subject: "+l.String())) {
				t.Errorf("%s handed out without its data: %q", it.Name, it.Data)
			}
			seq += l.String()[:1]
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if seq != "hshhshhsh" {
			t.Errorf("lesson order %q, want ham and spam interleaved in proportion (hshhshhsh)", seq)
		}
	}
	if rc := cmdLearn([]string{"--db", filepath.Join(dir, "m.db"), "--label-from-path", dir, "--ham", dir}); rc != 2 {
		t.Fatalf("--label-from-path with --ham: rc %d, want 2", rc)
	}
}

// TestTRECIndexCLI: a corpus laid out as TREC's (data/inmail.N, labels in
// full/index) is evaluated in its own order with --order corpus, and
// learned with --label-from-path by the index's labels.
func TestTRECIndexCLI(t *testing.T) {
	dir := t.TempDir()
	labels := []string{"ham", "spam", "ham", "ham", "spam", "ham"}
	var index strings.Builder
	os.MkdirAll(filepath.Join(dir, "data"), 0o755)
	os.MkdirAll(filepath.Join(dir, "full"), 0o755)
	for i, l := range labels {
		n := len(labels) - i // the index's order is not the names'
		body := fmt.Sprintf("From: a%d@b.example\r\nSubject: %s %d\r\n\r\n%s text %d\r\n", n, l, n, l, n)
		os.WriteFile(filepath.Join(dir, "data", fmt.Sprintf("inmail.%d", n)), []byte(body), 0o644)
		fmt.Fprintf(&index, "%s ../data/inmail.%d\n", l, n)
	}
	os.WriteFile(filepath.Join(dir, "full", "index"), []byte(index.String()), 0o644)

	out := stdoutOf(t, func() {
		if rc := cmdEval([]string{"--corpus", dir, "--order", "corpus", "--print-order"}); rc != 0 {
			t.Fatalf("eval --order corpus: rc %d", rc)
		}
	})
	var want strings.Builder
	for i, l := range labels {
		fmt.Fprintf(&want, "%s\t%s\n", l, filepath.Join(dir, "data", fmt.Sprintf("inmail.%d", len(labels)-i)))
	}
	if out != want.String() {
		t.Fatalf("--order corpus printed\n%s\nwant the index's order\n%s", out, want.String())
	}
	if rc := cmdEval([]string{"--corpus", dir, "--order", "sideways"}); rc != 2 {
		t.Fatalf("--order sideways: rc %d, want 2", rc)
	}
	db := filepath.Join(dir, "m.db")
	stdoutOf(t, func() {
		if rc := cmdLearn([]string{"--db", db, "--label-from-path", dir, "-q"}); rc != 0 {
			t.Fatalf("learn --label-from-path: rc %d", rc)
		}
	})
	c, closeDB, err := openClassifier(context.Background(), db, "")
	if err != nil {
		t.Fatal(err)
	}
	defer closeDB()
	if tot, err := c.Totals(context.Background(), ""); err != nil || tot.Ham != 4 || tot.Spam != 2 {
		t.Fatalf("learned %+v (%v), want the index's 4 ham and 2 spam", tot, err)
	}
}

// stdoutOf runs fn and returns what it wrote to os.Stdout.
func stdoutOf(t *testing.T, fn func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() { b, _ := io.ReadAll(r); done <- string(b) }()
	defer func() { os.Stdout = old }()
	fn()
	w.Close()
	os.Stdout = old
	return <-done
}

// TestLearnEvalRefuse: what learn and eval cannot do is refused with a
// message and the right exit status, and a refused learn creates no
// database.
func TestLearnEvalRefuse(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "m.db")
	empty := filepath.Join(dir, "empty")
	os.MkdirAll(empty, 0o755)
	hamOnly := filepath.Join(dir, "hamonly")
	os.MkdirAll(filepath.Join(hamOnly, "ham"), 0o755)
	os.WriteFile(filepath.Join(hamOnly, "ham", "1.eml"), []byte("Subject: hi\r\n\r\nhello\r\n"), 0o644)
	for _, tc := range []struct {
		args []string
		rc   int
	}{
		{[]string{"--db", db, "--classifier", "bogus", "--ham", hamOnly}, 2},
		{[]string{"--db", db, "--ham", filepath.Join(dir, "nonexistent")}, 1},
	} {
		if rc := cmdLearn(tc.args); rc != tc.rc {
			t.Errorf("learn %v: rc %d, want %d", tc.args, rc, tc.rc)
		}
		if _, err := os.Stat(db); err == nil {
			t.Fatalf("learn %v created %s", tc.args, db)
		}
	}
	if rc := cmdLearn([]string{"--db", db, "--ham", empty, "-q"}); rc != 1 {
		t.Errorf("learn of an empty folder: rc %d, want 1", rc)
	}
	for _, tc := range []struct {
		args []string
		rc   int
	}{
		{[]string{"--corpus", hamOnly}, 1},
		{[]string{"--corpus", hamOnly, "--threshold", "2"}, 2},
		{[]string{"--corpus", hamOnly, "extra"}, 2},
		{[]string{"--corpus", hamOnly, "--scores", filepath.Join(dir, "no", "such", "dir", "s.tsv")}, 1},
	} {
		if rc := cmdEval(tc.args); rc != tc.rc {
			t.Errorf("eval %v: rc %d, want %d", tc.args, rc, tc.rc)
		}
	}
}
