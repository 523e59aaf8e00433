package queue

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestInterruptedCommitNotDelivered simulates what a crash during Commit
// can leave behind now that the renames precede the fsyncs: both files in
// ready/, but the bytes short (not yet written back). Such a message was
// never acknowledged; recovery must not deliver it, while a complete
// message committed alongside loads normally, and a message already
// attempted is trusted as before.
func TestInterruptedCommitNotDelivered(t *testing.T) {
	cfg := testConfig(t)
	q, err := Open(cfg, nil, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	good := commit(t, q, "a@s.test", testMsg, "bob@a.test")
	torn := commit(t, q, "a@s.test", testMsg, "bob@a.test")
	zeroed := commit(t, q, "a@s.test", testMsg, "bob@a.test")
	tried := commit(t, q, "a@s.test", testMsg, "bob@a.test")
	q.Close()

	ready := filepath.Join(cfg.SpoolDir, "ready")
	b, err := os.ReadFile(filepath.Join(ready, good+".env"))
	if err != nil {
		t.Fatal(err)
	}
	var env Envelope
	if err := json.Unmarshal(b, &env); err != nil || env.BodyCRC32C == 0 || env.Size != int64(len(testMsg)) {
		t.Fatalf("committed envelope has no size/checksum: %s (%v)", b, err)
	}
	// torn: the data never reached the disk (size 0 after the crash).
	if err := os.Truncate(filepath.Join(ready, torn+".eml"), 0); err != nil {
		t.Fatal(err)
	}
	// zeroed: right size, wrong bytes.
	if err := os.WriteFile(filepath.Join(ready, zeroed+".eml"), make([]byte, len(testMsg)), 0o640); err != nil {
		t.Fatal(err)
	}
	// tried: a delivery was attempted, so its commit had completed; its
	// bytes are not re-read at start (damage would be found on delivery).
	b, _ = os.ReadFile(filepath.Join(ready, tried+".env"))
	var te Envelope
	json.Unmarshal(b, &te)
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
	wantCorrupt := []string{torn + ".eml", torn + ".env", zeroed + ".eml", zeroed + ".env"}
	slices.Sort(wantCorrupt)
	if f := files(t, cfg, "corrupt"); !slices.Equal(f, wantCorrupt) {
		t.Fatalf("corrupt/ = %v, want %v", f, wantCorrupt)
	}
}

// TestCommitLeavesNoTmp: after commits and aborts, tmp/ is empty and every
// committed message has exactly its two files in ready/.
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
	if f := files(t, cfg, "ready"); !slices.Equal(f, []string{id + ".eml", id + ".env"}) {
		t.Fatalf("ready/ = %v", f)
	}
}
