package queue

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzEnvelope: no env file may panic the decoder or the scheduler; what
// the decoder rejects goes to corrupt/.
func FuzzEnvelope(f *testing.F) {
	const id = "01HZZZZZZZ000000"
	f.Add([]byte(`{"id":"` + id + `","from":"a@b","rcpts":[{"addr":"c@d","domain":"d","status":"pending"}],"received":"2024-01-01T00:00:00Z","size":5}`))
	f.Add([]byte(`{"id":"` + id + `","rcpts":[{"addr":"c@d","status":"failed"},{"addr":"e@f","domain":"","status":"pending","attempts":3,"next":"2030-01-01T00:00:00Z"}],"received":"2024-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"id":"` + id + `","rcpts":null}`))
	f.Add([]byte(`{`))
	f.Add([]byte(`[]`))
	q := &Queue{cfg: DefaultConfig(), msgs: map[string]*entry{}, parked: map[string][]*job{}, domActive: map[string]int{},
		wake: make(chan struct{}, 1), now: time.Now}
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := parseEnvelope(b, id)
		if err != nil {
			return
		}
		// Schedule, dispatch bookkeeping and DSN building must cope.
		q.msgs = map[string]*entry{}
		q.heap = nil
		q.add(env, dirReady, false)
		q.mu.Lock()
		for _, j := range q.heap {
			if j.e.env.ID != id {
				t.Fatal("wrong job")
			}
		}
		q.mu.Unlock()
		q.List(Filter{Domain: "d"})
		buildDSN(q.cfg, env, env.Rcpts, dsnFailed, nil, time.Now())
	})
}

// TestCorruptEnvelopeToCorrupt: the recovery path for undecodable files.
func TestCorruptEnvelopeToCorrupt(t *testing.T) {
	for _, data := range []string{"", "{", `{"id":"x"}`, `{"id":"01HZZZZZZZ000000","rcpts":[{"addr":"a@b","status":"pending"}]}`, "\x00\xff"} {
		cfg := testConfig(t)
		const id = "01HZZZZZZZ000000"
		os.MkdirAll(filepath.Join(cfg.SpoolDir, "ready"), 0o750)
		os.WriteFile(filepath.Join(cfg.SpoolDir, "ready", id+".eml"), []byte(testMsg), 0o640)
		os.WriteFile(filepath.Join(cfg.SpoolDir, "ready", id+".env"), []byte(data), 0o640)
		q, err := Open(cfg, nil, testLogger(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(q.List(Filter{})); n != 0 {
			t.Errorf("%q: %d messages loaded", data, n)
		}
		q.Close()
		if f := files(t, cfg, "corrupt"); len(f) != 2 {
			t.Errorf("%q: corrupt/ = %v", data, f)
		}
	}
}

// FuzzTrailer: no message file may panic the trailer reader, and what it
// accepts records a size within the file.
func FuzzTrailer(f *testing.F) {
	const id = "01HZZZZZZZ000000"
	msg := []byte("Subject: x\r\n\r\nhello\r\n")
	env := []byte(`{"id":"` + id + `","from":"a@b","rcpts":[{"addr":"c@d","domain":"d","status":"pending"}],"received":"2024-01-01T00:00:00Z","size":21}`)
	var good bytes.Buffer
	good.Write(msg)
	appendTrailer(&good, env)
	f.Add(good.Bytes())
	f.Add(good.Bytes()[:good.Len()-1])
	f.Add([]byte(trailerMagic))
	f.Add([]byte{})
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		name := filepath.Join(dir, "m.eml")
		if err := os.WriteFile(name, b, 0o600); err != nil {
			t.Fatal(err)
		}
		fh, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		e, err := readTrailer(fh, id)
		if err != nil {
			return
		}
		if e.Size < 0 || e.Size > int64(len(b))-footerLen {
			t.Fatalf("size %d out of range for %d bytes", e.Size, len(b))
		}
	})
}
