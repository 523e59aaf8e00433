package queue

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// trailerEnv reads the envelope committed in a message file's trailer.
func trailerEnv(t *testing.T, name, id string) *Envelope {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env, err := readTrailer(f, id)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return env
}

// TestInterruptedCommitNotDelivered simulates what a crash during Commit
// can leave behind now that the rename precedes the fsync: the file in
// ready/, but its bytes short or wrong (not yet written back). Such a
// message was never acknowledged; recovery must not deliver it, while a
// complete message committed alongside loads normally, and a message
// already attempted is trusted as before.
func TestInterruptedCommitNotDelivered(t *testing.T) {
	cfg := testConfig(t)
	q, err := Open(cfg, nil, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	good := commit(t, q, "a@s.test", testMsg, "bob@a.test")
	torn := commit(t, q, "a@s.test", testMsg, "bob@a.test")
	half := commit(t, q, "a@s.test", testMsg, "bob@a.test")
	zeroed := commit(t, q, "a@s.test", testMsg, "bob@a.test")
	tried := commit(t, q, "a@s.test", testMsg, "bob@a.test")
	q.Close()

	ready := filepath.Join(cfg.SpoolDir, "ready")
	env := trailerEnv(t, filepath.Join(ready, good+".eml"), good)
	if env.BodyCRC32C == 0 || env.Size != int64(len(testMsg)) {
		t.Fatalf("committed envelope has no size/checksum: %+v", env)
	}
	if f := files(t, cfg, "ready"); len(f) != 5 {
		t.Fatalf("ready/ = %v, want one file per message", f)
	}
	// torn: the data never reached the disk (size 0 after the crash).
	if err := os.Truncate(filepath.Join(ready, torn+".eml"), 0); err != nil {
		t.Fatal(err)
	}
	// half: only the first part of the file reached the disk.
	if err := os.Truncate(filepath.Join(ready, half+".eml"), int64(len(testMsg))+10); err != nil {
		t.Fatal(err)
	}
	// zeroed: the trailer is intact but the message bytes are not.
	b, err := os.ReadFile(filepath.Join(ready, zeroed+".eml"))
	if err != nil {
		t.Fatal(err)
	}
	clear(b[:len(testMsg)])
	if err := os.WriteFile(filepath.Join(ready, zeroed+".eml"), b, 0o640); err != nil {
		t.Fatal(err)
	}
	// tried: a delivery was attempted (its .env says so), so its commit had
	// completed; its bytes are not re-read at start (damage would be found
	// on delivery).
	te := trailerEnv(t, filepath.Join(ready, tried+".eml"), tried)
	te.Rcpts[0].Attempts = 1
	b, _ = json.Marshal(te)
	os.WriteFile(filepath.Join(ready, tried+".env"), b, 0o640)
	os.WriteFile(filepath.Join(ready, tried+".eml"), []byte("Subject: x\r\n\r\nother\r\n"), 0o640)

	q, err = Open(cfg, nil, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var ids []string
	for _, s := range q.List(Filter{}) {
		ids = append(ids, s.ID)
	}
	slices.Sort(ids)
	want := []string{good, tried}
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Fatalf("recovered %v, want %v", ids, want)
	}
	// Without an intact trailer the file is an uncommitted draft and is
	// removed; with one that does not match the bytes it is set aside.
	if f := files(t, cfg, "corrupt"); !slices.Equal(f, []string{zeroed + ".eml"}) {
		t.Fatalf("corrupt/ = %v, want [%s.eml]", f, zeroed)
	}
	wantReady := []string{good + ".eml", tried + ".eml", tried + ".env"}
	slices.Sort(wantReady)
	if f := files(t, cfg, "ready"); !slices.Equal(f, wantReady) {
		t.Fatalf("ready/ = %v, want %v", f, wantReady)
	}
}

// TestOldLayoutStillLoads: a spool written before the envelope moved into
// the message file's trailer (<id>.eml holding only the message, <id>.env
// the envelope) is recovered and delivered byte for byte; a .env without
// its message is set aside.
func TestOldLayoutStillLoads(t *testing.T) {
	cfg := testConfig(t)
	q, err := Open(cfg, nil, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	id := commit(t, q, "a@s.test", testMsg, "bob@a.test")
	orphan := commit(t, q, "a@s.test", testMsg, "carol@a.test")
	q.Close()
	ready := filepath.Join(cfg.SpoolDir, "ready")
	env := trailerEnv(t, filepath.Join(ready, id+".eml"), id)
	b, _ := json.Marshal(env)
	if err := os.WriteFile(filepath.Join(ready, id+".env"), b, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ready, id+".eml"), []byte(testMsg), 0o640); err != nil {
		t.Fatal(err)
	}
	oenv := trailerEnv(t, filepath.Join(ready, orphan+".eml"), orphan)
	b, _ = json.Marshal(oenv)
	os.WriteFile(filepath.Join(ready, orphan+".env"), b, 0o640)
	os.Remove(filepath.Join(ready, orphan+".eml"))

	rec := newRecorder(func(a attempt) []Result { return reply(a, ok250) })
	q, err = Open(cfg, rec, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if got := q.List(Filter{}); len(got) != 1 || got[0].ID != id {
		t.Fatalf("recovered %+v, want only %s", got, id)
	}
	if f := files(t, cfg, "corrupt"); !slices.Equal(f, []string{orphan + ".env"}) {
		t.Fatalf("corrupt/ = %v", f)
	}
	go q.Run(t.Context())
	waitFor(t, "delivery", func() bool { return len(rec.snapshot()) == 1 })
	if body := rec.snapshot()[0].Body; body != testMsg {
		t.Fatalf("delivered %q, want %q", body, testMsg)
	}
}

// TestCommitLeavesNoTmp: after commits and aborts, tmp/ is empty and every
// committed message is exactly one file in ready/.
func TestCommitLeavesNoTmp(t *testing.T) {
	cfg := testConfig(t)
	q, err := Open(cfg, nil, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	id := commit(t, q, "a@s.test", testMsg, "bob@a.test")
	d, err := q.NewDraft()
	if err != nil {
		t.Fatal(err)
	}
	d.Write([]byte(testMsg))
	d.Abort()
	if f := files(t, cfg, "tmp"); len(f) != 0 {
		t.Fatalf("tmp/ = %v", f)
	}
	if f := files(t, cfg, "ready"); !slices.Equal(f, []string{id + ".eml"}) {
		t.Fatalf("ready/ = %v", f)
	}
}
